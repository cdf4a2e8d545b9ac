use super::*;
use crate::config::Settings;

fn settings() -> LadderSettings {
    Settings::load_from(None, std::iter::empty()).unwrap().ladder
}

fn unit(dim: usize, hot: usize) -> Embedding {
    let mut v = vec![0.0; dim];
    v[hot] = 1.0;
    Embedding(v)
}

fn frame(e: Embedding, p_real: f32) -> FusedFrame {
    FusedFrame {
        embedding: e,
        p_real,
        second_input: None,
        second: None,
    }
}

/// Feeds one good frame and asks the ladder.
fn good(s: &mut Session, code: &str, masked: bool, identity: IdentityState, live: bool) -> Next {
    let cfg = settings();
    s.frame(code);
    s.add_good(frame(unit(4, 0), if live { 0.9 } else { 0.1 }), masked, &cfg);
    s.next(identity, live, &cfg)
}

#[test]
fn an_unmasked_guest_not_recognised_is_asked_for_the_code_then_the_desk() {
    let mut s = Session::stream();
    assert_eq!(
        good(&mut s, "", false, IdentityState::NotConfident, true),
        Next::Ask(Step::ShowReservation)
    );
    // The next frames without a code remind the guest, until the step's frames are used up.
    let cfg = settings();
    for _ in 1..cfg.step_frames {
        assert_eq!(
            good(&mut s, "", false, IdentityState::NotConfident, true),
            Next::Ask(Step::ShowReservation)
        );
    }
    assert_eq!(good(&mut s, "", false, IdentityState::NotConfident, true), Next::Decide);
    assert_eq!(s.steps(), &[Step::ShowReservation]);
}

#[test]
fn the_code_given_is_judged_and_a_failure_goes_to_the_desk() {
    let mut s = Session::stream();
    good(&mut s, "", false, IdentityState::NotConfident, true);
    assert_eq!(s.steps(), &[Step::ShowReservation]);
    // The frame with the code is 1:1; not confident there: the desk, no further step.
    assert_eq!(
        good(&mut s, "R1", false, IdentityState::NotConfident, true),
        Next::Decide
    );
    assert_eq!(s.code.as_deref(), Some("R1"));
    // Confident on the code: decide.
    let mut s = Session::stream();
    good(&mut s, "", false, IdentityState::NotConfident, true);
    assert_eq!(good(&mut s, "R1", false, IdentityState::Confident, true), Next::Decide);
}

#[test]
fn a_masked_guest_is_asked_to_lower_the_mask_first_then_for_the_code() {
    let mut s = Session::stream();
    assert_eq!(
        good(&mut s, "", true, IdentityState::NotConfident, true),
        Next::Ask(Step::LowerMask)
    );
    // Lowered: judged unmasked; still not confident -> the code.
    assert_eq!(
        good(&mut s, "", false, IdentityState::NotConfident, true),
        Next::Ask(Step::ShowReservation)
    );
    assert_eq!(
        good(&mut s, "R1", false, IdentityState::NotConfident, true),
        Next::Decide
    );
    assert_eq!(s.steps(), &[Step::LowerMask, Step::ShowReservation]);
}

#[test]
fn a_guest_who_keeps_the_mask_on_is_asked_for_the_code_and_never_denied_for_it() {
    let cfg = settings();
    let mut s = Session::stream();
    good(&mut s, "", true, IdentityState::NotConfident, true);
    for _ in 1..cfg.step_frames {
        assert_eq!(
            good(&mut s, "", true, IdentityState::NotConfident, true),
            Next::Ask(Step::LowerMask)
        );
    }
    assert_eq!(
        good(&mut s, "", true, IdentityState::NotConfident, true),
        Next::Ask(Step::ShowReservation)
    );
    // With a code given at the start, a masked guest is still asked to lower the mask first.
    let mut s = Session::stream();
    assert_eq!(
        good(&mut s, "R1", true, IdentityState::NotConfident, true),
        Next::Ask(Step::LowerMask)
    );
}

#[test]
fn a_live_doubt_gets_more_frames_before_the_desk() {
    let cfg = settings();
    let mut s = Session::stream();
    for _ in 1..cfg.liveness_frames {
        assert_eq!(
            good(&mut s, "", false, IdentityState::Confident, false),
            Next::Ask(Step::HoldStill)
        );
    }
    assert_eq!(good(&mut s, "", false, IdentityState::Confident, false), Next::Decide);
    assert_eq!(s.current().len() as u32, cfg.liveness_frames);
}

#[test]
fn an_unknown_code_is_answered_like_a_real_code_the_face_does_not_match() {
    // The kiosk must not tell which codes exist: for the same frames, a code naming no reservation,
    // one whose guest has no template, and one whose guest the face does not match take the same
    // steps to the same end.
    let run = |identity: IdentityState, masked: bool| {
        let mut s = Session::stream();
        let mut answers = vec![good(&mut s, "", masked, IdentityState::NotConfident, true)];
        for _ in 0..4 {
            answers.push(good(&mut s, "R9", masked, identity, true));
        }
        answers.push(good(&mut s, "R9", false, identity, true));
        (answers, s.steps().to_vec())
    };
    for masked in [false, true] {
        let known = run(IdentityState::NotConfident, masked);
        assert_eq!(run(IdentityState::UnknownCode, masked), known, "masked {masked}");
        assert_eq!(run(IdentityState::Final, masked), known, "masked {masked}");
        assert_eq!(known.0.last(), Some(&Next::Decide));
    }
    // Unary: the same too.
    let cfg = settings();
    for masked in [false, true] {
        let ask = |id| {
            let mut s = Session::unary();
            s.frame("R9");
            s.add_good(frame(unit(4, 0), 0.9), masked, &cfg);
            s.next(id, true, &cfg)
        };
        assert_eq!(ask(IdentityState::UnknownCode), ask(IdentityState::NotConfident));
    }
}

#[test]
fn one_stream_tries_one_reservation() {
    // A masked guest gives a code (judged 1:1, not confident, asked to lower the mask), then types
    // another: the ladder ends at the desk instead of trying a second reservation.
    let mut s = Session::stream();
    assert_eq!(
        good(&mut s, "R1", true, IdentityState::NotConfident, true),
        Next::Ask(Step::LowerMask)
    );
    assert_eq!(
        good(&mut s, "R2", true, IdentityState::NotConfident, true),
        Next::Decide
    );
    // The same code again is no switch.
    let mut s = Session::stream();
    good(&mut s, "R1", true, IdentityState::NotConfident, true);
    assert_eq!(
        good(&mut s, "R1", true, IdentityState::NotConfident, true),
        Next::Ask(Step::LowerMask)
    );
}

#[test]
fn a_stream_ends_at_its_frame_limit() {
    let cfg = settings();
    let mut s = Session::stream();
    for _ in 0..cfg.max_frames - 1 {
        s.frame("");
    }
    assert!(!s.out_of_frames(&cfg));
    assert_ne!(
        good(&mut s, "", true, IdentityState::NotConfident, true),
        Next::Ask(Step::LowerMask)
    );
    assert!(s.out_of_frames(&cfg));
}

#[test]
fn unary_check_ins_answer_the_next_step_without_memory() {
    let cfg = settings();
    let ask = |code: &str, masked, id| {
        let mut s = Session::unary();
        s.frame(code);
        s.add_good(frame(unit(4, 0), 0.9), masked, &cfg);
        s.next(id, true, &cfg)
    };
    assert_eq!(ask("", true, IdentityState::NotConfident), Next::Ask(Step::LowerMask));
    assert_eq!(
        ask("", false, IdentityState::NotConfident),
        Next::Ask(Step::ShowReservation)
    );
    assert_eq!(ask("R1", false, IdentityState::NotConfident), Next::Decide);
    // A masked face with a code: decided (the kiosk asked the code because the mask stays on).
    assert_eq!(ask("R1", true, IdentityState::NotConfident), Next::Decide);
    assert_eq!(ask("R1", false, IdentityState::UnknownCode), Next::Decide);
    assert_eq!(ask("", false, IdentityState::Confident), Next::Decide);
}

#[test]
fn fusion_averages_the_same_person_and_restarts_for_someone_else() {
    let mut f = Fusion::default();
    let a = Embedding(vec![1.0, 0.0, 0.0]);
    let b = Embedding::normalised(vec![0.8, 0.6, 0.0]).unwrap();
    assert!(f.add(frame(a.clone(), 0.2), 0.5, 5));
    assert!(f.add(frame(b, 0.6), 0.5, 5));
    assert_eq!(f.len(), 2);
    assert!((f.p_real() - 0.4).abs() < 1e-6);
    // The mean, not normalised: a score against it is the mean of the frames' scores.
    let e = f.embedding().unwrap();
    assert!((e.0[0] - 0.9).abs() < 1e-6 && (e.0[1] - 0.3).abs() < 1e-6);
    assert!((e.cosine(&a) - (1.0 + 0.8) / 2.0).abs() < 1e-6);
    // Someone else: fusion starts again from them.
    assert!(!f.add(frame(Embedding(vec![0.0, 0.0, 1.0]), 0.9), 0.5, 5));
    assert_eq!(f.len(), 1);
    // A frame close to the mean but not to every frame fused does not join (one person's match
    // cannot be averaged with another's liveness).
    let mut g = Fusion::default();
    let x = Embedding::normalised(vec![1.0, 0.5, 0.0]).unwrap();
    let z = Embedding::normalised(vec![1.0, -0.5, 0.0]).unwrap();
    let w = Embedding::normalised(vec![1.0, -0.9, 0.0]).unwrap();
    assert!(g.add(frame(x.clone(), 0.9), 0.55, 5));
    assert!(g.add(frame(z.clone(), 0.9), 0.55, 5));
    let mean = (w.cosine(&x) + w.cosine(&z)) / 2.0;
    assert!(mean >= 0.55 && w.cosine(&x) < 0.55, "{mean}");
    assert!(!g.add(frame(w, 0.9), 0.55, 5));
    assert_eq!(g.len(), 1);
    // At most `max` frames are kept.
    for _ in 0..10 {
        f.add(frame(Embedding(vec![0.0, 0.0, 1.0]), 0.9), 0.5, 3);
    }
    assert_eq!(f.len(), 3);
}
