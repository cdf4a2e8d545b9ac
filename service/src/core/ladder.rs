//! The escalation ladder: what the server asks of a guest at the kiosk before sending them to the
//! front desk. Pure state and rules (no I/O), unit-tested here; `checkin` feeds it each frame's
//! facts.
//!
//! In a check-in stream the server keeps a [`Session`]. Good frames of the same guest are fused
//! ([`Fusion`]: the mean of their normalised embeddings, not normalised again, so a fused score is
//! the mean of the frames' scores; liveness averaged), the masked and the unmasked frames apart.
//! Renormalising the mean would inflate every score of frames that differ (impostors' too): on
//! two-photo LFW probes it raised the false-match rate at the service's thresholds to 1.7e-4 (1:1)
//! and 1.5e-5 (1:N); the mean of scores keeps them (bench/RESULTS.md, "Fused frames"). When
//! identity is not confident (no match, a score below the threshold, two guests too close), the
//! server climbs:
//! 1. a masked face: "lower your mask for a moment" ([`Step::LowerMask`]); the next frames are
//!    judged as unmasked probes;
//! 2. no booking code yet: "show your booking QR or type the code" ([`Step::ShowReservation`]); the
//!    frames that carry it are judged 1:1 at the 1:1 threshold;
//! 3. only then the front desk (REVIEW), with every step taken recorded in the decision.
//!
//! A step the guest does not answer within `ladder.step_frames` good frames counts as declined and
//! the ladder moves on; a code given stays for the rest of the stream. A face that matches but fails
//! liveness gets `ladder.liveness_frames` good frames, averaged, before it goes to the desk
//! ([`Step::HoldStill`]). A masked face that matches nobody is never DENIED for that: the worst a
//! not-confident identity gets is REVIEW.
//!
//! What an attacker could make of it is bounded: a frame joins the fusion only if it is the same
//! person as every frame already fused (`ladder.same_person_min`, well above the 1:1 threshold), so
//! one person's match cannot be combined with another's liveness; one stream tries at most one
//! reservation code (another code after one was given ends the ladder at the desk). A code that names
//! no reservation is answered exactly like a real code whose guest the face does not match (the
//! same steps, the same outcome), so the kiosk is no oracle for which codes exist.
//!
//! A unary check-in keeps no session: it answers the next step as a RETRY and the kiosk calls again
//! (a masked face without a code: lower the mask; without a code: show it; with a code: decide).

use crate::config::Ladder as LadderSettings;
pub use crate::domain::Step;
use crate::vision::{Embedding, SecondEmbeddings, SecondInput};
use std::sync::Arc;

/// One good frame (it passed the capture checks) as fusion keeps it: no photo, only what matching
/// reads, for as long as the stream lasts.
#[derive(Debug, Clone)]
pub struct FusedFrame {
    pub embedding: Embedding,
    pub p_real: f32,
    /// The second stage's input (unmasked frames) and, once computed, its embeddings.
    pub second_input: Option<Arc<SecondInput>>,
    pub second: Option<SecondEmbeddings>,
}

/// Good frames of one guest in one mask condition.
#[derive(Debug, Clone, Default)]
pub struct Fusion {
    frames: Vec<FusedFrame>,
}

/// The mean of embeddings (not normalised again): its inner product with a template is the mean of
/// their cosines with it. `None` for none.
pub fn mean_embedding<'a>(vs: impl Iterator<Item = &'a Embedding>) -> Option<Embedding> {
    let mut sum: Vec<f32> = Vec::new();
    let mut n = 0usize;
    for v in vs {
        if sum.is_empty() {
            sum = vec![0.0; v.0.len()];
        }
        sum.iter_mut().zip(&v.0).for_each(|(s, x)| *s += x);
        n += 1;
    }
    (n > 0 && sum.iter().all(|x| x.is_finite())).then(|| Embedding(sum.into_iter().map(|x| x / n as f32).collect()))
}

impl Fusion {
    /// Adds a frame: it joins the frames so far when its cosine with every one of them reaches
    /// `same_person_min`, else fusion starts again from it (someone else stepped up). At most `max`
    /// frames are kept (the oldest go). Returns whether it joined.
    pub fn add(&mut self, f: FusedFrame, same_person_min: f32, max: usize) -> bool {
        let joined = self
            .frames
            .iter()
            .all(|g| g.embedding.cosine(&f.embedding) >= same_person_min);
        if !joined {
            self.frames.clear();
        }
        self.frames.push(f);
        while self.frames.len() > max.max(1) {
            self.frames.remove(0);
        }
        joined
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The fused embedding: the mean of the frames' embeddings (not normalised: its score against a
    /// template is the mean of the frames' scores).
    pub fn embedding(&self) -> Option<Embedding> {
        mean_embedding(self.frames.iter().map(|f| &f.embedding))
    }

    /// The mean p(real) of the frames.
    pub fn p_real(&self) -> f32 {
        let n = self.frames.len().max(1) as f32;
        self.frames.iter().map(|f| f.p_real).sum::<f32>() / n
    }

    /// The frames, for computing their second-stage embeddings.
    pub fn frames_mut(&mut self) -> &mut [FusedFrame] {
        &mut self.frames
    }

    /// The fused second-stage embeddings, when every frame has them.
    pub fn second(&self) -> Option<SecondEmbeddings> {
        let all: Option<Vec<&SecondEmbeddings>> = self.frames.iter().map(|f| f.second.as_ref()).collect();
        let all = all.filter(|a| !a.is_empty())?;
        let teacher = mean_embedding(all.iter().map(|s| &s.teacher))?;
        let dlib = if all.iter().all(|s| s.dlib.is_some()) {
            mean_embedding(all.iter().filter_map(|s| s.dlib.as_ref()))
        } else {
            None
        };
        Some(SecondEmbeddings { teacher, dlib })
    }
}

/// What identity matching concluded on the fused frames, as the ladder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityState {
    /// A confident match (the decision then follows the policy: stay, health, liveness).
    Confident,
    /// Not confident: the ladder may ask something of the guest before the desk.
    NotConfident,
    /// The code the guest gave names no reservation.
    UnknownCode,
    /// Nothing the guest can do changes it (e.g. the reservation has no enrolled face).
    Final,
}

/// The ladder's answer to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Answer RETRY, asking this step.
    Ask(Step),
    /// Decide now (the policy's decision), the ladder exhausted where identity was not confident.
    Decide,
}

/// A check-in stream's state.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Frames received (good or not).
    pub frames: u32,
    /// Steps asked, in the order first asked.
    steps: Vec<Step>,
    /// The step waiting for an answer, and the good frames since it was asked.
    pending: Option<(Step, u32)>,
    /// The reservation code the guest gave in this stream.
    pub code: Option<String>,
    unmasked: Fusion,
    masked: Fusion,
    /// Whether the current good frame is masked.
    current_masked: bool,
    /// The code a 1:1 comparison was made against, and whether another code came after it.
    judged_code: Option<String>,
    switched_code: bool,
    unary: bool,
}

impl Session {
    pub fn stream() -> Session {
        Session::default()
    }

    /// A unary check-in: one frame, no memory; the next step is answered as a RETRY.
    pub fn unary() -> Session {
        Session {
            unary: true,
            ..Session::default()
        }
    }

    pub fn is_unary(&self) -> bool {
        self.unary
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// A frame arrived; `code` is its reservation code (empty: none). A new code replaces the old;
    /// a different one after a reservation was compared 1:1 ends the ladder ([`Session::next`]).
    pub fn frame(&mut self, code: &str) {
        self.frames += 1;
        if !code.is_empty() {
            if self.judged_code.as_deref().is_some_and(|j| j != code) {
                self.switched_code = true;
            }
            self.code = Some(code.to_string());
        }
    }

    /// Whether the stream has used up its frames.
    pub fn out_of_frames(&self, s: &LadderSettings) -> bool {
        !self.unary && self.frames >= s.max_frames
    }

    /// Adds a good frame to the fusion of its mask condition; returns that fusion.
    pub fn add_good(&mut self, f: FusedFrame, masked: bool, s: &LadderSettings) -> &mut Fusion {
        self.current_masked = masked;
        if !masked && matches!(self.pending, Some((Step::LowerMask, _))) {
            self.pending = None;
        }
        if let Some((_, n)) = self.pending.as_mut() {
            *n += 1;
        }
        let fusion = if masked { &mut self.masked } else { &mut self.unmasked };
        fusion.add(f, s.same_person_min, s.max_fused_frames as usize);
        fusion
    }

    /// The fusion of the current frame's condition.
    pub fn current(&self) -> &Fusion {
        if self.current_masked {
            &self.masked
        } else {
            &self.unmasked
        }
    }

    pub fn current_mut(&mut self) -> &mut Fusion {
        if self.current_masked {
            &mut self.masked
        } else {
            &mut self.unmasked
        }
    }

    fn ask(&mut self, step: Step) -> Next {
        if !self.steps.contains(&step) {
            self.steps.push(step);
        }
        if !matches!(self.pending, Some((s, _)) if s == step) {
            self.pending = Some((step, 0));
        }
        Next::Ask(step)
    }

    fn asked(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }

    /// The ladder's answer to a good frame, given what identity matching concluded on the fused
    /// frames and whether the fused face passed liveness.
    pub fn next(&mut self, identity: IdentityState, live: bool, s: &LadderSettings) -> Next {
        let masked = self.current_masked;
        if self.unary {
            return match identity {
                IdentityState::NotConfident if self.code.is_none() && masked => Next::Ask(Step::LowerMask),
                IdentityState::NotConfident if self.code.is_none() => Next::Ask(Step::ShowReservation),
                _ => Next::Decide,
            };
        }
        if self.code.is_some() {
            // The frame was compared 1:1 against this code: the step is answered.
            self.judged_code = self.code.clone();
            if matches!(self.pending, Some((Step::ShowReservation, _))) {
                self.pending = None;
            }
        }
        if self.out_of_frames(s) || self.switched_code {
            return Next::Decide;
        }
        // A step still waiting for its answer is asked again until its frames are used up.
        let waiting = |st: &Session, step: Step| matches!(st.pending, Some((p, n)) if p == step && n < s.step_frames);
        match identity {
            IdentityState::Confident if !live && (self.current().len() as u32) < s.liveness_frames => {
                self.ask(Step::HoldStill)
            }
            IdentityState::Confident => Next::Decide,
            IdentityState::Final if self.code.is_none() => Next::Decide,
            // Not confident, or a code that names no reservation (or one without a usable template):
            // the same steps either way.
            IdentityState::NotConfident | IdentityState::UnknownCode | IdentityState::Final => {
                if masked && (waiting(self, Step::LowerMask) || !self.asked(Step::LowerMask)) {
                    return self.ask(Step::LowerMask);
                }
                if self.code.is_none() && (waiting(self, Step::ShowReservation) || !self.asked(Step::ShowReservation)) {
                    return self.ask(Step::ShowReservation);
                }
                Next::Decide
            }
        }
    }
}

#[cfg(test)]
#[path = "ladder_tests.rs"]
mod tests;
