//! The end-to-end suite, one test binary (the models are loaded once for all of it): real models,
//! real photos from ../shared/data, real SQLite (and, built again as `e2e_postgres`, real PostgreSQL), real gRPC on 127.0.0.1:0.
//!
//! - [`pipeline`]: the face pipeline on real photos.
//! - [`fastops`]: our operator kernels agree with tract's on real photos.
//! - [`service`]: the service over gRPC — enrolment, check-in, roles, bad input, reviews, audit.
//! - [`ladder`]: the check-in stream's escalation ladder driven by the kiosk client.
//! - [`security`]: TLS and mutual TLS, credentials issued and revoked live, what a kiosk is told,
//!   bounded streams and pages.
//! - [`records`]: retention with a moved clock, templates sealed at rest, key rotation, a booking
//!   given to another person, a busy WAL.

mod fastops;
mod ladder;
mod pipeline;
mod records;
mod security;
mod service;
