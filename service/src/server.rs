//! The gRPC server as a testable entry point: [`run`] serves on any bound listener until a shutdown
//! future completes (tests bind `127.0.0.1:0`).

use crate::api::{FrontDesk, Kiosk, Reservations};
use crate::auth::{AuthLayer, Credentials};
use crate::core::App;
use lobby_proto::v1 as pv;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::{server::TcpIncoming, Server};

/// The health check's names: the server as a whole (""), then each service.
const SERVICES: [&str; 4] = [
    "",
    "lobby.v1.ReservationService",
    "lobby.v1.KioskService",
    "lobby.v1.FrontDeskService",
];

/// Serves the three Lobby services, `grpc.health.v1` and reflection on `listener` until `shutdown`
/// completes. Health reports SERVING: by the time an [`App`] exists the models are loaded and the
/// store is open. On `shutdown`: health NOT_SERVING, streams told to end, calls in flight given
/// `limits.shutdown_grace_ms` to finish; then it returns.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    app: Arc<App>,
    creds: Arc<Credentials>,
) -> anyhow::Result<()> {
    let limits = app.settings().limits.clone();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in SERVICES {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pv::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let max = limits.max_message_bytes;
    let reservations = pv::reservation_service_server::ReservationServiceServer::new(Reservations(app.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let kiosk = pv::kiosk_service_server::KioskServiceServer::new(Kiosk(app.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let front_desk = pv::front_desk_service_server::FrontDeskServiceServer::new(FrontDesk(app.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping_health = health_reporter.clone();
    let serve = Server::builder()
        .timeout(Duration::from_millis(limits.request_timeout_ms))
        .layer(AuthLayer::new(creds))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reservations)
        .add_service(kiosk)
        .add_service(front_desk)
        // TCP_NODELAY: a check-in answer is one small write; with Nagle's algorithm it waits for the
        // kiosk's delayed ACK (~40 ms on Linux), which was a third of a check-in's latency.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            shutdown.await;
            // Load balancers see NOT_SERVING first; then long-lived streams are told to end, and
            // calls in flight finish (within the grace period below).
            for name in SERVICES {
                stopping_health
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            app.begin_shutdown();
            let _ = stopping_tx.send(());
        });
    tokio::pin!(serve);
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    tokio::select! {
        r = &mut serve => r?,
        _ = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(grace_ms = limits.shutdown_grace_ms, "calls still in flight after the grace period; stopping");
        }
    }
    Ok(())
}
