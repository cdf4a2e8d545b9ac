//! Authentication and role checks as a tower layer in front of every gRPC service.
//!
//! Bearer tokens are never stored: only their sha256. A presented token is hashed and compared in
//! constant time against every credential. The service path decides the role it needs; the health
//! check and reflection are open. The authenticated [`Caller`] rides in the request extensions.

use crate::config::{Role, TokenEntry};
pub use crate::core::Caller;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;
use tonic::Status;

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hex_digest(h: &[u8; 32]) -> String {
    hex::encode(h)
}

pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("lby_{}", hex::encode(b))
}

#[derive(Debug, Default)]
pub struct Credentials {
    entries: Vec<([u8; 32], Caller)>,
}

impl Credentials {
    pub fn new(tokens: &[TokenEntry]) -> Result<Credentials, String> {
        let mut entries = Vec::new();
        for t in tokens {
            let h = hex::decode(&t.sha256).map_err(|e| format!("token {}: {e}", t.id))?;
            let h: [u8; 32] = h
                .try_into()
                .map_err(|_| format!("token {}: sha256 must be 32 bytes", t.id))?;
            entries.push((
                h,
                Caller {
                    id: t.id.clone(),
                    role: t.role.clone(),
                    property: t.property.clone(),
                },
            ));
        }
        Ok(Credentials { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a token belongs to. Every entry is compared, in constant time.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let h = hash_token(token);
        let mut found = None;
        for (e, caller) in &self.entries {
            if bool::from(e.ct_eq(&h)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// The role a gRPC method path needs; `None` for open services.
pub fn required_role(path: &str) -> Option<Role> {
    if path.starts_with("/lobby.v1.KioskService/") {
        Some(Role::Kiosk)
    } else if path.starts_with("/lobby.v1.FrontDeskService/") {
        Some(Role::Staff)
    } else if path.starts_with("/lobby.v1.ReservationService/") {
        Some(Role::Enroller)
    } else {
        None // grpc.health.v1, reflection; unknown paths are answered UNIMPLEMENTED by the router
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// Checks a request's credentials against the role its path needs.
pub fn check(creds: &Credentials, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
    let Some(role) = required_role(path) else {
        return Ok(None);
    };
    let token = bearer(headers).ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
    let caller = creds
        .authenticate(token)
        .ok_or_else(|| Status::unauthenticated("unknown bearer token"))?;
    if caller.role != role {
        return Err(Status::permission_denied(format!(
            "role {} may not call this service (needs {})",
            caller.role.as_str(),
            role.as_str()
        )));
    }
    Ok(Some(caller))
}

#[derive(Clone)]
pub struct AuthLayer {
    creds: Arc<Credentials>,
}

impl AuthLayer {
    pub fn new(creds: Arc<Credentials>) -> AuthLayer {
        AuthLayer { creds }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            creds: self.creds.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    creds: Arc<Credentials>,
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
        match check(&self.creds, req.uri().path(), req.headers()) {
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
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

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

    #[test]
    fn roles_are_enforced_by_path() {
        let (c, k, s) = creds();
        let kiosk = check(&c, "/lobby.v1.KioskService/CheckIn", &headers(&k))
            .unwrap()
            .unwrap();
        assert_eq!((kiosk.id.as_str(), kiosk.property.as_deref()), ("k1", Some("p")));
        let e = check(&c, "/lobby.v1.KioskService/CheckIn", &headers(&s)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = check(&c, "/lobby.v1.ReservationService/EnrollFace", &headers(&k)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = check(&c, "/lobby.v1.FrontDeskService/GetDecision", &headers("lby_wrong")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = check(&c, "/lobby.v1.FrontDeskService/GetDecision", &http::HeaderMap::new()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            check(&c, "/grpc.health.v1.Health/Check", &http::HeaderMap::new()).unwrap(),
            None
        );
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
        assert_eq!(c.authenticate(kiosk_token).unwrap().role, Role::Kiosk);
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
