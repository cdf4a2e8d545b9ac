//! The shared state of a run: the clock, what was acknowledged (the ledger), the tallies, the
//! failures counted, and the world every task sees.

use super::*;

#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) hard: Instant,
    pub(crate) every: u64,
    pub(crate) over: u64,
}

impl Clock {
    pub(crate) fn t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }
    pub(crate) fn overloaded_at(&self, t: f64) -> bool {
        self.every > 0 && self.over > 0 && t >= 0.0 && (t as u64 % self.every) >= self.every.saturating_sub(self.over)
    }
    pub(crate) fn overloaded(&self) -> bool {
        self.overloaded_at(self.t(Instant::now()))
    }
    /// The overload windows within the soak, in seconds from its start.
    pub(crate) fn windows(&self) -> Vec<(f64, f64)> {
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
pub(crate) struct Active {
    pub(crate) code: String,
    pub(crate) guest: Arc<Guest>,
    /// The photo the enrolment was made from (an MFR2 guest lowering the mask shows another).
    pub(crate) enrolled: PathBuf,
}

/// What the reservation system and the front desk had acknowledged, per reservation.
#[derive(Debug, Default, Clone)]
pub(crate) struct ResAck {
    pub(crate) prop: usize,
    pub(crate) name: Option<String>,
    /// Clean templates of the last acknowledged enrolment that stored any.
    pub(crate) templates: u32,
    pub(crate) health: Option<(i32, i64)>,
    pub(crate) erased: bool,
}

#[derive(Default)]
pub(crate) struct Ledger {
    pub(crate) res: BTreeMap<String, ResAck>,
    /// decision id -> (action, reason)
    pub(crate) overrides: BTreeMap<String, (i32, String)>,
    pub(crate) upserts: u64,
    pub(crate) enrolments: u64,
    pub(crate) enrolments_refused: u64,
    pub(crate) health: u64,
    pub(crate) erasures: u64,
    pub(crate) overrides_n: u64,
    /// APPROVE refused with FAILED_PRECONDITION (reservation no longer BOOKED): legitimate.
    pub(crate) approve_refused: u64,
    pub(crate) audit_checks: Vec<Value>,
}

/// A decision id a kiosk was given, and what it was told.
#[derive(Clone)]
pub(crate) struct DecisionAck {
    pub(crate) id: String,
    pub(crate) kiosk: usize,
    pub(crate) outcome: i32,
}

/// One task's counts; merged at the end.
#[derive(Default)]
pub(crate) struct Tally {
    /// (seconds since the start, kind, ms) of every successful check-in.
    pub(crate) lat: Vec<(f32, &'static str, f32)>,
    pub(crate) outcomes: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// kind -> "OUTCOME: REASON,REASON" (as the kiosk was told) -> n
    pub(crate) answers: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// "op: CODE" -> n (RESOURCE_EXHAUSTED apart).
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) error_samples: Vec<String>,
    /// "phase / cause" -> n
    pub(crate) exhausted: BTreeMap<String, u64>,
    pub(crate) exhausted_by_op: BTreeMap<String, u64>,
    /// seconds since the start of each RESOURCE_EXHAUSTED
    pub(crate) exhausted_at: Vec<f32>,
    pub(crate) cut: u64,
    pub(crate) wrong_guest_approved: u64,
    pub(crate) stranger_approved: u64,
    /// "stranger|wrong guest / class" -> n, and one line each.
    pub(crate) approvals: BTreeMap<String, u64>,
    pub(crate) approval_details: Vec<String>,
    pub(crate) decisions: Vec<DecisionAck>,
}

impl Tally {
    pub(crate) fn merge(&mut self, o: Tally) {
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

    pub(crate) fn outcome(&mut self, kind: &'static str, o: &str, a: Option<&pv::CheckInResponse>) {
        *self.outcomes.entry(kind).or_default().entry(o.to_string()).or_default() += 1;
        let key = match a {
            Some(a) => format!("{o}: {}", lobby_kiosk_client::reason_names(&a.reasons).join(",")),
            None => o.to_string(),
        };
        *self.answers.entry(kind).or_default().entry(key).or_default() += 1;
    }

    /// Counts a failed call: RESOURCE_EXHAUSTED by phase and cause, a cut at the hard stop apart,
    /// anything else as an error.
    pub(crate) fn fail(&mut self, w: &World, op: &str, f: Failure) {
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

pub(crate) enum Failure {
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

pub(crate) fn from_anyhow(e: anyhow::Error) -> Failure {
    match e.downcast::<tonic::Status>() {
        Ok(s) => Failure::Status(s),
        Err(e) => Failure::Client(format!("{e:#}")),
    }
}

/// `ResourceExhausted` -> `RESOURCE_EXHAUSTED`.
pub(crate) fn code_name(c: tonic::Code) -> String {
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

pub(crate) fn exhausted_cause(m: &str) -> &'static str {
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
pub(crate) struct World {
    pub(crate) addr: String,
    pub(crate) props: Vec<String>,
    pub(crate) kiosk_ids: Vec<String>,
    pub(crate) active: Vec<Mutex<Vec<Active>>>,
    /// Reservations checked in (by a kiosk or an override), for the reservation system to book again.
    pub(crate) rebook: Mutex<Vec<(usize, String)>>,
    pub(crate) ledger: Mutex<Ledger>,
    /// reservation code -> the enrolled person (`source:identity`)
    pub(crate) identity_of: Mutex<BTreeMap<String, String>>,
    /// (`lfw:identity`, photo)
    pub(crate) strangers: Vec<(String, PathBuf)>,
    /// (`uncropped:identity`, photo)
    pub(crate) heavy: Vec<(String, PathBuf)>,
    pub(crate) overload_parallel: usize,
    pub(crate) clock: Clock,
    pub(crate) next_code: AtomicU64,
    pub(crate) n_calls: AtomicU64,
    pub(crate) n_exhausted: AtomicU64,
    pub(crate) n_errors: AtomicU64,
}

impl World {
    /// How long a call may take: `cap`, or until the hard stop.
    pub(crate) fn limit(&self, cap: Duration) -> Duration {
        cap.min(self.clock.hard.saturating_duration_since(Instant::now()))
    }
    pub(crate) fn prop_index(&self, p: &str) -> Option<usize> {
        self.props.iter().position(|x| x == p)
    }
}

/// Runs `f` within `limit`; past it, a cut (at the hard stop) or a client timeout.
pub(crate) async fn within<T, F>(w: &World, cap: Duration, f: F) -> std::result::Result<T, Failure>
where
    F: std::future::Future<Output = std::result::Result<T, Failure>>,
{
    match tokio::time::timeout(w.limit(cap), f).await {
        Ok(r) => r,
        Err(_) if Instant::now() + Duration::from_millis(50) >= w.clock.hard => Err(Failure::Cut),
        Err(_) => Err(Failure::Client(format!("no answer within {} s", cap.as_secs()))),
    }
}

pub(crate) const UNARY_CAP: Duration = Duration::from_secs(60);
pub(crate) const STREAM_CAP: Duration = Duration::from_secs(180);
