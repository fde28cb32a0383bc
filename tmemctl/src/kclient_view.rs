//! `tmemctl client`: kclient's counters on a client machine, read from debugfs, plus the module's
//! parameters from sysfs — one command instead of RAMster's `watch grep . /sys/kernel/debug/...`.

use anyhow::{Context, Result};
use std::path::Path;

/// Where kclient publishes its counters.
pub const STATS_FILE: &str = "/sys/kernel/debug/kclient/stats";

/// Where the module's parameters are.
pub const PARAMS_DIR: &str = "/sys/module/kclient/parameters";

/// kclient's counters: the global ones, and one block per appliance.
#[derive(Debug, Default)]
pub struct KclientStats {
    /// `name value` counters (numeric).
    pub counters: Vec<(String, u64)>,
    /// Per appliance (in `remote_target` order): `(field, value)` pairs, e.g. `state up`.
    pub appliances: Vec<Vec<(String, String)>>,
}

/// `name value` lines as pairs (lines that do not parse are skipped); `appliance.N.field` lines
/// go to [`KclientStats::appliances`].
pub fn parse(text: &str) -> KclientStats {
    let mut out = KclientStats::default();
    for l in text.lines() {
        let Some((k, v)) = l.split_once(char::is_whitespace) else {
            continue;
        };
        let v = v.trim();
        if let Some(rest) = k.strip_prefix("appliance.") {
            let Some((i, field)) = rest.split_once('.') else {
                continue;
            };
            let Ok(i) = i.parse::<usize>() else { continue };
            if i >= 64 {
                continue;
            }
            if out.appliances.len() <= i {
                out.appliances.resize(i + 1, Vec::new());
            }
            out.appliances[i].push((field.to_string(), v.to_string()));
        } else if let Ok(n) = v.parse() {
            out.counters.push((k.to_string(), n));
        }
    }
    out
}

/// Reads the counters.
pub fn read_stats(path: &Path) -> Result<KclientStats> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (is kclient loaded, debugfs mounted, and are you root?)",
            path.display()
        )
    })?;
    Ok(parse(&text))
}

/// Module parameters (name, value), if the module is loaded.
pub fn read_params(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let value = std::fs::read_to_string(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                value.trim().to_string(),
            ))
        })
        .collect();
    out.sort();
    out
}

/// A human table: parameters, counters, derived figures (MiB moved, latency histogram) and the
/// appliances (state, pages held and stale, repair progress).
pub fn table(params: &[(String, String)], all: &KclientStats) -> String {
    let stats = &all.counters;
    let mut s = String::from("kclient\n");
    for (k, v) in params {
        s.push_str(&format!("  {k:<24} {v}\n"));
    }
    let get = |name: &str| stats.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    for (k, v) in stats
        .iter()
        .filter(|(k, _)| !k.starts_with("latency_us_lt_"))
    {
        s.push_str(&format!("  {k:<24} {v:>14}\n"));
    }
    if let (Some(sent), Some(recv)) = (get("bytes_sent"), get("bytes_received")) {
        s.push_str(&format!(
            "  {:<24} {:>14.1}\n",
            "mib_sent",
            sent as f64 / (1 << 20) as f64
        ));
        s.push_str(&format!(
            "  {:<24} {:>14.1}\n",
            "mib_received",
            recv as f64 / (1 << 20) as f64
        ));
    }
    // The cache device: how much the appliances spared the backing device.
    if let (Some(hits), Some(misses)) = (get("cache_hits"), get("cache_misses")) {
        if hits + misses > 0 {
            s.push_str(&format!(
                "  {:<24} {:>14.3}\n",
                "cache_hit_ratio",
                hits as f64 / (hits + misses) as f64
            ));
            s.push_str(&format!(
                "  {:<24} {:>14.1}\n",
                "cache_mib_saved",
                (hits * 4096) as f64 / (1 << 20) as f64
            ));
        }
    }
    let hist: Vec<(u64, u64)> = stats
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("latency_us_lt_")?.parse().ok()?, *v)))
        .collect();
    let total: u64 = hist.iter().map(|(_, n)| n).sum();
    if total > 0 {
        s.push_str("  request latency\n");
        for (bound, n) in &hist {
            let bar = "#".repeat(((n * 40).div_ceil(total)) as usize);
            s.push_str(&format!("    < {bound:>8} us {n:>10} {bar}\n"));
        }
    }
    if !all.appliances.is_empty() {
        let cols = [
            "addr",
            "state",
            "connections_up",
            "pages_held",
            "pages_stale",
            "pages_repaired",
            "write_failures",
            "downs",
            "pools_lost",
            "full",
            "read_latency_us",
        ];
        s.push_str("  appliances\n   #");
        for c in cols {
            s.push_str(&format!(" {c:>15}"));
        }
        s.push('\n');
        for (i, fields) in all.appliances.iter().enumerate() {
            s.push_str(&format!("  {i:>2}"));
            for c in cols {
                let v = fields.iter().find(|(k, _)| k == c).map_or("-", |(_, v)| v);
                s.push_str(&format!(" {v:>15}"));
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_device_shows_its_hit_ratio() {
        let stats = parse("cache_hits 900\ncache_misses 100\n");
        let t = table(&[], &stats);
        assert!(t.contains("cache_hit_ratio") && t.contains("0.900"), "{t}");
        assert!(t.contains("cache_mib_saved") && t.contains("3.5"), "{t}");
        let swap = table(
            &[],
            &parse("cache_hits 0\ncache_misses 0\npages_stored 5\n"),
        );
        assert!(!swap.contains("cache_hit_ratio"), "{swap}");
    }

    #[test]
    fn parses_and_renders_kclient_stats() {
        let text = "pages_stored 10\npages_loaded 4\nbytes_sent 2097152\nbytes_received 1048576\n\
                    latency_us_lt_256 3\nlatency_us_lt_1024 1\ngarbage\n";
        let text = format!(
            "{text}appliance.0.addr 10.0.2.2:7777\nappliance.0.state repairing\n\
             appliance.0.pages_stale 12\nappliance.1.addr 10.0.2.3:7777\nappliance.1.state down\n"
        );
        let stats = parse(&text);
        assert_eq!(stats.counters.len(), 6);
        assert_eq!(stats.appliances.len(), 2);
        let t = table(&[("remote_target".into(), "10.0.2.2:7000".into())], &stats);
        assert!(t.contains("remote_target") && t.contains("10.0.2.2:7000"));
        assert!(t.contains("pages_stored") && t.contains("mib_sent"));
        assert!(t.contains("<      256 us          3"), "{t}");
        assert!(
            t.contains("repairing") && t.contains("10.0.2.3:7777") && t.contains(" down"),
            "{t}"
        );
    }

    #[test]
    fn missing_module_is_a_clear_error() {
        let e = read_stats(Path::new("/nonexistent/kclient/stats")).unwrap_err();
        assert!(format!("{e:#}").contains("is kclient loaded"));
    }
}
