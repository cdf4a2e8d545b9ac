//! The gRPC server as a testable entry point: [`run`] serves on any bound listener until a shutdown
//! future completes (tests and benchmarks use [`Loopback`]: `127.0.0.1:0`).

use crate::api::{FrontDesk, Kiosk, Reservations};
use crate::auth::{AuthLayer, AuthPolicy, Credentials};
use crate::config::{Reflection, TlsSettings};
use crate::core::{AbortOnDrop, App};
use lobby_proto::v1 as pv;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::{server::TcpIncoming, Certificate, Identity, Server, ServerTlsConfig};

/// The listener's TLS from the settings' PEM files; `None` for plaintext.
pub fn tls_config(t: &TlsSettings) -> anyhow::Result<Option<ServerTlsConfig>> {
    use anyhow::Context;
    let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut c = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &t.client_ca {
        // Optional at the handshake (staff and reservation systems may have none); a certificate
        // that is presented must chain to this CA. Kiosks can be made to need one (auth layer).
        c = c
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(c))
}

/// Plaintext is for loopback: bearer tokens, face photos and health QRs must not cross a network in
/// the clear. Anywhere else it needs TLS, or the operator's explicit `--insecure-plaintext`.
pub fn check_transport(listen: SocketAddr, tls: &TlsSettings, insecure_plaintext: bool) -> Result<(), String> {
    if tls.enabled() || listen.ip().is_loopback() || insecure_plaintext {
        Ok(())
    } else {
        Err(format!(
            "refusing to listen on {listen} without TLS: set tls.cert and tls.key (see README), or pass \
             --insecure-plaintext to send tokens and photos in the clear on purpose"
        ))
    }
}

/// Re-reads the issued credentials every `auth.reload_ms` (additions and revocations without a restart).
async fn reload_credentials(app: Arc<App>, creds: Arc<Credentials>) {
    let every = Duration::from_millis(app.settings().auth.reload_ms);
    loop {
        match app.issued_credentials().await {
            Ok(rows) => match creds.set_issued(&rows) {
                Ok(true) => tracing::info!(issued = rows.len(), "credentials reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "stored credentials unusable; keeping the previous ones"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot read the stored credentials; keeping the previous ones"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Writes the audit trail's signed checkpoints as they fall due (`[audit]`), and retries a WAL
/// checkpoint a deletion left pending.
async fn keep_checkpoints(app: Arc<App>) {
    loop {
        tokio::time::sleep(app.audit_checkpoint_tick()).await;
        if let Err(e) = app.checkpoint_audit(false).await {
            tracing::error!(error = %e, "audit checkpoint not written");
        }
        if let Err(e) = app.clear_wal_if_pending().await {
            tracing::error!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// Applies the retention rules every `retention.every_secs` (`[retention]`).
async fn keep_retention(app: Arc<App>) {
    let every = std::time::Duration::from_secs(app.settings().retention.every_secs);
    loop {
        if let Err(e) = app.run_retention().await {
            tracing::error!(error = %e, "retention purge failed; retried at the next tick");
        }
        tokio::time::sleep(every).await;
    }
}

/// Health follows a shared store: NOT_SERVING while PostgreSQL does not answer (load balancers send
/// the traffic to nodes that can serve it), SERVING again when it does. Checked twice a second.
async fn watch_store(app: Arc<App>, health: tonic_health::server::HealthReporter) {
    let mut serving = true;
    let stop = app.shutdown_signal();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ok = tokio::time::timeout(Duration::from_secs(2), app.store_answers())
            .await
            .unwrap_or(false);
        if ok == serving || *stop.borrow() {
            continue;
        }
        serving = ok;
        if ok {
            tracing::info!("the database answers again; SERVING");
        } else {
            tracing::error!("the database does not answer; NOT_SERVING until it does");
        }
        let status = if ok {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        for name in SERVICES {
            if *stop.borrow() {
                break;
            }
            health.set_service_status(name, status).await;
        }
    }
}

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
    let tls = tls_config(&app.settings().tls)?;
    let policy = AuthPolicy {
        reflection: app.settings().auth.reflection,
        require_kiosk_cert: app.settings().tls.require_kiosk_cert,
    };
    // Issued credentials are usable from the first call, then kept current.
    if let Ok(rows) = app.issued_credentials().await {
        creds.set_issued(&rows).map_err(anyhow::Error::msg)?;
    }
    let reloader = tokio::spawn(reload_credentials(app.clone(), creds.clone()));
    let _reloader = AbortOnDrop(reloader);
    let _checkpoints = AbortOnDrop(tokio::spawn(keep_checkpoints(app.clone())));
    let _retention = AbortOnDrop(tokio::spawn(keep_retention(app.clone())));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in SERVICES {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // Several nodes on PostgreSQL: follow the others' changes, and say when the database is gone.
    let _follow = AbortOnDrop(tokio::spawn(app.clone().follow_changes()));
    let _watch = app
        .shared_store()
        .then(|| AbortOnDrop(tokio::spawn(watch_store(app.clone(), health_reporter.clone()))));
    let reflection = match policy.reflection {
        Reflection::Off => None,
        _ => Some(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pv::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()?,
        ),
    };
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
    let app_at_end = app.clone();
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let serve = builder
        .timeout(Duration::from_millis(limits.request_timeout_ms))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .layer(AuthLayer::new(creds, policy))
        .add_service(health_service)
        .add_optional_service(reflection)
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
    // The trail's tail, anchored before the process ends.
    if let Err(e) = app_at_end.checkpoint_audit(true).await {
        tracing::error!(error = %e, "last audit checkpoint not written");
    }
    Ok(())
}

/// A server on an ephemeral loopback port, for tests and benchmarks: [`run`] on `127.0.0.1:0` in a
/// task of the current runtime, with its stop signal. Dropped without [`Loopback::stop`], the
/// server is told to stop and not waited for.
pub struct Loopback {
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    pub app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Loopback {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(app: Arc<App>, creds: Arc<Credentials>) -> std::io::Result<Loopback> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let handle = tokio::spawn(run(listener, shutdown, app.clone(), creds));
        Ok(Loopback {
            addr,
            app,
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    /// Stops the server as SIGTERM does and waits for [`run`] to return; its result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
