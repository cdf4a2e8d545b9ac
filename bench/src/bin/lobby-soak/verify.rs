//! Afterwards: every acknowledged write read back from the server, and the audit trail verified.

use super::*;

pub(crate) struct Checked {
    pub(crate) reservations: usize,
    pub(crate) reservation_mismatches: Vec<String>,
    pub(crate) decisions: usize,
    pub(crate) decision_mismatches: Vec<String>,
    pub(crate) overrides_checked: usize,
    pub(crate) duplicate_ids: usize,
    pub(crate) audit: pv::VerifyAuditTrailResponse,
    pub(crate) audit_lower_bound: u64,
}

pub(crate) async fn verify(w: &World, server: &Server, decisions: &[DecisionAck]) -> Result<Checked> {
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
        // An erased reservation is gone (NOT_FOUND): erasure deletes it.
        let v = match (got, a.erased) {
            (Err(s), true) if s.code() == tonic::Code::NotFound => continue,
            (Ok(_), true) => {
                bad_res.push(format!("{code}: erasure acknowledged, the reservation is still there"));
                continue;
            }
            (Ok(v), false) => v.into_inner(),
            (Err(s), _) => {
                bad_res.push(format!(
                    "{code}: GetReservation {}: {}",
                    code_name(s.code()),
                    s.message()
                ));
                continue;
            }
        };
        let mut why = Vec::new();
        {
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
