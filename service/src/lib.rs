//! Lobby's check-in service.
//!
//! Layers, dependencies pointing inward: gRPC handlers ([`api`], with [`auth`] as a tower layer and
//! [`server`] wiring) -> check-in logic ([`app`], [`policy`], [`health`]) -> backends: the vision
//! pipeline on tract ([`vision`]), the Faiss galleries ([`gallery`]) and the store ([`store`], with
//! the hash-chained [`audit`] trail). Settings: [`config`].

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod checkin;
pub mod config;
pub mod gallery;
pub mod health;
pub mod ladder;
pub mod matching;
pub mod policy;
pub mod server;
pub mod store;
pub mod vision;
