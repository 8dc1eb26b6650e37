//! The `rooms` reactor: video rooms and phone calls. In the transaction that moves its
//! checkpoint it queues:
//!
//! | event | job |
//! | --- | --- |
//! | a video consultation becomes confirmed, or moves while confirmed | create its room (a timer: at once, or shortly before the start when the provider's rooms close on their own), and close it at end + grace |
//! | the consultation completes, is cancelled, expires, or a no-show is recorded | end its room now |
//! | CallRequested | place the call; a row in `calls` |
//! | the provider closed the room unused while the consultation can still be joined | create a new room now |
//!
//! A room's name is drawn at random when its creation job is queued and kept in the job, so a
//! retry or a redelivery asks the provider for the same room and never makes a second one. An
//! event's jobs replace the consultation's pending room jobs only the first time it is
//! handled: a redelivery or a replay of the log neither queues nor cancels anything.
//! The dispatcher runs the jobs (`media.rs`), re-checking the consultation first.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use consult_domain::{Consultation, ConsultationEvent, Mode, Party, RoomEndReason, Status};
use consult_store::{calls, BoxFuture, Handler, HandlerError, RecordedEvent, Tx};
use serde::{Deserialize, Serialize};

use crate::notifications::chrono_duration;
use consult_store::jobs::{self, JobKind, NewJob};

/// What the rooms reactor needs to know.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    /// How long before the start a room may be created (the video provider's
    /// [`provision_lead`](crate::video::VideoProvider::provision_lead)); `None`: at once.
    pub provision_lead: Option<Duration>,
    /// Rooms are closed this long after the consultation's end.
    pub grace: Duration,
    /// Attempts of a room job before it is dead-lettered.
    pub max_attempts: i32,
    /// Attempts of a call: few, since a call placed late is no use.
    pub call_attempts: i32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            provision_lead: None,
            grace: Duration::from_secs(30 * 60),
            max_attempts: 8,
            call_attempts: 3,
        }
    }
}

/// A room job's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RoomJob {
    /// Create the room for the consultation starting at `starts_at` (skipped if it moved).
    Create {
        name: String,
        starts_at: DateTime<Utc>,
    },
    /// End the open room. `TimeUp` is skipped if the consultation's end (plus grace) moved
    /// later meanwhile.
    End { reason: RoomEndReason },
}

/// A call job's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallJob {
    pub call_id: uuid::Uuid,
    pub by: Party,
}

/// A random, unguessable room name: 128 bits from the operating system's generator.
pub fn random_room_name() -> Result<String, HandlerError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a room name: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("consult-{hex}"))
}

/// The `rooms` reactor subscription.
#[derive(Debug, Clone)]
pub struct RoomsReactor {
    config: RoomsConfig,
    wake: tokio::sync::watch::Sender<u64>,
}

impl RoomsReactor {
    pub fn new(config: RoomsConfig, wake: tokio::sync::watch::Sender<u64>) -> Self {
        Self { config, wake }
    }
}

/// Whether an event can change what the rooms reactor does; others are skipped without
/// reading their stream.
fn concerns_rooms(event_type: &str) -> bool {
    matches!(
        event_type,
        "Accepted"
            | "PaymentConfirmed"
            | "Rescheduled"
            | "Cancelled"
            | "Completed"
            | "NoShowRecorded"
            | "Expired"
            | "Declined"
            | "CallRequested"
            | "RoomEnded"
    )
}

enum Step {
    /// The room jobs an event calls for, replacing the consultation's pending room jobs (the
    /// timers of an old slot). An event handled before (a redelivered batch, a replay of the
    /// log) changes nothing: its first job exists already, and the jobs it queued then, or
    /// those that replaced them since, stand.
    Replace {
        consultation_id: String,
        jobs: Vec<NewJob>,
    },
    Queue(NewJob),
    Call {
        id: String,
        consultation_id: String,
        by: Party,
    },
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

impl RoomsReactor {
    fn react(
        &self,
        recorded: &RecordedEvent,
        before: &Consultation,
        after: &Consultation,
        event: &ConsultationEvent,
        now: DateTime<Utc>,
        steps: &mut Vec<Step>,
    ) -> Result<(), HandlerError> {
        let (id, sequence) = (recorded.aggregate_id.as_str(), recorded.sequence);
        let Some(booking) = after.booking.as_ref() else {
            return Ok(());
        };
        let (Some(starts_at), Some(ends_at)) = (after.starts_at(), after.ends_at()) else {
            return Ok(());
        };
        if let ConsultationEvent::CallRequested { call_id, by, .. } = event {
            steps.push(Step::Call {
                id: call_id.to_string(),
                consultation_id: id.to_owned(),
                by: *by,
            });
            steps.push(Step::Queue(NewJob {
                id: call_id.to_string(),
                key: format!("call:{call_id}"),
                kind: JobKind::Call,
                consultation_id: id.to_owned(),
                payload: serde_json::json!(CallJob {
                    call_id: *call_id,
                    by: *by
                }),
                due_at_ms: millis(now),
                max_attempts: self.config.call_attempts,
            }));
            return Ok(());
        }
        if booking.mode != Mode::Video {
            return Ok(());
        }
        let live = |s: Status| matches!(s, Status::Confirmed | Status::InProgress);
        if let ConsultationEvent::RoomEnded {
            reason: RoomEndReason::ClosedByProvider,
            ..
        } = event
        {
            // The provider closed the room before anyone joined (Twilio does after its unused
            // timeout): while the consultation can still be joined, it gets a new one.
            let open_until = ends_at + chrono_duration(self.config.grace);
            if after.status == Status::Confirmed && now < open_until {
                steps.push(Step::Queue(NewJob {
                    id: uuid::Uuid::new_v4().to_string(),
                    key: format!("room:create:{id}:{sequence}:{}", millis(starts_at)),
                    kind: JobKind::Room,
                    consultation_id: id.to_owned(),
                    payload: serde_json::json!(RoomJob::Create {
                        name: random_room_name()?,
                        starts_at,
                    }),
                    due_at_ms: millis(now),
                    max_attempts: self.config.max_attempts,
                }));
            }
            return Ok(());
        }
        let confirmed_now = after.status == Status::Confirmed
            && (before.status != Status::Confirmed
                || matches!(event, ConsultationEvent::Rescheduled { .. }));
        if confirmed_now {
            // A move replaces the timers of the old slot.
            let due = match self.config.provision_lead {
                Some(lead) => (starts_at - chrono_duration(lead)).max(now),
                None => now,
            };
            let create = NewJob {
                id: uuid::Uuid::new_v4().to_string(),
                key: format!("room:create:{id}:{sequence}:{}", millis(starts_at)),
                kind: JobKind::Room,
                consultation_id: id.to_owned(),
                payload: serde_json::json!(RoomJob::Create {
                    name: random_room_name()?,
                    starts_at,
                }),
                due_at_ms: millis(due),
                max_attempts: self.config.max_attempts,
            };
            let close = ends_at + chrono_duration(self.config.grace);
            let close = NewJob {
                id: uuid::Uuid::new_v4().to_string(),
                key: format!("room:close:{id}:{sequence}:{}", millis(close)),
                kind: JobKind::Room,
                consultation_id: id.to_owned(),
                payload: serde_json::json!(RoomJob::End {
                    reason: RoomEndReason::TimeUp
                }),
                due_at_ms: millis(close),
                max_attempts: self.config.max_attempts,
            };
            steps.push(Step::Replace {
                consultation_id: id.to_owned(),
                jobs: vec![create, close],
            });
        } else if live(before.status) && !live(after.status) {
            let end = NewJob {
                id: uuid::Uuid::new_v4().to_string(),
                key: format!("room:end:{id}:{sequence}"),
                kind: JobKind::Room,
                consultation_id: id.to_owned(),
                payload: serde_json::json!(RoomJob::End {
                    reason: RoomEndReason::ConsultationEnded
                }),
                due_at_ms: millis(now),
                max_attempts: self.config.max_attempts,
            };
            steps.push(Step::Replace {
                consultation_id: id.to_owned(),
                jobs: vec![end],
            });
        }
        Ok(())
    }
}

impl Handler for RoomsReactor {
    fn name(&self) -> &'static str {
        "rooms"
    }

    /// Rooms are made minutes ahead of the start; under load one batch takes many commits.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(50)
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let now = Utc::now();
            // Streams with a relevant event: fold each from its first relevant event on.
            let mut first: HashMap<&str, i64> = HashMap::new();
            for event in events
                .iter()
                .filter(|e| e.aggregate_type == "consultation" && concerns_rooms(&e.event_type))
            {
                first.entry(&event.aggregate_id).or_insert(event.sequence);
            }
            if first.is_empty() {
                return Ok(());
            }
            let mut states: HashMap<String, Consultation> = HashMap::new();
            let mut steps = Vec::new();
            for event in events.iter().filter(|e| {
                e.aggregate_type == "consultation"
                    && first
                        .get(e.aggregate_id.as_str())
                        .is_some_and(|from| e.sequence >= *from)
            }) {
                if !states.contains_key(&event.aggregate_id) {
                    let before = consult_store::events::consultation_before(
                        tx,
                        &event.aggregate_id,
                        event.sequence,
                    )
                    .await?;
                    states.insert(event.aggregate_id.clone(), before);
                }
                let Some(state) = states.get_mut(&event.aggregate_id) else {
                    continue;
                };
                let parsed: ConsultationEvent = serde_json::from_str(&event.current_payload())?;
                let before = state.clone();
                state.evolve(parsed.clone());
                self.react(event, &before, state, &parsed, now, &mut steps)?;
            }
            let now_ms = millis(now);
            let mut queued = 0;
            for step in &steps {
                match step {
                    Step::Replace {
                        consultation_id,
                        jobs: new,
                    } => {
                        let handled = match new.first() {
                            Some(first) => jobs::exists(tx, &first.key).await?,
                            None => true,
                        };
                        if handled {
                            // Cancelling now would drop the live timers for good: the inserts
                            // below would find every key taken.
                            continue;
                        }
                        jobs::cancel_timers(tx, consultation_id, JobKind::Room, now_ms).await?;
                        for job in new {
                            if jobs::insert(tx, job, now_ms).await? {
                                queued += 1;
                            }
                        }
                    }
                    Step::Queue(job) => {
                        if jobs::insert(tx, job, now_ms).await? {
                            queued += 1;
                        }
                    }
                    Step::Call {
                        id,
                        consultation_id,
                        by,
                    } => {
                        let by = match by {
                            Party::Patient => "patient",
                            Party::Provider => "provider",
                        };
                        calls::insert(tx, id, consultation_id, by, now_ms).await?;
                    }
                }
            }
            if queued > 0 {
                self.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(())
        })
    }

    /// Jobs are not a read model: a reset keeps them, and a replay queues nothing new since
    /// every key exists already (nor cancels the timers still pending).
    fn reset<'a>(&'a self, _tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
}
