//! The front desk: pages through the pending reviews, overrides some (APPROVE when a reservation is
//! attached, in half of those, else DENY, always with a reason) and checks the audit trail every
//! minute.

use super::*;

pub(crate) type Desk = FrontDeskServiceClient<Authed>;

pub(crate) async fn desk_loop(w: Arc<World>, mut c: Desk, seed: u64) -> Tally {
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
