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
    println!("match     {:.3} (threshold {:.3})", r.match_score, r.match_threshold);
    println!(
        "liveness  {:.3} (threshold {:.3}, live: {})",
        r.liveness_score, r.liveness_threshold, r.live
    );
    println!(
        "mask      {} (p {:.3})",
        if r.masked { "masked" } else { "none" },
        r.mask_score
    );
    if let Some(h) = &r.health_used {
        println!(
            "health    {} ({})",
            pv::HealthColour::try_from(h.colour)
                .map(|c| c.as_str_name())
                .unwrap_or("?"),
            h.source
        );
    }
    if let Some(t) = &r.timings {
        println!(
            "timings   decode {:.1} detect {:.1} quality {:.1} liveness {:.1} align {:.1} embed {:.1} search {:.1} decide {:.1} total {:.1} ms",
            t.decode_ms, t.detect_ms, t.quality_ms, t.liveness_ms, t.align_ms, t.embed_ms, t.search_ms, t.decide_ms, t.total_ms
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
