//! The `lobby` command's parts beside its argument parsing and dispatch (`main.rs`).

pub mod import;
pub mod output;
pub mod terminal;
