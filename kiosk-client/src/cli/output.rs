//! How the `lobby` command prints the service's answers.

use lobby_kiosk_client::{outcome_name, proto as pv, reason_names};

pub fn print_checkin(r: &pv::CheckInResponse) {
    println!(
        "decision  {}",
        if r.decision_id.is_empty() {
            "(guidance only)"
        } else {
            &r.decision_id
        }
    );
    println!("outcome   {}", outcome_name(r.outcome));
    println!("reasons   {}", reason_names(&r.reasons).join(", "));
    println!("message   {}", r.guest_message);
    if !r.reservation_code.is_empty() {
        println!("reservation {}", r.reservation_code);
    }
    if let Some(q) = &r.quality {
        println!(
            "quality   face {:.0} px, sharpness {:.0}, brightness {:.0}, yaw {:.0} pitch {:.0} roll {:.0}",
            q.face_size_px, q.sharpness, q.brightness, q.yaw_deg, q.pitch_deg, q.roll_deg
        );
    }
}

pub fn print_decision(d: &pv::DecisionRecord) {
    println!(
        "{}  {}  {} -> {}  [{}]  reservation {}  score {:.3}/{:.3}  kiosk {}{}",
        d.decision_id,
        d.property_id,
        outcome_name(d.outcome),
        outcome_name(d.final_outcome),
        reason_names(&d.reasons).join(","),
        if d.reservation_code.is_empty() {
            "-"
        } else {
            &d.reservation_code
        },
        d.match_score,
        d.match_threshold,
        d.kiosk_id,
        d.r#override
            .as_ref()
            .map(|o| format!("  overridden by {}: {}", o.staff_id, o.reason))
            .unwrap_or_default()
    );
}
