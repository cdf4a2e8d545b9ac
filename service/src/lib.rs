//! Lobby's check-in service.
//!
//! Layers, dependencies pointing inward: the gRPC handlers ([`server`]) call the check-in logic,
//! which calls the backends. [`vision`] is the face pipeline on tract.

pub mod server;
pub mod vision;
