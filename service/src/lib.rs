//! Lobby's check-in service.
//!
//! Layers, dependencies pointing inward: gRPC handlers (`api`, with [`auth`] as a tower layer and
//! [`server`] wiring) -> the check-in core ([`core`]: one module per use case, the rules, the
//! [`core::Analyser`] trait) -> backends: the face pipeline on tract ([`vision`]), the Faiss
//! galleries ([`gallery`]) and the store ([`store`]: the async [`store::Store`] trait, SQLite, the
//! hash-chained audit trail). Types shared by every layer: [`domain`]. Settings: [`config`].

mod api;
pub mod auth;
pub mod config;
pub mod core;
pub mod domain;
/// Entry points for fuzzing and its corpus replay (tests/fuzz); not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod gallery;
pub mod server;
pub mod store;
pub mod vision;
