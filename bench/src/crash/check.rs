//! After the restart: every acknowledged write read back, nothing half-written, the audit trail and
//! its checkpoints verified, and each property's search index against the store. Whatever the
//! server answers, a mismatch is a named violation (never a panic).

use super::ledger::*;
use super::load::Shared;
use super::server::Credential;
use lobby_kiosk_client::proto as pv;
use lobby_kiosk_client::proto::front_desk_service_client::FrontDeskServiceClient;
use lobby_kiosk_client::proto::kiosk_service_client::KioskServiceClient;
use lobby_kiosk_client::proto::reservation_service_client::ReservationServiceClient;
use lobby_kiosk_client::{outcome_name, reason_names, Authed};
use std::collections::BTreeMap;
use std::time::Duration;

/// The checker's own credentials: a reservation system, a front desk, a kiosk per property.
pub struct CheckerCreds {
    pub pms: Credential,
    pub desk: Credential,
    pub kiosks: Vec<Credential>,
}

/// What the checks covered, and what they found.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub reservations: usize,
    pub decisions: usize,
    pub overrides: usize,
    /// 1:N check-ins with an enrolment photo (the index seen from outside).
    pub probes: usize,
    pub audit_entries: u64,
    /// Signed checkpoints the trail passed through, right after the restart and at the end.
    pub checkpoints_at_restart: u64,
    pub checkpoints: u64,
    /// Templates in the properties' indexes after the restart.
    pub indexed: u64,
    pub violations: Vec<String>,
}

/// A reservation as it read back after the restart.
enum ReadBack {
    Absent,
    Present { templates: u32 },
    Unreadable,
}

struct Checker<'a> {
    shared: &'a Shared,
    pms: ReservationServiceClient<Authed>,
    desk: FrontDeskServiceClient<Authed>,
    kiosks: Vec<KioskServiceClient<Authed>>,
    out: Checked,
}

/// Runs every check against the restarted server at `addr`; `audited` is the number of
/// acknowledged writes that each appended an audit entry.
pub async fn check(addr: &str, creds: &CheckerCreds, shared: &Shared, audited: u64) -> Checked {
    let mut out = Checked::default();
    let ch = match lobby_kiosk_client::connect(addr).await {
        Ok(ch) => ch,
        Err(e) => {
            out.violations
                .push(format!("the restarted server does not accept a connection: {e:#}"));
            return out;
        }
    };
    let kiosks: Result<Vec<_>, _> = creds
        .kiosks
        .iter()
        .map(|k| lobby_kiosk_client::kiosk(ch.clone(), &k.token))
        .collect();
    let (Ok(pms), Ok(desk), Ok(kiosks)) = (
        lobby_kiosk_client::reservations(ch.clone(), &creds.pms.token),
        lobby_kiosk_client::staff(ch, &creds.desk.token),
        kiosks,
    ) else {
        out.violations.push("a checker token is not a valid header".into());
        return out;
    };
    let mut c = Checker {
        shared,
        pms,
        desk,
        kiosks,
        out,
    };
    let (bookings, decisions, overrides) = {
        let l = shared.ledger.lock().unwrap_or_else(|e| e.into_inner());
        (l.bookings.clone(), l.decisions.clone(), l.overrides.clone())
    };
    // Before anything writes to the restarted server: the trail as the crash left it.
    if let Some(v) = c.audit(audited).await {
        c.out.checkpoints_at_restart = v.checkpoints;
    }
    let mut read = BTreeMap::new();
    for b in bookings.values() {
        read.insert(b.code.clone(), c.reservation(b).await);
    }
    for d in &decisions {
        c.decision(d, overrides.get(&d.id)).await;
    }
    c.out.overrides = overrides.values().filter(|o| o.ack == Ack::Acknowledged).count();
    for p in 0..shared.props.len() {
        c.index(p).await;
    }
    for b in bookings.values() {
        if b.sent(|w| matches!(w, Write::Enrol { .. })) {
            if let Some(r) = read.get(&b.code) {
                c.probe(b, r).await;
            }
        }
    }
    // The probes wrote decisions: the trail still verifies, and the restarted server anchored it.
    let mut waited = 0;
    loop {
        let Some(v) = c.audit(audited).await else { break };
        c.out.checkpoints = v.checkpoints;
        if v.checkpoints > 0 || waited >= 10 {
            if v.checkpoints == 0 {
                c.violate("the audit trail has no signed checkpoint 5 s after the checks".into());
            }
            break;
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.out
}

/// The `(colour, issued)` a health status reads as; `None` when none is set.
fn health_of(h: Option<&pv::HealthStatus>) -> Option<(i32, i64)> {
    h.map(|h| (h.colour, h.issued_at_ms))
        .filter(|&(c, at)| c != pv::HealthColour::Unknown as i32 || at != 0)
}

fn show<T: std::fmt::Debug>(v: &[Option<T>]) -> String {
    let s: Vec<String> = v
        .iter()
        .map(|x| match x {
            Some(x) => format!("{x:?}"),
            None => "none".into(),
        })
        .collect();
    s.join(" or ")
}

impl Checker<'_> {
    fn violate(&mut self, v: String) {
        self.out.violations.push(v);
    }

    /// VerifyAuditTrail: intact, and at least one entry per acknowledged audited write.
    async fn audit(&mut self, audited: u64) -> Option<pv::VerifyAuditTrailResponse> {
        match self.desk.verify_audit_trail(pv::VerifyAuditTrailRequest {}).await {
            Ok(v) => {
                let v = v.into_inner();
                if !v.intact {
                    self.violate(format!(
                        "the audit trail does not verify: entry {}: {}",
                        v.first_broken_seq, v.detail
                    ));
                }
                if v.entries < audited {
                    self.violate(format!(
                        "the audit trail has {} entries, fewer than the {audited} audited writes acknowledged",
                        v.entries
                    ));
                }
                self.out.audit_entries = v.entries;
                Some(v)
            }
            Err(s) => {
                self.violate(format!("VerifyAuditTrail: {:?}: {}", s.code(), s.message()));
                None
            }
        }
    }

    /// One reservation against what its client wrote.
    async fn reservation(&mut self, b: &Booking) -> ReadBack {
        self.out.reservations += 1;
        let code = &b.code;
        let erasure = b.possible(|w| matches!(w, Write::Erase).then_some(()));
        let (may_be_erased, must_be_erased) = (erasure.contains(&Some(())), !erasure.contains(&None));
        let may_be_absent = may_be_erased
            || b.possible(|w| matches!(w, Write::Upsert { .. }).then_some(()))
                .contains(&None);
        let req = pv::GetReservationRequest {
            property_id: self.shared.props[b.prop].clone(),
            reservation_code: code.clone(),
        };
        let r = match self.pms.get_reservation(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                if !may_be_absent {
                    self.violate(format!("{code}: acknowledged reservation not found"));
                }
                return ReadBack::Absent;
            }
            Err(s) => {
                self.violate(format!("{code}: GetReservation {:?}: {}", s.code(), s.message()));
                return ReadBack::Unreadable;
            }
        };
        let guest = r.guest.clone().unwrap_or_default();
        if must_be_erased {
            self.violate(format!(
                "{code}: acknowledged erasure undone (the reservation reads back)"
            ));
        }
        let names = b.possible(|w| match w {
            Write::Upsert { name } => Some(name.clone()),
            _ => None,
        });
        if !names.contains(&Some(guest.full_name.clone())) {
            self.violate(format!(
                "{code}: guest name {:?}, acknowledged {}",
                guest.full_name,
                show(&names)
            ));
        }
        if guest.guest_ref != format!("ref-{code}") {
            self.violate(format!("{code}: guest reference {:?}", guest.guest_ref));
        }
        if r.arrival_date != b.arrival || r.departure_date != b.departure {
            self.violate(format!(
                "{code}: stay {} - {}, written {} - {}",
                r.arrival_date, r.departure_date, b.arrival, b.departure
            ));
        }
        let statuses = b.possible(|w| match w {
            Write::Upsert { .. } => Some(pv::ReservationStatus::Booked as i32),
            Write::CheckedIn => Some(pv::ReservationStatus::CheckedIn as i32),
            _ => None,
        });
        if !statuses.contains(&Some(r.status)) {
            let names: Vec<Option<&str>> = statuses.iter().map(|s| s.map(status_name)).collect();
            self.violate(format!(
                "{code}: status {}, acknowledged {}",
                status_name(r.status),
                show(&names)
            ));
        }
        let healths = b.possible(|w| match w {
            Write::Health { colour, issued_at_ms } => Some((*colour, *issued_at_ms)),
            _ => None,
        });
        let health = health_of(r.health.as_ref());
        if !healths.contains(&health) {
            let shown = |h: &Option<(i32, i64)>| h.map(|(c, at)| format!("{}@{at}", colour_name(c)));
            let acked: Vec<Option<String>> = healths.iter().map(shown).collect();
            self.violate(format!(
                "{code}: health {}, acknowledged {}",
                shown(&health).unwrap_or_else(|| "none".into()),
                show(&acked)
            ));
        }
        self.templates(b, &r);
        ReadBack::Present { templates: r.templates }
    }

    /// Templates: a count some enrolment (or none) leaves, and consent exactly with them.
    fn templates(&mut self, b: &Booking, r: &pv::Reservation) {
        let code = &b.code;
        let t = r.templates;
        let enrols = b.possible(|w| match w {
            Write::Enrol { clean, total } => Some((*clean, *total)),
            _ => None,
        });
        let learned = self
            .shared
            .photo_totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&b.photo)
            .copied();
        let ok = enrols.iter().any(|e| match *e {
            None => t == 0,
            Some((_, Some(total))) => t == total,
            Some((clean, None)) => match learned {
                Some(total) => t == total,
                // Per accepted photo: a clean template, and at most a masked, a teacher and a dlib one.
                None => t >= clean && t <= 4 * clean,
            },
        });
        if !ok {
            self.violate(format!(
                "{code}: {t} templates, which no acknowledged or unsure enrolment leaves ({})",
                show(&enrols)
            ));
        }
        if t > 0 && !r.consent_recorded {
            self.violate(format!("{code}: {t} templates without consent (half-written)"));
        }
        if t == 0 && r.consent_recorded {
            self.violate(format!("{code}: consent without templates (half-written enrolment)"));
        }
    }

    /// One decision a kiosk was told about: recorded as told, with the override as sent.
    async fn decision(&mut self, d: &DecisionAck, o: Option<&OverrideSent>) {
        self.out.decisions += 1;
        let id = &d.id;
        let rec = match self
            .desk
            .get_decision(pv::GetDecisionRequest {
                decision_id: id.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.violate(format!(
                    "decision {id} ({} told to {}): GetDecision {:?}: {}",
                    outcome_name(d.outcome),
                    d.kiosk,
                    s.code(),
                    s.message()
                ));
                return;
            }
        };
        let mut why = Vec::new();
        if rec.outcome != d.outcome {
            why.push(format!(
                "outcome {}, the kiosk was told {}",
                outcome_name(rec.outcome),
                outcome_name(d.outcome)
            ));
        }
        if rec.kiosk_id != d.kiosk || rec.property_id != self.shared.props[d.prop] {
            why.push(format!("kiosk {} / {}, was {}", rec.kiosk_id, rec.property_id, d.kiosk));
        }
        match (o, &rec.r#override) {
            (Some(o), Some(x)) => {
                let fin = if o.action == pv::OverrideAction::Approve as i32 {
                    pv::Outcome::Approved
                } else {
                    pv::Outcome::Denied
                } as i32;
                // An erasure of the guest anonymises the decision: no reservation code, no reason
                // (an override's reason altered otherwise is the audit check's to name).
                let reason_ok = x.reason == o.reason || (x.reason.is_empty() && rec.reservation_code.is_empty());
                if x.action != o.action || !reason_ok || x.staff_id != o.staff || rec.final_outcome != fin {
                    why.push(format!(
                        "override {} by {} ({:?}), final {}; sent action {} by {}",
                        x.action,
                        x.staff_id,
                        x.reason,
                        outcome_name(rec.final_outcome),
                        o.action,
                        o.staff
                    ));
                }
            }
            (Some(o), None) if o.ack == Ack::Acknowledged => why.push("acknowledged override missing".into()),
            (Some(_), None) | (None, None) => {
                if rec.final_outcome != rec.outcome {
                    why.push("final outcome differs from the outcome without an override".into());
                }
            }
            (None, Some(x)) => why.push(format!("an override nobody sent, by {}", x.staff_id)),
        }
        if !why.is_empty() {
            self.violate(format!("decision {id}: {}", why.join("; ")));
        }
    }

    /// A property's index against the store (exact, by template id).
    async fn index(&mut self, p: usize) {
        let property = self.shared.props[p].clone();
        match self
            .desk
            .check_index(pv::CheckIndexRequest {
                property_id: property.clone(),
            })
            .await
        {
            Ok(v) => {
                let v = v.into_inner();
                self.out.indexed += v.indexed;
                if v.indexed != v.stored || v.missing_from_index != 0 || v.not_in_store != 0 {
                    self.violate(format!(
                        "{property}: the index holds {} templates, the store {} ({} stored not indexed, {} indexed not stored)",
                        v.indexed, v.stored, v.missing_from_index, v.not_in_store
                    ));
                }
            }
            Err(s) => self.violate(format!("{property}: CheckIndex {:?}: {}", s.code(), s.message())),
        }
    }

    /// The index from outside: a 1:N check-in with the reservation's enrolment photo finds it
    /// exactly when the store holds its templates (and it is not erased); otherwise it matches
    /// nobody.
    async fn probe(&mut self, b: &Booking, read: &ReadBack) {
        let expect = match read {
            ReadBack::Present { templates } => *templates > 0,
            ReadBack::Absent => false,
            ReadBack::Unreadable => return,
        };
        let code = &b.code;
        let Ok(photo) = std::fs::read(&b.photo) else {
            self.violate(format!("{code}: cannot read its enrolment photo {}", b.photo.display()));
            return;
        };
        self.out.probes += 1;
        let req = pv::CheckInRequest {
            photo,
            reservation_code: String::new(),
            health_qr: String::new(),
            guest_declines_face: false,
        };
        let answer = match self.kiosks[b.prop].check_in(req).await {
            Ok(a) => a.into_inner(),
            Err(s) => {
                self.violate(format!("{code}: probe check-in {:?}: {}", s.code(), s.message()));
                return;
            }
        };
        let rec = match self
            .desk
            .get_decision(pv::GetDecisionRequest {
                decision_id: answer.decision_id.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.violate(format!("{code}: the probe's decision {:?}: {}", s.code(), s.message()));
                return;
            }
        };
        let matched = rec.reasons.contains(&(pv::Reason::Matched as i32));
        let found = matched && rec.reservation_code == *code;
        let what = format!(
            "{} {} (score {:.3}){}",
            outcome_name(rec.outcome),
            reason_names(&rec.reasons).join(","),
            rec.match_score,
            if rec.reservation_code.is_empty() {
                String::new()
            } else {
                format!(" naming {}", rec.reservation_code)
            }
        );
        if expect && !found {
            self.violate(format!(
                "{code}: its templates are in the store, but its enrolment photo does not find it at 1:N: {what}"
            ));
        } else if !expect && matched {
            self.violate(format!(
                "{code}: erased or without templates, but its enrolment photo is matched at 1:N: {what}"
            ));
        }
    }
}
