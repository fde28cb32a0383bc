//! Medians of benchmark rounds: the one definition every benchmark table uses.

use std::collections::BTreeMap;

/// The median of `v` (the upper middle value of an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of `key` over `runs` (`key=value` summaries); runs without a numeric `key` are left out.
pub fn median_of(runs: &[BTreeMap<String, String>], key: &str) -> f64 {
    median(
        runs.iter()
            .filter_map(|r| r.get(key)?.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_missing() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(Vec::new()).is_nan());
        let runs: Vec<BTreeMap<String, String>> = ["ops=5", "ops=1", "other=9", "ops=x"]
            .iter()
            .map(|l| qemu_tests::key_values(l))
            .collect();
        assert_eq!(median_of(&runs, "ops"), 5.0);
    }
}
