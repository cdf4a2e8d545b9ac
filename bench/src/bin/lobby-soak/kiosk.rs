//! The kiosks: unary 1:N and 1:1 check-ins of guests, strangers, ladder streams, and the bursts of
//! the overload windows; every answer is noted in the tally (approvals attributed by person).

use super::*;

pub(crate) type Kiosk = KioskServiceClient<Authed>;

pub(crate) const K_1N: &str = "unary 1:N guest";
pub(crate) const K_11: &str = "unary 1:1 guest (code)";
pub(crate) const K_STRANGER: &str = "unary 1:N stranger";
pub(crate) const K_STRANGER_CODE: &str = "unary 1:1 stranger (guest's code)";
pub(crate) const K_HEAVY: &str = "unary 1:N full-size photo (overload)";
pub(crate) const K_STREAM: &str = "stream guest";
pub(crate) const K_STREAM_STRANGER: &str = "stream stranger";
pub(crate) const KINDS: [&str; 7] = [
    K_1N,
    K_11,
    K_STRANGER,
    K_STRANGER_CODE,
    K_HEAVY,
    K_STREAM,
    K_STREAM_STRANGER,
];

pub(crate) fn is_stream(kind: &str) -> bool {
    kind.starts_with("stream")
}

/// Who is at the kiosk: their own reservation (guests) and who they are (`source:identity`).
pub(crate) struct Who {
    pub(crate) own: Option<String>,
    pub(crate) person: String,
}

impl Who {
    pub(crate) fn guest(a: &Active) -> Who {
        Who {
            own: Some(a.code.clone()),
            person: format!("{}:{}", a.guest.source, a.guest.identity),
        }
    }
    pub(crate) fn stranger(person: &str) -> Who {
        Who {
            own: None,
            person: person.to_string(),
        }
    }
}

/// An identity's name without its source, lower case, letters and digits only (`lfw:Imran_Khan`
/// and `mfr2:ImranKhan` are the same person in two datasets).
pub(crate) fn norm_name(person: &str) -> String {
    let name = person.split_once(':').map(|x| x.1).unwrap_or(person);
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether an approval for another reservation was of the same person (the datasets overlap), of
/// someone the data does not name, or of a different person.
pub(crate) fn approval_class(person: &str, approved: &str) -> &'static str {
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
pub(crate) fn note_decision(w: &World, t: &mut Tally, kiosk: usize, kind: &str, who: &Who, a: &pv::CheckInResponse) {
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

pub(crate) async fn unary(
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
        guest_declines_face: false,
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

pub(crate) async fn stream(
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

pub(crate) fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// Deliberate overload: a kiosk sends `overload_parallel` check-ins at once, each a full-size photo
/// (half of them) or a guest's 1:N check-in (a stranger's when the property has no guest).
pub(crate) async fn burst(w: &Arc<World>, k: &Kiosk, t: &mut Tally, kiosk: usize, rng: &mut StdRng) -> bool {
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

pub(crate) async fn kiosk_loop(w: Arc<World>, kiosk: usize, mut k: Kiosk, seed: u64, think_ms: u64) -> Tally {
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
