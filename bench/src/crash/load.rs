//! The load of a trial: clients, each with its own reservation-system, kiosk and front-desk
//! credentials and its own guests, sending one call at a time (a seeded mix of bookings, renames,
//! enrolments, health codes, check-ins, declines, staff overrides and erasures) until the kill.
//! Every write goes into the [`Ledger`] before it is sent, and is settled by its answer.

use super::ledger::*;
use super::server::Credential;
use crate::e2e::Guest;
use lobby_kiosk_client::ladder::{drive, ScriptedGuest};
use lobby_kiosk_client::proto as pv;
use lobby_kiosk_client::proto::front_desk_service_client::FrontDeskServiceClient;
use lobby_kiosk_client::proto::kiosk_service_client::KioskServiceClient;
use lobby_kiosk_client::proto::reservation_service_client::ReservationServiceClient;
use lobby_kiosk_client::Authed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A call unanswered this long counts as an error (the server is alive, it should answer).
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// What the clients of a trial share.
pub struct Shared {
    pub props: Vec<String>,
    pub ledger: Mutex<Ledger>,
    /// Set just before the SIGKILL: a call failing from then on was cut by it.
    pub killed: AtomicBool,
    /// Templates of every kind an enrolment of each photo stored (the pipeline is deterministic),
    /// shared by all trials of a run.
    pub photo_totals: Arc<Mutex<HashMap<PathBuf, u32>>>,
    pub arrival: String,
    pub departure: String,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// A write about to be sent: in the ledger, unsure until its answer settles it.
    fn begin(&self, code: &str, w: Write) {
        self.ledger().write(code, w, Ack::Unsure);
    }

    /// The last write to `code` was acknowledged.
    fn acked(&self, code: &str) {
        if let Some((_, a)) = self.ledger().bookings.get_mut(code).and_then(|b| b.writes.last_mut()) {
            *a = Ack::Acknowledged;
        }
    }

    /// The last write to `code` was answered "nothing done".
    fn undone(&self, code: &str) {
        if let Some(b) = self.ledger().bookings.get_mut(code) {
            b.writes.pop();
        }
    }

    fn anomaly(&self, what: String) {
        self.ledger().anomalies.push(what);
    }
}

/// One client's part: its index, property, credentials, guests and seed.
pub struct ClientSetup {
    pub index: usize,
    pub prop: usize,
    pub pms: Credential,
    pub kiosk: Credential,
    pub desk: Credential,
    pub guests: Vec<Guest>,
    pub code_prefix: String,
    pub seed: u64,
}

/// How a call ended.
enum Answer<T> {
    Ok(T),
    /// RESOURCE_EXHAUSTED: nothing was done.
    Busy,
    /// FAILED_PRECONDITION: nothing was done.
    Refused(String),
    /// Failed after the kill.
    Cut,
    /// Any other failure while the server was up: the effect is unknown.
    Error(String),
}

fn classify<T>(shared: &Shared, r: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>) -> Answer<T> {
    match r {
        Ok(Ok(v)) => Answer::Ok(v),
        _ if shared.killed() => Answer::Cut,
        Ok(Err(s)) if s.code() == tonic::Code::ResourceExhausted => Answer::Busy,
        Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => Answer::Refused(s.message().to_string()),
        Ok(Err(s)) => Answer::Error(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Answer::Error(format!("no answer within {} s", CALL_LIMIT.as_secs())),
    }
}

async fn call<T>(shared: &Shared, f: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Answer<T> {
    classify(shared, tokio::time::timeout(CALL_LIMIT, f).await)
}

/// A guest of the client.
struct Person {
    code: String,
    /// Enrolled from this photo; checks in with `probe` (another photo of the same person).
    photo: PathBuf,
    probe: PathBuf,
    /// An upsert was acknowledged.
    booked: bool,
    /// Name versions sent.
    version: u32,
    /// An enrolment that stored templates was acknowledged.
    enrolled: bool,
    /// The service refused the photo (no face good enough): never enrolled.
    unenrollable: bool,
    /// An erasure was sent: nothing more is sent for this guest.
    gone: bool,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Book,
    Rename,
    Enrol,
    Reenrol,
    Health,
    CheckIn1N,
    CheckIn11,
    CheckInWrongCode,
    Decline,
    Stream,
    Override,
    Erase,
}

struct Client {
    shared: Arc<Shared>,
    prop: usize,
    pms: ReservationServiceClient<Authed>,
    kiosk: KioskServiceClient<Authed>,
    desk: FrontDeskServiceClient<Authed>,
    kiosk_holder: String,
    desk_holder: String,
    people: Vec<Person>,
    /// REVIEW decisions this client's kiosk was told about, not yet overridden.
    reviews: Vec<String>,
    rng: StdRng,
    counts: Counts,
    overrides_sent: u64,
}

/// Runs one client until the kill; its counts.
pub async fn client(shared: Arc<Shared>, setup: ClientSetup, addr: String) -> Counts {
    let ch = match lobby_kiosk_client::connect(&addr).await {
        Ok(ch) => ch,
        Err(e) => {
            if !shared.killed() {
                shared.anomaly(format!("client {}: cannot connect: {e:#}", setup.index));
            }
            return Counts::default();
        }
    };
    let clients = (
        lobby_kiosk_client::reservations(ch.clone(), &setup.pms.token),
        lobby_kiosk_client::kiosk(ch.clone(), &setup.kiosk.token),
        lobby_kiosk_client::staff(ch, &setup.desk.token),
    );
    let (Ok(pms), Ok(kiosk), Ok(desk)) = clients else {
        shared.anomaly(format!("client {}: a token is not a valid header", setup.index));
        return Counts::default();
    };
    let people = setup
        .guests
        .iter()
        .enumerate()
        .filter_map(|(n, g)| {
            Some(Person {
                code: format!("{}-G{n:02}", setup.code_prefix),
                photo: g.enrol.first()?.clone(),
                probe: g.probes.first()?.clone(),
                booked: false,
                version: 0,
                enrolled: false,
                unenrollable: false,
                gone: false,
            })
        })
        .collect();
    let mut c = Client {
        shared,
        prop: setup.prop,
        pms,
        kiosk,
        desk,
        kiosk_holder: setup.kiosk.holder,
        desk_holder: setup.desk.holder,
        people,
        reviews: Vec::new(),
        rng: StdRng::seed_from_u64(setup.seed),
        counts: Counts::default(),
        overrides_sent: 0,
    };
    while !c.shared.killed() {
        let Some(op) = c.choose() else { break };
        c.run(op).await;
        let pause = c.rng.gen_range(0..30);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    c.counts
}

impl Client {
    fn property(&self) -> String {
        self.shared.props[self.prop].clone()
    }

    fn pick(&mut self, ok: impl Fn(&Person) -> bool) -> Option<usize> {
        let v: Vec<usize> = (0..self.people.len()).filter(|&i| ok(&self.people[i])).collect();
        if v.is_empty() {
            None
        } else {
            Some(v[self.rng.gen_range(0..v.len())])
        }
    }

    /// The next operation, weighted among those possible now.
    fn choose(&mut self) -> Option<Op> {
        let count = |f: &dyn Fn(&Person) -> bool| self.people.iter().filter(|p| f(p)).count();
        let active = count(&|p| p.booked && !p.gone);
        let unbooked = count(&|p| !p.booked && !p.gone);
        let to_enrol = count(&|p| p.booked && !p.gone && !p.enrolled && !p.unenrollable);
        let enrolled = count(&|p| p.booked && !p.gone && p.enrolled);
        let mut w: Vec<(Op, u32)> = Vec::new();
        let mut add = |op, weight, possible: bool| {
            if possible {
                w.push((op, weight));
            }
        };
        add(Op::Book, if active < 2 { 100 } else { 12 }, unbooked > 0);
        add(Op::Rename, 8, active > 0);
        add(Op::Enrol, 18, to_enrol > 0);
        add(Op::Reenrol, 3, enrolled > 0);
        add(Op::Health, 10, active > 0);
        add(Op::CheckIn1N, 14, enrolled > 0);
        add(Op::CheckIn11, 6, enrolled > 0);
        add(Op::CheckInWrongCode, 4, enrolled > 0 && active > 1);
        add(Op::Decline, 6, active > 0);
        add(Op::Stream, 5, enrolled > 0);
        add(Op::Override, 14, !self.reviews.is_empty());
        add(Op::Erase, 6, active > 2);
        let total: u32 = w.iter().map(|x| x.1).sum();
        if total == 0 {
            return None;
        }
        let mut r = self.rng.gen_range(0..total);
        for (op, weight) in w {
            if r < weight {
                return Some(op);
            }
            r -= weight;
        }
        None
    }

    async fn run(&mut self, op: Op) {
        if let Op::Override = op {
            return self.override_one().await;
        }
        let active = |p: &Person| p.booked && !p.gone;
        let enrolled = |p: &Person| p.booked && !p.gone && p.enrolled;
        let k = match op {
            Op::Book => self.pick(|p| !p.booked && !p.gone),
            Op::Rename | Op::Health | Op::Decline | Op::Erase => self.pick(active),
            Op::Enrol => self.pick(|p| active(p) && !p.enrolled && !p.unenrollable),
            Op::Reenrol | Op::CheckIn1N | Op::CheckIn11 | Op::CheckInWrongCode | Op::Stream => self.pick(enrolled),
            Op::Override => None,
        };
        let Some(k) = k else { return };
        match op {
            Op::Book | Op::Rename => self.upsert(k).await,
            Op::Enrol | Op::Reenrol => self.enrol(k).await,
            Op::Health => self.health(k).await,
            Op::CheckIn1N => self.check_in(k, false, false).await,
            Op::CheckIn11 => self.check_in(k, true, false).await,
            Op::CheckInWrongCode => self.check_in(k, true, true).await,
            Op::Decline => self.decline(k).await,
            Op::Stream => self.stream(k).await,
            Op::Override => self.override_one().await,
            Op::Erase => self.erase(k).await,
        }
    }

    /// Books the guest (first time) or renames the booking (and books it again if it was checked
    /// in).
    async fn upsert(&mut self, k: usize) {
        let prop = self.property();
        let p = &mut self.people[k];
        p.version += 1;
        let (code, name) = (p.code.clone(), format!("Crash guest {} v{}", p.code, p.version));
        {
            let mut l = self.shared.ledger();
            l.bookings.entry(code.clone()).or_insert_with(|| Booking {
                prop: self.prop,
                code: code.clone(),
                arrival: self.shared.arrival.clone(),
                departure: self.shared.departure.clone(),
                photo: p.photo.clone(),
                writes: Vec::new(),
            });
        }
        self.shared.begin(&code, Write::Upsert { name: name.clone() });
        let req = pv::UpsertReservationRequest {
            reservation: Some(pv::Reservation {
                property_id: prop,
                reservation_code: code.clone(),
                guest: Some(pv::Guest {
                    full_name: name,
                    guest_ref: format!("ref-{code}"),
                    ..Default::default()
                }),
                arrival_date: self.shared.arrival.clone(),
                departure_date: self.shared.departure.clone(),
                status: pv::ReservationStatus::Booked as i32,
                ..Default::default()
            }),
        };
        match call(&self.shared, self.pms.upsert_reservation(req)).await {
            Answer::Ok(_) => {
                self.shared.acked(&code);
                self.counts.ack(K_UPSERT);
                self.people[k].booked = true;
            }
            a => self.not_acked(&code, "UpsertReservation", a),
        }
    }

    /// Settles a write that was not acknowledged: "nothing done" takes it back out of the ledger;
    /// a cut or an error leaves it unsure (an error is also an anomaly).
    fn not_acked<T>(&mut self, code: &str, what: &str, a: Answer<T>) {
        match a {
            Answer::Ok(_) => {}
            Answer::Busy => {
                self.counts.busy += 1;
                self.shared.undone(code);
            }
            Answer::Refused(m) => {
                self.shared.anomaly(format!("{what} {code}: FAILED_PRECONDITION: {m}"));
                self.shared.undone(code);
            }
            Answer::Cut => self.counts.cut += 1,
            Answer::Error(e) => self
                .shared
                .anomaly(format!("{what} {code}: error before the kill: {e}")),
        }
    }

    async fn enrol(&mut self, k: usize) {
        let (code, photo) = (self.people[k].code.clone(), self.people[k].photo.clone());
        let Ok(bytes) = std::fs::read(&photo) else {
            self.shared.anomaly(format!("cannot read {}", photo.display()));
            self.people[k].unenrollable = true;
            return;
        };
        // One photo: one clean template when the service accepts it.
        self.shared.begin(&code, Write::Enrol { clean: 1, total: None });
        let req = pv::EnrollFaceRequest {
            property_id: self.property(),
            reservation_code: code.clone(),
            photos: vec![bytes],
            consent: Some(pv::Consent {
                granted: true,
                method: "booking-form".into(),
                text_version: "v1".into(),
                recorded_at_ms: 0,
            }),
        };
        match call(&self.shared, self.pms.enroll_face(req)).await {
            Answer::Ok(r) if r.get_ref().templates_stored > 0 => {
                let clean = r.get_ref().templates_stored;
                self.shared.acked(&code);
                self.counts.ack(K_ENROL);
                self.people[k].enrolled = true;
                // Every kind the enrolment stored, as the store counts them (nothing else writes
                // this reservation meanwhile: its client sends one call at a time).
                let mut total = self.read_templates(&code).await;
                if total.is_some_and(|t| t < clean) {
                    self.shared.anomaly(format!(
                        "EnrollFace {code}: {clean} clean templates acknowledged, GetReservation right after reads {}",
                        total.unwrap_or(0)
                    ));
                    total = None;
                }
                if let Some(t) = total {
                    self.shared
                        .photo_totals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(photo, t);
                }
                if let Some((Write::Enrol { clean: c, total: t }, _)) =
                    self.shared.ledger().bookings.get_mut(&code).and_then(|b| {
                        b.writes
                            .iter_mut()
                            .rev()
                            .find(|(w, _)| matches!(w, Write::Enrol { .. }))
                    })
                {
                    *c = clean;
                    *t = total;
                }
            }
            Answer::Ok(_) => {
                // Every photo refused: nothing stored.
                self.counts.refused += 1;
                self.shared.undone(&code);
                self.people[k].unenrollable = true;
            }
            a => self.not_acked(&code, "EnrollFace", a),
        }
    }

    /// The reservation's templates (every kind) as GetReservation reads them.
    async fn read_templates(&mut self, code: &str) -> Option<u32> {
        let req = pv::GetReservationRequest {
            property_id: self.property(),
            reservation_code: code.to_string(),
        };
        match call(&self.shared, self.pms.get_reservation(req)).await {
            Answer::Ok(r) => Some(r.into_inner().templates),
            Answer::Cut => None,
            _ => {
                self.shared
                    .anomaly(format!("GetReservation {code} failed before the kill"));
                None
            }
        }
    }

    async fn health(&mut self, k: usize) {
        let code = self.people[k].code.clone();
        let colour = match self.rng.gen_range(0..100) {
            0..70 => pv::HealthColour::Green,
            70..85 => pv::HealthColour::Yellow,
            _ => pv::HealthColour::Red,
        } as i32;
        let now = chrono::Utc::now().timestamp_millis();
        let issued_at_ms = now - 60_000;
        self.shared.begin(&code, Write::Health { colour, issued_at_ms });
        let req = pv::UpdateHealthCodeRequest {
            property_id: self.property(),
            reservation_code: code.clone(),
            status: Some(pv::HealthStatus {
                colour,
                issued_at_ms,
                expires_at_ms: now + 24 * 3_600_000,
                source: "crash-pms".into(),
            }),
        };
        match call(&self.shared, self.pms.update_health_code(req)).await {
            Answer::Ok(_) => {
                self.shared.acked(&code);
                self.counts.ack(K_HEALTH);
            }
            a => self.not_acked(&code, "UpdateHealthCode", a),
        }
    }

    /// A unary check-in of guest `k` with their probe photo: 1:N, or 1:1 with their own code, or
    /// (`wrong_code`) 1:1 with another of this client's guests' code.
    async fn check_in(&mut self, k: usize, with_code: bool, wrong_code: bool) {
        let own = self.people[k].code.clone();
        let code = if wrong_code {
            match self.pick(|p| p.booked && !p.gone && p.code != own) {
                Some(j) => self.people[j].code.clone(),
                None => return,
            }
        } else if with_code {
            own.clone()
        } else {
            String::new()
        };
        let Ok(photo) = std::fs::read(&self.people[k].probe) else {
            return;
        };
        // If the answer never comes, the guest may have been checked in.
        self.shared.begin(&own, Write::CheckedIn);
        let req = pv::CheckInRequest {
            photo,
            reservation_code: code,
            health_qr: String::new(),
            guest_declines_face: false,
        };
        match call(&self.shared, self.kiosk.check_in(req)).await {
            Answer::Ok(r) => self.decided(&own, &r.into_inner()),
            a => self.not_acked(&own, "CheckIn", a),
        }
    }

    /// A check-in stream of guest `k` (probe photo; gives the code when asked).
    async fn stream(&mut self, k: usize) {
        let own = self.people[k].code.clone();
        let Ok(photo) = std::fs::read(&self.people[k].probe) else {
            return;
        };
        self.shared.begin(&own, Write::CheckedIn);
        let mut guest = ScriptedGuest::new(vec![photo], Vec::new(), Some(own.clone()));
        let run = tokio::time::timeout(CALL_LIMIT, drive(&mut self.kiosk, &mut guest, None, "", 4)).await;
        let answer = match run {
            Ok(Ok(run)) => Answer::Ok(run),
            Ok(Err(e)) => match e.downcast::<tonic::Status>() {
                Ok(s) => classify(&self.shared, Ok(Err(s))),
                Err(_) if self.shared.killed() => Answer::Cut,
                Err(e) => Answer::Error(format!("{e:#}")),
            },
            Err(elapsed) => classify(&self.shared, Err(elapsed)),
        };
        match answer {
            Answer::Ok(run) => match run.decision() {
                Some(d) => {
                    let d = d.clone();
                    self.decided(&own, &d);
                }
                // Only capture guidance came: the server records it after the kiosk closes the
                // stream, under an id this client is not told. Nothing approved.
                None => self.shared.undone(&own),
            },
            a => self.not_acked(&own, "CheckInStream", a),
        }
    }

    /// A decision the kiosk was told about, for the guest whose code is `own`.
    fn decided(&mut self, own: &str, r: &pv::CheckInResponse) {
        let approved = r.outcome == pv::Outcome::Approved as i32;
        if approved && r.reservation_code == own {
            self.shared.acked(own);
        } else {
            self.shared.undone(own);
            if approved {
                self.shared.anomaly(format!(
                    "decision {}: the guest of {own} was APPROVED as {}",
                    r.decision_id, r.reservation_code
                ));
            }
        }
        self.note_decision(r);
    }

    fn note_decision(&mut self, r: &pv::CheckInResponse) {
        if r.decision_id.is_empty() {
            return;
        }
        self.counts.ack(K_CHECK_IN);
        self.shared.ledger().decisions.push(DecisionAck {
            id: r.decision_id.clone(),
            kiosk: self.kiosk_holder.clone(),
            prop: self.prop,
            outcome: r.outcome,
        });
        if r.outcome == pv::Outcome::Review as i32 {
            self.reviews.push(r.decision_id.clone());
        }
    }

    /// The guest declines face check-in (their code given): REVIEW, recorded; nothing approved.
    async fn decline(&mut self, k: usize) {
        let req = pv::CheckInRequest {
            photo: Vec::new(),
            reservation_code: self.people[k].code.clone(),
            health_qr: String::new(),
            guest_declines_face: true,
        };
        match call(&self.shared, self.kiosk.check_in(req)).await {
            Answer::Ok(r) => self.note_decision(&r.into_inner()),
            Answer::Busy => self.counts.busy += 1,
            Answer::Cut => self.counts.cut += 1,
            Answer::Refused(e) | Answer::Error(e) => self
                .shared
                .anomaly(format!("CheckIn (declined) {}: {e}", self.people[k].code)),
        }
    }

    /// Staff override one of this kiosk's REVIEW decisions: APPROVE (half the time, when it names
    /// one of this client's reservations) or DENY.
    async fn override_one(&mut self) {
        let i = self.rng.gen_range(0..self.reviews.len());
        let id = self.reviews.swap_remove(i);
        let rec = match call(
            &self.shared,
            self.desk.get_decision(pv::GetDecisionRequest {
                decision_id: id.clone(),
            }),
        )
        .await
        {
            Answer::Ok(r) => r.into_inner(),
            Answer::Cut => return,
            Answer::Busy => return,
            Answer::Refused(e) | Answer::Error(e) => {
                self.shared.anomaly(format!("GetDecision {id} before the kill: {e}"));
                return;
            }
        };
        let code = rec.reservation_code;
        let own = self.people.iter().any(|p| p.code == code && !p.gone);
        let approve = own && self.rng.gen_bool(0.5);
        let action = if approve {
            pv::OverrideAction::Approve
        } else {
            pv::OverrideAction::Deny
        } as i32;
        self.overrides_sent += 1;
        let reason = format!(
            "crash trial: the desk {} ({})",
            if approve { "approves" } else { "denies" },
            self.overrides_sent
        );
        self.shared.ledger().overrides.insert(
            id.clone(),
            OverrideSent {
                action,
                reason: reason.clone(),
                staff: self.desk_holder.clone(),
                ack: Ack::Unsure,
            },
        );
        if approve {
            self.shared.begin(&code, Write::CheckedIn);
        }
        let req = pv::OverrideDecisionRequest {
            decision_id: id.clone(),
            action,
            reason,
        };
        let answer = call(&self.shared, self.desk.override_decision(req)).await;
        let settle = |s: &Shared, ack: Option<Ack>| {
            let mut l = s.ledger();
            match ack {
                Some(a) => {
                    if let Some(o) = l.overrides.get_mut(&id) {
                        o.ack = a;
                    }
                }
                None => {
                    l.overrides.remove(&id);
                }
            }
        };
        match answer {
            Answer::Ok(_) => {
                settle(&self.shared, Some(Ack::Acknowledged));
                if approve {
                    self.shared.acked(&code);
                }
                self.counts.ack(K_OVERRIDE);
            }
            // APPROVE of a reservation no longer BOOKED (checked in since, erased): nothing done.
            Answer::Refused(_) | Answer::Busy => {
                settle(&self.shared, None);
                if approve {
                    self.shared.undone(&code);
                }
                self.counts.refused += 1;
            }
            Answer::Cut => self.counts.cut += 1,
            Answer::Error(e) => self
                .shared
                .anomaly(format!("OverrideDecision {id}: error before the kill: {e}")),
        }
    }

    async fn erase(&mut self, k: usize) {
        let code = self.people[k].code.clone();
        self.people[k].gone = true;
        self.shared.begin(&code, Write::Erase);
        let req = pv::EraseGuestRequest {
            property_id: self.property(),
            reservation_code: code.clone(),
            reason: "crash trial: the guest asked to be forgotten".into(),
        };
        match call(&self.shared, self.pms.erase_guest(req)).await {
            Answer::Ok(_) => {
                self.shared.acked(&code);
                self.counts.ack(K_ERASE);
            }
            Answer::Busy => {
                self.counts.busy += 1;
                self.shared.undone(&code);
                self.people[k].gone = false;
            }
            a => self.not_acked(&code, "EraseGuest", a),
        }
    }
}
