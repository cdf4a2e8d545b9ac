//! Client library for Lobby's gRPC API: the kiosk, front-desk and reservation-system roles.
pub use lobby_proto::v1 as proto;
