//! The gRPC server as a testable entry point: `run(listener, shutdown)` on any bound listener.

use crate::vision::Vision;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

/// What the server shares between requests.
pub struct AppState {
    pub vision: Arc<Vision>,
}

/// Serves on `listener` until `shutdown` completes. Readiness is reported through `grpc.health.v1`:
/// SERVING once the models are loaded (they are, by the time `AppState` exists).
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    state: Arc<AppState>,
) -> anyhow::Result<()> {
    let _ = &state.vision;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lobby_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
