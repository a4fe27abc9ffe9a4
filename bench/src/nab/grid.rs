//! The parameter grid of each detector family that leave-one-category-out
//! chooses from. Small on purpose: a wide grid chosen on few categories
//! overfits them.

use selfops_agent::detect::DetectorConfig;

/// Every combination of the listed values, as detector configs parsed from
/// JSON objects merged over `base`.
fn product(base: serde_json::Value, axes: &[(&str, &[serde_json::Value])]) -> Vec<DetectorConfig> {
    let mut configs = vec![base];
    for (key, values) in axes {
        let mut next = Vec::new();
        for c in &configs {
            for v in *values {
                let mut c = c.clone();
                set_path(&mut c, key, v.clone());
                next.push(c);
            }
        }
        configs = next;
    }
    configs
        .into_iter()
        .filter_map(|c| serde_json::from_value(c).ok())
        .collect()
}

/// Sets `a.b.c` in a JSON object, creating the objects on the way.
fn set_path(obj: &mut serde_json::Value, path: &str, v: serde_json::Value) {
    let mut cur = obj;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur[p] = v;
            return;
        }
        if cur.get(p).is_none() {
            cur[p] = serde_json::json!({});
        }
        cur = &mut cur[p];
    }
}

macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$(serde_json::json!($v)),*] };
}

pub fn families() -> Vec<(String, Vec<DetectorConfig>)> {
    use serde_json::json;
    vec![
        (
            "threshold_90".into(),
            product(json!({"kind": "threshold", "above": 90.0}), &[]),
        ),
        (
            "zscore".into(),
            product(
                json!({"kind": "zscore"}),
                &[("window", vals![50, 100, 200, 400, 800])],
            ),
        ),
        (
            "ewma".into(),
            product(
                json!({"kind": "ewma"}),
                &[
                    ("alpha", vals![0.05, 0.1, 0.2, 0.4]),
                    ("baseline_alpha", vals![0.005, 0.01, 0.02]),
                ],
            ),
        ),
        (
            "holt_winters".into(),
            product(
                json!({"kind": "holt_winters"}),
                &[("alpha", vals![0.1, 0.3]), ("gamma", vals![0.05, 0.1, 0.3])],
            ),
        ),
        (
            "seasonal_likelihood".into(),
            product(
                json!({"kind": "seasonal_likelihood"}),
                &[
                    ("fast_alpha", vals![0.3, 0.6, 0.9]),
                    ("echo", vals![0.0, 0.45]),
                    ("quiet", vals![0, 200]),
                    ("likelihood.scale", vals![5.0, 10.0]),
                ],
            ),
        ),
        (
            "windowed_likelihood".into(),
            product(
                json!({"kind": "windowed_likelihood"}),
                &[
                    ("window", vals![100, 400, 1600]),
                    ("fast_alpha", vals![0.0, 0.6]),
                    ("quiet", vals![0, 200]),
                    ("likelihood.scale", vals![5.0, 10.0]),
                ],
            ),
        ),
        (
            "contextual".into(),
            product(
                json!({"kind": "contextual"}),
                &[
                    ("bins", vals![8, 16, 32]),
                    ("order", vals![1, 2, 4]),
                    ("margin", vals![1.0, 2.0]),
                ],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grid_point_parses_and_builds() {
        let sizes: Vec<usize> = families().iter().map(|(_, g)| g.len()).collect();
        // A point that failed to parse would be missing here.
        assert_eq!(sizes, [1, 5, 12, 6, 24, 24, 18]);
        for (name, grid) in families() {
            assert!(!grid.is_empty(), "{name}");
            for c in grid {
                assert!(c.build().is_ok(), "{name}: {c:?}");
            }
        }
    }
}
