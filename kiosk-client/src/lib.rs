//! Client library for Lobby's gRPC API: one authenticated client per role.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let ch = lobby_kiosk_client::connect("http://127.0.0.1:50051").await?;
//! let mut kiosk = lobby_kiosk_client::kiosk(ch, "lby_...")?;
//! # Ok(()) }
//! ```

pub mod audit;
pub mod import;
pub mod ladder;

pub use lobby_proto::v1 as proto;
use proto::front_desk_service_client::FrontDeskServiceClient;
use proto::kiosk_service_client::KioskServiceClient;
use proto::reservation_service_client::ReservationServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Largest message the clients send or accept (an enrolment carries up to 5 photos).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> anyhow::Result<Bearer> {
        Ok(Bearer(format!("Bearer {}", token.trim()).parse().map_err(|_| {
            anyhow::anyhow!("the token has characters not allowed in a header")
        })?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// Plaintext (loopback); see [`connect_with`] for TLS.
pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    connect_with(addr, &Tls::default()).await
}

/// TLS to the server: the CA that signed the server's certificate, and for mutual TLS the client's
/// own certificate and key (a kiosk's names it: `urn:lobby:kiosk:<property>:<kiosk id>`). PEM files.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry, when it is not the address's host.
    pub domain: Option<String>,
}

impl Tls {
    pub fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    fn config(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        use anyhow::Context;
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let ca = self
            .ca
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("TLS needs --ca: the CA certificate that signed the server's"))?;
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => c = c.identity(Identity::from_pem(read(cert)?, read(key)?)),
            (None, None) => {}
            _ => anyhow::bail!("a client certificate needs both --cert and --key"),
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        Ok(c)
    }
}

pub async fn connect_with(addr: &str, tls: &Tls) -> anyhow::Result<Channel> {
    let scheme = if tls.enabled() { "https" } else { "http" };
    let addr = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    };
    let mut e = Endpoint::from_shared(addr)?;
    if tls.enabled() {
        e = e.tls_config(tls.config()?)?;
    }
    Ok(e.connect().await?)
}

pub fn kiosk(ch: Channel, token: &str) -> anyhow::Result<KioskServiceClient<Authed>> {
    Ok(KioskServiceClient::with_interceptor(ch, Bearer::new(token)?)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

pub fn staff(ch: Channel, token: &str) -> anyhow::Result<FrontDeskServiceClient<Authed>> {
    Ok(FrontDeskServiceClient::with_interceptor(ch, Bearer::new(token)?)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

pub fn reservations(ch: Channel, token: &str) -> anyhow::Result<ReservationServiceClient<Authed>> {
    Ok(ReservationServiceClient::with_interceptor(ch, Bearer::new(token)?)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Names for printing.
pub fn outcome_name(o: i32) -> &'static str {
    proto::Outcome::try_from(o)
        .map(|o| o.as_str_name())
        .unwrap_or("OUTCOME_UNSPECIFIED")
        .trim_start_matches("OUTCOME_")
}

pub fn reason_names(r: &[i32]) -> Vec<&'static str> {
    r.iter()
        .map(|x| {
            proto::Reason::try_from(*x)
                .map(|r| r.as_str_name())
                .unwrap_or("REASON_UNSPECIFIED")
                .trim_start_matches("REASON_")
        })
        .collect()
}
