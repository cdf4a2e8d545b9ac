//! `lobby reservations import`: reservations (and consented enrolments) from a CSV file.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lobby_kiosk_client::proto as pv;
use std::path::Path;

/// `today` or `today+N` as a date; anything else as written.
pub fn relative_date(s: &str) -> String {
    let today = chrono::Local::now().date_naive();
    match s.strip_prefix("today") {
        Some("") => today.to_string(),
        Some(rest) => match rest.strip_prefix('+').and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => (today + chrono::Days::new(n)).to_string(),
            None => s.to_string(),
        },
        None => s.to_string(),
    }
}

pub async fn import(
    c: &mut pv::reservation_service_client::ReservationServiceClient<lobby_kiosk_client::Authed>,
    csv: &Path,
    consent_method: &str,
    consent_version: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let base = csv.parent().unwrap_or(Path::new("."));
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').map(str::trim).collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| *h == n)
            .with_context(|| format!("CSV column {n} missing"))
    };
    let (cp, cc, cn, cr, ca, cd, cs, cph) = (
        col("property")?,
        col("reservation_code")?,
        col("full_name")?,
        col("guest_ref")?,
        col("arrival")?,
        col("departure")?,
        col("consent")?,
        col("photos")?,
    );
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(|s| s.trim().to_string()).collect())
        .collect();
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut ok, mut enrolled, mut failed) = (0, 0, 0);
    for r in rows {
        let get = |i: usize| r.get(i).cloned().unwrap_or_default();
        let day = |i: usize| relative_date(&get(i));
        bar.set_message(get(cc));
        let res = pv::Reservation {
            property_id: get(cp),
            reservation_code: get(cc),
            guest: Some(pv::Guest {
                guest_id: String::new(),
                full_name: get(cn),
                guest_ref: get(cr),
            }),
            arrival_date: day(ca),
            departure_date: day(cd),
            status: pv::ReservationStatus::Booked as i32,
            ..Default::default()
        };
        if let Err(e) = c
            .upsert_reservation(pv::UpsertReservationRequest { reservation: Some(res) })
            .await
        {
            bar.println(format!("{}: reservation refused: {}", get(cc), e.message()));
            failed += 1;
            bar.inc(1);
            continue;
        }
        ok += 1;
        if get(cs).eq_ignore_ascii_case("yes") {
            let mut photos = Vec::new();
            for p in get(cph).split(';').filter(|p| !p.is_empty()) {
                photos.push(std::fs::read(base.join(p)).with_context(|| format!("reading {p}"))?);
            }
            match c
                .enroll_face(pv::EnrollFaceRequest {
                    property_id: get(cp),
                    reservation_code: get(cc),
                    photos,
                    consent: Some(pv::Consent {
                        granted: true,
                        method: consent_method.into(),
                        text_version: consent_version.into(),
                        recorded_at_ms: 0,
                    }),
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.templates_stored > 0 {
                        enrolled += 1;
                    } else {
                        let why: Vec<String> = r.photos.iter().map(|p| p.rejection_reason.clone()).collect();
                        bar.println(format!("{}: no photo accepted ({})", get(cc), why.join(", ")));
                    }
                }
                Err(e) => bar.println(format!("{}: enrolment refused: {}", get(cc), e.message())),
            }
        }
        bar.inc(1);
    }
    bar.finish_with_message("done");
    println!("{ok} reservations imported, {enrolled} faces enrolled, {failed} refused");
    Ok(())
}
