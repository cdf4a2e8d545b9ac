//! gRPC handlers. They only translate: a request's fields are validated ([`validate`]) and
//! converted ([`convert`]) into the core's types, the core decides, and its answer is converted
//! back. Every error becomes a status in one place ([`status`]), through `?`.

pub(crate) mod convert;
mod status;
pub(crate) mod validate;

use crate::auth::caller;
use crate::core::{App, Consent, FeedEnd, StreamAnswer, REVIEW_PAGE};
use crate::domain::HealthRecord;
use crate::store::ReservationInput;
use convert::{check_in_response, override_action, photo_result, recorded_response};
use lobby_proto::v1 as pv;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use validate::{bad, ident, text};

type RespStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct Reservations(pub Arc<App>);

#[tonic::async_trait]
impl pv::reservation_service_server::ReservationService for Reservations {
    async fn upsert_reservation(
        &self,
        req: Request<pv::UpsertReservationRequest>,
    ) -> Result<Response<pv::Reservation>, Status> {
        let c = caller(&req)?;
        let r = req
            .into_inner()
            .reservation
            .ok_or_else(|| bad("reservation is required"))?;
        let input = ReservationInput::try_from(r)?;
        let view = self.0.upsert_reservation(&c, &input).await?;
        Ok(Response::new((&view).into()))
    }

    async fn enroll_face(
        &self,
        req: Request<pv::EnrollFaceRequest>,
    ) -> Result<Response<pv::EnrollFaceResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let property = ident("property_id", &r.property_id)?.to_string();
        let code = ident("reservation_code", &r.reservation_code)?.to_string();
        let consent = r.consent.unwrap_or_default();
        let max = self.0.settings().limits.max_photos_per_enrolment;
        if r.photos.is_empty() || r.photos.len() > max {
            return Err(bad(format!("send 1-{max} photos")).into());
        }
        // Whether consent was given is the core's rule; how it was recorded must be said with it.
        let consent = Consent {
            granted: consent.granted,
            method: text("consent.method", &consent.method, 64, consent.granted)?.into(),
            text_version: text("consent.text_version", &consent.text_version, 64, consent.granted)?.into(),
            at_ms: consent.recorded_at_ms,
        };
        let (guest_id, outcomes, stored) = self.0.enrol(&c, &property, &code, r.photos, consent).await?;
        Ok(Response::new(pv::EnrollFaceResponse {
            guest_id,
            photos: outcomes.iter().enumerate().map(|(i, o)| photo_result(i, o)).collect(),
            templates_stored: stored as u32,
        }))
    }

    async fn update_health_code(
        &self,
        req: Request<pv::UpdateHealthCodeRequest>,
    ) -> Result<Response<pv::Reservation>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let h = HealthRecord::try_from(r.status.ok_or_else(|| bad("status is required"))?)?;
        let view = self
            .0
            .set_health(
                &c,
                ident("property_id", &r.property_id)?,
                ident("reservation_code", &r.reservation_code)?,
                &h,
            )
            .await?;
        Ok(Response::new((&view).into()))
    }

    async fn erase_guest(
        &self,
        req: Request<pv::EraseGuestRequest>,
    ) -> Result<Response<pv::EraseGuestResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let e = self
            .0
            .erase(
                &c,
                ident("property_id", &r.property_id)?,
                ident("reservation_code", &r.reservation_code)?,
                text("reason", &r.reason, 500, true)?,
            )
            .await?;
        Ok(Response::new(pv::EraseGuestResponse {
            guest_id: e.guest_id,
            templates_deleted: e.templates.len() as u32,
            decisions_anonymised: e.decisions_anonymised as u32,
            wal_cleared: e.wal_cleared,
        }))
    }

    async fn get_reservation(
        &self,
        req: Request<pv::GetReservationRequest>,
    ) -> Result<Response<pv::Reservation>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let view = self
            .0
            .get_reservation(
                &c,
                ident("property_id", &r.property_id)?,
                ident("reservation_code", &r.reservation_code)?,
            )
            .await?;
        Ok(Response::new((&view).into()))
    }
}

pub struct Kiosk(pub Arc<App>);

#[tonic::async_trait]
impl pv::kiosk_service_server::KioskService for Kiosk {
    async fn check_in(&self, req: Request<pv::CheckInRequest>) -> Result<Response<pv::CheckInResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        validate::check_in_frame(&r)?;
        let done = if r.guest_declines_face {
            self.0.decline(&c, &r.reservation_code).await?
        } else {
            self.0.check_in(&c, r.photo, &r.reservation_code, &r.health_qr).await?
        };
        Ok(Response::new(recorded_response(&done)))
    }

    type CheckInStreamStream = RespStream<pv::CheckInResponse>;

    async fn check_in_stream(
        &self,
        req: Request<Streaming<pv::CheckInRequest>>,
    ) -> Result<Response<Self::CheckInStreamStream>, Status> {
        let c = caller(&req)?;
        let mut frames = req.into_inner();
        let app = self.0.clone();
        let mut stream = app.open_check_in_stream(&c)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut timed_out = false;
            // Every way out of the loop goes through `end_stream`, which decides what the stream
            // leaves on record (the core's rule).
            loop {
                if stream.out_of_frames(&app.settings().ladder) {
                    break; // the ladder decides at its last frame; nothing more is read
                }
                let frame = match tokio::time::timeout_at(stream.deadline, frames.next()).await {
                    Ok(Some(Ok(frame))) => frame,
                    Ok(_) => break, // the kiosk closed its side or went away
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                };
                if let Err(e) = validate::check_in_frame(&frame) {
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                if frame.guest_declines_face {
                    // The guest's choice ends the stream at the desk, whatever came before.
                    let done = app.stream_decline(&c, stream, &frame.reservation_code).await;
                    let _ = tx.send(done.map(|d| recorded_response(&d)).map_err(Into::into)).await;
                    return;
                }
                let answer = app
                    .stream_frame(&c, &mut stream, frame.photo, &frame.reservation_code, &frame.health_qr)
                    .await;
                let reply = match answer {
                    Ok(StreamAnswer::Guidance(e)) => Ok(check_in_response("", &e)),
                    Ok(StreamAnswer::Final(done)) => {
                        let _ = tx.send(Ok(recorded_response(&done))).await;
                        return;
                    }
                    Err(e) => {
                        // A bad frame (or a full server) ends the stream with its status.
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                };
                if tx.send(reply).await.is_err() {
                    break; // nobody reads the answers any more
                }
            }
            let secs = app.settings().limits.check_in_stream_secs;
            match app.end_stream(&c, stream).await {
                Ok(Some(done)) => {
                    let _ = tx.send(Ok(recorded_response(&done))).await;
                }
                Ok(None) if timed_out => {
                    let _ = tx
                        .send(Err(Status::deadline_exceeded(format!(
                            "a check-in stream lasts at most {secs} s; start again"
                        ))))
                        .await;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

pub struct FrontDesk(pub Arc<App>);

#[tonic::async_trait]
impl pv::front_desk_service_server::FrontDeskService for FrontDesk {
    type StreamReviewsStream = RespStream<pv::DecisionRecord>;
    type ExportAuditTrailStream = RespStream<pv::AuditExportChunk>;

    async fn export_audit_trail(
        &self,
        _req: Request<pv::ExportAuditTrailRequest>,
    ) -> Result<Response<Self::ExportAuditTrailStream>, Status> {
        const PAGE: usize = 1000;
        let (public_key, checkpoints, total) = self.0.audit_export_head().await?;
        let app = self.0.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let head = pv::AuditExportChunk {
                public_key,
                checkpoints: checkpoints.iter().map(Into::into).collect(),
                entries: Vec::new(),
                total_entries: total as u64,
            };
            if tx.send(Ok(head)).await.is_err() {
                return;
            }
            // Up to the last checkpoint: the entries it anchors (later ones are in the next export).
            let mut after = 0;
            while after < total {
                let page = match app.audit_page(after, PAGE).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let page: Vec<_> = page.into_iter().filter(|e| e.seq <= total).collect();
                let Some(last) = page.last().map(|e| e.seq) else { return };
                after = last;
                let chunk = pv::AuditExportChunk {
                    entries: page.iter().map(Into::into).collect(),
                    ..Default::default()
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stream_reviews(
        &self,
        req: Request<pv::StreamReviewsRequest>,
    ) -> Result<Response<Self::StreamReviewsStream>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let asked = match r.property_id.as_str() {
            "" => None,
            p => Some(ident("property_id", p)?),
        };
        let mut feed = self.0.review_feed(&c, asked).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match feed.next().await {
                    Ok(Ok(d)) => Ok((&d).into()),
                    Ok(Err(FeedEnd::Shutdown)) => return,
                    Ok(Err(FeedEnd::Lagged(n))) => Err(Status::unavailable(format!(
                        "this review stream fell {n} decisions behind; reconnect to get the pending reviews"
                    ))),
                    Err(e) => Err(e.into()),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_pending_reviews(
        &self,
        req: Request<pv::ListPendingReviewsRequest>,
    ) -> Result<Response<pv::ListPendingReviewsResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let asked = match r.property_id.as_str() {
            "" => None,
            p => Some(ident("property_id", p)?),
        };
        let size = match r.page_size {
            0 => REVIEW_PAGE,
            n if n as usize <= REVIEW_PAGE => n as usize,
            _ => return Err(bad(format!("page_size must be 1-{REVIEW_PAGE}")).into()),
        };
        let after = validate::page_token(&r.page_token)?;
        let page = self.0.pending_reviews(&c, asked, after.as_ref(), size).await?;
        let next_page_token = match page.last() {
            Some(d) if page.len() == size => convert::page_token(d),
            _ => String::new(),
        };
        Ok(Response::new(pv::ListPendingReviewsResponse {
            decisions: page.iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn override_decision(
        &self,
        req: Request<pv::OverrideDecisionRequest>,
    ) -> Result<Response<pv::DecisionRecord>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let action = override_action(r.action)?;
        let reason = text("reason", &r.reason, 500, true)?;
        let d = self
            .0
            .override_decision(&c, ident("decision_id", &r.decision_id)?, action, reason)
            .await?;
        Ok(Response::new((&d).into()))
    }

    async fn get_decision(&self, req: Request<pv::GetDecisionRequest>) -> Result<Response<pv::DecisionRecord>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let d = self.0.get_decision(&c, ident("decision_id", &r.decision_id)?).await?;
        Ok(Response::new((&d).into()))
    }

    async fn verify_audit_trail(
        &self,
        _req: Request<pv::VerifyAuditTrailRequest>,
    ) -> Result<Response<pv::VerifyAuditTrailResponse>, Status> {
        let v = self.0.verify_audit().await?;
        Ok(Response::new(pv::VerifyAuditTrailResponse {
            intact: v.first_broken.is_none(),
            entries: v.entries,
            first_broken_seq: v.first_broken.as_ref().map(|(s, _)| *s as u64).unwrap_or(0),
            checkpoints: v.checkpoints,
            detail: v
                .first_broken
                .map(|(s, why)| format!("entry {s}: {why}"))
                .unwrap_or_else(|| "intact".into()),
        }))
    }

    async fn check_index(
        &self,
        req: Request<pv::CheckIndexRequest>,
    ) -> Result<Response<pv::CheckIndexResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let v = self.0.check_index(&c, ident("property_id", &r.property_id)?).await?;
        Ok(Response::new(pv::CheckIndexResponse {
            indexed: v.indexed,
            stored: v.stored,
            missing_from_index: v.missing_from_index,
            not_in_store: v.not_in_store,
        }))
    }
}
