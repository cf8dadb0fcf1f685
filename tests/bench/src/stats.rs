//! Percentiles of latency samples.

use std::time::Duration;

/// Summary of a set of durations.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

/// Summarises `samples` (sorted in place).
pub fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        us(samples[index])
    };
    let total: f64 = samples.iter().map(|d| us(*d)).sum();
    Summary {
        count: samples.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        mean_us: if samples.is_empty() {
            0.0
        } else {
            total / samples.len() as f64
        },
        max_us: samples.last().map_or(0.0, |d| us(*d)),
    }
}
