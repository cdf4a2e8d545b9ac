//! The Lobby API, package `lobby.v1`, generated once from `proto/lobby/v1/lobby.proto`.

/// The protobuf runtime the messages are generated for (`prost::Message` to encode and decode them
/// without a gRPC transport, as the fuzzing entry points do).
pub use prost;

pub mod audit;

pub mod v1 {
    tonic::include_proto!("lobby.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lobby_descriptor");
}
