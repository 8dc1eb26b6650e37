//! Running room and call jobs: each re-reads the consultation, talks to the provider, and
//! records the fact (RoomProvisioned, RoomEnded) as an event of the consultation.
//!
//! Exactly one room per consultation and start: the room's name is fixed in the job, so a
//! retry after a crash asks the provider for the same room (which answers with the existing
//! one); the event is written only if no room is open, so a second run records nothing. A
//! room created for a consultation that meanwhile closed is ended at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use consult_domain::{
    Consultation, ConsultationCommand, ConsultationError, Mode, Party, Provider, Room,
    RoomEndReason, Status,
};
use consult_store::{calls, ExecuteError, Metadata, Store, StoreError};

use crate::rooms::{CallJob, RoomJob};
use crate::video::{RoomRequest, VideoProvider};
use crate::voice::{CallRequest, VoiceProvider};
use consult_store::jobs::Job;

pub(crate) use crate::outcome::JobOutcome;

/// The providers room and call jobs use, and where their callbacks go.
#[derive(Debug, Clone)]
pub struct Media {
    pub video: Arc<dyn VideoProvider>,
    /// `None`: calls are dead-lettered with a clear error (no voice provider configured).
    pub voice: Option<Arc<dyn VoiceProvider>>,
    /// `PUBLIC_BASE_URL`: the base of the provider's callbacks to us.
    pub public_base_url: String,
    /// Rooms close this long after the consultation's end; calls are not placed after it.
    pub grace: Duration,
}

fn metadata(job: &Job, actor: &str) -> Metadata {
    Metadata {
        actor_id: actor.to_owned(),
        actor_role: "system".to_owned(),
        correlation_id: job.consultation_id.clone(),
        causation_id: job.id.clone(),
        request_id: String::new(),
    }
}

fn retry_store(err: impl std::fmt::Display) -> JobOutcome {
    JobOutcome::Retry(err.to_string())
}

impl Media {
    fn base(&self) -> &str {
        self.public_base_url.trim_end_matches('/')
    }

    /// Runs a room job.
    pub(crate) async fn run_room(&self, store: &Store, job: &Job) -> JobOutcome {
        let action: RoomJob = match serde_json::from_str(&job.payload) {
            Ok(action) => action,
            Err(err) => return JobOutcome::Dead(format!("unreadable job: {err}")),
        };
        let state = match store.load::<Consultation>(&job.consultation_id).await {
            Ok(Some(loaded)) => loaded.aggregate,
            Ok(None) => return JobOutcome::Dead("no such consultation".into()),
            Err(err) => return retry_store(err),
        };
        match action {
            RoomJob::Create { name, starts_at } => {
                self.create_room(store, job, &state, name, starts_at).await
            }
            RoomJob::End { reason } => self.end_room(store, job, &state, reason).await,
        }
    }

    async fn create_room(
        &self,
        store: &Store,
        job: &Job,
        state: &Consultation,
        name: String,
        starts_at: chrono::DateTime<Utc>,
    ) -> JobOutcome {
        let id = &job.consultation_id;
        let wanted = |s: &Consultation| {
            matches!(s.status, Status::Confirmed | Status::InProgress)
                && s.booking.as_ref().is_some_and(|b| b.mode == Mode::Video)
                && s.starts_at() == Some(starts_at)
        };
        if !wanted(state) {
            tracing::info!(job = %job.id, consultation = %id, "room no longer needed for this start; skipped");
            return JobOutcome::Done;
        }
        if let Some(open) = state.open_room() {
            let current = open.name == name
                || open.for_start == Some(starts_at)
                || self.video.provision_lead().is_none();
            if current {
                return JobOutcome::Done;
            }
            // A room made for the old start of a moved consultation: the provider would close it
            // before the new start, so it is replaced.
            let old = open.clone();
            if let Err(err) = self.video.end_room(&old.name, old.sid.as_deref()).await {
                return err.into();
            }
            if let Err(outcome) = self
                .record_end(store, job, &old.name, RoomEndReason::Rescheduled)
                .await
            {
                return outcome;
            }
        }
        let request = RoomRequest {
            name: name.clone(),
            status_callback: Some(format!(
                "{}/v1/webhooks/twilio/rooms?consultation_id={id}",
                self.base()
            )),
        };
        let created = match self.video.create_room(&request).await {
            Ok(created) => created,
            Err(err) => return err.into(),
        };
        let room = Room {
            name: created.name.clone(),
            provider: self.video.name().to_owned(),
            sid: created.sid.clone(),
            for_start: Some(starts_at),
        };
        let now = Utc::now();
        let result = store
            .execute::<Consultation, ConsultationError, _>(id, &metadata(job, "rooms"), None, |s| {
                if !wanted(s) || s.open_room().is_some_and(|r| r.name == room.name) {
                    return Ok(Vec::new());
                }
                s.decide(ConsultationCommand::ProvisionRoom {
                    room: room.clone(),
                    at: now,
                })
            })
            .await;
        match result {
            Ok(committed) if committed.aggregate.open_room().map(|r| &r.name) == Some(&name) => {
                if committed.written > 0 {
                    tracing::info!(job = %job.id, consultation = %id, provider = self.video.name(), "room provisioned");
                }
                JobOutcome::Done
            }
            Ok(_) | Err(ExecuteError::Refused(_)) => {
                // The consultation closed or moved (or has another room) meanwhile: this room
                // must not stay open.
                tracing::info!(job = %job.id, consultation = %id, "room created for a consultation that no longer wants it; ending it");
                match self
                    .video
                    .end_room(&created.name, created.sid.as_deref())
                    .await
                {
                    Ok(()) => JobOutcome::Done,
                    Err(err) => err.into(),
                }
            }
            Err(err) => retry_store(err),
        }
    }

    async fn end_room(
        &self,
        store: &Store,
        job: &Job,
        state: &Consultation,
        reason: RoomEndReason,
    ) -> JobOutcome {
        let Some(room) = state.open_room() else {
            return JobOutcome::Done;
        };
        if reason == RoomEndReason::TimeUp {
            let close = state
                .ends_at()
                .map(|end| end + crate::notifications::chrono_duration(self.grace));
            if close.is_some_and(|close| close > Utc::now()) {
                // The consultation moved later; the timer of its new end will close the room.
                return JobOutcome::Done;
            }
        }
        if let Err(err) = self.video.end_room(&room.name, room.sid.as_deref()).await {
            return err.into();
        }
        match self.record_end(store, job, &room.name, reason).await {
            Ok(()) => {
                tracing::info!(job = %job.id, consultation = %job.consultation_id, "room ended");
                JobOutcome::Done
            }
            Err(outcome) => outcome,
        }
    }

    /// Records that a room ended; an end already recorded is not an error.
    async fn record_end(
        &self,
        store: &Store,
        job: &Job,
        name: &str,
        reason: RoomEndReason,
    ) -> Result<(), JobOutcome> {
        let now = Utc::now();
        let result = store
            .execute::<Consultation, ConsultationError, _>(
                &job.consultation_id,
                &metadata(job, "rooms"),
                None,
                |s| {
                    if s.open_room().is_none_or(|r| r.name != name) {
                        return Ok(Vec::new());
                    }
                    s.decide(ConsultationCommand::EndRoom {
                        name: name.to_owned(),
                        reason,
                        at: now,
                    })
                },
            )
            .await;
        match result {
            Ok(_) | Err(ExecuteError::Refused(_)) => Ok(()),
            Err(err) => Err(retry_store(err)),
        }
    }

    /// Runs a call job: rings the participant who asked, whose phone then fetches our TwiML,
    /// which dials the other one.
    pub(crate) async fn run_call(&self, store: &Store, job: &Job) -> JobOutcome {
        let call: CallJob = match serde_json::from_str(&job.payload) {
            Ok(call) => call,
            Err(err) => return JobOutcome::Dead(format!("unreadable job: {err}")),
        };
        let outcome = self.place_call(store, job, &call).await;
        let (status, error) = match &outcome {
            JobOutcome::Done | JobOutcome::Sent(_) => (None, None),
            JobOutcome::Retry(error) => (None, Some(error.as_str())),
            JobOutcome::Dead(error) => (Some("failed"), Some(error.as_str())),
        };
        if status.is_some() || error.is_some() {
            if let Err(err) =
                update_call(store, &call.call_id.to_string(), None, status, error).await
            {
                tracing::warn!(error = %err, call = %call.call_id, "cannot record the call's failure");
            }
        }
        outcome
    }

    async fn place_call(&self, store: &Store, job: &Job, call: &CallJob) -> JobOutcome {
        let id = &job.consultation_id;
        let Some(voice) = self.voice.as_ref() else {
            return JobOutcome::Dead(
                "no voice provider is configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, \
                 TWILIO_PHONE_NUMBER)"
                    .into(),
            );
        };
        let state = match store.load::<Consultation>(id).await {
            Ok(Some(loaded)) => loaded.aggregate,
            Ok(None) => return JobOutcome::Dead("no such consultation".into()),
            Err(err) => return retry_store(err),
        };
        let Some(booking) = state.booking.as_ref() else {
            return JobOutcome::Dead("no such consultation".into());
        };
        if !matches!(state.status, Status::Confirmed | Status::InProgress) {
            return JobOutcome::Dead(format!("the consultation is {}", state.status));
        }
        let too_late = state
            .ends_at()
            .map(|end| end + crate::notifications::chrono_duration(self.grace))
            .is_some_and(|close| close <= Utc::now());
        if too_late {
            return JobOutcome::Dead("the consultation's time is over".into());
        }
        let phone = match call.by {
            Party::Patient => booking
                .contact
                .phone
                .as_ref()
                .map(|p| p.as_str().to_owned()),
            Party::Provider => match store.load::<Provider>(booking.provider_id.as_str()).await {
                Ok(loaded) => {
                    loaded.and_then(|l| l.aggregate.profile.map(|p| p.phone.as_str().to_owned()))
                }
                Err(err) => return retry_store(err),
            },
        };
        let Some(phone) = phone else {
            return JobOutcome::Dead("the caller has no phone number on record".into());
        };
        let by = match call.by {
            Party::Patient => "patient",
            Party::Provider => "provider",
        };
        let request = CallRequest {
            to: phone,
            instructions_url: format!(
                "{}/v1/webhooks/twilio/voice/{id}?caller={by}&call_id={}",
                self.base(),
                call.call_id
            ),
            status_callback: format!(
                "{}/v1/webhooks/twilio/calls?consultation_id={id}&call_id={}",
                self.base(),
                call.call_id
            ),
        };
        let placed = match voice.place_call(&request).await {
            Ok(placed) => placed,
            Err(err) => return err.into(),
        };
        tracing::info!(job = %job.id, consultation = %id, sid = %placed.sid, "call placed");
        if let Err(err) = update_call(
            store,
            &call.call_id.to_string(),
            Some(&placed.sid),
            Some(&placed.status),
            None,
        )
        .await
        {
            // The call is ringing; its callbacks will fill the row in.
            tracing::warn!(error = %err, call = %call.call_id, "cannot record the placed call");
        }
        JobOutcome::Done
    }
}

/// Moves a call's row: its provider id once known, its status unless a callback already
/// reported one, its last error.
async fn update_call(
    store: &Store,
    id: &str,
    sid: Option<&str>,
    status: Option<&str>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let now = Utc::now().timestamp_millis();
    calls::record_placement(store, id, sid, status, error, now).await?;
    Ok(())
}
