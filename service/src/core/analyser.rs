//! What the core needs of the face pipeline, as a trait: the service runs it on
//! [`crate::vision::Vision`] (real models); the core's unit tests on a fake without models or
//! photos.

use crate::vision::{Analysis, Embedding, SecondEmbeddings, SecondInput, Vision, VisionError};

/// What enrolment makes of one photo: its analysis, the masked template (mask-aware enrolment) and
/// the cascade's second-stage embeddings.
pub struct Enrolment {
    pub analysis: Analysis,
    pub masked: Option<Embedding>,
    pub second: Option<SecondEmbeddings>,
}

pub trait Analyser: Send + Sync + 'static {
    /// Decodes a check-in photo and analyses the guest's face in it.
    fn analyse(&self, photo: &[u8]) -> Result<Analysis, VisionError>;
    /// An enrolment photo: the analysis, the masked template and the second stage's embeddings
    /// (`flip`: teacher, dlib flip-averaged).
    fn enrolment(&self, photo: &[u8], flip: [bool; 2]) -> Result<Enrolment, VisionError>;
    /// The cascade's second stage on a face (dlib only when `with_dlib`).
    fn second_embeddings(
        &self,
        input: &SecondInput,
        with_dlib: bool,
        flip: [bool; 2],
    ) -> Result<SecondEmbeddings, VisionError>;
}

impl Analyser for Vision {
    fn analyse(&self, photo: &[u8]) -> Result<Analysis, VisionError> {
        self.analyze_bytes(photo)
    }

    fn enrolment(&self, photo: &[u8], flip: [bool; 2]) -> Result<Enrolment, VisionError> {
        let img = self.decode(photo)?;
        let analysis = self.analyze(&img)?;
        let Some(f) = &analysis.primary else {
            return Ok(Enrolment {
                analysis,
                masked: None,
                second: None,
            });
        };
        // Without a masked template the guest is still enrolled (masked check-ins then score
        // against the clean template), so a failure here does not fail the photo.
        let masked = self.masked_template(&img, &f.face).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no masked template for this enrolment photo");
            None
        });
        // Without second-stage templates the guest is still enrolled (the first stage then decides
        // alone), so a failure here does not fail the photo either.
        let aligned = self.align(&img, &f.face)?;
        let second = SecondInput::new(&img, &f.face.landmarks, &aligned)
            .and_then(|input| self.second_embeddings(&input, true, flip))
            .map_err(|e| tracing::warn!(error = %e, "no second-stage templates for this enrolment photo"))
            .ok();
        Ok(Enrolment {
            analysis,
            masked,
            second,
        })
    }

    fn second_embeddings(
        &self,
        input: &SecondInput,
        with_dlib: bool,
        flip: [bool; 2],
    ) -> Result<SecondEmbeddings, VisionError> {
        Vision::second_embeddings(self, input, with_dlib, flip)
    }
}
