//! Shared helpers for Lobby's end-to-end tests: where the real photos and models are, and one
//! loaded [`Vision`] per test binary.
//!
//! Data: `LOBBY_TEST_DATA` or `../shared/data` beside the repository. Models: installed into
//! `LOBBY_MODEL_DIR` (default `target/lobby-test-models`) from `LOBBY_MODEL_MIRROR` (default
//! `../shared/models`) or `LOBBY_MODEL_BASE_URL`. When either is absent a test says so loudly and
//! is skipped — except under CI (`CI=true`), where it fails.

use lobby_models::{ensure, ModelPaths, Source};
use lobby_service::vision::{Vision, VisionConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Fails under CI, otherwise prints a loud skip notice. Returns `None` so callers can `return`.
pub fn missing<T>(what: &str) -> Option<T> {
    if in_ci() {
        panic!("{what} — required under CI=true");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {what} !!!!!!!!\n");
    None
}

/// The data folder, or `None` (after a loud notice) when it is absent outside CI.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LOBBY_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/data"));
    if dir.join("README.md").exists() {
        Some(dir)
    } else {
        missing(&format!(
            "test photos not found at {} (set LOBBY_TEST_DATA)",
            dir.display()
        ))
    }
}

/// Where the models are installed: `LOBBY_MODEL_DIR`, default `target/lobby-test-models`.
pub fn model_dir() -> PathBuf {
    std::env::var_os("LOBBY_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/lobby-test-models"))
}

/// The verified models, installed from the mirror on first use.
pub fn model_paths() -> Option<ModelPaths> {
    static PATHS: OnceLock<Result<ModelPaths, String>> = OnceLock::new();
    let r = PATHS.get_or_init(|| {
        let dir = model_dir();
        // As `Source::from_env`, but the default mirror is found from the repository, not the cwd.
        let source = match std::env::var("LOBBY_MODEL_BASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => Source::BaseUrl(url),
            None => Source::Mirror(
                std::env::var_os("LOBBY_MODEL_MIRROR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| workspace_root().join("../shared/models")),
            ),
        };
        ensure(&dir, &source).map_err(|e| e.to_string())
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(e) => missing(&format!("models unavailable: {e}")),
    }
}

/// One shared pipeline per test binary (models load once).
pub fn vision() -> Option<Arc<Vision>> {
    static VISION: OnceLock<Arc<Vision>> = OnceLock::new();
    let paths = model_paths()?;
    Some(
        VISION
            .get_or_init(|| Arc::new(Vision::load(&paths, VisionConfig::default()).expect("models load")))
            .clone(),
    )
}

/// Reads a file under the data folder.
pub fn read(data: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(data.join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// A real `lobby-server` on `127.0.0.1:0` with its own data directory and one token per role.
pub mod server {
    use super::*;
    use lobby_kiosk_client as client;
    use lobby_service::auth::{hash_token, new_token, Credentials};
    use lobby_service::config::{Role, Settings, TokenEntry};
    use lobby_service::core::App;
    use lobby_service::server::Loopback;

    pub const PROPERTY: &str = "hotel-test";
    pub const OTHER_PROPERTY: &str = "hotel-other";

    pub struct Tokens {
        pub kiosk: String,
        pub other_kiosk: String,
        pub staff: String,
        pub enroller: String,
    }

    pub struct TestServer {
        pub addr: String,
        pub tokens: Tokens,
        pub data_dir: PathBuf,
        server: Loopback,
    }

    /// A fresh, empty data directory under target/.
    pub fn scratch_dir(name: &str) -> PathBuf {
        let d = workspace_root()
            .join("target/lobby-test-data")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    /// Starts a server on `data_dir` (reusing its store if present). `issuer_key` is the base64
    /// Ed25519 public key of the trusted health-code issuer. `tokens` reuses earlier credentials.
    pub async fn start(data_dir: &Path, issuer_key: &str, tokens: Option<Tokens>) -> Option<TestServer> {
        start_with(data_dir, issuer_key, tokens, |_| {}).await
    }

    pub async fn start_with(
        data_dir: &Path,
        issuer_key: &str,
        tokens: Option<Tokens>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Option<TestServer> {
        let vision = vision()?;
        let mut s = Settings::load_from(None, std::iter::empty()).expect("defaults");
        s.data_dir = data_dir.to_path_buf();
        s.health.issuer_public_keys = vec![issuer_key.to_string()];
        // The suite sends a whole day's guests through one kiosk credential as fast as it can; the
        // per-kiosk frame limit has its own test.
        s.limits.kiosk_frames_per_minute = 1_000_000;
        s.limits.kiosk_frame_burst = 100_000;
        if crate::pg::enabled() {
            s.store.url = crate::pg::cluster()?.database(&crate::pg::db_name(data_dir));
        }
        tweak(&mut s);
        let tokens = tokens.unwrap_or_else(|| Tokens {
            kiosk: new_token(),
            other_kiosk: new_token(),
            staff: new_token(),
            enroller: new_token(),
        });
        let entry = |id: &str, role: Role, t: &str, p: Option<&str>| TokenEntry {
            id: id.into(),
            role,
            sha256: lobby_service::auth::hex_digest(&hash_token(t)),
            property: p.map(str::to_string),
        };
        let creds = Credentials::new(&[
            entry("kiosk-lobby-1", Role::Kiosk, &tokens.kiosk, Some(PROPERTY)),
            entry("kiosk-other-1", Role::Kiosk, &tokens.other_kiosk, Some(OTHER_PROPERTY)),
            entry("staff-alice", Role::Staff, &tokens.staff, None),
            entry("pms", Role::Enroller, &tokens.enroller, None),
        ])
        .expect("credentials");
        let app = Arc::new(App::start(s, vision).await.expect("app starts"));
        let server = Loopback::start(app, Arc::new(creds)).await.expect("bind 127.0.0.1:0");
        Some(TestServer {
            addr: server.addr.clone(),
            tokens,
            data_dir: data_dir.to_path_buf(),
            server,
        })
    }

    /// A second connection to a server's store (as the operator's tools open it), with its template
    /// keys: to read what the server wrote.
    pub fn open_store(data_dir: &Path) -> lobby_service::store::SqliteStore {
        let keys = lobby_service::store::TemplateKeys::load(&data_dir.join("template.key")).expect("template keys");
        lobby_service::store::SqliteStore::open(&data_dir.join("lobby.sqlite3"), Arc::new(keys)).expect("store")
    }

    /// A second connection to a server's store, whichever it is (SQLite file or PostgreSQL
    /// database), with its template keys: to read what the server wrote.
    pub async fn side_store(data_dir: &Path) -> Arc<dyn lobby_service::store::Store> {
        let mut s = Settings::load_from(None, std::iter::empty()).expect("defaults");
        s.data_dir = data_dir.to_path_buf();
        if crate::pg::enabled() {
            s.store.url = crate::pg::cluster()
                .expect("cluster")
                .url(&crate::pg::db_name(data_dir));
        }
        lobby_service::store::open(&s).await.expect("store")
    }

    /// The audit entries of `kind` (all: `None`), in order, read from the server's store.
    pub async fn audit_entries(data_dir: &Path, kind: Option<&str>) -> Vec<lobby_proto::audit::AuditEntry> {
        let store = side_store(data_dir).await;
        let all = store.audit_page(0, 1_000_000).await.expect("audit");
        all.into_iter().filter(|e| kind.is_none_or(|k| e.kind == k)).collect()
    }

    impl TestServer {
        pub async fn channel(&self) -> tonic::transport::Channel {
            client::connect(&self.addr).await.expect("connect")
        }
        pub async fn kiosk(&self) -> client::proto::kiosk_service_client::KioskServiceClient<client::Authed> {
            client::kiosk(self.channel().await, &self.tokens.kiosk).unwrap()
        }
        /// What staff see of a decision (everything the kiosk is not told).
        pub async fn record(&self, decision_id: &str) -> client::proto::DecisionRecord {
            self.staff()
                .await
                .get_decision(client::proto::GetDecisionRequest {
                    decision_id: decision_id.to_string(),
                })
                .await
                .expect("the decision is recorded")
                .into_inner()
        }
        pub async fn staff(&self) -> client::proto::front_desk_service_client::FrontDeskServiceClient<client::Authed> {
            client::staff(self.channel().await, &self.tokens.staff).unwrap()
        }
        pub async fn enroller(
            &self,
        ) -> client::proto::reservation_service_client::ReservationServiceClient<client::Authed> {
            client::reservations(self.channel().await, &self.tokens.enroller).unwrap()
        }
        /// Stops the server and waits for it; returns its tokens for a restart.
        pub async fn stop(self) -> Tokens {
            self.server.stop().await.expect("the server stops cleanly");
            self.tokens
        }
        /// The server's core, for what no RPC shows (the templates in a property's index).
        pub fn app(&self) -> &App {
            &self.server.app
        }
    }
}

/// Guests of the end-to-end tests: identities of the data folder, their reservations (property
/// [`server::PROPERTY`], arriving today), enrolment, health codes and check-ins.
pub mod guests {
    use super::server::{TestServer, PROPERTY};
    use chrono::{Duration, Local};
    use lobby_kiosk_client::proto as pv;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    pub fn today() -> String {
        Local::now().date_naive().to_string()
    }

    pub fn tomorrow() -> String {
        (Local::now().date_naive() + Duration::days(1)).to_string()
    }

    /// Identities of uncropped_identities with their photos, sorted.
    pub fn identities(data: &Path) -> BTreeMap<String, Vec<PathBuf>> {
        let dir = data.join("uncropped_identities");
        let text = std::fs::read_to_string(dir.join("manifest.csv")).expect("manifest.csv");
        let mut m: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            m.entry(f[1].to_string()).or_default().push(dir.join(f[0]));
        }
        for v in m.values_mut() {
            v.sort();
        }
        m
    }

    pub fn code_of(identity: &str) -> String {
        format!("R-{identity}")
    }

    /// Upserts a reservation for today (guest_ref = the identity) and enrols one photo with consent.
    pub async fn enrol(s: &TestServer, identity: &str, photo: &Path) -> pv::EnrollFaceResponse {
        book(s, identity).await;
        s.enroller()
            .await
            .enroll_face(enrol_request(identity, photo))
            .await
            .expect("enrol")
            .into_inner()
    }

    /// Upserts a reservation for today, BOOKED, guest_ref = the identity; nothing enrolled.
    pub async fn book(s: &TestServer, identity: &str) {
        s.enroller()
            .await
            .upsert_reservation(pv::UpsertReservationRequest {
                reservation: Some(pv::Reservation {
                    property_id: PROPERTY.into(),
                    reservation_code: code_of(identity),
                    guest: Some(pv::Guest {
                        guest_id: String::new(),
                        full_name: format!("Guest {identity}"),
                        guest_ref: identity.into(),
                    }),
                    arrival_date: today(),
                    departure_date: tomorrow(),
                    status: pv::ReservationStatus::Booked as i32,
                    ..Default::default()
                }),
            })
            .await
            .expect("upsert");
    }

    /// The identity's reservation as the reservation system reads it.
    pub async fn reservation(s: &TestServer, identity: &str) -> pv::Reservation {
        s.enroller()
            .await
            .get_reservation(pv::GetReservationRequest {
                property_id: PROPERTY.into(),
                reservation_code: code_of(identity),
            })
            .await
            .expect("reservation")
            .into_inner()
    }

    /// An enrolment of one photo with consent, for the identity's reservation.
    pub fn enrol_request(identity: &str, photo: &Path) -> pv::EnrollFaceRequest {
        pv::EnrollFaceRequest {
            property_id: PROPERTY.into(),
            reservation_code: code_of(identity),
            photos: vec![std::fs::read(photo).expect("photo")],
            consent: Some(pv::Consent {
                granted: true,
                method: "booking-form".into(),
                text_version: "v1".into(),
                recorded_at_ms: 0,
            }),
        }
    }

    pub async fn set_health(s: &TestServer, identity: &str, colour: pv::HealthColour, valid: bool) {
        let now = chrono::Utc::now().timestamp_millis();
        let (issued, expires) = if valid {
            (now - 60_000, now + 3_600_000)
        } else {
            (now - 7_200_000, now - 3_600_000)
        };
        s.enroller()
            .await
            .update_health_code(pv::UpdateHealthCodeRequest {
                property_id: PROPERTY.into(),
                reservation_code: code_of(identity),
                status: Some(pv::HealthStatus {
                    colour: colour as i32,
                    issued_at_ms: issued,
                    expires_at_ms: expires,
                    source: "pms".into(),
                }),
            })
            .await
            .expect("health");
    }

    pub async fn check_in(s: &TestServer, photo: &Path, code: &str, qr: &str) -> pv::CheckInResponse {
        s.kiosk()
            .await
            .check_in(pv::CheckInRequest {
                guest_declines_face: false,
                photo: std::fs::read(photo).expect("photo"),
                reservation_code: code.into(),
                health_qr: qr.into(),
            })
            .await
            .expect("check-in")
            .into_inner()
    }

    pub fn outcome(r: &pv::CheckInResponse) -> pv::Outcome {
        pv::Outcome::try_from(r.outcome).unwrap()
    }

    /// MFR2 identities with their photos and real mask labels (from pairs.csv): (unmasked, masked).
    pub fn mfr2_identities(data: &Path) -> BTreeMap<String, (Vec<PathBuf>, Vec<PathBuf>)> {
        let dir = data.join("mfr2");
        let text = std::fs::read_to_string(dir.join("pairs.csv")).expect("mfr2/pairs.csv");
        let mut label: BTreeMap<String, bool> = BTreeMap::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            label.insert(f[0].to_string(), f[3] != "no-mask");
            label.insert(f[1].to_string(), f[4] != "no-mask");
        }
        let mut m: BTreeMap<String, (Vec<PathBuf>, Vec<PathBuf>)> = BTreeMap::new();
        for (rel, masked) in label {
            let id = rel.split('/').nth(1).expect("images/ID/file").to_string();
            let e = m.entry(id).or_default();
            if masked {
                e.1.push(dir.join(&rel))
            } else {
                e.0.push(dir.join(&rel))
            }
        }
        m
    }
}

/// A throwaway PostgreSQL cluster for the tests of this process: `initdb` in a fresh directory
/// under the system's temporary directory, `postgres` listening on a Unix socket there only (no
/// TCP port), trusted local connections. A watcher shell stops the server and removes the
/// directory when this process ends, however it ends. Run as root (CI), the cluster belongs to the
/// `postgres` system user (`initdb` refuses root). The binaries: `LOBBY_PG_BIN`, or the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package, which `.ci/deps` installs).
pub mod pg {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;

    pub struct Cluster {
        pub bin: PathBuf,
        /// The cluster's directory: `data/`, the socket, `log`.
        pub dir: PathBuf,
        pub port: u16,
        as_postgres: bool,
        /// The shell that runs the server and removes the cluster after this process: never
        /// waited for, it outlives the tests on purpose.
        _watcher: Option<std::process::Child>,
    }

    /// Whether this test process runs its servers on PostgreSQL: the `e2e_postgres` test binary
    /// (the end-to-end suite built a second time), or `LOBBY_TEST_STORE=postgres`.
    pub fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            let exe = std::env::current_exe().ok();
            let name = exe
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            name.starts_with("e2e_postgres") || std::env::var("LOBBY_TEST_STORE").is_ok_and(|v| v == "postgres")
        })
    }

    fn bin_dir() -> Option<PathBuf> {
        if let Some(b) = std::env::var_os("LOBBY_PG_BIN") {
            return Some(PathBuf::from(b));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, b)| b)
    }

    impl Cluster {
        fn command(&self, program: &str) -> Command {
            let exe = self.bin.join(program);
            if self.as_postgres {
                let mut c = Command::new("runuser");
                c.arg("-u").arg("postgres").arg("--").arg(exe);
                c
            } else {
                Command::new(exe)
            }
        }

        /// A libpq connection string for database `db` of this cluster.
        pub fn url(&self, db: &str) -> String {
            format!("{} dbname={db}", self.base_url())
        }

        /// The connection string without a database.
        pub fn base_url(&self) -> String {
            let user = if self.as_postgres {
                "postgres".to_string()
            } else {
                whoami()
            };
            format!("host={} port={} user={user}", self.dir.display(), self.port)
        }

        /// Creates database `db` unless it exists; its connection string.
        pub fn database(&self, db: &str) -> String {
            let out = self
                .command("createdb")
                .args(["-h", &self.dir.to_string_lossy(), "-p", &self.port.to_string()])
                .args(if self.as_postgres {
                    vec!["-U", "postgres"]
                } else {
                    vec![]
                })
                .arg(db)
                .output()
                .expect("createdb runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || err.contains("already exists"),
                "createdb {db}: {err}"
            );
            self.url(db)
        }

        /// Stops the server (fast shutdown), as an outage would.
        pub fn stop(&self) {
            let st = self
                .command("pg_ctl")
                .args(["stop", "-m", "fast", "-w", "-D"])
                .arg(self.dir.join("data"))
                .output()
                .expect("pg_ctl runs");
            assert!(
                st.status.success(),
                "pg_ctl stop: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        }

        /// Starts it again after [`Cluster::stop`].
        pub fn start(&self) {
            let st = self
                .command("pg_ctl")
                .args(["start", "-w", "-D"])
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("log2"))
                .arg("-o")
                .arg(format!(
                    "-k {} -p {} -c listen_addresses=",
                    self.dir.display(),
                    self.port
                ))
                .output()
                .expect("pg_ctl runs");
            assert!(
                st.status.success(),
                "pg_ctl start: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        }
    }

    fn whoami() -> String {
        std::env::var("USER").unwrap_or_else(|_| "postgres".into())
    }

    /// A connection to the database of a test's data directory (to read or alter it behind the
    /// server's back).
    pub async fn client(data_dir: &Path) -> tokio_postgres::Client {
        let url = cluster().expect("cluster").url(&db_name(data_dir));
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        db
    }

    /// Rows of `table` whose text (every column) holds `needle`.
    pub async fn rows_naming(db: &tokio_postgres::Client, table: &str, needle: &str) -> i64 {
        db.query_one(
            &format!("SELECT COUNT(*) FROM {table} x WHERE strpos(x::text, $1) > 0"),
            &[&needle],
        )
        .await
        .expect("count")
        .get(0)
    }

    /// A database name for a test's data directory (the same directory, the same database).
    pub fn db_name(data_dir: &Path) -> String {
        let n: String = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("t_{}", &n[..n.len().min(55)])
    }

    /// This process's cluster, started on first use; `None` (after a loud notice; a failure under
    /// CI) when PostgreSQL is not installed.
    pub fn cluster() -> Option<&'static Cluster> {
        static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
        CLUSTER.get_or_init(|| start_cluster("shared")).as_ref()
    }

    impl Cluster {
        /// A cluster of the caller's own (to stop and start it), removed when this process ends.
        pub fn start_new() -> Option<Cluster> {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            start_cluster(&format!("own{}", N.fetch_add(1, Ordering::Relaxed)))
        }
    }

    fn start_cluster(name: &str) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            return super::missing("PostgreSQL not installed (no /usr/lib/postgresql/*/bin/initdb; set LOBBY_PG_BIN)");
        };
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("lobby-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let port = 5432;
        let mut c = Cluster {
            bin,
            dir,
            port,
            as_postgres,
            _watcher: None,
        };
        if as_postgres {
            let st = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&c.dir)
                .status()
                .expect("chown");
            assert!(st.success(), "chown the cluster directory to postgres");
        }
        let out = c
            .command("initdb")
            .args(["-A", "trust", "-E", "UTF8", "--no-locale", "-D"])
            .arg(c.dir.join("data"))
            .output()
            .expect("initdb runs");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        // The server, and a watcher that stops it and removes the cluster once this process is gone.
        let script = format!(
            r#""{bin}/postgres" -D "{dir}/data" -k "{dir}" -p {port} -c listen_addresses= -c max_connections=300 \
                 -c shared_buffers=128MB > "{dir}/log" 2>&1 &
               while [ -d /proc/{parent} ]; do sleep 1; done
               "{bin}/pg_ctl" stop -m immediate -D "{dir}/data" >/dev/null 2>&1
               rm -rf "{dir}""#,
            bin = c.bin.display(),
            dir = c.dir.display(),
            parent = std::process::id(),
        );
        let mut sh = if as_postgres {
            let mut s = Command::new("runuser");
            s.args(["-u", "postgres", "--", "sh", "-c", &script]);
            s
        } else {
            let mut s = Command::new("sh");
            s.args(["-c", &script]);
            s
        };
        sh.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c._watcher = Some(sh.spawn().expect("start postgres"));
        for _ in 0..200 {
            let ok = Command::new(c.bin.join("pg_isready"))
                .args(["-q", "-h", &c.dir.to_string_lossy(), "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                eprintln!("PostgreSQL for this test process: {}", c.dir.display());
                return Some(c);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(c.dir.join("log")).unwrap_or_default()
        );
    }

    fn is_root() -> bool {
        // The effective user, from /proc (no libc call needed).
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
            })
            .unwrap_or(false)
    }
}
