//! The service's vocabulary, shared by the core, the store and the API: decision outcomes and
//! reasons, ladder steps, reservation states, health colours, template kinds, override actions.
//! Each is stored by its name (`as_str`) and read back with `parse`, which refuses any other text.

use serde::{Deserialize, Serialize};

/// A string-named enum: the variants, their names, `as_str`, `parse` and `ALL`.
macro_rules! named {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named! {
    /// A check-in's outcome, ordered by severity: the decision is the most severe of its rules'.
    #[derive(PartialOrd, Ord)]
    pub enum Outcome {
        Approved = "APPROVED",
        Review = "REVIEW",
        Denied = "DENIED",
        Retry = "RETRY",
    }
}

named! {
    /// Machine-readable reasons of a decision.
    pub enum Reason {
        NoFace = "NO_FACE",
        MultipleFaces = "MULTIPLE_FACES",
        FaceTooSmall = "FACE_TOO_SMALL",
        FaceOutOfFrame = "FACE_OUT_OF_FRAME",
        TooDark = "TOO_DARK",
        TooBright = "TOO_BRIGHT",
        Blurred = "BLURRED",
        HeadTurned = "HEAD_TURNED",
        NotLive = "NOT_LIVE",
        Matched = "MATCHED",
        NoMatch = "NO_MATCH",
        LowMatchScore = "LOW_MATCH_SCORE",
        AmbiguousMatch = "AMBIGUOUS_MATCH",
        ReservationNotFound = "RESERVATION_NOT_FOUND",
        NotEnrolled = "NOT_ENROLLED",
        WrongArrivalDay = "WRONG_ARRIVAL_DAY",
        AlreadyCheckedIn = "ALREADY_CHECKED_IN",
        ReservationCancelled = "RESERVATION_CANCELLED",
        HealthGreen = "HEALTH_GREEN",
        HealthYellow = "HEALTH_YELLOW",
        HealthRed = "HEALTH_RED",
        HealthUnknown = "HEALTH_UNKNOWN",
        HealthExpired = "HEALTH_EXPIRED",
        HealthQrInvalid = "HEALTH_QR_INVALID",
        HealthQrStale = "HEALTH_QR_STALE",
        HealthQrOtherGuest = "HEALTH_QR_OTHER_GUEST",
        ShowReservation = "SHOW_RESERVATION",
        LowerMask = "LOWER_MASK",
        HoldStill = "HOLD_STILL",
        FaceDeclined = "FACE_DECLINED",
        NoConsent = "NO_CONSENT",
    }
}

named! {
    /// A step of the escalation ladder the server asks of a guest (`crate::core::ladder`).
    pub enum Step {
        /// Keep looking at the camera: more frames are fused (liveness uncertain).
        HoldStill = "HOLD_STILL",
        /// Show the booking QR or type the reservation code.
        ShowReservation = "SHOW_RESERVATION",
        /// Lower the mask for a moment.
        LowerMask = "LOWER_MASK",
    }
}

impl Step {
    /// The reason a RETRY asking this step carries.
    pub fn reason(self) -> Reason {
        match self {
            Step::HoldStill => Reason::HoldStill,
            Step::ShowReservation => Reason::ShowReservation,
            Step::LowerMask => Reason::LowerMask,
        }
    }
}

named! {
    pub enum ResStatus {
        Booked = "BOOKED",
        Cancelled = "CANCELLED",
        CheckedIn = "CHECKED_IN",
        CheckedOut = "CHECKED_OUT",
    }
}

named! {
    /// A health-code colour.
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "UPPERCASE")]
    pub enum Colour {
        Unknown = "UNKNOWN",
        Green = "GREEN",
        Yellow = "YELLOW",
        Red = "RED",
    }
}

named! {
    /// What a template was made from.
    pub enum TemplateKind {
        /// The enrolment photo as it is.
        Clean = "clean",
        /// The enrolment photo with synthetic masks drawn on it.
        Masked = "masked",
        /// The cascade's second stage: the teacher embedder on the enrolment photo.
        Teacher = "teacher",
        /// The cascade's second stage: dlib's embedder on the enrolment photo.
        Dlib = "dlib",
    }
}

impl TemplateKind {
    /// Whether templates of this kind are searched in the Faiss index (the first stage's); the
    /// second stage's are compared 1:1 with the few candidates the first stage found.
    pub fn indexed(self) -> bool {
        matches!(self, TemplateKind::Clean | TemplateKind::Masked)
    }
}

named! {
    /// A front-desk override.
    pub enum OverrideAction {
        Approve = "APPROVE",
        Deny = "DENY",
    }
}

/// A health status with its validity window and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRecord {
    pub colour: Colour,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub source: String,
}

impl HealthRecord {
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.colour != Colour::Unknown && self.issued_at_ms <= now_ms + 60_000 && now_ms < self.expires_at_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_and_nothing_else_parses() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
        for s in Step::ALL {
            assert_eq!(Step::parse(s.as_str()), Some(*s));
            assert_eq!(Reason::parse(s.as_str()), Some(s.reason()));
        }
        for x in Outcome::ALL {
            assert_eq!(Outcome::parse(x.as_str()), Some(*x));
        }
        for x in ResStatus::ALL {
            assert_eq!(ResStatus::parse(x.as_str()), Some(*x));
        }
        for x in Colour::ALL {
            assert_eq!(Colour::parse(x.as_str()), Some(*x));
        }
        for x in TemplateKind::ALL {
            assert_eq!(TemplateKind::parse(x.as_str()), Some(*x));
        }
        assert_eq!(ResStatus::parse("booked"), None);
        assert_eq!(Outcome::parse(""), None);
    }

    #[test]
    fn outcomes_are_ordered_by_severity() {
        assert!(Outcome::Approved < Outcome::Review && Outcome::Review < Outcome::Denied);
        assert_eq!(Outcome::Approved.max(Outcome::Denied), Outcome::Denied);
    }
}
