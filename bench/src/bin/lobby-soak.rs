//! `lobby-soak`: one server on loopback, many kiosks, for a long while (issue 17, point 7).
//!
//! Starts a real server in this process (`lobby_service::server::run` on 127.0.0.1:0, its own data
//! directory under `target/`, the embedded default settings, one credential per kiosk, one staff, one
//! reservation system), enrols a first gallery of guests per property (LFW identities with two or
//! more photos, MFR2 identities from an unmasked photo), then for `--duration-secs` drives it with:
//!
//! - `--kiosks` kiosks (spread over `--properties` properties), each on its own connection, each
//!   mixing unary 1:N check-ins of enrolled guests, unary 1:1 check-ins with the guest's code,
//!   strangers (LFW identities never enrolled: 1:N, and 1:1 with a real guest's code) and check-in
//!   streams through the escalation ladder (`lobby_kiosk_client::ladder::drive`, a guest who gives
//!   the code when asked four times in five, lowers the mask when asked), pausing 0-2x `--think-ms`
//!   between check-ins;
//! - a reservation system enrolling new guests (upsert, health code, EnrollFace), re-enrolling guests
//!   once the identities run out, re-booking guests checked in (so they can check in again),
//!   renaming bookings, updating health codes (GREEN, YELLOW, RED) and erasing guests;
//! - a front desk paging through the pending reviews and overriding some (APPROVE when a
//!   reservation is attached, in half of those, else DENY, always with a reason), and checking the
//!   audit trail every minute.
//!
//! Deliberate overload: in the last `--overload-secs` of every `--overload-every` seconds the
//! kiosks stop pausing and each sends `--overload-parallel` unary check-ins at once, half of them
//! full-size photos (`uncropped_identities`, up to 7360 px), so the analysis queue overflows; RESOURCE_EXHAUSTED is then the expected answer and is
//! counted apart (by phase and cause). Any other error code is a failure. FAILED_PRECONDITION for a
//! staff APPROVE whose reservation is no longer BOOKED is a legitimate answer, counted apart.
//!
//! Approvals of someone other than the reservation's guest are counted (wrong guest, stranger) and
//! attributed: the datasets overlap by name (LFW's one-photo `Imran_Khan`, a "stranger", is MFR2's
//! enrolled `ImranKhan`; `uncropped_identities/joe_biden` is MFR2's `JoeBiden`), so each such
//! approval is classed as the same person enrolled from another dataset, an unnamed person
//! (deepface, CompreFace, InspireFace photos), or a different person.
//!
//! Every acknowledged write is recorded and checked afterwards against the server (GetReservation:
//! name of the last acknowledged upsert, templates, health code of the last acknowledged update,
//! erased; GetDecision for every decision id a kiosk was given: property, kiosk, outcome, and the
//! override exactly when one was acknowledged), and VerifyAuditTrail must report the trail intact
//! with at least as many entries as acknowledged audited writes.
//!
//! The process's RSS (`/proc/self/status` VmRSS: the server's and the clients', one process) is
//! sampled every second; check-in p99 per 10 s window; both plotted to `--plot` (PNG).
//!
//! Bounded: a fixed number of tasks; each stops starting calls at the end of the duration and every
//! call still in flight is cut `--grace-secs` later (the hard stop); loopback only.
#![recursion_limit = "256"] // the report's `json!`

use anyhow::{bail, Context, Result};
use chrono::Days;
use clap::Parser;
use lobby_bench::e2e::{self, Guest};
use lobby_bench::metrics::percentile;
use lobby_bench::record;
use lobby_kiosk_client::ladder::{drive, LadderRun, ScriptedGuest};
use lobby_kiosk_client::proto::front_desk_service_client::FrontDeskServiceClient;
use lobby_kiosk_client::proto::kiosk_service_client::KioskServiceClient;
use lobby_kiosk_client::proto::reservation_service_client::ReservationServiceClient;
use lobby_kiosk_client::{connect, kiosk, outcome_name, proto as pv, reservations, staff, Authed};
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::auth::{hash_token, hex_digest, new_token, Credentials};
use lobby_service::config::{Role, Settings, TokenEntry};
use lobby_service::core::App;
use lobby_service::vision::Vision;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Soak: one loopback server, many kiosks, writes checked afterwards, RSS and p99 over time")]
struct Args {
    #[arg(long, default_value = "../shared/data", env = "LOBBY_TEST_DATA")]
    data: PathBuf,
    #[arg(long)]
    models: Option<PathBuf>,
    /// How long the kiosks, the reservation system and the front desk run.
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Kiosks at once, each with its own credential and connection.
    #[arg(long, default_value_t = 64)]
    kiosks: usize,
    /// Properties the kiosks (round-robin) and guests are spread over.
    #[arg(long, default_value_t = 4)]
    properties: usize,
    /// Guests enrolled per property before the soak starts.
    #[arg(long, default_value_t = 25)]
    initial_guests: usize,
    /// A kiosk's mean pause between check-ins outside overload (uniform 0-2x), ms.
    #[arg(long, default_value_t = 1000)]
    think_ms: u64,
    /// Overload: the last --overload-secs of every --overload-every seconds (0: never).
    #[arg(long, default_value_t = 150)]
    overload_every: u64,
    #[arg(long, default_value_t = 30)]
    overload_secs: u64,
    /// Check-ins each kiosk sends at once during overload (half of them full-size photos).
    #[arg(long, default_value_t = 4)]
    overload_parallel: usize,
    /// Calls still in flight this long after the end are cut (the hard stop).
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,
    /// RSS and p99 over time (PNG).
    #[arg(long, default_value = "bench/soak.png")]
    plot: PathBuf,
    #[arg(long, default_value_t = 20261207)]
    seed: u64,
    /// Keep the server's data directory (target/lobby-soak/<pid>) afterwards.
    #[arg(long)]
    keep_data: bool,
    #[command(flatten)]
    out: record::Output,
}

/// The soak's clock: its start, end, hard stop and overload windows.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    end: Instant,
    hard: Instant,
    every: u64,
    over: u64,
}

impl Clock {
    fn t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }
    fn overloaded_at(&self, t: f64) -> bool {
        self.every > 0 && self.over > 0 && t >= 0.0 && (t as u64 % self.every) >= self.every.saturating_sub(self.over)
    }
    fn overloaded(&self) -> bool {
        self.overloaded_at(self.t(Instant::now()))
    }
    /// The overload windows within the soak, in seconds from its start.
    fn windows(&self) -> Vec<(f64, f64)> {
        let dur = self.t(self.end);
        if self.every == 0 || self.over == 0 {
            return Vec::new();
        }
        (0u64..)
            .map(|k| {
                let a = (k * self.every + self.every.saturating_sub(self.over)) as f64;
                (a, (((k + 1) * self.every) as f64).min(dur))
            })
            .take_while(|(a, _)| *a < dur)
            .collect()
    }
}

/// An enrolled guest the kiosks may pick.
#[derive(Clone)]
struct Active {
    code: String,
    guest: Arc<Guest>,
    /// The photo the enrolment was made from (an MFR2 guest lowering the mask shows another).
    enrolled: PathBuf,
}

/// What the reservation system and the front desk had acknowledged, per reservation.
#[derive(Debug, Default, Clone)]
struct ResAck {
    prop: usize,
    name: Option<String>,
    /// Clean templates of the last acknowledged enrolment that stored any.
    templates: u32,
    health: Option<(i32, i64)>,
    erased: bool,
}

#[derive(Default)]
struct Ledger {
    res: BTreeMap<String, ResAck>,
    /// decision id -> (action, reason)
    overrides: BTreeMap<String, (i32, String)>,
    upserts: u64,
    enrolments: u64,
    enrolments_refused: u64,
    health: u64,
    erasures: u64,
    overrides_n: u64,
    /// APPROVE refused with FAILED_PRECONDITION (reservation no longer BOOKED): legitimate.
    approve_refused: u64,
    audit_checks: Vec<Value>,
}

/// A decision id a kiosk was given, and what it was told.
#[derive(Clone)]
struct DecisionAck {
    id: String,
    kiosk: usize,
    outcome: i32,
}

/// One task's counts; merged at the end.
#[derive(Default)]
struct Tally {
    /// (seconds since the start, kind, ms) of every successful check-in.
    lat: Vec<(f32, &'static str, f32)>,
    outcomes: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// kind -> "OUTCOME: REASON,REASON" (as the kiosk was told) -> n
    answers: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// "op: CODE" -> n (RESOURCE_EXHAUSTED apart).
    errors: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    /// "phase / cause" -> n
    exhausted: BTreeMap<String, u64>,
    exhausted_by_op: BTreeMap<String, u64>,
    /// seconds since the start of each RESOURCE_EXHAUSTED
    exhausted_at: Vec<f32>,
    cut: u64,
    wrong_guest_approved: u64,
    stranger_approved: u64,
    /// "stranger|wrong guest / class" -> n, and one line each.
    approvals: BTreeMap<String, u64>,
    approval_details: Vec<String>,
    decisions: Vec<DecisionAck>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.lat.extend(o.lat);
        for (k, m) in o.outcomes {
            let e = self.outcomes.entry(k).or_default();
            for (o, n) in m {
                *e.entry(o).or_default() += n;
            }
        }
        for (k, m) in o.answers {
            let e = self.answers.entry(k).or_default();
            for (o, n) in m {
                *e.entry(o).or_default() += n;
            }
        }
        for (k, n) in o.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for s in o.error_samples {
            if self.error_samples.len() < 30 {
                self.error_samples.push(s);
            }
        }
        for (k, n) in o.exhausted {
            *self.exhausted.entry(k).or_default() += n;
        }
        for (k, n) in o.exhausted_by_op {
            *self.exhausted_by_op.entry(k).or_default() += n;
        }
        self.exhausted_at.extend(o.exhausted_at);
        self.cut += o.cut;
        self.wrong_guest_approved += o.wrong_guest_approved;
        self.stranger_approved += o.stranger_approved;
        for (k, n) in o.approvals {
            *self.approvals.entry(k).or_default() += n;
        }
        for d in o.approval_details {
            if self.approval_details.len() < 200 {
                self.approval_details.push(d);
            }
        }
        self.decisions.extend(o.decisions);
    }

    fn outcome(&mut self, kind: &'static str, o: &str, a: Option<&pv::CheckInResponse>) {
        *self.outcomes.entry(kind).or_default().entry(o.to_string()).or_default() += 1;
        let key = match a {
            Some(a) => format!("{o}: {}", lobby_kiosk_client::reason_names(&a.reasons).join(",")),
            None => o.to_string(),
        };
        *self.answers.entry(kind).or_default().entry(key).or_default() += 1;
    }

    /// Counts a failed call: RESOURCE_EXHAUSTED by phase and cause, a cut at the hard stop apart,
    /// anything else as an error.
    fn fail(&mut self, w: &World, op: &str, f: Failure) {
        let t = w.clock.t(Instant::now());
        match f {
            Failure::Cut => self.cut += 1,
            Failure::Status(s) if s.code() == tonic::Code::ResourceExhausted => {
                let cause = exhausted_cause(s.message());
                // The queue an overload window leaves behind takes a few seconds to drain.
                let phase = if w.clock.overloaded_at(t) {
                    "overload"
                } else if w.clock.overloaded_at(t - 10.0) {
                    "within 10 s after overload"
                } else {
                    "normal"
                };
                *self.exhausted.entry(format!("{phase} / {cause}")).or_default() += 1;
                *self.exhausted_by_op.entry(op.to_string()).or_default() += 1;
                self.exhausted_at.push(t as f32);
                w.n_exhausted.fetch_add(1, Ordering::Relaxed);
            }
            Failure::Status(s) => {
                let key = format!("{op}: {}", code_name(s.code()));
                *self.errors.entry(key.clone()).or_default() += 1;
                if self.error_samples.len() < 30 {
                    self.error_samples.push(format!("t={t:.1}s {key}: {}", s.message()));
                }
                eprintln!("ERROR t={t:.1}s {key}: {}", s.message());
                w.n_errors.fetch_add(1, Ordering::Relaxed);
            }
            Failure::Client(m) => {
                let key = format!("{op}: CLIENT");
                *self.errors.entry(key.clone()).or_default() += 1;
                if self.error_samples.len() < 30 {
                    self.error_samples.push(format!("t={t:.1}s {key}: {m}"));
                }
                eprintln!("ERROR t={t:.1}s {key}: {m}");
                w.n_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

enum Failure {
    Status(tonic::Status),
    /// Still in flight at the hard stop.
    Cut,
    /// Not a gRPC status (transport, timeout, the client's own).
    Client(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Status(s)
    }
}

fn from_anyhow(e: anyhow::Error) -> Failure {
    match e.downcast::<tonic::Status>() {
        Ok(s) => Failure::Status(s),
        Err(e) => Failure::Client(format!("{e:#}")),
    }
}

/// `ResourceExhausted` -> `RESOURCE_EXHAUSTED`.
fn code_name(c: tonic::Code) -> String {
    let d = format!("{c:?}");
    let mut s = String::new();
    for (i, ch) in d.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(ch.to_ascii_uppercase());
    }
    s
}

fn exhausted_cause(m: &str) -> &'static str {
    if m.contains("too many photos in progress") {
        "analysis queue full"
    } else if m.contains("faster than its limit") {
        "kiosk frame rate"
    } else if m.contains("streams open") {
        "streams per caller"
    } else {
        "other"
    }
}

/// Everything the tasks share.
struct World {
    addr: String,
    props: Vec<String>,
    kiosk_ids: Vec<String>,
    active: Vec<Mutex<Vec<Active>>>,
    /// Reservations checked in (by a kiosk or an override), for the reservation system to book again.
    rebook: Mutex<Vec<(usize, String)>>,
    ledger: Mutex<Ledger>,
    /// reservation code -> the enrolled person (`source:identity`)
    identity_of: Mutex<BTreeMap<String, String>>,
    /// (`lfw:identity`, photo)
    strangers: Vec<(String, PathBuf)>,
    /// (`uncropped:identity`, photo)
    heavy: Vec<(String, PathBuf)>,
    overload_parallel: usize,
    clock: Clock,
    next_code: AtomicU64,
    n_calls: AtomicU64,
    n_exhausted: AtomicU64,
    n_errors: AtomicU64,
}

impl World {
    /// How long a call may take: `cap`, or until the hard stop.
    fn limit(&self, cap: Duration) -> Duration {
        cap.min(self.clock.hard.saturating_duration_since(Instant::now()))
    }
    fn prop_index(&self, p: &str) -> Option<usize> {
        self.props.iter().position(|x| x == p)
    }
}

/// Runs `f` within `limit`; past it, a cut (at the hard stop) or a client timeout.
async fn within<T, F>(w: &World, cap: Duration, f: F) -> std::result::Result<T, Failure>
where
    F: std::future::Future<Output = std::result::Result<T, Failure>>,
{
    match tokio::time::timeout(w.limit(cap), f).await {
        Ok(r) => r,
        Err(_) if Instant::now() + Duration::from_millis(50) >= w.clock.hard => Err(Failure::Cut),
        Err(_) => Err(Failure::Client(format!("no answer within {} s", cap.as_secs()))),
    }
}

const UNARY_CAP: Duration = Duration::from_secs(60);
const STREAM_CAP: Duration = Duration::from_secs(180);

// ------------------------------------------------------------------------------------------------
// The server

struct Server {
    addr: String,
    kiosk_tokens: Vec<String>,
    kiosk_ids: Vec<String>,
    staff: String,
    enroller: String,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<()>>,
    dir: PathBuf,
    settings_note: String,
}

async fn start(args: &Args, props: &[String]) -> Result<Server> {
    let mut settings = Settings::load_from(None, std::iter::empty())?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/lobby-soak")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    settings.data_dir = dir.clone();
    let l = &settings.limits;
    let settings_note = format!(
        "embedded defaults: max_concurrent_analyses {}, queue_wait_ms {}, kiosk_frames_per_minute {} (burst {}), max_streams_per_caller {}, check_in_stream_secs {}",
        l.max_concurrent_analyses,
        l.queue_wait_ms,
        l.kiosk_frames_per_minute,
        l.kiosk_frame_burst,
        l.max_streams_per_caller,
        l.check_in_stream_secs
    );
    let model_dir = args.models.clone().unwrap_or_else(default_model_dir);
    let paths = ensure(&model_dir, &Source::from_env())?;
    let vision = Arc::new(Vision::load(&paths, App::vision_config(&settings))?);
    let entry = |id: String, role, t: &str, p: Option<String>| TokenEntry {
        id,
        role,
        sha256: hex_digest(&hash_token(t)),
        property: p,
    };
    let (enroller, staff_token) = (new_token(), new_token());
    let kiosk_tokens: Vec<String> = (0..args.kiosks).map(|_| new_token()).collect();
    let kiosk_ids: Vec<String> = (0..args.kiosks).map(|i| format!("soak-kiosk-{i:02}")).collect();
    let mut entries = vec![
        entry("soak-pms".into(), Role::Enroller, &enroller, None),
        entry("soak-staff".into(), Role::Staff, &staff_token, None),
    ];
    for (i, t) in kiosk_tokens.iter().enumerate() {
        entries.push(entry(
            kiosk_ids[i].clone(),
            Role::Kiosk,
            t,
            Some(props[i % props.len()].clone()),
        ));
    }
    let creds = Credentials::new(&entries).map_err(anyhow::Error::msg)?;
    let app = Arc::new(App::start(settings, vision).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(lobby_service::server::run(
        listener,
        async move {
            let _ = rx.await;
        },
        app,
        Arc::new(creds),
    ));
    Ok(Server {
        addr,
        kiosk_tokens,
        kiosk_ids,
        staff: staff_token,
        enroller,
        stop,
        handle,
        dir,
        settings_note,
    })
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

// ------------------------------------------------------------------------------------------------
// The reservation system

type Res = ReservationServiceClient<Authed>;

async fn upsert(w: &World, c: &mut Res, t: &mut Tally, prop: usize, code: &str, name: &str) -> bool {
    let today = chrono::Local::now().date_naive();
    let req = pv::UpsertReservationRequest {
        reservation: Some(pv::Reservation {
            property_id: w.props[prop].clone(),
            reservation_code: code.into(),
            guest: Some(pv::Guest {
                full_name: name.into(),
                guest_ref: format!("ref-{code}"),
                ..Default::default()
            }),
            arrival_date: today.to_string(),
            departure_date: today.checked_add_days(Days::new(2)).unwrap_or(today).to_string(),
            status: pv::ReservationStatus::Booked as i32,
            ..Default::default()
        }),
    };
    w.n_calls.fetch_add(1, Ordering::Relaxed);
    match within(w, UNARY_CAP, async { Ok(c.upsert_reservation(req).await?) }).await {
        Ok(_) => {
            let mut l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
            l.upserts += 1;
            let r = l.res.entry(code.to_string()).or_default();
            r.prop = prop;
            r.name = Some(name.to_string());
            true
        }
        Err(f) => {
            t.fail(w, "UpsertReservation", f);
            false
        }
    }
}

async fn health(w: &World, c: &mut Res, t: &mut Tally, prop: usize, code: &str, colour: pv::HealthColour) -> bool {
    let now = chrono::Utc::now().timestamp_millis();
    let req = pv::UpdateHealthCodeRequest {
        property_id: w.props[prop].clone(),
        reservation_code: code.into(),
        status: Some(pv::HealthStatus {
            colour: colour as i32,
            issued_at_ms: now - 60_000,
            expires_at_ms: now + 24 * 3_600_000,
            source: "soak-pms".into(),
        }),
    };
    w.n_calls.fetch_add(1, Ordering::Relaxed);
    match within(w, UNARY_CAP, async { Ok(c.update_health_code(req).await?) }).await {
        Ok(_) => {
            let mut l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
            l.health += 1;
            let r = l.res.entry(code.to_string()).or_default();
            r.prop = prop;
            r.health = Some((colour as i32, now - 60_000));
            true
        }
        Err(f) => {
            t.fail(w, "UpdateHealthCode", f);
            false
        }
    }
}

/// Enrols from `photo`; Some(templates stored) when the server answered (after retrying
/// RESOURCE_EXHAUSTED a few times), None otherwise.
async fn enrol_photo(w: &World, c: &mut Res, t: &mut Tally, prop: usize, code: &str, photo: &Path) -> Option<u32> {
    let bytes = std::fs::read(photo).ok()?;
    for attempt in 0..4 {
        let req = pv::EnrollFaceRequest {
            property_id: w.props[prop].clone(),
            reservation_code: code.into(),
            photos: vec![bytes.clone()],
            consent: Some(pv::Consent {
                granted: true,
                method: "booking-form".into(),
                text_version: "v1".into(),
                recorded_at_ms: 0,
            }),
        };
        w.n_calls.fetch_add(1, Ordering::Relaxed);
        match within(w, UNARY_CAP, async { Ok(c.enroll_face(req).await?.into_inner()) }).await {
            Ok(r) => {
                let mut l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
                if r.templates_stored > 0 {
                    l.enrolments += 1;
                    let e = l.res.entry(code.to_string()).or_default();
                    e.prop = prop;
                    e.templates = r.templates_stored;
                } else {
                    l.enrolments_refused += 1;
                }
                return Some(r.templates_stored);
            }
            Err(Failure::Status(s)) if s.code() == tonic::Code::ResourceExhausted => {
                t.fail(w, "EnrollFace", Failure::Status(s));
                if attempt < 3 && Instant::now() < w.clock.end {
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                    continue;
                }
                return None;
            }
            Err(f) => {
                t.fail(w, "EnrollFace", f);
                return None;
            }
        }
    }
    None
}

fn new_code(w: &World) -> String {
    format!("SOAK-{:05}", w.next_code.fetch_add(1, Ordering::Relaxed))
}

/// Books a new guest (GREEN health) and enrols them from the first photo the service accepts; the
/// guest joins the kiosks' picks.
async fn enrol_new(w: &World, c: &mut Res, t: &mut Tally, prop: usize, g: Arc<Guest>) -> bool {
    let code = new_code(w);
    if !upsert(w, c, t, prop, &code, &format!("Soak guest {code} v1")).await {
        return false;
    }
    if !health(w, c, t, prop, &code, pv::HealthColour::Green).await {
        return false;
    }
    for photo in g.enrol.iter().take(3) {
        match enrol_photo(w, c, t, prop, &code, photo).await {
            Some(n) if n > 0 => {
                w.identity_of
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(code.clone(), format!("{}:{}", g.source, g.identity));
                w.active[prop].lock().unwrap_or_else(|e| e.into_inner()).push(Active {
                    code,
                    guest: g.clone(),
                    enrolled: photo.clone(),
                });
                return true;
            }
            Some(_) => continue,
            None => return false,
        }
    }
    false
}

fn pick_active(w: &World, rng: &mut StdRng, prop: Option<usize>) -> Option<(usize, Active)> {
    let prop = prop.unwrap_or_else(|| rng.gen_range(0..w.props.len()));
    let a = w.active[prop].lock().unwrap_or_else(|e| e.into_inner());
    if a.is_empty() {
        return None;
    }
    Some((prop, a[rng.gen_range(0..a.len())].clone()))
}

fn name_version(w: &World, code: &str) -> u32 {
    let l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
    l.res
        .get(code)
        .and_then(|r| r.name.as_ref())
        .and_then(|n| n.rsplit(" v").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_erased(w: &World, code: &str) -> bool {
    let l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
    l.res.get(code).is_some_and(|r| r.erased)
}

async fn pms_loop(w: Arc<World>, mut c: Res, mut pool: VecDeque<Arc<Guest>>, seed: u64) -> Tally {
    let mut t = Tally::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut erased_ids: Vec<Arc<Guest>> = Vec::new();
    while Instant::now() < w.clock.end {
        // Guests checked in are booked again (checked out, back for another stay).
        let due: Vec<(usize, String)> = std::mem::take(&mut *w.rebook.lock().unwrap_or_else(|e| e.into_inner()));
        let mut seen = HashSet::new();
        for (prop, code) in due {
            if !seen.insert(code.clone()) || is_erased(&w, &code) || Instant::now() >= w.clock.end {
                continue;
            }
            let v = name_version(&w, &code) + 1;
            upsert(&w, &mut c, &mut t, prop, &code, &format!("Soak guest {code} v{v}")).await;
        }
        let roll: f64 = rng.gen();
        if roll < 0.30 {
            // A new guest, or (no identities left) a guest's new enrolment photo.
            let prop = rng.gen_range(0..w.props.len());
            if let Some(g) = pool.pop_front() {
                if !enrol_new(&w, &mut c, &mut t, prop, g.clone()).await {
                    pool.push_back(g);
                }
            } else if let Some((prop, a)) = pick_active(&w, &mut rng, Some(prop)) {
                if let Some(photo) = a.guest.enrol.choose(&mut rng).cloned() {
                    if let Some(n) = enrol_photo(&w, &mut c, &mut t, prop, &a.code, &photo).await {
                        if n > 0 {
                            let mut v = w.active[prop].lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(x) = v.iter_mut().find(|x| x.code == a.code) {
                                x.enrolled = photo;
                            }
                        }
                    }
                }
            }
        } else if roll < 0.65 {
            if let Some((prop, a)) = pick_active(&w, &mut rng, None) {
                let r: f64 = rng.gen();
                let colour = if r < 0.7 {
                    pv::HealthColour::Green
                } else if r < 0.85 {
                    pv::HealthColour::Yellow
                } else {
                    pv::HealthColour::Red
                };
                health(&w, &mut c, &mut t, prop, &a.code, colour).await;
            }
        } else if roll < 0.85 {
            if let Some((prop, a)) = pick_active(&w, &mut rng, None) {
                let v = name_version(&w, &a.code) + 1;
                upsert(
                    &w,
                    &mut c,
                    &mut t,
                    prop,
                    &a.code,
                    &format!("Soak guest {} v{v}", a.code),
                )
                .await;
            }
        } else if roll < 0.93 {
            // Erasure: the guest leaves the kiosks' picks first; the identity may come back later
            // under a new reservation.
            let prop = rng.gen_range(0..w.props.len());
            let a = {
                let mut v = w.active[prop].lock().unwrap_or_else(|e| e.into_inner());
                if v.len() > 5 {
                    let i = rng.gen_range(0..v.len());
                    Some(v.swap_remove(i))
                } else {
                    None
                }
            };
            if let Some(a) = a {
                let req = pv::EraseGuestRequest {
                    property_id: w.props[prop].clone(),
                    reservation_code: a.code.clone(),
                    reason: "soak: the guest asked to be forgotten".into(),
                };
                w.n_calls.fetch_add(1, Ordering::Relaxed);
                match within(&w, UNARY_CAP, async { Ok(c.erase_guest(req).await?) }).await {
                    Ok(_) => {
                        let mut l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
                        l.erasures += 1;
                        let r = l.res.entry(a.code.clone()).or_default();
                        r.prop = prop;
                        r.erased = true;
                        erased_ids.push(a.guest.clone());
                    }
                    Err(f) => t.fail(&w, "EraseGuest", f),
                }
            }
        } else if let Some(g) = erased_ids.pop() {
            pool.push_back(g);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
    }
    t
}

// ------------------------------------------------------------------------------------------------
// The kiosks

type Kiosk = KioskServiceClient<Authed>;

const K_1N: &str = "unary 1:N guest";
const K_11: &str = "unary 1:1 guest (code)";
const K_STRANGER: &str = "unary 1:N stranger";
const K_STRANGER_CODE: &str = "unary 1:1 stranger (guest's code)";
const K_HEAVY: &str = "unary 1:N full-size photo (overload)";
const K_STREAM: &str = "stream guest";
const K_STREAM_STRANGER: &str = "stream stranger";
const KINDS: [&str; 7] = [
    K_1N,
    K_11,
    K_STRANGER,
    K_STRANGER_CODE,
    K_HEAVY,
    K_STREAM,
    K_STREAM_STRANGER,
];

fn is_stream(kind: &str) -> bool {
    kind.starts_with("stream")
}

/// Who is at the kiosk: their own reservation (guests) and who they are (`source:identity`).
struct Who {
    own: Option<String>,
    person: String,
}

impl Who {
    fn guest(a: &Active) -> Who {
        Who {
            own: Some(a.code.clone()),
            person: format!("{}:{}", a.guest.source, a.guest.identity),
        }
    }
    fn stranger(person: &str) -> Who {
        Who {
            own: None,
            person: person.to_string(),
        }
    }
}

/// An identity's name without its source, lower case, letters and digits only (`lfw:Imran_Khan`
/// and `mfr2:ImranKhan` are the same person in two datasets).
fn norm_name(person: &str) -> String {
    let name = person.split_once(':').map(|x| x.1).unwrap_or(person);
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether an approval for another reservation was of the same person (the datasets overlap), of
/// someone the data does not name, or of a different person.
fn approval_class(person: &str, approved: &str) -> &'static str {
    let name = person.split_once(':').map(|x| x.1).unwrap_or(person);
    if !approved.is_empty() && norm_name(person) == norm_name(approved) {
        "same person, enrolled from another dataset"
    } else if ["deepface_person", "compreface_person", "inspireface_"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        "unnamed person (identity unknown)"
    } else {
        "different person"
    }
}

/// Notes an answer with a decision: the id (for the check afterwards), approvals of the wrong guest
/// or a stranger (and who they were), and the reservation checked in (to book again).
fn note_decision(w: &World, t: &mut Tally, kiosk: usize, kind: &str, who: &Who, a: &pv::CheckInResponse) {
    if a.decision_id.is_empty() {
        return;
    }
    t.decisions.push(DecisionAck {
        id: a.decision_id.clone(),
        kiosk,
        outcome: a.outcome,
    });
    if a.outcome == pv::Outcome::Approved as i32 {
        let what = match who.own.as_deref() {
            Some(c) if c == a.reservation_code => None,
            Some(_) => {
                t.wrong_guest_approved += 1;
                Some("wrong guest")
            }
            None => {
                t.stranger_approved += 1;
                Some("stranger")
            }
        };
        if let Some(what) = what {
            let approved = w
                .identity_of
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&a.reservation_code)
                .cloned()
                .unwrap_or_default();
            let class = approval_class(&who.person, &approved);
            *t.approvals.entry(format!("{what} / {class}")).or_default() += 1;
            if t.approval_details.len() < 200 {
                t.approval_details.push(format!(
                    "{what} ({kind}): {} approved as {} ({approved}): {class}; decision {}",
                    who.person, a.reservation_code, a.decision_id
                ));
            }
        }
        if !a.reservation_code.is_empty() {
            let prop = kiosk % w.props.len();
            w.rebook
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((prop, a.reservation_code.clone()));
        }
    }
}

async fn unary(
    w: &World,
    k: &mut Kiosk,
    t: &mut Tally,
    kiosk: usize,
    kind: &'static str,
    (photo, code): (Vec<u8>, &str),
    who: &Who,
) -> bool {
    let t0 = Instant::now();
    let req = pv::CheckInRequest {
        photo,
        reservation_code: code.into(),
        health_qr: String::new(),
    };
    w.n_calls.fetch_add(1, Ordering::Relaxed);
    match within(w, UNARY_CAP, async { Ok(k.check_in(req).await?.into_inner()) }).await {
        Ok(a) => {
            t.lat.push((
                w.clock.t(Instant::now()) as f32,
                kind,
                t0.elapsed().as_secs_f32() * 1000.0,
            ));
            t.outcome(kind, outcome_name(a.outcome), Some(&a));
            note_decision(w, t, kiosk, kind, who, &a);
            true
        }
        Err(f) => {
            let exhausted = matches!(&f, Failure::Status(s) if s.code() == tonic::Code::ResourceExhausted);
            t.fail(w, kind, f);
            !exhausted
        }
    }
}

async fn stream(
    w: &World,
    k: &mut Kiosk,
    t: &mut Tally,
    kiosk: usize,
    kind: &'static str,
    mut guest: ScriptedGuest,
    who: &Who,
) -> bool {
    let t0 = Instant::now();
    w.n_calls.fetch_add(1, Ordering::Relaxed);
    let r: std::result::Result<LadderRun, Failure> = within(w, STREAM_CAP, async {
        drive(k, &mut guest, None, "", 20).await.map_err(from_anyhow)
    })
    .await;
    match r {
        Ok(run) => {
            t.lat.push((
                w.clock.t(Instant::now()) as f32,
                kind,
                t0.elapsed().as_secs_f32() * 1000.0,
            ));
            let o = run.decision().map(|d| outcome_name(d.outcome)).unwrap_or("NONE");
            t.outcome(kind, o, run.decision());
            for a in &run.answers {
                note_decision(w, t, kiosk, kind, who, a);
            }
            true
        }
        Err(f) => {
            let exhausted = matches!(&f, Failure::Status(s) if s.code() == tonic::Code::ResourceExhausted);
            t.fail(w, kind, f);
            !exhausted
        }
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// Deliberate overload: a kiosk sends `overload_parallel` check-ins at once, each a full-size photo
/// (half of them) or a guest's 1:N check-in (a stranger's when the property has no guest).
async fn burst(w: &Arc<World>, k: &Kiosk, t: &mut Tally, kiosk: usize, rng: &mut StdRng) -> bool {
    let prop = kiosk % w.props.len();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..w.overload_parallel {
        let (kind, photo, who) = if !w.heavy.is_empty() && rng.gen_bool(0.5) {
            let (who, p) = &w.heavy[rng.gen_range(0..w.heavy.len())];
            (K_HEAVY, read(p), Who::stranger(who))
        } else if let Some((_, g)) = pick_active(w, rng, Some(prop)) {
            let probe = &g.guest.probes[rng.gen_range(0..g.guest.probes.len())];
            (K_1N, read(probe), Who::guest(&g))
        } else {
            let (who, p) = &w.strangers[rng.gen_range(0..w.strangers.len())];
            (K_STRANGER, read(p), Who::stranger(who))
        };
        let (w, mut k) = (w.clone(), k.clone());
        set.spawn(async move {
            let mut t = Tally::default();
            let ok = unary(&w, &mut k, &mut t, kiosk, kind, (photo, ""), &who).await;
            (ok, t)
        });
    }
    let mut all_ok = true;
    while let Some(r) = set.join_next().await {
        match r {
            Ok((ok, x)) => {
                all_ok &= ok;
                t.merge(x);
            }
            Err(e) => {
                t.fail(w, "burst", Failure::Client(e.to_string()));
                all_ok = false;
            }
        }
    }
    all_ok
}

async fn kiosk_loop(w: Arc<World>, kiosk: usize, mut k: Kiosk, seed: u64, think_ms: u64) -> Tally {
    let mut t = Tally::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let prop = kiosk % w.props.len();
    // Kiosks start spread over the first pause, not all at once.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=think_ms.max(1)))).await;
    while Instant::now() < w.clock.end {
        let over = w.clock.overloaded();
        let guest = pick_active(&w, &mut rng, Some(prop)).map(|(_, a)| a);
        let (stranger_who, stranger) = w.strangers[rng.gen_range(0..w.strangers.len())].clone();
        let stranger_who = Who::stranger(&stranger_who);
        let roll: f64 = rng.gen();
        let ok = if over {
            burst(&w, &k, &mut t, kiosk, &mut rng).await
        } else {
            match guest {
                Some(g) if roll < 0.75 => {
                    let probe = g.guest.probes[rng.gen_range(0..g.guest.probes.len())].clone();
                    if roll < 0.35 {
                        unary(&w, &mut k, &mut t, kiosk, K_1N, (read(&probe), ""), &Who::guest(&g)).await
                    } else if roll < 0.50 {
                        unary(
                            &w,
                            &mut k,
                            &mut t,
                            kiosk,
                            K_11,
                            (read(&probe), &g.code),
                            &Who::guest(&g),
                        )
                        .await
                    } else {
                        // Asked to lower the mask, an MFR2 guest shows an unmasked photo other than
                        // the one enrolled; LFW guests wear none. Four in five give the code when asked.
                        let unmasked: Vec<Vec<u8>> = if g.guest.source == "mfr2" {
                            g.guest
                                .enrol
                                .iter()
                                .filter(|p| **p != g.enrolled)
                                .take(1)
                                .map(|p| read(p))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        let code = rng.gen_bool(0.8).then(|| g.code.clone());
                        let sg = ScriptedGuest::new(vec![read(&probe)], unmasked, code);
                        stream(&w, &mut k, &mut t, kiosk, K_STREAM, sg, &Who::guest(&g)).await
                    }
                }
                other => {
                    let r: f64 = rng.gen();
                    if r < 0.4 {
                        unary(
                            &w,
                            &mut k,
                            &mut t,
                            kiosk,
                            K_STRANGER,
                            (read(&stranger), ""),
                            &stranger_who,
                        )
                        .await
                    } else if r < 0.6 {
                        match other {
                            Some(g) => {
                                unary(
                                    &w,
                                    &mut k,
                                    &mut t,
                                    kiosk,
                                    K_STRANGER_CODE,
                                    (read(&stranger), &g.code),
                                    &stranger_who,
                                )
                                .await
                            }
                            None => {
                                unary(
                                    &w,
                                    &mut k,
                                    &mut t,
                                    kiosk,
                                    K_STRANGER,
                                    (read(&stranger), ""),
                                    &stranger_who,
                                )
                                .await
                            }
                        }
                    } else {
                        // A stranger at the kiosk: sometimes with a real guest's code when asked.
                        let code = other.filter(|_| rng.gen_bool(0.3)).map(|g| g.code);
                        let sg = ScriptedGuest::new(vec![read(&stranger)], vec![], code);
                        stream(&w, &mut k, &mut t, kiosk, K_STREAM_STRANGER, sg, &stranger_who).await
                    }
                }
            }
        };
        // Outside overload a kiosk waits for the next guest; told RESOURCE_EXHAUSTED it backs off.
        let pause = if over {
            if ok {
                0
            } else {
                rng.gen_range(50..250)
            }
        } else if ok {
            rng.gen_range(0..=2 * think_ms)
        } else {
            rng.gen_range(500..1500)
        };
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    t
}

// ------------------------------------------------------------------------------------------------
// The front desk

type Desk = FrontDeskServiceClient<Authed>;

async fn desk_loop(w: Arc<World>, mut c: Desk, seed: u64) -> Tally {
    let mut t = Tally::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last_audit = Instant::now();
    while Instant::now() < w.clock.end {
        // The pending reviews, a page at a time (at most three pages a round).
        let mut first: Vec<pv::DecisionRecord> = Vec::new();
        let mut token = String::new();
        for page in 0..3 {
            let req = pv::ListPendingReviewsRequest {
                property_id: String::new(),
                page_size: 50,
                page_token: token.clone(),
            };
            w.n_calls.fetch_add(1, Ordering::Relaxed);
            match within(&w, UNARY_CAP, async {
                Ok(c.list_pending_reviews(req).await?.into_inner())
            })
            .await
            {
                Ok(r) => {
                    if page == 0 {
                        first = r.decisions;
                    }
                    token = r.next_page_token;
                    if token.is_empty() {
                        break;
                    }
                }
                Err(f) => {
                    t.fail(&w, "ListPendingReviews", f);
                    break;
                }
            }
        }
        first.shuffle(&mut rng);
        for d in first.into_iter().take(6) {
            if Instant::now() >= w.clock.end {
                break;
            }
            let approve = !d.reservation_code.is_empty() && rng.gen_bool(0.5);
            let (action, reason) = if approve {
                (
                    pv::OverrideAction::Approve,
                    "soak: ID checked at the desk, guest approved",
                )
            } else {
                (pv::OverrideAction::Deny, "soak: the desk could not confirm the guest")
            };
            let req = pv::OverrideDecisionRequest {
                decision_id: d.decision_id.clone(),
                action: action as i32,
                reason: reason.into(),
            };
            w.n_calls.fetch_add(1, Ordering::Relaxed);
            match within(&w, UNARY_CAP, async {
                Ok(c.override_decision(req).await?.into_inner())
            })
            .await
            {
                Ok(_) => {
                    let mut l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
                    l.overrides_n += 1;
                    l.overrides
                        .insert(d.decision_id.clone(), (action as i32, reason.to_string()));
                    drop(l);
                    if approve {
                        if let Some(p) = w.prop_index(&d.property_id) {
                            w.rebook
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((p, d.reservation_code.clone()));
                        }
                    }
                }
                Err(Failure::Status(s)) if approve && s.code() == tonic::Code::FailedPrecondition => {
                    w.ledger.lock().unwrap_or_else(|e| e.into_inner()).approve_refused += 1;
                }
                Err(f) => t.fail(&w, "OverrideDecision", f),
            }
        }
        if last_audit.elapsed() >= Duration::from_secs(60) {
            last_audit = Instant::now();
            let t0 = Instant::now();
            w.n_calls.fetch_add(1, Ordering::Relaxed);
            match within(&w, UNARY_CAP, async {
                Ok(c.verify_audit_trail(pv::VerifyAuditTrailRequest {}).await?.into_inner())
            })
            .await
            {
                Ok(v) => {
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    if !v.intact {
                        eprintln!("AUDIT BROKEN mid-run: {v:?}");
                    }
                    w.ledger
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .audit_checks
                        .push(json!({"t_s": w.clock.t(Instant::now()).round(), "intact": v.intact,
                                     "entries": v.entries, "ms": ms.round()}));
                }
                Err(f) => t.fail(&w, "VerifyAuditTrail", f),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..700))).await;
    }
    t
}

// ------------------------------------------------------------------------------------------------
// Afterwards: every acknowledged write, and the audit trail

struct Checked {
    reservations: usize,
    reservation_mismatches: Vec<String>,
    decisions: usize,
    decision_mismatches: Vec<String>,
    overrides_checked: usize,
    duplicate_ids: usize,
    audit: pv::VerifyAuditTrailResponse,
    audit_lower_bound: u64,
}

async fn verify(w: &World, server: &Server, decisions: &[DecisionAck]) -> Result<Checked> {
    let mut r = reservations(connect(&server.addr).await?, &server.enroller)?;
    let mut d = staff(connect(&server.addr).await?, &server.staff)?;
    let (res, overrides, lower) = {
        let l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let unique: HashSet<&str> = decisions.iter().map(|x| x.id.as_str()).collect();
        let lower = l.upserts + l.enrolments + l.health + l.erasures + l.overrides_n + unique.len() as u64;
        (l.res.clone(), l.overrides.clone(), lower)
    };
    let mut bad_res = Vec::new();
    for (code, a) in &res {
        let got = r
            .get_reservation(pv::GetReservationRequest {
                property_id: w.props[a.prop].clone(),
                reservation_code: code.clone(),
            })
            .await;
        let v = match got {
            Ok(v) => v.into_inner(),
            Err(s) => {
                bad_res.push(format!(
                    "{code}: GetReservation {}: {}",
                    code_name(s.code()),
                    s.message()
                ));
                continue;
            }
        };
        let mut why = Vec::new();
        if a.erased {
            if !v.erased {
                why.push("erasure acknowledged, not erased".to_string());
            }
            if v.templates != 0 {
                why.push(format!("erased but {} templates", v.templates));
            }
            if v.guest.as_ref().is_some_and(|g| !g.full_name.is_empty()) {
                why.push("erased but the name is kept".into());
            }
        } else {
            if v.erased {
                why.push("erased without an acknowledged erasure".into());
            }
            let name = v.guest.as_ref().map(|g| g.full_name.as_str()).unwrap_or("");
            if a.name.as_deref().is_some_and(|n| n != name) {
                why.push(format!("name {name:?}, last acknowledged {:?}", a.name));
            }
            if a.templates > 0 && v.templates < a.templates {
                why.push(format!(
                    "{} templates, the last acknowledged enrolment stored {} clean ones",
                    v.templates, a.templates
                ));
            }
            if let Some((colour, issued)) = a.health {
                let h = v.health.clone().unwrap_or_default();
                if h.colour != colour || h.issued_at_ms != issued {
                    why.push(format!(
                        "health {:?}@{}, last acknowledged {:?}@{issued}",
                        pv::HealthColour::try_from(h.colour).unwrap_or_default(),
                        h.issued_at_ms,
                        pv::HealthColour::try_from(colour).unwrap_or_default()
                    ));
                }
            }
        }
        if !why.is_empty() {
            bad_res.push(format!("{code}: {}", why.join("; ")));
        }
    }
    let mut bad_dec = Vec::new();
    let mut seen = HashSet::new();
    let mut duplicate_ids = 0;
    let mut overrides_checked = 0;
    for a in decisions {
        if !seen.insert(a.id.clone()) {
            duplicate_ids += 1;
            continue;
        }
        let rec = match d
            .get_decision(pv::GetDecisionRequest {
                decision_id: a.id.clone(),
            })
            .await
        {
            Ok(x) => x.into_inner(),
            Err(s) => {
                bad_dec.push(format!(
                    "{}: GetDecision {}: {}",
                    a.id,
                    code_name(s.code()),
                    s.message()
                ));
                continue;
            }
        };
        let mut why = Vec::new();
        let prop = &w.props[a.kiosk % w.props.len()];
        if &rec.property_id != prop {
            why.push(format!("property {} (kiosk's {prop})", rec.property_id));
        }
        if rec.kiosk_id != w.kiosk_ids[a.kiosk] {
            why.push(format!("kiosk {} (was {})", rec.kiosk_id, w.kiosk_ids[a.kiosk]));
        }
        if rec.outcome != a.outcome {
            why.push(format!(
                "outcome {} (the kiosk was told {})",
                outcome_name(rec.outcome),
                outcome_name(a.outcome)
            ));
        }
        match (overrides.get(&a.id), &rec.r#override) {
            (Some((action, reason)), Some(o)) => {
                overrides_checked += 1;
                let fin = if *action == pv::OverrideAction::Approve as i32 {
                    pv::Outcome::Approved
                } else {
                    pv::Outcome::Denied
                } as i32;
                if o.action != *action || &o.reason != reason || o.staff_id != "soak-staff" || rec.final_outcome != fin
                {
                    why.push(format!(
                        "override {:?} / {:?} / {} / final {}, acknowledged action {action}",
                        o.action,
                        o.reason,
                        o.staff_id,
                        outcome_name(rec.final_outcome)
                    ));
                }
            }
            (Some(_), None) => why.push("override acknowledged, not recorded".into()),
            (None, Some(o)) => why.push(format!("an override nobody acknowledged: {o:?}")),
            (None, None) => {
                if rec.final_outcome != rec.outcome {
                    why.push("final outcome differs without an override".into());
                }
            }
        }
        if !why.is_empty() {
            bad_dec.push(format!("{}: {}", a.id, why.join("; ")));
        }
    }
    // Overrides of decisions no kiosk here was told about (a stream cut short) are checked too.
    for (id, (action, reason)) in &overrides {
        if seen.contains(id) {
            continue;
        }
        match d
            .get_decision(pv::GetDecisionRequest {
                decision_id: id.clone(),
            })
            .await
        {
            Ok(x) => {
                let rec = x.into_inner();
                overrides_checked += 1;
                let ok = rec
                    .r#override
                    .as_ref()
                    .is_some_and(|o| o.action == *action && &o.reason == reason && o.staff_id == "soak-staff");
                if !ok {
                    bad_dec.push(format!(
                        "{id}: acknowledged override not as recorded: {:?}",
                        rec.r#override
                    ));
                }
            }
            Err(s) => bad_dec.push(format!("{id}: GetDecision {}: {}", code_name(s.code()), s.message())),
        }
    }
    let audit = d
        .verify_audit_trail(pv::VerifyAuditTrailRequest {})
        .await
        .context("VerifyAuditTrail")?
        .into_inner();
    Ok(Checked {
        reservations: res.len(),
        reservation_mismatches: bad_res,
        decisions: seen.len(),
        decision_mismatches: bad_dec,
        overrides_checked,
        duplicate_ids,
        audit,
        audit_lower_bound: lower,
    })
}

// ------------------------------------------------------------------------------------------------
// The plot: RSS and p99 over time (the bench's `plot` module draws DET curves only).

mod chart {
    use image::{Rgb, RgbImage};
    use std::path::Path;

    pub struct Series<'a> {
        pub label: &'a str,
        /// NaN y breaks the line.
        pub points: &'a [(f64, f64)],
        pub color: [u8; 3],
    }

    pub struct Panel<'a> {
        pub y_label: &'a str,
        pub series: Vec<Series<'a>>,
        /// Logarithmic y axis (decades), for latencies that span milliseconds to tens of seconds.
        pub log: bool,
    }

    const W: i32 = 960;
    const PANEL_H: i32 = 300;
    const LEFT: i32 = 90;
    const RIGHT: i32 = 30;
    const TOP: i32 = 72;
    const GAP: i32 = 70;

    fn nice_step(max: f64) -> f64 {
        let raw = (max / 5.0).max(1e-9);
        let p = 10f64.powf(raw.log10().floor());
        for m in [1.0, 2.0, 5.0, 10.0] {
            if m * p >= raw {
                return m * p;
            }
        }
        10.0 * p
    }

    /// Panels stacked over one time axis (0..x_max seconds); `shaded` spans are drawn in light red
    /// (overload windows), `mark` as a dashed vertical line (the end of the soak).
    pub fn time_png(
        path: &Path,
        title: &str,
        x_max: f64,
        shaded: &[(f64, f64)],
        mark: Option<f64>,
        panels: &[Panel],
    ) -> image::ImageResult<()> {
        let h = TOP + panels.len() as i32 * (PANEL_H + GAP) + 10;
        let mut img = RgbImage::from_pixel(W as u32, h as u32, Rgb([255, 255, 255]));
        let black = Rgb([0, 0, 0]);
        let grey = Rgb([225, 225, 225]);
        let pw = W - LEFT - RIGHT;
        text(&mut img, LEFT, 12, title, 2, black);
        let x_max = x_max.max(1.0);
        let xs = nice_step(x_max);
        let px = |x: f64| LEFT + (x / x_max * pw as f64).round() as i32;
        for (pi, p) in panels.iter().enumerate() {
            let top = TOP + pi as i32 * (PANEL_H + GAP);
            let ys_all: Vec<f64> = p
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|q| q.1))
                .filter(|y| y.is_finite() && (!p.log || *y > 0.0))
                .collect();
            let y_hi = ys_all.iter().copied().fold(0.0f64, f64::max).max(1e-9);
            // Linear: 0..1.1x the largest; log: the decades around the values.
            let (lo, hi) = if p.log {
                let lo = ys_all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3);
                let lo = if lo.is_finite() { lo } else { 1.0 };
                (lo.log10().floor(), y_hi.log10().ceil().max(lo.log10().floor() + 1.0))
            } else {
                (0.0, y_hi * 1.1)
            };
            let fy = |y: f64| if p.log { y.max(1e-12).log10() } else { y };
            let py = |y: f64| {
                let f = ((fy(y) - lo) / (hi - lo)).clamp(0.0, 1.0);
                top + PANEL_H - (f * PANEL_H as f64).round() as i32
            };
            for &(a, b) in shaded {
                for x in px(a)..=px(b.min(x_max)) {
                    line(&mut img, x, top, x, top + PANEL_H, Rgb([253, 225, 225]));
                }
            }
            let mut x = 0.0;
            while x <= x_max + 1e-9 {
                line(&mut img, px(x), top, px(x), top + PANEL_H, grey);
                let lab = format!("{}", x.round() as i64);
                text(
                    &mut img,
                    px(x) - text_width(&lab, 2) / 2,
                    top + PANEL_H + 8,
                    &lab,
                    2,
                    black,
                );
                x += xs;
            }
            let ticks: Vec<f64> = if p.log {
                (lo as i32..=hi as i32).map(|d| 10f64.powi(d)).collect()
            } else {
                let ys = nice_step(hi);
                (0..).map(|i| i as f64 * ys).take_while(|y| *y <= hi + 1e-9).collect()
            };
            for y in ticks {
                line(&mut img, LEFT, py(y), LEFT + pw, py(y), grey);
                let lab = if y >= 1.0 || y == 0.0 {
                    format!("{}", y.round() as i64)
                } else {
                    format!("{y}")
                };
                text(&mut img, LEFT - text_width(&lab, 2) - 8, py(y) - 7, &lab, 2, black);
            }
            if let Some(m) = mark {
                let mut yy = top;
                while yy < top + PANEL_H {
                    line(&mut img, px(m), yy, px(m), (yy + 5).min(top + PANEL_H), black);
                    yy += 10;
                }
            }
            rect(&mut img, LEFT, top, LEFT + pw, top + PANEL_H, black);
            text(&mut img, LEFT, top - 18, p.y_label, 2, black);
            for (si, s) in p.series.iter().enumerate() {
                let col = Rgb(s.color);
                let mut prev: Option<(i32, i32)> = None;
                for &(x, y) in s.points {
                    if !y.is_finite() {
                        prev = None;
                        continue;
                    }
                    let q = (px(x), py(y));
                    match prev {
                        Some(a) => {
                            line(&mut img, a.0, a.1, q.0, q.1, col);
                            line(&mut img, a.0, a.1 + 1, q.0, q.1 + 1, col);
                        }
                        None => {
                            line(&mut img, q.0 - 1, q.1, q.0 + 1, q.1, col);
                        }
                    }
                    prev = Some(q);
                }
                let ly = top + 10 + si as i32 * 20;
                let lx = LEFT + pw - 420;
                line(&mut img, lx, ly + 6, lx + 30, ly + 6, col);
                line(&mut img, lx, ly + 7, lx + 30, ly + 7, col);
                text(&mut img, lx + 38, ly, s.label, 2, black);
            }
        }
        let lab = "TIME (S); SHADED: OVERLOAD; DASHED: END";
        text(&mut img, LEFT + pw / 2 - text_width(lab, 2) / 2, h - 24, lab, 2, black);
        img.save(path)
    }

    fn put(img: &mut RgbImage, x: i32, y: i32, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, c);
        }
    }

    fn line(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, c: Rgb<u8>) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            put(img, x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn rect(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, c: Rgb<u8>) {
        line(img, x0, y0, x1, y0, c);
        line(img, x1, y0, x1, y1, c);
        line(img, x1, y1, x0, y1, c);
        line(img, x0, y1, x0, y0, c);
    }

    fn text_width(s: &str, scale: i32) -> i32 {
        s.chars().count() as i32 * 6 * scale
    }

    fn text(img: &mut RgbImage, x: i32, y: i32, s: &str, scale: i32, c: Rgb<u8>) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch.to_ascii_uppercase());
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                put(img, x + (i as i32 * 6 + col) * scale + dx, y + r as i32 * scale + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }

    /// 5x7 glyphs, one byte a row, bit 4 leftmost (as `lobby_bench::plot`'s).
    fn glyph(c: char) -> [u8; 7] {
        match c {
            '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
            '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
            '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
            '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
            '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
            '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
            '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
            '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
            '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
            '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
            'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
            'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
            'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
            'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
            'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
            'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
            'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
            'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
            'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
            'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
            'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
            'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
            'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
            'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
            'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
            'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
            'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
            'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
            'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
            'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
            'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
            'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
            'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
            'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
            'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
            'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
            '-' => [0, 0, 0, 0x1F, 0, 0, 0],
            '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
            ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
            ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
            ';' => [0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08],
            '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
            '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
            ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
            '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
            '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
            '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
            _ => [0; 7],
        }
    }
}

// ------------------------------------------------------------------------------------------------

/// Photos that decode within the server's pixel bound, for the overload windows.
fn heavy_photos(data: &Path, max_pixels: u64) -> Vec<(String, PathBuf)> {
    let dir = data.join("uncropped_identities").join("images");
    let mut out = Vec::new();
    let Ok(ids) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut ids: Vec<PathBuf> = ids.filter_map(|e| e.ok().map(|e| e.path())).collect();
    ids.sort();
    for id in ids {
        let Ok(files) = std::fs::read_dir(&id) else { continue };
        let mut files: Vec<PathBuf> = files.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let dims = image::ImageReader::open(&f)
                .and_then(|r| r.with_guessed_format())
                .ok()
                .and_then(|r| r.into_dimensions().ok());
            if let Some((w, h)) = dims {
                if (w as u64) * (h as u64) <= max_pixels && w.max(h) >= 1000 {
                    let who = id.file_name().and_then(|n| n.to_str()).unwrap_or("unknown");
                    out.push((format!("uncropped:{who}"), f));
                }
            }
        }
    }
    out
}

fn percentile_of(v: &[f64], p: f64) -> f64 {
    (percentile(v, p) * 10.0).round() / 10.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        bail!("set OMP_NUM_THREADS=1 (Faiss and OpenBLAS must not start their own thread pools)");
    }
    if args.kiosks == 0 || args.properties == 0 || args.duration_secs == 0 {
        bail!("--kiosks, --properties and --duration-secs must be at least 1");
    }
    let rss_before = rss_mib();
    let t_setup = Instant::now();
    let (lfw_guests, lfw_strangers) = e2e::lfw(&args.data)?;
    let mut guests: Vec<Arc<Guest>> = lfw_guests.into_iter().map(Arc::new).collect();
    guests.extend(e2e::mfr2(&args.data)?.into_iter().map(Arc::new));
    let mut rng = StdRng::seed_from_u64(args.seed);
    guests.shuffle(&mut rng);
    let strangers: Vec<(String, PathBuf)> = lfw_strangers
        .into_iter()
        .map(|(id, p)| (format!("lfw:{id}"), p))
        .collect();
    if strangers.is_empty() || guests.is_empty() {
        bail!("no LFW guests or strangers under {}", args.data.display());
    }
    let props: Vec<String> = (0..args.properties).map(|i| format!("soak-hotel-{i}")).collect();
    let server = start(&args, &props).await?;
    let settings = Settings::load_from(None, std::iter::empty())?;
    let heavy = heavy_photos(&args.data, settings.limits.max_pixels);
    let rss_server_up = rss_mib();
    eprintln!(
        "lobby-soak: server on {} ({} kiosks over {} properties); {} identities to enrol, {} strangers, {} full-size photos; RSS {rss_server_up:.0} MiB",
        server.addr,
        args.kiosks,
        props.len(),
        guests.len(),
        strangers.len(),
        heavy.len()
    );
    // The clock starts after the first gallery is enrolled; placeholders until then.
    let placeholder = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut world = World {
        addr: server.addr.clone(),
        props: props.clone(),
        kiosk_ids: server.kiosk_ids.clone(),
        active: (0..props.len()).map(|_| Mutex::new(Vec::new())).collect(),
        rebook: Mutex::new(Vec::new()),
        ledger: Mutex::new(Ledger::default()),
        identity_of: Mutex::new(BTreeMap::new()),
        strangers,
        heavy,
        overload_parallel: args.overload_parallel.max(1),
        clock: Clock {
            start: Instant::now(),
            end: placeholder,
            hard: placeholder,
            every: args.overload_every,
            over: args.overload_secs,
        },
        next_code: AtomicU64::new(1),
        n_calls: AtomicU64::new(0),
        n_exhausted: AtomicU64::new(0),
        n_errors: AtomicU64::new(0),
    };

    // The first gallery, two enrolments at a time.
    let mut pool: VecDeque<Arc<Guest>> = guests.into_iter().collect();
    let mut setup = Tally::default();
    {
        let w = &world;
        let n0 = args.initial_guests * props.len();
        let mut firsts: Vec<(usize, Arc<Guest>)> = Vec::new();
        for i in 0..n0 {
            if let Some(g) = pool.pop_front() {
                firsts.push((i % props.len(), g));
            }
        }
        let half = firsts.len().div_ceil(2);
        let (a, b) = firsts.split_at(half);
        let mut c1 = reservations(connect(&w.addr).await?, &server.enroller)?;
        let mut c2 = reservations(connect(&w.addr).await?, &server.enroller)?;
        let f1 = async {
            let mut t = Tally::default();
            let mut back = Vec::new();
            for (p, g) in a {
                if !enrol_new(w, &mut c1, &mut t, *p, g.clone()).await {
                    back.push(g.clone());
                }
            }
            (t, back)
        };
        let f2 = async {
            let mut t = Tally::default();
            let mut back = Vec::new();
            for (p, g) in b {
                if !enrol_new(w, &mut c2, &mut t, *p, g.clone()).await {
                    back.push(g.clone());
                }
            }
            (t, back)
        };
        let ((t1, b1), (t2, b2)) = tokio::join!(f1, f2);
        setup.merge(t1);
        setup.merge(t2);
        // Identities refused at enrolment go to the back of the queue.
        pool.extend(b1);
        pool.extend(b2);
    }
    let enrolled0: usize = world
        .active
        .iter()
        .map(|a| a.lock().map(|v| v.len()).unwrap_or(0))
        .sum();
    let setup_s = t_setup.elapsed().as_secs_f64();
    eprintln!(
        "first gallery: {enrolled0} guests enrolled in {setup_s:.0} s ({} RESOURCE_EXHAUSTED, {} errors)",
        setup.exhausted.values().sum::<u64>(),
        setup.errors.values().sum::<u64>()
    );

    // Connections before the clock starts.
    let mut kiosks = Vec::new();
    for (i, tok) in server.kiosk_tokens.iter().enumerate() {
        kiosks.push((i, kiosk(connect(&server.addr).await?, tok)?));
    }
    let pms = reservations(connect(&server.addr).await?, &server.enroller)?;
    let desk = staff(connect(&server.addr).await?, &server.staff)?;

    let start = Instant::now();
    world.clock.start = start;
    world.clock.end = start + Duration::from_secs(args.duration_secs);
    world.clock.hard = world.clock.end + Duration::from_secs(args.grace_secs);
    let clock = world.clock;
    let w = Arc::new(world);

    // RSS every second, until told to stop.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, w) = (sampling.clone(), w.clone());
        tokio::spawn(async move {
            let mut v: Vec<(f64, f64)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_print = 0u64;
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = w.clock.t(Instant::now());
                let rss = rss_mib();
                v.push((t, rss));
                let s = t as u64;
                if s >= last_print + 30 && t <= w.clock.t(w.clock.end) + 1.0 {
                    last_print = s;
                    let active: usize = w.active.iter().map(|a| a.lock().map(|v| v.len()).unwrap_or(0)).sum();
                    eprintln!(
                        "t={s:>4}s{} calls {} | RESOURCE_EXHAUSTED {} | errors {} | guests enrolled {active} | RSS {rss:.0} MiB",
                        if w.clock.overloaded_at(t) { " [overload]" } else { "" },
                        w.n_calls.load(Ordering::Relaxed),
                        w.n_exhausted.load(Ordering::Relaxed),
                        w.n_errors.load(Ordering::Relaxed),
                    );
                }
            }
            v
        })
    };

    let mut tasks: Vec<tokio::task::JoinHandle<Tally>> = Vec::new();
    for (i, k) in kiosks {
        tasks.push(tokio::spawn(kiosk_loop(
            w.clone(),
            i,
            k,
            args.seed ^ (1000 + i as u64),
            args.think_ms,
        )));
    }
    tasks.push(tokio::spawn(pms_loop(w.clone(), pms, pool, args.seed ^ 7)));
    tasks.push(tokio::spawn(desk_loop(w.clone(), desk, args.seed ^ 11)));
    let mut total = Tally::default();
    let mut aborted = 0usize;
    for t in tasks {
        // Every call is cut at the hard stop; a task still running a few seconds after it is aborted.
        let wait = clock.hard.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        let abort = t.abort_handle();
        match tokio::time::timeout(wait, t).await {
            Ok(Ok(tally)) => total.merge(tally),
            Ok(Err(e)) => {
                aborted += 1;
                eprintln!("a task failed: {e}");
            }
            Err(_) => {
                abort.abort();
                aborted += 1;
            }
        }
    }
    let soak_s = clock.t(Instant::now());
    let rss_soak_end = rss_mib();
    eprintln!(
        "soak over after {soak_s:.0} s; checking every acknowledged write ({} decision ids)",
        total.decisions.len()
    );
    let t_verify = Instant::now();
    let checked = verify(&w, &server, &total.decisions).await?;
    let verify_s = t_verify.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let rss_series = sampler.await.unwrap_or_default();
    let hwm = hwm_mib();
    let _ = server.stop.send(());
    server.handle.await.context("server task")??;
    if !args.keep_data {
        let _ = std::fs::remove_dir_all(&server.dir);
    }

    // ---- figures
    let dur = args.duration_secs as f64;
    let soak_rss: Vec<(f64, f64)> = rss_series.iter().copied().filter(|(t, _)| *t <= dur + 0.5).collect();
    let rss_at = |t: f64| -> f64 {
        soak_rss
            .iter()
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .map(|x| x.1)
            .unwrap_or(0.0)
    };
    let rss_start = rss_at(0.0);
    let rss_1min = rss_at(60.0_f64.min(dur));
    let rss_end = rss_at(dur);
    let rss_max = soak_rss.iter().map(|x| x.1).fold(0.0, f64::max);
    // Slope over the second half (MiB per minute), least squares.
    let half: Vec<&(f64, f64)> = soak_rss.iter().filter(|(t, _)| *t >= dur / 2.0).collect();
    let slope = {
        let n = half.len() as f64;
        if n < 3.0 {
            0.0
        } else {
            let mx = half.iter().map(|p| p.0).sum::<f64>() / n;
            let my = half.iter().map(|p| p.1).sum::<f64>() / n;
            let sxy: f64 = half.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let sxx: f64 = half.iter().map(|p| (p.0 - mx).powi(2)).sum();
            if sxx > 0.0 {
                sxy / sxx * 60.0
            } else {
                0.0
            }
        }
    };
    let growth = if rss_1min > 0.0 {
        (rss_end - rss_1min) / rss_1min
    } else {
        0.0
    };
    // Per cycle (an overload period, or a quarter of the run without overload): the trough and the
    // peak, reported. Bounded: the peak of the second half of the run within 15 % of the first
    // half's (with the defaults each half meets two overload windows).
    let cycle = if args.overload_every > 0 && args.overload_secs > 0 {
        args.overload_every as f64
    } else {
        (dur / 4.0).max(1.0)
    };
    let ncycles = (dur / cycle).ceil().max(1.0) as usize;
    let cycles: Vec<(f64, f64)> = (0..ncycles)
        .map(|k| {
            let v: Vec<f64> = soak_rss
                .iter()
                .filter(|(t, _)| *t >= k as f64 * cycle && *t < (k + 1) as f64 * cycle)
                .map(|x| x.1)
                .collect();
            (
                v.iter().copied().fold(0.0, f64::max),
                v.iter().copied().fold(f64::INFINITY, f64::min),
            )
        })
        .collect();
    let peak = |a: f64, b: f64| {
        soak_rss
            .iter()
            .filter(|(t, _)| *t >= a && *t < b)
            .map(|x| x.1)
            .fold(0.0, f64::max)
    };
    let (peak_first, peak_second) = (peak(0.0, dur / 2.0), peak(dur / 2.0, dur + 0.5));
    let half_growth = if peak_first > 0.0 {
        (peak_second - peak_first) / peak_first
    } else {
        0.0
    };
    let rss_bounded = half_growth <= 0.15;
    let cycles_text: Vec<String> = cycles
        .iter()
        .enumerate()
        .map(|(k, (hi, lo))| {
            format!(
                "{}-{} s: {lo:.0}-{hi:.0}",
                (k as f64 * cycle) as u64,
                (((k + 1) as f64 * cycle).min(dur)) as u64
            )
        })
        .collect();

    // p99 per 10 s window: unary check-ins and streams, successful calls.
    let nwin = (dur / 10.0).ceil() as usize;
    let mut win_unary: Vec<Vec<f64>> = vec![Vec::new(); nwin];
    let mut win_stream: Vec<Vec<f64>> = vec![Vec::new(); nwin];
    let mut win_heavy: Vec<Vec<f64>> = vec![Vec::new(); nwin];
    let mut win_ex = vec![0u64; nwin];
    for &(t, kind, ms) in &total.lat {
        let i = ((t as f64) / 10.0) as usize;
        if i < nwin {
            if is_stream(kind) {
                win_stream[i].push(ms as f64);
            } else if kind == K_HEAVY {
                win_heavy[i].push(ms as f64);
            } else {
                win_unary[i].push(ms as f64);
            }
        }
    }
    for &t in &total.exhausted_at {
        let i = ((t as f64) / 10.0) as usize;
        if i < nwin {
            win_ex[i] += 1;
        }
    }
    let p99_of = |v: &Vec<f64>| if v.is_empty() { f64::NAN } else { percentile(v, 99.0) };
    let windows: Vec<Value> = (0..nwin)
        .map(|i| {
            let t = i as f64 * 10.0;
            json!({"t_s": t, "overload": clock.overloaded_at(t + 5.0),
                   "unary_n": win_unary[i].len(), "unary_p50_ms": percentile_of(&win_unary[i], 50.0),
                   "unary_p99_ms": percentile_of(&win_unary[i], 99.0),
                   "stream_n": win_stream[i].len(), "stream_p99_ms": percentile_of(&win_stream[i], 99.0),
                   "full_size_n": win_heavy[i].len(), "full_size_p99_ms": percentile_of(&win_heavy[i], 99.0),
                   "resource_exhausted": win_ex[i]})
        })
        .collect();
    let normal_p99: Vec<f64> = (0..nwin)
        .filter(|&i| !clock.overloaded_at(i as f64 * 10.0 + 5.0))
        .map(|i| p99_of(&win_unary[i]))
        .filter(|x| x.is_finite())
        .collect();
    let over_p99: Vec<f64> = (0..nwin)
        .filter(|&i| clock.overloaded_at(i as f64 * 10.0 + 5.0))
        .map(|i| p99_of(&win_unary[i]))
        .filter(|x| x.is_finite())
        .collect();
    let all_unary: Vec<f64> = total
        .lat
        .iter()
        .filter(|x| !is_stream(x.1) && x.1 != K_HEAVY)
        .map(|x| x.2 as f64)
        .collect();
    let all_stream: Vec<f64> = total
        .lat
        .iter()
        .filter(|x| is_stream(x.1))
        .map(|x| x.2 as f64)
        .collect();
    let med = |v: &[f64]| percentile_of(v, 50.0);
    let maxf = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let first_half_p99: Vec<f64> = normal_p99.iter().take(normal_p99.len() / 2).copied().collect();
    let second_half_p99: Vec<f64> = normal_p99.iter().skip(normal_p99.len() / 2).copied().collect();

    // Plot.
    let p_unary: Vec<(f64, f64)> = (0..nwin)
        .map(|i| (i as f64 * 10.0 + 5.0, p99_of(&win_unary[i])))
        .collect();
    let p_stream: Vec<(f64, f64)> = (0..nwin)
        .map(|i| (i as f64 * 10.0 + 5.0, p99_of(&win_stream[i])))
        .collect();
    let p_heavy: Vec<(f64, f64)> = (0..nwin)
        .map(|i| (i as f64 * 10.0 + 5.0, p99_of(&win_heavy[i])))
        .collect();
    let shaded = clock.windows();
    let x_max = rss_series.last().map(|x| x.0).unwrap_or(dur).max(dur);
    let title = format!(
        "LOBBY-SOAK: {} KIOSKS, {} S, ONE PROCESS (SERVER + CLIENTS)",
        args.kiosks, args.duration_secs
    );
    if let Some(dir) = args.plot.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    chart::time_png(
        &args.plot,
        &title,
        x_max,
        &shaded,
        Some(dur),
        &[
            chart::Panel {
                y_label: "RSS (MIB), SAMPLED EVERY SECOND",
                log: false,
                series: vec![chart::Series {
                    label: "VMRSS",
                    points: &rss_series,
                    color: [31, 119, 180],
                }],
            },
            chart::Panel {
                y_label: "P99 (MS, LOG SCALE) PER 10 S WINDOW, ANSWERED CALLS",
                log: true,
                series: vec![
                    chart::Series {
                        label: "UNARY CHECK-IN (KIOSK PHOTO)",
                        points: &p_unary,
                        color: [214, 39, 40],
                    },
                    chart::Series {
                        label: "CHECK-IN STREAM",
                        points: &p_stream,
                        color: [44, 160, 44],
                    },
                    chart::Series {
                        label: "FULL-SIZE PHOTO (OVERLOAD)",
                        points: &p_heavy,
                        color: [148, 103, 189],
                    },
                ],
            },
        ],
    )?;

    // Outcomes table.
    let mut table = String::from(
        "| check-in | answered | APPROVED | REVIEW | DENIED | RETRY | none | RESOURCE_EXHAUSTED | other errors |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut answered_total = 0u64;
    for k in KINDS {
        let m = total.outcomes.get(k).cloned().unwrap_or_default();
        let n: u64 = m.values().sum();
        answered_total += n;
        let g = |o: &str| m.get(o).copied().unwrap_or(0);
        let ex = total.exhausted_by_op.get(k).copied().unwrap_or(0);
        let er: u64 = total
            .errors
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{k}:")))
            .map(|x| x.1)
            .sum();
        table.push_str(&format!(
            "| {k} | {n} | {} | {} | {} | {} | {} | {ex} | {er} |\n",
            g("APPROVED"),
            g("REVIEW"),
            g("DENIED"),
            g("RETRY"),
            g("NONE")
        ));
    }
    let l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
    let errors_total: u64 = total.errors.values().sum::<u64>() + setup.errors.values().sum::<u64>();
    let exhausted_total: u64 = total.exhausted.values().sum();
    let audit_ok = checked.audit.intact && checked.audit.entries >= checked.audit_lower_bound;
    let mid_audits_ok = l.audit_checks.iter().all(|v| v["intact"].as_bool() == Some(true));
    let verified_ok = checked.reservation_mismatches.is_empty()
        && checked.decision_mismatches.is_empty()
        && checked.duplicate_ids == 0;
    let pass = errors_total == 0 && verified_ok && audit_ok && mid_audits_ok && aborted == 0;
    let active_end: usize = w.active.iter().map(|a| a.lock().map(|v| v.len()).unwrap_or(0)).sum();
    let body = format!(
        "One in-process server on loopback (`{}`), {} kiosks (own credential and connection each) over {} properties, one reservation system, one front desk; {} s (hard stop {} s later), kiosks pausing 0-{} ms between check-ins; deliberate overload in the last {} s of every {} s (no pauses, {} unary check-ins at once per kiosk, half of them full-size `uncropped_identities` photos, {} of them). Setup (models, server, first gallery of {enrolled0} guests) {setup_s:.0} s; checks afterwards {verify_s:.0} s.\n\n\
**Verdict: {}.** Errors other than RESOURCE_EXHAUSTED: **{errors_total}**; acknowledged writes not as acknowledged: **{}**; audit trail intact: **{}** ({} entries, at least {} expected; {} checks during the run, all intact: {}); RSS {} (peak of the second half vs the first {:+.1} %; end vs 1 min {:+.1} %).\n\n\
{table}\n\
{answered_total} check-ins answered ({:.1}/s), {} calls in all. Wrong guest APPROVED: {}; stranger APPROVED: {} (who they were, by name across the datasets: {}). Calls cut at the hard stop: {}; tasks aborted: {aborted}.\n\n\
RESOURCE_EXHAUSTED: **{exhausted_total}** ({}); by call: {}. Other errors: {}.\n\n\
Writes acknowledged and verified: {} reservation upserts, {} enrolments storing templates ({} refused every photo, not a write), {} health-code updates, {} erasures, {} overrides ({} APPROVEs refused with FAILED_PRECONDITION, the reservation no longer BOOKED: legitimate), {} decision ids given to kiosks (all read back with GetDecision: property, kiosk, outcome, override exactly when acknowledged; {} overrides matched). {} reservations read back; mismatches: reservations {}, decisions {}, duplicate decision ids {}. Guests enrolled at the end: {active_end}.\n\n\
RSS (VmRSS of the one process: server and all clients; `/proc/self/status` every second): before the server {rss_before:.0} MiB, server up {rss_server_up:.0} MiB, start of the soak {rss_start:.0}, at 1 min {rss_1min:.0}, at the end {rss_end:.0}, max {rss_max:.0} MiB (VmHWM {hwm:.0}); slope over the second half {slope:+.1} MiB/min; trough-peak per cycle (MiB) {}. After the soak ({rss_soak_end:.0} MiB).\n\n\
Latency of answered calls, ms: unary check-ins with kiosk photos (full-size photos apart) p50 {} / p99 {} (max {}), streams p50 {} / p99 {}. p99 of unary check-ins per 10 s window: outside overload median {} (first half {}, second half {}), max {}; in overload median {}, max {}. Plot: `{}`.\n\n\
Server settings: {}.\n",
        server.addr,
        args.kiosks,
        props.len(),
        args.duration_secs,
        args.grace_secs,
        2 * args.think_ms,
        args.overload_secs,
        args.overload_every,
        w.overload_parallel,
        w.heavy.len(),
        if pass { "PASS" } else { "FAIL" },
        checked.reservation_mismatches.len() + checked.decision_mismatches.len(),
        checked.audit.intact,
        checked.audit.entries,
        checked.audit_lower_bound,
        l.audit_checks.len(),
        mid_audits_ok,
        if rss_bounded { "bounded" } else { "GREW" },
        half_growth * 100.0,
        growth * 100.0,
        answered_total as f64 / dur,
        w.n_calls.load(Ordering::Relaxed),
        total.wrong_guest_approved,
        total.stranger_approved,
        serde_json::to_string(&total.approvals)?,
        total.cut,
        serde_json::to_string(&total.exhausted)?,
        serde_json::to_string(&total.exhausted_by_op)?,
        serde_json::to_string(&total.errors)?,
        l.upserts,
        l.enrolments,
        l.enrolments_refused,
        l.health,
        l.erasures,
        l.overrides_n,
        l.approve_refused,
        checked.decisions,
        checked.overrides_checked,
        checked.reservations,
        checked.reservation_mismatches.len(),
        checked.decision_mismatches.len(),
        checked.duplicate_ids,
        cycles_text.join(", "),
        med(&all_unary),
        percentile_of(&all_unary, 99.0),
        (maxf(&all_unary) * 10.0).round() / 10.0,
        med(&all_stream),
        percentile_of(&all_stream, 99.0),
        med(&normal_p99),
        med(&first_half_p99),
        med(&second_half_p99),
        (maxf(&normal_p99) * 10.0).round() / 10.0,
        med(&over_p99),
        (maxf(&over_p99) * 10.0).round() / 10.0,
        args.plot.display(),
        server.settings_note,
    );
    println!("{body}");
    for s in &total.approval_details {
        println!("approval: {s}");
    }
    for s in total.error_samples.iter().chain(&setup.error_samples) {
        println!("error: {s}");
    }
    for s in checked.reservation_mismatches.iter().take(20) {
        println!("reservation mismatch: {s}");
    }
    for s in checked.decision_mismatches.iter().take(20) {
        println!("decision mismatch: {s}");
    }
    let report = json!({
        "pass": pass,
        "duration_s": args.duration_secs, "kiosks": args.kiosks, "properties": props.len(),
        "think_ms": args.think_ms, "overload_every_s": args.overload_every, "overload_s": args.overload_secs, "overload_parallel": args.overload_parallel,
        "setup_s": setup_s, "verify_s": verify_s, "first_gallery": enrolled0,
        "outcomes": total.outcomes, "answers": total.answers, "answered": answered_total, "calls": w.n_calls.load(Ordering::Relaxed),
        "wrong_guest_approved": total.wrong_guest_approved, "stranger_approved": total.stranger_approved,
        "approvals_not_own": total.approvals, "approvals_not_own_detail": total.approval_details,
        "errors": total.errors, "setup_errors": setup.errors, "error_samples": total.error_samples,
        "resource_exhausted": total.exhausted, "resource_exhausted_by_call": total.exhausted_by_op,
        "resource_exhausted_setup": setup.exhausted, "cut_at_hard_stop": total.cut, "tasks_aborted": aborted,
        "writes": {"upserts": l.upserts, "enrolments": l.enrolments, "enrolments_refused": l.enrolments_refused,
                   "health": l.health, "erasures": l.erasures, "overrides": l.overrides_n,
                   "approve_refused_failed_precondition": l.approve_refused},
        "verified": {"reservations": checked.reservations, "reservation_mismatches": checked.reservation_mismatches,
                     "decisions": checked.decisions, "decision_mismatches": checked.decision_mismatches,
                     "overrides": checked.overrides_checked, "duplicate_decision_ids": checked.duplicate_ids},
        "audit": {"intact": checked.audit.intact, "entries": checked.audit.entries,
                  "first_broken_seq": checked.audit.first_broken_seq, "detail": checked.audit.detail,
                  "expected_at_least": checked.audit_lower_bound, "during_run": l.audit_checks},
        "rss_mib": {"before_server": rss_before, "server_up": rss_server_up, "start": rss_start, "at_1min": rss_1min,
                    "end": rss_end, "max": rss_max, "hwm": hwm, "after_soak": rss_soak_end,
                    "slope_second_half_mib_per_min": slope, "growth_end_vs_1min": growth, "bounded": rss_bounded,
                    "cycle_s": cycle, "cycles_trough_peak": cycles_text, "peak_first_half": peak_first, "peak_second_half": peak_second, "growth_peak_second_vs_first_half": half_growth,
                    "series": rss_series.iter().map(|(t, r)| json!([(t * 10.0).round() / 10.0, (r * 10.0).round() / 10.0])).collect::<Vec<_>>()},
        "latency_ms": {"unary_p50": med(&all_unary), "unary_p99": percentile_of(&all_unary, 99.0),
                       "stream_p50": med(&all_stream), "stream_p99": percentile_of(&all_stream, 99.0)},
        "windows": windows,
        "plot": args.plot.display().to_string(),
        "settings": server.settings_note,
        "machine": record::machine_facts(),
    });
    drop(l);
    args.out.emit("lobby-soak", &body, &report)?;
    if !pass {
        bail!("the soak failed (see above)");
    }
    Ok(())
}
