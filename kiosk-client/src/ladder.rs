//! A kiosk's side of the check-in stream's escalation ladder: send frames, act on each RETRY's
//! reason (ask for the booking code, ask the guest to lower the mask, keep looking), and close the
//! stream when the guest cannot take a step, so the server answers with the front-desk decision.
//!
//! What the guest does is a [`KioskGuest`]: [`ScriptedGuest`] for tests, benchmarks and scripted
//! use; the `lobby` command line also has one that asks on the terminal.

use crate::proto::{self as pv, kiosk_service_client::KioskServiceClient};
use crate::Authed;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What the guest in front of the kiosk does.
pub trait KioskGuest {
    /// The next frame the camera sees; `None` when the guest walks away.
    fn frame(&mut self) -> Option<Vec<u8>>;
    /// Asked for the booking QR or code: the code, or `None` (the guest has none).
    fn reservation_code(&mut self) -> Option<String>;
    /// Asked to lower the mask: whether the guest does (the next frames are then unmasked). A guest
    /// who does not stays in front of the camera; the server asks the next step after a few frames.
    fn lower_mask(&mut self) -> bool;
}

/// A guest who shows `frames` (the last one again while more are needed), lowers the mask to show
/// `unmasked` when asked (if any), and gives `code` when asked (if any).
#[derive(Debug, Clone, Default)]
pub struct ScriptedGuest {
    pub frames: Vec<Vec<u8>>,
    pub unmasked: Vec<Vec<u8>>,
    pub code: Option<String>,
    lowered: bool,
    next: usize,
}

impl ScriptedGuest {
    pub fn new(frames: Vec<Vec<u8>>, unmasked: Vec<Vec<u8>>, code: Option<String>) -> ScriptedGuest {
        ScriptedGuest {
            frames,
            unmasked,
            code,
            lowered: false,
            next: 0,
        }
    }
}

impl KioskGuest for ScriptedGuest {
    fn frame(&mut self) -> Option<Vec<u8>> {
        let v = if self.lowered { &self.unmasked } else { &self.frames };
        let f = v.get(self.next.min(v.len().checked_sub(1)?)).cloned();
        self.next += 1;
        f
    }

    fn reservation_code(&mut self) -> Option<String> {
        self.code.clone()
    }

    fn lower_mask(&mut self) -> bool {
        if self.unmasked.is_empty() || self.lowered {
            return self.lowered;
        }
        self.lowered = true;
        self.next = 0;
        true
    }
}

/// How a ladder run went, from the kiosk's side.
#[derive(Debug, Clone, Default)]
pub struct LadderRun {
    /// Every answer, in order (guidance, then the final decision if one came).
    pub answers: Vec<pv::CheckInResponse>,
    pub frames_sent: usize,
    /// The ladder steps the server asked (SHOW_RESERVATION, LOWER_MASK, HOLD_STILL), in order.
    pub steps: Vec<pv::Reason>,
    /// The guest had no code, could not lower the mask or walked away: the kiosk closed the stream.
    pub closed_by_kiosk: bool,
}

impl LadderRun {
    /// The final decision (APPROVED, REVIEW or DENIED), if the server gave one.
    pub fn decision(&self) -> Option<&pv::CheckInResponse> {
        self.answers
            .last()
            .filter(|a| a.outcome != pv::Outcome::Retry as i32 && a.outcome != pv::Outcome::Unspecified as i32)
    }
}

fn is_step(r: pv::Reason) -> bool {
    matches!(
        r,
        pv::Reason::ShowReservation | pv::Reason::LowerMask | pv::Reason::HoldStill
    )
}

/// Drives one check-in stream to its end. `code` and `qr` go with every frame (the code once the
/// guest gave it); at most `max_frames` frames are sent.
pub async fn drive(
    client: &mut KioskServiceClient<Authed>,
    guest: &mut (dyn KioskGuest + Send),
    code: Option<String>,
    qr: &str,
    max_frames: usize,
) -> anyhow::Result<LadderRun> {
    let (tx, rx) = mpsc::channel::<pv::CheckInRequest>(1);
    let mut answers = client.check_in_stream(ReceiverStream::new(rx)).await?.into_inner();
    let mut run = LadderRun::default();
    let mut code = code;
    let mut tx = Some(tx);
    while let Some(sender) = tx.as_ref() {
        let frame = match guest.frame() {
            Some(f) if run.frames_sent < max_frames => f,
            _ => {
                run.closed_by_kiosk = true;
                tx = None;
                break;
            }
        };
        sender
            .send(pv::CheckInRequest {
                photo: frame,
                reservation_code: code.clone().unwrap_or_default(),
                health_qr: qr.to_string(),
                guest_declines_face: false,
            })
            .await?;
        run.frames_sent += 1;
        let Some(a) = answers.message().await? else {
            return Ok(run);
        };
        let retry = a.outcome == pv::Outcome::Retry as i32;
        let step = a
            .reasons
            .first()
            .and_then(|r| pv::Reason::try_from(*r).ok())
            .filter(|r| is_step(*r));
        run.answers.push(a);
        if !retry {
            return Ok(run);
        }
        if let Some(step) = step {
            if run.steps.last() != Some(&step) {
                run.steps.push(step);
            }
            let can = match step {
                pv::Reason::ShowReservation if code.is_none() => {
                    code = guest.reservation_code();
                    code.is_some()
                }
                // A guest who keeps the mask on keeps being looked at: the server moves on to the
                // next step after a few frames.
                pv::Reason::LowerMask => {
                    guest.lower_mask();
                    true
                }
                _ => true,
            };
            if !can {
                run.closed_by_kiosk = true;
                tx = None;
            }
        }
    }
    drop(tx);
    // The kiosk closed its side: the server answers with the final decision.
    while let Some(a) = answers.message().await? {
        run.answers.push(a);
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scripted_guest_repeats_the_last_frame_and_lowers_the_mask_once() {
        let mut g = ScriptedGuest::new(vec![vec![1], vec![2]], vec![vec![9]], Some("R1".into()));
        assert_eq!(g.frame(), Some(vec![1]));
        assert_eq!(g.frame(), Some(vec![2]));
        assert_eq!(g.frame(), Some(vec![2]));
        assert!(g.lower_mask());
        assert_eq!(g.frame(), Some(vec![9]));
        assert_eq!(g.frame(), Some(vec![9]));
        assert_eq!(g.reservation_code().as_deref(), Some("R1"));
        let mut none = ScriptedGuest::new(vec![vec![1]], vec![], None);
        assert!(!none.lower_mask());
        assert_eq!(none.reservation_code(), None);
        assert_eq!(ScriptedGuest::default().frame(), None);
    }
}
