//! The reservation system: bookings, enrolments, re-enrolments, renames, health codes and
//! erasures, each acknowledged write recorded in the ledger.

use super::*;

pub(crate) type Res = ReservationServiceClient<Authed>;

pub(crate) async fn upsert(w: &World, c: &mut Res, t: &mut Tally, prop: usize, code: &str, name: &str) -> bool {
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

pub(crate) async fn health(
    w: &World,
    c: &mut Res,
    t: &mut Tally,
    prop: usize,
    code: &str,
    colour: pv::HealthColour,
) -> bool {
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
pub(crate) async fn enrol_photo(
    w: &World,
    c: &mut Res,
    t: &mut Tally,
    prop: usize,
    code: &str,
    photo: &Path,
) -> Option<u32> {
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

pub(crate) fn new_code(w: &World) -> String {
    format!("SOAK-{:05}", w.next_code.fetch_add(1, Ordering::Relaxed))
}

/// Books a new guest (GREEN health) and enrols them from the first photo the service accepts; the
/// guest joins the kiosks' picks.
pub(crate) async fn enrol_new(w: &World, c: &mut Res, t: &mut Tally, prop: usize, g: Arc<Guest>) -> bool {
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

pub(crate) fn pick_active(w: &World, rng: &mut StdRng, prop: Option<usize>) -> Option<(usize, Active)> {
    let prop = prop.unwrap_or_else(|| rng.gen_range(0..w.props.len()));
    let a = w.active[prop].lock().unwrap_or_else(|e| e.into_inner());
    if a.is_empty() {
        return None;
    }
    Some((prop, a[rng.gen_range(0..a.len())].clone()))
}

pub(crate) fn name_version(w: &World, code: &str) -> u32 {
    let l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
    l.res
        .get(code)
        .and_then(|r| r.name.as_ref())
        .and_then(|n| n.rsplit(" v").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn is_erased(w: &World, code: &str) -> bool {
    let l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
    l.res.get(code).is_some_and(|r| r.erased)
}

pub(crate) async fn pms_loop(w: Arc<World>, mut c: Res, mut pool: VecDeque<Arc<Guest>>, seed: u64) -> Tally {
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
