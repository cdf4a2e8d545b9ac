//! `lobby reservations import`: reservations (and consented enrolments) from a CSV file, parsed by
//! [`lobby_kiosk_client::import`].

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lobby_kiosk_client::import::parse;
use lobby_kiosk_client::proto as pv;
use std::path::Path;

pub async fn import(
    c: &mut pv::reservation_service_client::ReservationServiceClient<lobby_kiosk_client::Authed>,
    csv: &Path,
    consent_method: &str,
    consent_version: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let base = csv.parent().unwrap_or(Path::new("."));
    let parsed = parse(&text)?;
    for (line, why) in &parsed.bad {
        eprintln!("line {line}: not imported: {why}");
    }
    let rows = parsed.rows;
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Each failure on its own line: above the bar on a terminal, to stderr otherwise (the bar
    // draws nothing there, and would swallow them).
    let say = |m: String| {
        if bar.is_hidden() {
            eprintln!("{m}");
        } else {
            bar.println(m);
        }
    };
    let (mut ok, mut enrolled, mut failed, mut not_enrolled) = (0, 0, parsed.bad.len(), 0);
    for (line, row) in rows {
        let code = row.reservation.reservation_code.clone();
        let property = row.reservation.property_id.clone();
        bar.set_message(code.clone());
        if let Err(e) = c
            .upsert_reservation(pv::UpsertReservationRequest {
                reservation: Some(row.reservation),
            })
            .await
        {
            say(format!("line {line} ({code}): reservation refused: {}", e.message()));
            failed += 1;
            bar.inc(1);
            continue;
        }
        ok += 1;
        if row.consent {
            let photos: std::result::Result<Vec<Vec<u8>>, String> = row
                .photos
                .iter()
                .map(|p| std::fs::read(base.join(p)).map_err(|e| format!("{p}: {e}")))
                .collect();
            let photos = match photos {
                Ok(p) => p,
                Err(e) => {
                    say(format!("line {line} ({code}): photo unreadable, not enrolled: {e}"));
                    not_enrolled += 1;
                    bar.inc(1);
                    continue;
                }
            };
            match c
                .enroll_face(pv::EnrollFaceRequest {
                    property_id: property,
                    reservation_code: code.clone(),
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
                        say(format!("line {line} ({code}): no photo accepted ({})", why.join(", ")));
                        not_enrolled += 1;
                    }
                }
                Err(e) => {
                    say(format!("line {line} ({code}): enrolment refused: {}", e.message()));
                    not_enrolled += 1;
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_with_message("done");
    println!(
        "{ok} reservations imported, {enrolled} faces enrolled; {failed} rows not imported, {not_enrolled} enrolments failed"
    );
    // The exit status says whether anything failed (the rest was imported regardless).
    if failed + not_enrolled > 0 {
        anyhow::bail!("{failed} rows not imported and {not_enrolled} enrolments failed (see above)");
    }
    Ok(())
}
