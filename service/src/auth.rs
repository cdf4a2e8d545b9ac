//! Authentication and role checks as a tower layer in front of every gRPC service.
//!
//! Bearer tokens are never stored: only their sha256. Two kinds of credential:
//! - **fixed** ones from the settings and token files (`[[token]]` entries: holder, role, property,
//!   sha256), loaded at start;
//! - **issued** ones, made by `lobby-server credentials add` and kept in the store with an optional
//!   expiry and a revocation time. Their tokens read `lby_<token id>_<secret>`, so a failed attempt
//!   can be logged with the token id (never the token). The server re-reads them every
//!   `auth.reload_ms`: additions and revocations take effect without a restart.
//!
//! A presented token is hashed and compared in constant time. The service path decides the role it
//! needs; health is open; reflection is open, behind any valid credential, or off (`auth.reflection`).
//! With mutual TLS, a client certificate naming a kiosk (`urn:lobby:kiosk:<property>:<kiosk id>` as a
//! URI subject alternative name) binds the connection to that kiosk: the bearer token must be that
//! kiosk's. The authenticated [`Caller`] rides in the request extensions.

use crate::config::{Reflection, Role, TokenEntry};
pub use crate::core::Caller;
use crate::store::CredentialRow;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;
use tonic::Status;

pub use crate::core::credentials::{hash_token, hex_digest, issue, new_token, token_id, validate_holder};

#[derive(Debug, Clone)]
struct Issued {
    sha256: [u8; 32],
    caller: Caller,
    expires_at_ms: Option<i64>,
    revoked: bool,
}

/// Why a token was not accepted (logged; the caller only learns "unauthenticated").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Unknown,
    WrongSecret,
    Revoked,
    Expired,
}

impl Rejection {
    pub fn as_str(&self) -> &'static str {
        match self {
            Rejection::Missing => "no bearer token",
            Rejection::Unknown => "unknown token",
            Rejection::WrongSecret => "wrong secret for a known token id",
            Rejection::Revoked => "revoked",
            Rejection::Expired => "expired",
        }
    }
}

/// Every credential the server accepts: the fixed ones and the issued ones (swapped on reload).
#[derive(Debug, Default)]
pub struct Credentials {
    fixed: Vec<([u8; 32], Caller)>,
    issued: RwLock<Arc<HashMap<String, Issued>>>,
}

impl Credentials {
    /// Fixed credentials, validated like the settings (64 hex digits; a kiosk names its property).
    pub fn new(tokens: &[TokenEntry]) -> Result<Credentials, String> {
        let mut fixed = Vec::new();
        for t in tokens {
            let h = hex::decode(&t.sha256).map_err(|e| format!("token {}: {e}", t.id))?;
            let h: [u8; 32] = h
                .try_into()
                .map_err(|_| format!("token {}: sha256 must be 32 bytes", t.id))?;
            validate_holder(&t.id).map_err(|e| format!("token id: {e}"))?;
            if t.role == Role::Kiosk && t.property.as_deref().unwrap_or("").is_empty() {
                return Err(format!("token {}: a kiosk token must name its property", t.id));
            }
            fixed.push((
                h,
                Caller {
                    id: t.id.clone(),
                    role: t.role.clone(),
                    property: t.property.clone(),
                },
            ));
        }
        Ok(Credentials {
            fixed,
            issued: RwLock::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty() && self.issued().is_empty()
    }

    fn issued(&self) -> Arc<HashMap<String, Issued>> {
        self.issued.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the issued credentials with `rows` (the store's, re-read). Answers how many are
    /// usable now, and whether anything changed.
    pub fn set_issued(&self, rows: &[CredentialRow]) -> Result<bool, String> {
        let mut map = HashMap::new();
        for r in rows {
            let h = hex::decode(&r.sha256)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| format!("credential {}: bad sha256", r.token_id))?;
            map.insert(
                r.token_id.clone(),
                Issued {
                    sha256: h,
                    caller: Caller {
                        id: r.holder.clone(),
                        role: r.role.clone(),
                        property: r.property.clone(),
                    },
                    expires_at_ms: r.expires_at_ms,
                    revoked: r.revoked_at_ms.is_some(),
                },
            );
        }
        let mut cur = self.issued.write().unwrap_or_else(|e| e.into_inner());
        let changed = cur.len() != map.len()
            || map.iter().any(|(k, v)| {
                cur.get(k)
                    .is_none_or(|c| c.revoked != v.revoked || c.expires_at_ms != v.expires_at_ms)
            });
        if changed {
            *cur = Arc::new(map);
        }
        Ok(changed)
    }

    /// The caller a token belongs to at `now_ms`. Fixed credentials are all compared, in constant
    /// time; an issued token is looked up by its id and its hash compared in constant time.
    pub fn authenticate(&self, token: &str, now_ms: i64) -> Result<Caller, (Rejection, Option<String>)> {
        let h = hash_token(token);
        if let Some(id) = token_id(token) {
            if let Some(c) = self.issued().get(id) {
                let tid = Some(id.to_string());
                if !bool::from(c.sha256.ct_eq(&h)) {
                    return Err((Rejection::WrongSecret, tid));
                }
                if c.revoked {
                    return Err((Rejection::Revoked, tid));
                }
                if c.expires_at_ms.is_some_and(|e| e <= now_ms) {
                    return Err((Rejection::Expired, tid));
                }
                return Ok(c.caller.clone());
            }
        }
        let mut found = None;
        for (e, caller) in &self.fixed {
            if bool::from(e.ct_eq(&h)) {
                found = Some(caller.clone());
            }
        }
        found.ok_or((Rejection::Unknown, None))
    }
}

/// What a path needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Open,
    AnyCredential,
    Role(Role),
}

/// The access a gRPC method path needs.
pub fn required_access(path: &str, reflection: Reflection) -> Access {
    if path.starts_with("/lobby.v1.KioskService/") {
        Access::Role(Role::Kiosk)
    } else if path.starts_with("/lobby.v1.FrontDeskService/") {
        Access::Role(Role::Staff)
    } else if path.starts_with("/lobby.v1.ReservationService/") {
        Access::Role(Role::Enroller)
    } else if path.starts_with("/grpc.reflection.") && reflection == Reflection::Authenticated {
        Access::AnyCredential
    } else {
        // grpc.health.v1, open reflection; unknown paths are answered UNIMPLEMENTED by the router
        Access::Open
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// A kiosk named by a client certificate: (property, kiosk id).
pub type KioskIdentity = (String, String);

/// The URI subject alternative name that names a kiosk in its client certificate.
pub fn kiosk_uri(property: &str, kiosk: &str) -> String {
    format!("urn:lobby:kiosk:{property}:{kiosk}")
}

/// The kiosk a DER client certificate names, if it names one.
pub fn kiosk_identity(der: &[u8]) -> Option<KioskIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => {
            let (p, k) = u.strip_prefix("urn:lobby:kiosk:")?.rsplit_once(':')?;
            Some((p.to_string(), k.to_string()))
        }
        _ => None,
    })
}

/// What the connection tells about the caller.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The kiosk its verified client certificate names.
    pub kiosk: Option<KioskIdentity>,
}

impl Peer {
    fn of<B>(req: &http::Request<B>) -> Peer {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let ext = req.extensions();
        if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
            let kiosk = tls
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|c| kiosk_identity(c.as_ref())));
            return Peer {
                addr: tls.get_ref().remote_addr(),
                kiosk,
            };
        }
        Peer {
            addr: ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()),
            kiosk: None,
        }
    }
}

/// How the layer judges requests.
#[derive(Debug, Clone, Copy)]
pub struct AuthPolicy {
    pub reflection: Reflection,
    /// Kiosk calls must come over a connection whose client certificate names that kiosk.
    pub require_kiosk_cert: bool,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            reflection: Reflection::Authenticated,
            require_kiosk_cert: false,
        }
    }
}

/// A refused request: what the caller is told, and what is logged.
#[derive(Debug)]
pub struct Refusal {
    pub status: Status,
    pub why: &'static str,
    pub token_id: Option<String>,
    pub holder: Option<String>,
}

fn refuse(status: Status, why: &'static str, token_id: Option<String>, holder: Option<String>) -> Refusal {
    Refusal {
        status,
        why,
        token_id,
        holder,
    }
}

/// Checks a request's credentials against what its path needs and what its connection proves.
pub fn check(
    creds: &Credentials,
    policy: &AuthPolicy,
    path: &str,
    headers: &http::HeaderMap,
    peer: &Peer,
    now_ms: i64,
) -> Result<Option<Caller>, Refusal> {
    let access = required_access(path, policy.reflection);
    if access == Access::Open {
        return Ok(None);
    }
    let Some(token) = bearer(headers) else {
        return Err(refuse(
            Status::unauthenticated("missing bearer token"),
            Rejection::Missing.as_str(),
            None,
            None,
        ));
    };
    let caller = creds.authenticate(token, now_ms).map_err(|(why, tid)| {
        let msg = match why {
            Rejection::Revoked => "this credential has been revoked",
            Rejection::Expired => "this credential has expired",
            _ => "unknown bearer token",
        };
        refuse(Status::unauthenticated(msg), why.as_str(), tid, None)
    })?;
    let tid = token_id(token).map(str::to_string);
    if let Some((p, k)) = &peer.kiosk {
        if caller.role != Role::Kiosk || &caller.id != k || caller.property.as_deref() != Some(p.as_str()) {
            return Err(refuse(
                Status::permission_denied(format!(
                    "the client certificate names kiosk {k} of property {p}; the bearer token is not that kiosk's"
                )),
                "token does not match the client certificate",
                tid,
                Some(caller.id),
            ));
        }
    } else if policy.require_kiosk_cert && caller.role == Role::Kiosk {
        return Err(refuse(
            Status::permission_denied("kiosks must connect with their client certificate"),
            "kiosk without a client certificate",
            tid,
            Some(caller.id),
        ));
    }
    if let Access::Role(role) = access {
        if caller.role != role {
            return Err(refuse(
                Status::permission_denied(format!(
                    "role {} may not call this service (needs {})",
                    caller.role.as_str(),
                    role.as_str()
                )),
                "wrong role",
                tid,
                Some(caller.id),
            ));
        }
    }
    Ok(Some(caller))
}

#[derive(Clone)]
pub struct AuthLayer {
    creds: Arc<Credentials>,
    policy: AuthPolicy,
}

impl AuthLayer {
    pub fn new(creds: Arc<Credentials>, policy: AuthPolicy) -> AuthLayer {
        AuthLayer { creds, policy }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            creds: self.creds.clone(),
            policy: self.policy,
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    creds: Arc<Credentials>,
    policy: AuthPolicy,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let peer = Peer::of(&req);
        let now_ms = chrono::Utc::now().timestamp_millis();
        match check(
            &self.creds,
            &self.policy,
            req.uri().path(),
            req.headers(),
            &peer,
            now_ms,
        ) {
            Err(r) => {
                // Never the token: its id (issued tokens) and the holder when known.
                tracing::warn!(
                    addr = ?peer.addr,
                    method = req.uri().path(),
                    token_id = r.token_id.as_deref().unwrap_or("-"),
                    holder = r.holder.as_deref().unwrap_or("-"),
                    why = r.why,
                    "authentication refused"
                );
                Box::pin(async move { Ok(r.status.into_http()) })
            }
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                // The service that was polled ready is the one that must be called.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
        }
    }
}

/// The caller of a request that passed the auth layer.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials"))
}

/// First start without any credentials: make one token per role, store only their hashes in
/// `<data_dir>/credentials.toml`, and write the tokens themselves once to
/// `<data_dir>/initial-tokens.txt` (mode 0600). Returns the credentials and the token file path.
pub fn bootstrap_credentials(data_dir: &Path, property: &str) -> std::io::Result<(Vec<TokenEntry>, Option<PathBuf>)> {
    let cred_path = data_dir.join("credentials.toml");
    if let Ok(text) = std::fs::read_to_string(&cred_path) {
        return Ok((parse_token_file(&text).map_err(std::io::Error::other)?, None));
    }
    std::fs::create_dir_all(data_dir)?;
    let roles = [
        (Role::Kiosk, "kiosk-1", Some(property)),
        (Role::Staff, "staff-1", None),
        (Role::Enroller, "pms", None),
    ];
    let mut entries = Vec::new();
    let mut plain = String::from("# Lobby initial bearer tokens: hand each to its holder, then delete this file.\n");
    for (role, id, prop) in roles {
        let token = new_token();
        plain.push_str(&format!("{}={token}\n", role.as_str()));
        entries.push(TokenEntry {
            id: id.into(),
            role,
            sha256: hex::encode(hash_token(&token)),
            property: prop.map(str::to_string),
        });
    }
    let tokens_path = data_dir.join("initial-tokens.txt");
    write_private(&tokens_path, plain.as_bytes())?;
    let toml_text = toml::to_string(&TokenFile { token: entries.clone() }).map_err(std::io::Error::other)?;
    write_private(&cred_path, toml_text.as_bytes())?;
    Ok((entries, Some(tokens_path)))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TokenFile {
    token: Vec<TokenEntry>,
}

pub fn parse_token_file(text: &str) -> Result<Vec<TokenEntry>, String> {
    toml::from_str::<TokenFile>(text)
        .map(|f| f.token)
        .map_err(|e| e.to_string())
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> (Credentials, String, String) {
        let (k, s) = (new_token(), new_token());
        let c = Credentials::new(&[
            TokenEntry {
                id: "k1".into(),
                role: Role::Kiosk,
                sha256: hex::encode(hash_token(&k)),
                property: Some("p".into()),
            },
            TokenEntry {
                id: "s1".into(),
                role: Role::Staff,
                sha256: hex::encode(hash_token(&s)),
                property: None,
            },
        ])
        .unwrap();
        (c, k, s)
    }

    fn headers(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    fn chk(c: &Credentials, path: &str, h: &http::HeaderMap, peer: &Peer) -> Result<Option<Caller>, tonic::Code> {
        check(c, &AuthPolicy::default(), path, h, peer, 1_000).map_err(|r| r.status.code())
    }

    #[test]
    fn roles_are_enforced_by_path() {
        let (c, k, s) = creds();
        let none = Peer::default();
        let kiosk = chk(&c, "/lobby.v1.KioskService/CheckIn", &headers(&k), &none)
            .unwrap()
            .unwrap();
        assert_eq!((kiosk.id.as_str(), kiosk.property.as_deref()), ("k1", Some("p")));
        let denied = |path: &str, h: &http::HeaderMap| chk(&c, path, h, &none).unwrap_err();
        assert_eq!(
            denied("/lobby.v1.KioskService/CheckIn", &headers(&s)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            denied("/lobby.v1.ReservationService/EnrollFace", &headers(&k)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            denied("/lobby.v1.FrontDeskService/GetDecision", &headers("lby_wrong")),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            denied("/lobby.v1.FrontDeskService/GetDecision", &http::HeaderMap::new()),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            chk(&c, "/grpc.health.v1.Health/Check", &http::HeaderMap::new(), &none).unwrap(),
            None
        );
        // Reflection needs a credential (any role) by default; open when configured so.
        let refl = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(denied(refl, &http::HeaderMap::new()), tonic::Code::Unauthenticated);
        assert!(chk(&c, refl, &headers(&k), &none).unwrap().is_some());
        assert_eq!(required_access(refl, Reflection::Open), Access::Open);
    }

    #[test]
    fn issued_credentials_expire_are_revoked_and_are_named_by_token_id() {
        let c = Credentials::new(&[]).unwrap();
        let (tok, mut row) = issue(Role::Staff, "alice", None, Some(10_000), 1_000).unwrap();
        assert_eq!(token_id(&tok), Some(row.token_id.as_str()));
        assert!(!row.sha256.contains(&tok) && tok.len() > 70);
        // Unknown until the server has read it.
        assert_eq!(c.authenticate(&tok, 2_000).unwrap_err().0, Rejection::Unknown);
        assert!(c.set_issued(std::slice::from_ref(&row)).unwrap());
        assert!(!c.set_issued(std::slice::from_ref(&row)).unwrap(), "nothing changed");
        assert_eq!(c.authenticate(&tok, 2_000).unwrap().id, "alice");
        let (rej, tid) = c.authenticate(&tok, 10_000).unwrap_err();
        assert_eq!((rej, tid.as_deref()), (Rejection::Expired, Some(row.token_id.as_str())));
        // The right id with the wrong secret is named as such (for the log), never accepted.
        let forged = format!("lby_{}_{}", row.token_id, "0".repeat(64));
        assert_eq!(c.authenticate(&forged, 2_000).unwrap_err().0, Rejection::WrongSecret);
        row.revoked_at_ms = Some(3_000);
        assert!(c.set_issued(std::slice::from_ref(&row)).unwrap());
        assert_eq!(c.authenticate(&tok, 2_000).unwrap_err().0, Rejection::Revoked);
        // Issuing validates like the settings: a kiosk names its property; names are plain.
        assert!(issue(Role::Kiosk, "kiosk-9", None, None, 0).is_err());
        assert!(issue(Role::Staff, "bob smith", None, None, 0).is_err());
        assert!(
            issue(Role::Staff, "bob", None, Some(5), 10).is_err(),
            "expired at birth"
        );
        assert!(Credentials::new(&[TokenEntry {
            id: "k".into(),
            role: Role::Kiosk,
            sha256: "00".repeat(32),
            property: None,
        }])
        .is_err());
    }

    #[test]
    fn a_kiosk_certificate_binds_the_connection_to_that_kiosk() {
        let (c, k, s) = creds();
        let path = "/lobby.v1.KioskService/CheckIn";
        let cert = |p: &str, id: &str| Peer {
            addr: None,
            kiosk: Some((p.to_string(), id.to_string())),
        };
        assert!(chk(&c, path, &headers(&k), &cert("p", "k1")).is_ok());
        // Another property's, or another kiosk's, certificate: refused.
        assert_eq!(
            chk(&c, path, &headers(&k), &cert("other", "k1")).unwrap_err(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            chk(&c, path, &headers(&k), &cert("p", "k2")).unwrap_err(),
            tonic::Code::PermissionDenied
        );
        // A staff token over a kiosk's connection: refused.
        assert_eq!(
            chk(
                &c,
                "/lobby.v1.FrontDeskService/GetDecision",
                &headers(&s),
                &cert("p", "k1")
            )
            .unwrap_err(),
            tonic::Code::PermissionDenied
        );
        // Required: a kiosk token without a certificate is refused.
        let strict = AuthPolicy {
            require_kiosk_cert: true,
            ..AuthPolicy::default()
        };
        let r = check(&c, &strict, path, &headers(&k), &Peer::default(), 0).unwrap_err();
        assert_eq!(r.status.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn bootstrap_writes_hashes_and_a_private_token_file_once() {
        // Removed with the token file in it when the test ends.
        let tmp = tempfile::Builder::new().prefix("lobby-auth-").tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (entries, path) = bootstrap_credentials(&dir, "demo").unwrap();
        let path = path.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let kiosk_token = text.lines().find_map(|l| l.strip_prefix("kiosk=")).unwrap();
        let c = Credentials::new(&entries).unwrap();
        assert_eq!(c.authenticate(kiosk_token, 0).unwrap().role, Role::Kiosk);
        // The credentials file holds no token, only hashes.
        let cred = std::fs::read_to_string(dir.join("credentials.toml")).unwrap();
        assert!(!cred.contains(kiosk_token));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // A second start reuses the stored hashes and writes no new tokens.
        let (again, p2) = bootstrap_credentials(&dir, "demo").unwrap();
        assert!(p2.is_none());
        assert_eq!(again.len(), 3);
    }
}
