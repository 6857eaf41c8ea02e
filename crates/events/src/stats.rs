//! Per-service and per-instance stats over a window: count, errors, error rate and latency
//! percentiles, computed here from the window's durations (portable across both databases).

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStats {
    pub service: String,
    #[serde(flatten)]
    pub summary: Summary,
    pub instances: Vec<InstanceStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceStats {
    pub instance: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Nearest-rank percentile of sorted values (`p` in 0-100); 0 for no values.
pub use stratus_kit::sketch::nearest_rank as percentile;

fn summarise(mut durations: Vec<i64>, errors: u64) -> Summary {
    durations.sort_unstable();
    let count = durations.len() as u64;
    let ms = |p| percentile(&durations, p) as f64 / 1000.0;
    Summary {
        count,
        errors,
        error_rate: if count == 0 {
            0.0
        } else {
            errors as f64 / count as f64
        },
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
    }
}

/// Groups (service, instance, ok, duration_us) rows into per-service stats, each with its
/// instances, all sorted by name.
pub fn compute(rows: Vec<(String, String, bool, i64)>) -> Vec<ServiceStats> {
    type Bucket = (Vec<i64>, u64);
    let mut services: BTreeMap<String, (Bucket, BTreeMap<String, Bucket>)> = BTreeMap::new();
    for (service, instance, ok, duration) in rows {
        let (all, instances) = services.entry(service).or_default();
        let one = instances.entry(instance).or_default();
        for bucket in [all, one] {
            bucket.0.push(duration);
            bucket.1 += u64::from(!ok);
        }
    }
    services
        .into_iter()
        .map(|(service, ((durations, errors), instances))| ServiceStats {
            service,
            summary: summarise(durations, errors),
            instances: instances
                .into_iter()
                .map(|(instance, (durations, errors))| InstanceStats {
                    instance,
                    summary: summarise(durations, errors),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 95.0), 95);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&values, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), 2);
    }

    #[test]
    fn groups_by_service_and_instance() {
        let mut rows = Vec::new();
        for i in 1..=100 {
            rows.push((
                "catalog".to_string(),
                format!("c-{}", i % 2),
                i % 4 != 0,
                i * 1000,
            ));
        }
        rows.push(("auth".to_string(), "a-1".to_string(), true, 2500));
        let stats = compute(rows);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].service, "auth");
        assert_eq!(stats[0].summary.p99_ms, 2.5);
        let catalog = &stats[1];
        assert_eq!(catalog.summary.count, 100);
        assert_eq!(catalog.summary.errors, 25);
        assert_eq!(catalog.summary.error_rate, 0.25);
        assert_eq!(catalog.summary.p50_ms, 50.0);
        assert_eq!(catalog.summary.p95_ms, 95.0);
        assert_eq!(catalog.summary.p99_ms, 99.0);
        assert_eq!(catalog.instances.len(), 2);
        assert_eq!(catalog.instances[0].instance, "c-0");
        assert_eq!(catalog.instances[0].summary.count, 50);
        assert_eq!(catalog.instances[0].summary.errors, 25);
        let json = serde_json::to_value(&stats[1]).unwrap();
        assert_eq!(json["p95_ms"], 95.0);
        assert_eq!(json["instances"][1]["errors"], 0);
    }
}
