//! Lobby's evaluation harness and benchmarks: metrics, plots, and the dataset readers.

pub mod capture;
pub mod cascade;
pub mod crash;
pub mod datasets;
pub mod e2e;
pub mod kiosk;
pub mod masks;
pub mod metrics;
pub mod plot;
pub mod profile;
pub mod record;
