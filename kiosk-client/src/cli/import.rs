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
    let rows = parse(&text)?;
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut ok, mut enrolled, mut failed) = (0, 0, 0);
    for row in rows {
        let code = row.reservation.reservation_code.clone();
        let property = row.reservation.property_id.clone();
        bar.set_message(code.clone());
        if let Err(e) = c
            .upsert_reservation(pv::UpsertReservationRequest {
                reservation: Some(row.reservation),
            })
            .await
        {
            bar.println(format!("{code}: reservation refused: {}", e.message()));
            failed += 1;
            bar.inc(1);
            continue;
        }
        ok += 1;
        if row.consent {
            let mut photos = Vec::new();
            for p in &row.photos {
                photos.push(std::fs::read(base.join(p)).with_context(|| format!("reading {p}"))?);
            }
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
                        bar.println(format!("{code}: no photo accepted ({})", why.join(", ")));
                    }
                }
                Err(e) => bar.println(format!("{code}: enrolment refused: {}", e.message())),
            }
        }
        bar.inc(1);
    }
    bar.finish_with_message("done");
    println!("{ok} reservations imported, {enrolled} faces enrolled, {failed} refused");
    Ok(())
}
