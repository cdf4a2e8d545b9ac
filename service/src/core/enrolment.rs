//! Enrolment: a guest's face from 1-5 photos, with consent. Templates are stored, never photos:
//! per accepted photo the clean template, the masked one (mask-aware enrolment) and the cascade's
//! second-stage ones.

use super::{now_ms, App, AppError, Caller, Enrolment, Result};
use crate::domain::TemplateKind;
use crate::store::{ConsentRecord, NewTemplate};
use crate::vision::Quality;

/// Why an enrolment photo was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Undecodable,
    NoFace,
    MultipleFaces,
    FaceTooSmall,
    FaceOutOfFrame,
    BadLighting,
    Blurred,
    HeadTurned,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Undecodable => "undecodable",
            Rejection::NoFace => "no_face",
            Rejection::MultipleFaces => "multiple_faces",
            Rejection::FaceTooSmall => "face_too_small",
            Rejection::FaceOutOfFrame => "face_out_of_frame",
            Rejection::BadLighting => "bad_lighting",
            Rejection::Blurred => "blurred",
            Rejection::HeadTurned => "head_turned",
        }
    }
}

/// One enrolment photo's outcome.
#[derive(Debug, Clone)]
pub struct PhotoOutcome {
    pub faces_found: u32,
    pub quality: Option<Quality>,
    pub rejection: Option<Rejection>,
}

/// The guest's consent as the reservation system reports it.
#[derive(Debug, Clone)]
pub struct Consent {
    pub granted: bool,
    pub method: String,
    pub text_version: String,
    /// When the guest consented (0: now).
    pub at_ms: i64,
}

impl App {
    /// The enrolment checks, stricter than a check-in's: a bad template hurts every later check-in.
    fn rejection(&self, q: &Quality) -> Option<Rejection> {
        let p = &self.settings.policy;
        if q.comparable_faces > 1 {
            Some(Rejection::MultipleFaces)
        } else if q.face_size_px < p.enrol_min_face_px {
            Some(Rejection::FaceTooSmall)
        } else if q.out_of_frame > p.max_out_of_frame {
            Some(Rejection::FaceOutOfFrame)
        } else if q.brightness < p.min_brightness || q.brightness > p.max_brightness {
            Some(Rejection::BadLighting)
        } else if q.sharpness < p.min_sharpness {
            Some(Rejection::Blurred)
        } else if q.yaw_deg.abs() > p.enrol_max_yaw_deg.min(p.max_yaw_deg)
            || q.pitch_deg.abs() > p.max_pitch_deg
            || q.roll_deg.abs() > p.max_roll_deg
        {
            Some(Rejection::HeadTurned)
        } else {
            None
        }
    }

    /// Enrols a guest's face from 1-5 photos, with their consent (refused without). Stores
    /// templates (never photos) of the photos that pass the enrolment checks; answers per photo:
    /// (guest id, outcome per photo, clean templates stored).
    pub async fn enrol(
        &self,
        caller: &Caller,
        property: &str,
        code: &str,
        photos: Vec<Vec<u8>>,
        consent: Consent,
    ) -> Result<(String, Vec<PhotoOutcome>, usize)> {
        if !consent.granted {
            return Err(AppError::FailedPrecondition(
                "the guest's consent to face check-in is required before enrolment; without it, check the guest in at the desk".into(),
            ));
        }
        let res = self.get_reservation(caller, property, code).await?;
        let consent = ConsentRecord {
            method: consent.method,
            text_version: consent.text_version,
            at_ms: if consent.at_ms > 0 { consent.at_ms } else { now_ms() },
        };
        let flip = self.settings.cascade.flip;
        let mut outcomes = Vec::new();
        let mut templates = Vec::new();
        for photo in photos {
            let Enrolment {
                analysis: a,
                masked,
                second,
            } = match self.with_analyser(move |v| v.enrolment(&photo, flip)).await {
                Ok(a) => a,
                Err(AppError::InvalidArgument(_)) => {
                    outcomes.push(PhotoOutcome {
                        faces_found: 0,
                        quality: None,
                        rejection: Some(Rejection::Undecodable),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let faces_found = a.faces.len() as u32;
            let Some(f) = a.primary else {
                outcomes.push(PhotoOutcome {
                    faces_found,
                    quality: None,
                    rejection: Some(Rejection::NoFace),
                });
                continue;
            };
            let rejection = self.rejection(&f.quality);
            if rejection.is_none() {
                let mut add = |kind: TemplateKind, vector: Vec<f32>| {
                    templates.push(NewTemplate {
                        kind,
                        model_id: self.models.of(kind).to_string(),
                        vector,
                    })
                };
                add(TemplateKind::Clean, f.embedding.0);
                // Mask-aware enrolment: the same photo with synthetic masks, for masked check-ins.
                if let Some(m) = masked {
                    add(TemplateKind::Masked, m.0);
                }
                // The cascade's second stage.
                if let Some(s) = second {
                    add(TemplateKind::Teacher, s.teacher.0);
                    if let Some(d) = s.dlib {
                        add(TemplateKind::Dlib, d.0);
                    }
                }
            }
            outcomes.push(PhotoOutcome {
                faces_found,
                quality: Some(f.quality),
                rejection,
            });
        }
        if templates.is_empty() {
            return Ok((res.guest_id, outcomes, 0));
        }
        let clean = templates.iter().filter(|t| t.kind == TemplateKind::Clean).count();
        // The store's commit and the index update together, never interleaved with an erasure of
        // the same reservation. The templates replace any before; if the index update fails the
        // request fails, and its retry replaces the same templates again (no second copy).
        let _lock = self.lock_reservation(property, code).await;
        let e = self
            .store
            .enrol(property, code, &consent, &templates, &caller.id, now_ms())
            .await?;
        // Between the store's commit and the index update (the race tests hold enrolments here).
        super::test_point("enrol::before_index").await?;
        self.matcher.remove(property, &e.replaced).await?;
        self.matcher.add(property, &e.guest_id, &e.added, templates).await?;
        Ok((e.guest_id, outcomes, clean))
    }
}
