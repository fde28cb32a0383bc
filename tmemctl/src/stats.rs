//! Appliance counters for people (a table) and programs (JSON, Prometheus text).

use protocol::StatId;
use serde_json::{Map, Value};

/// Counters by name, in wire order, for the ids this tmemctl knows (extra ones are shown by index).
pub fn named(values: &[u64]) -> Vec<(String, u64)> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let name = StatId::ALL
                .get(i)
                .map(|id| id.name().to_string())
                .unwrap_or_else(|| format!("stat_{i}"));
            (name, v)
        })
        .collect()
}

fn get(values: &[u64], id: StatId) -> u64 {
    values.get(id as usize).copied().unwrap_or(0)
}

/// Derived figures operators ask for first: compression ratio and bytes per page.
pub fn derived(values: &[u64]) -> Vec<(String, f64)> {
    let pages = get(values, StatId::Pages) as f64;
    let stored = get(values, StatId::StoredBytes) as f64;
    let used = (get(values, StatId::DataBytes) + get(values, StatId::MetadataBytes)) as f64;
    let data = get(values, StatId::DataBytes) as f64;
    let mut out = Vec::new();
    if pages > 0.0 {
        out.push(("compression_ratio".into(), pages * 4096.0 / stored.max(1.0)));
        out.push(("bytes_per_page".into(), used / pages));
        out.push(("density_ratio".into(), pages * 4096.0 / used.max(1.0)));
    }
    if data > 0.0 {
        out.push(("allocator_efficiency".into(), stored / data));
    }
    let limit = get(values, StatId::MemoryLimit) as f64;
    if limit > 0.0 {
        out.push(("memory_used_fraction".into(), used / limit));
    }
    out
}

/// A human table.
pub fn table(target: &str, values: &[u64]) -> String {
    let mut s = format!("appliance {target}\n");
    for (name, v) in named(values) {
        s.push_str(&format!("  {name:<22} {v:>16}\n"));
    }
    for (name, v) in derived(values) {
        s.push_str(&format!("  {name:<22} {v:>16.3}\n"));
    }
    s
}

/// JSON object: counters and derived figures.
pub fn json(target: &str, values: &[u64]) -> Value {
    let mut m = Map::new();
    m.insert("target".into(), Value::from(target));
    for (name, v) in named(values) {
        m.insert(name, Value::from(v));
    }
    for (name, v) in derived(values) {
        m.insert(name, Value::from((v * 1000.0).round() / 1000.0));
    }
    Value::Object(m)
}

/// Prometheus text exposition format.
pub fn prometheus(target: &str, values: &[u64]) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = protocol::write_prometheus(&mut s, target, values.iter().copied());
    s
}
