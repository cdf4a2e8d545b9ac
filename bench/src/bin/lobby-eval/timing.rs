//! Per-stage latency: every timed call's milliseconds, reported as percentiles (`timing_ms`).

use crate::pipeline::round;
use lobby_bench::metrics::percentile;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Timings(BTreeMap<&'static str, Vec<f64>>);

impl Timings {
    pub fn add(&mut self, stage: &'static str, ms: f64) {
        self.0.entry(stage).or_default().push(ms);
    }

    /// The report: each stage's median and 99th percentile (ms) and how many calls were timed.
    pub fn report(&self) -> BTreeMap<&'static str, StageTiming> {
        self.0
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    StageTiming {
                        n: v.len(),
                        p50: round(percentile(v, 50.0), 3),
                        p99: round(percentile(v, 99.0), 3),
                    },
                )
            })
            .collect()
    }
}

#[derive(Serialize)]
pub struct StageTiming {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
}
