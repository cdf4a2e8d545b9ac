//! Lobby's evaluation harness and benchmarks: metrics, plots, and the dataset readers.

pub mod datasets;
pub mod kiosk;
pub mod metrics;
pub mod plot;
pub mod record;
