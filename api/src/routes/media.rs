//! Video access tokens, voice calls, and the Twilio webhooks that report on them.
//!
//! Every webhook checks `X-Twilio-Signature` against `PUBLIC_BASE_URL` + the path and query it
//! was called on and the sorted form parameters, before reading anything; a bad or missing
//! signature is a 403 and records nothing. Callbacks may come twice or out of order: each fact
//! is recorded through the consultation's own rules, which refuse a second start or end, so it
//! is recorded once.

use std::fmt::Write as _;

use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use consult_domain::{
    CallChannel, Consultation, ConsultationCommand, ConsultationEvent, Mode, Party, Provider,
    RoomEndReason, Status,
};
use consult_reactors::video::AccessGrant;
use consult_store::{calls, ExecuteError, Metadata};
use serde_json::json;
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::command::{idempotent, metadata, Reply};
use crate::error::ApiError;
use crate::extract::{CommandContext, PathParam, RawBody};
use crate::AppState;

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound("no such consultation"))
}

fn chrono_duration(duration: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Which party the caller is, if it is one of the two.
fn party_of(caller: &Caller, state: &Consultation) -> Result<Party, ApiError> {
    let booking = state
        .booking
        .as_ref()
        .ok_or(ApiError::NotFound("no such consultation"))?;
    match caller.role {
        Role::Patient if booking.patient_id.as_str() == caller.id => Ok(Party::Patient),
        Role::Provider if booking.provider_id.as_str() == caller.id => Ok(Party::Provider),
        Role::Patient | Role::Provider => {
            Err(ApiError::Forbidden("this consultation is not yours"))
        }
        Role::Admin | Role::Auditor => Err(ApiError::Forbidden(
            "only the consultation's patient and provider may join it",
        )),
    }
}

/// The joining window: from `join_before` ahead of the start to `grace` after the end.
fn check_window(
    state: &AppState,
    consultation: &Consultation,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    if !matches!(consultation.status, Status::Confirmed | Status::InProgress) {
        return Err(ApiError::NotNow {
            code: "not_joinable",
            message: format!(
                "the consultation is {}; only a confirmed consultation can be joined",
                consultation.status
            ),
        });
    }
    let (Some(starts_at), Some(ends_at)) = (consultation.starts_at(), consultation.ends_at())
    else {
        return Err(ApiError::NotFound("no such consultation"));
    };
    let opens = starts_at - chrono_duration(state.media.join_before);
    let closes = ends_at + chrono_duration(state.media.grace);
    if now < opens {
        return Err(ApiError::NotNow {
            code: "outside_window",
            message: format!(
                "the consultation can be joined from {} on",
                opens.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        });
    }
    if now >= closes {
        return Err(ApiError::NotNow {
            code: "outside_window",
            message: "the consultation's time is over".to_owned(),
        });
    }
    Ok(closes)
}

/// `POST /v1/consultations/{id}/video-token` (its patient or provider): an access token for the
/// consultation's room, from `join_before` ahead of the start to `grace` after the end. The
/// token's identity is the caller's id; it lives at most `token_ttl` and never past the end of
/// the window.
#[utoipa::path(
    post,
    path = "/v1/consultations/{id}/video-token",
    operation_id = "issueVideoToken",
    tag = "consultations",
    summary = "Get an access token for the consultation's video room",
    description = "Allowed: the consultation's patient and provider only (admins and auditors get 403). The consultation must be a confirmed (or in-progress) video consultation, the time between `VIDEO_JOIN_BEFORE` (15 min) before its start and `VIDEO_GRACE` (30 min) after its end, and its room created (rooms are created by a worker once the consultation is confirmed; with Twilio, 20 minutes before the start). The token's identity is the caller's id; it lives at most `VIDEO_TOKEN_TTL` (1 h) and never past the end plus grace. Each call mints a new token; no body is read. 503 `not_configured` when no video provider that can mint tokens is configured.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "A token for the caller.", body = crate::openapi::VideoToken, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn video_token(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Patient, Role::Provider])?;
    let id = parse_id(&id)?.to_string();
    let Some(loaded) = state.store.load::<Consultation>(&id).await? else {
        return Err(ApiError::NotFound("no such consultation"));
    };
    let consultation = loaded.aggregate;
    party_of(&caller, &consultation)?;
    if consultation.booking.as_ref().map(|b| b.mode) != Some(Mode::Video) {
        return Err(ApiError::NotNow {
            code: "not_video",
            message: "this is not a video consultation".to_owned(),
        });
    }
    let now = state.clock.now();
    let closes = check_window(&state, &consultation, now)?;
    let Some(room) = consultation.open_room() else {
        return Err(ApiError::NotNow {
            code: "room_not_ready",
            message: "the room is being prepared; try again in a minute".to_owned(),
        });
    };
    let video = &state.media.video;
    if room.provider != video.name() {
        return Err(ApiError::NotConfigured(format!(
            "the room is held by the {} video provider, which this deployment does not use",
            room.provider
        )));
    }
    let grant = AccessGrant {
        identity: caller.id.clone(),
        room: room.name.clone(),
        issued_at: now,
        expires_at: (now + chrono_duration(state.media.token_ttl)).min(closes),
    };
    let token = video
        .access_token(&grant)
        .map_err(|e| ApiError::NotConfigured(e.to_string()))?;
    tracing::info!(consultation_id = %id, role = %caller.role, "video access token issued");
    let mut response = Json(json!({
        "token": token,
        "room": room.name,
        "provider": room.provider,
        "identity": grant.identity,
        "expires_at": grant.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// `POST /v1/consultations/{id}/voice-call` (its patient or provider): rings the caller's phone
/// and, once answered, connects them to the other participant. Answers 202 with the call's id;
/// the call itself is placed by a worker, and its progress is recorded from the provider's
/// callbacks.
#[utoipa::path(
    post,
    path = "/v1/consultations/{id}/voice-call",
    operation_id = "requestVoiceCall",
    tag = "consultations",
    summary = "Be connected to the other participant by phone",
    description = "Allowed: the consultation's patient and provider. Records CallRequested; a worker then rings the caller's phone (the booking's phone for the patient, the directory's for the provider) from our number, and once answered connects them to the other participant's real number. The consultation must be a confirmed (or in-progress) voice consultation within its joining window (see video-token). Idempotent under `Idempotency-Key`; no body is read. 503 `not_configured` when voice calls are not configured (Twilio account and `TWILIO_PHONE_NUMBER`).",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::CommandHeaders
    ),
    responses(
        (status = 202, description = "The call is queued.", body = crate::openapi::CallRequested, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn voice_call(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    PathParam(id): PathParam,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Patient, Role::Provider])?;
    let id = parse_id(&id)?;
    if state.media.voice_number.is_none() {
        // Whether calls are configured is nobody's business but the consultation's parties'.
        let Some(loaded) = state.store.load::<Consultation>(&id.to_string()).await? else {
            return Err(ApiError::NotFound("no such consultation"));
        };
        party_of(&caller, &loaded.aggregate)?;
        return Err(ApiError::NotConfigured(
            "voice calls are not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, \
             TWILIO_PHONE_NUMBER)"
                .to_owned(),
        ));
    }
    idempotent(&state, &caller, &ctx, &body, || async {
        let now = state.clock.now();
        let call_id = Uuid::new_v4();
        let committed = state
            .store
            .execute::<Consultation, ApiError, _>(
                &id.to_string(),
                &metadata(&caller, &ctx),
                ctx.if_match,
                |c| {
                    let by = party_of(&caller, c)?;
                    if c.booking.as_ref().map(|b| b.mode) != Some(Mode::Voice) {
                        return Err(ApiError::NotNow {
                            code: "not_voice",
                            message: "this is not a voice consultation".to_owned(),
                        });
                    }
                    check_window(&state, c, now)?;
                    let has_phone = c
                        .booking
                        .as_ref()
                        .is_some_and(|b| b.contact.phone.is_some());
                    if by == Party::Patient && !has_phone {
                        return Err(ApiError::NotNow {
                            code: "no_phone",
                            message: "the booking has no phone number to call".to_owned(),
                        });
                    }
                    c.decide(ConsultationCommand::RequestCall {
                        call_id,
                        by,
                        at: now,
                    })
                    .map_err(ApiError::InvalidTransition)
                },
            )
            .await?;
        tracing::info!(consultation_id = %id, call_id = %call_id, "voice call requested");
        Ok(Reply {
            status: 202,
            location: None,
            body: json!({
                "call_id": call_id,
                "status": "queued",
                "consultation_id": id,
                "position": committed.position,
            }),
        })
    })
    .await
}

/// Checks a Twilio webhook's signature and returns its form parameters; 403 if the signature
/// is missing or wrong, or if Twilio is not configured. A signed callback with a NUL in a form
/// or query parameter (names included) is refused with 400: no parameter Twilio sends us, nor
/// any we put in a callback's URL, has one, and PostgreSQL's text cannot hold one, so it is
/// refused here once rather than failing wherever a parameter reaches the database.
pub(crate) fn verify_twilio(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, ApiError> {
    let Some(twilio) = state.twilio.as_ref() else {
        return Err(ApiError::Forbidden("Twilio is not configured"));
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let url = format!(
        "{}{}",
        twilio.public_base_url.trim_end_matches('/'),
        uri.path_and_query().map_or(uri.path(), |p| p.as_str())
    );
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    use secrecy::ExposeSecret as _;
    if consult_reactors::twilio_signature::verify(
        twilio.auth_token.expose_secret(),
        &url,
        &params,
        signature,
    ) {
        let in_query = query(uri);
        if let Some((name, _)) = params
            .iter()
            .chain(&in_query)
            .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            let name = if name.contains('\0') {
                "a parameter name"
            } else {
                name.as_str()
            };
            return Err(ApiError::MalformedBody(format!(
                "{name} must not contain NUL characters"
            )));
        }
        Ok(params)
    } else {
        tracing::warn!(
            path = uri.path(),
            "Twilio callback with a bad or missing signature refused"
        );
        Err(ApiError::Forbidden("bad or missing X-Twilio-Signature"))
    }
}

/// The first value of a form or query parameter.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn query(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn webhook_metadata(source: &str, cause: &str) -> Metadata {
    Metadata {
        actor_id: source.to_owned(),
        actor_role: "system".to_owned(),
        correlation_id: String::new(),
        causation_id: cause.to_owned(),
        request_id: String::new(),
    }
}

/// Records the events `decide` returns for the consultation; refusals (a fact recorded
/// already) record nothing. Returns how many events were written.
async fn record_facts<F>(
    state: &AppState,
    id: &str,
    metadata: &Metadata,
    decide: F,
) -> Result<usize, ApiError>
where
    F: Fn(&Consultation) -> Vec<ConsultationEvent>,
{
    let result = state
        .store
        .execute::<Consultation, consult_domain::ConsultationError, _>(id, metadata, None, |c| {
            Ok(decide(c))
        })
        .await;
    match result {
        Ok(committed) => Ok(committed.written),
        Err(ExecuteError::Refused(_)) => Ok(0),
        Err(ExecuteError::Store(err)) => Err(err.into()),
        Err(ExecuteError::Conflict) => Err(ApiError::ConcurrencyConflict),
        Err(other) => Err(ApiError::Internal(other.to_string().into())),
    }
}

/// Runs commands in order on a copy of the state and returns the events of those the state
/// accepts; refused ones (facts recorded already) are skipped.
fn accepted(state: &Consultation, commands: Vec<ConsultationCommand>) -> Vec<ConsultationEvent> {
    let mut state = state.clone();
    let mut events = Vec::new();
    for command in commands {
        if let Ok(new) = state.decide(command) {
            for event in new {
                state.evolve(event.clone());
                events.push(event);
            }
        }
    }
    events
}

const FINAL_CALL_STATUSES: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

/// `POST /v1/webhooks/twilio/calls?consultation_id=…&call_id=…`: a call's progress. The call's
/// row only moves forward (by `SequenceNumber`); `in-progress` records CallStarted, a final
/// status of an answered call records CallEnded with its duration (and CallStarted first if
/// that callback was lost or is late).
#[utoipa::path(
    post,
    path = "/v1/webhooks/twilio/calls",
    operation_id = "twilioCallStatus",
    tag = "webhooks",
    summary = "Twilio call status callback",
    description = "The `StatusCallback` of the calls the server places (with `StatusCallbackEvent` initiated, ringing, answered, completed). Called by Twilio, not by clients. No bearer token: `X-Twilio-Signature` must match `PUBLIC_BASE_URL` + this path and query and the sorted form parameters; otherwise 403 `forbidden` and nothing is recorded. A signed request with a NUL character in a form or query parameter gives 400 `validation_failed`. Callbacks may repeat or arrive out of order: each fact is recorded once.",
    params(
        ("consultation_id" = Option<String>, Query, description = "Set by the server in the callback URL.", nullable = false),
        ("call_id" = Option<String>, Query, description = "Set by the server in the callback URL.", nullable = false),
        crate::openapi::RequestIdHeader
    ),
    request_body(content = crate::openapi::TwilioCallStatus, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 204, description = "Handled, or ignored (a repeat, an older callback, an event that records nothing, an unknown call).", headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::BadSignature),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
    security(("twilioSignature" = [])),
)]
pub async fn call_status(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let params = verify_twilio(&state, &uri, &headers, &body)?;
    let query = query(&uri);
    let (Some(consultation_id), Some(call_id)) =
        (param(&query, "consultation_id"), param(&query, "call_id"))
    else {
        tracing::warn!("Twilio call callback without our consultation and call ids; ignored");
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let Some(status) = param(&params, "CallStatus") else {
        return Err(ApiError::Validation {
            field: "CallStatus".into(),
            message: "is required".into(),
        });
    };
    let sid = param(&params, "CallSid").unwrap_or("");
    let sequence: i64 = param(&params, "SequenceNumber")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let duration: u32 = param(&params, "CallDuration")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let last = calls::last_sequence(&state.store, call_id, consultation_id).await?;
    let Some(last) = last else {
        tracing::warn!(
            call_id,
            "Twilio callback for a call we do not know; ignored"
        );
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    if last.is_some_and(|last| sequence <= last) {
        // A repeat, or older than what we have: nothing new.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let now = state.clock.now();
    let answered_and_over = status == "completed" && duration > 0;
    let commands = if status == "in-progress" || answered_and_over {
        let mut commands = vec![ConsultationCommand::StartCall {
            via: CallChannel::Voice,
            at: now,
        }];
        if answered_and_over {
            commands.push(ConsultationCommand::EndCall {
                duration_seconds: duration,
                at: now,
            });
        }
        commands
    } else {
        Vec::new()
    };
    let cause = format!("{sid}:{sequence}");
    let written = if commands.is_empty() {
        0
    } else {
        let metadata = webhook_metadata("twilio-calls", &cause);
        record_facts(&state, consultation_id, &metadata, |c| {
            // Only the consultation's own calls move it; a call after the first ended is noted
            // on its row only.
            if c.booking.as_ref().map(|b| b.mode) != Some(Mode::Voice) {
                return Vec::new();
            }
            accepted(c, commands.clone())
        })
        .await?
    };
    let final_status = FINAL_CALL_STATUSES.contains(&status);
    calls::record_status(
        &state.store,
        &calls::CallStatus {
            id: call_id,
            consultation_id,
            provider_call_id: sid,
            status,
            sequence,
            final_duration_seconds: final_status.then_some(i64::from(duration)),
            now_ms: now.timestamp_millis(),
        },
    )
    .await?;
    tracing::info!(call_id, status, sequence, recorded = written, "call status");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/webhooks/twilio/rooms?consultation_id=…`: room and participant events. A
/// participant joining the consultation's room records CallStarted (once); the room ending
/// records CallEnded (if the call started) and RoomEnded.
#[utoipa::path(
    post,
    path = "/v1/webhooks/twilio/rooms",
    operation_id = "twilioRoomStatus",
    tag = "webhooks",
    summary = "Twilio Video room status callback",
    description = "The `StatusCallback` of the rooms the server creates. Called by Twilio, not by clients. No bearer token: `X-Twilio-Signature` must match `PUBLIC_BASE_URL` + this path and query and the sorted form parameters; otherwise 403 `forbidden` and nothing is recorded. A signed request with a NUL character in a form or query parameter gives 400 `validation_failed`. Callbacks may repeat or arrive out of order: each fact is recorded once.",
    params(
        ("consultation_id" = Option<String>, Query, description = "Set by the server in the callback URL.", nullable = false),
        crate::openapi::RequestIdHeader
    ),
    request_body(content = crate::openapi::TwilioRoomStatus, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 204, description = "Handled, or ignored (a repeat, an older callback, an event that records nothing, an unknown call).", headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::BadSignature),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
    security(("twilioSignature" = [])),
)]
pub async fn room_status(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let params = verify_twilio(&state, &uri, &headers, &body)?;
    let query = query(&uri);
    let Some(consultation_id) = param(&query, "consultation_id") else {
        tracing::warn!("Twilio room callback without our consultation id; ignored");
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let (Some(event), Some(room_name)) = (
        param(&params, "StatusCallbackEvent"),
        param(&params, "RoomName"),
    ) else {
        return Err(ApiError::Validation {
            field: "StatusCallbackEvent".into(),
            message: "StatusCallbackEvent and RoomName are required".into(),
        });
    };
    let now = state.clock.now();
    let room_name = room_name.to_owned();
    let duration: u32 = param(&params, "RoomDuration")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let connected = match event {
        "participant-connected" => true,
        "room-ended" => false,
        _ => return Ok(StatusCode::NO_CONTENT.into_response()),
    };
    let decide = |c: &Consultation| {
        if connected {
            if c.open_room().is_none_or(|r| r.name != room_name) {
                return Vec::new();
            }
            return accepted(
                c,
                vec![ConsultationCommand::StartCall {
                    via: CallChannel::Video,
                    at: now,
                }],
            );
        }
        if c.room.as_ref().is_none_or(|r| r.name != room_name) {
            return Vec::new();
        }
        let mut commands = Vec::new();
        if c.call_started && !c.call_ended {
            commands.push(ConsultationCommand::EndCall {
                duration_seconds: duration,
                at: now,
            });
        }
        commands.push(ConsultationCommand::EndRoom {
            name: room_name.clone(),
            reason: RoomEndReason::ClosedByProvider,
            at: now,
        });
        accepted(c, commands)
    };
    let cause = format!(
        "{}:{}",
        param(&params, "RoomSid").unwrap_or(""),
        param(&params, "SequenceNumber").unwrap_or(event)
    );
    let metadata = webhook_metadata("twilio-rooms", &cause);
    let written = record_facts(&state, consultation_id, &metadata, decide).await?;
    tracing::info!(consultation_id, event, recorded = written, "room status");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Escapes text for XML content and attribute values.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn twiml(body: &str) -> Response {
    let mut document = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>");
    document.push_str(body);
    document.push_str("</Response>");
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        document,
    )
        .into_response()
}

fn say_and_hang_up(message: &str) -> Response {
    twiml(&format!("<Say>{}</Say><Hangup/>", xml_escape(message)))
}

/// `POST /v1/webhooks/twilio/voice/{id}?caller=patient|provider`: the TwiML for a call we
/// placed to one participant: dial the other participant's real number (the patient's from
/// the booking, the provider's from the provider directory), showing our number.
#[utoipa::path(
    post,
    path = "/v1/webhooks/twilio/voice/{id}",
    operation_id = "twilioVoiceTwiml",
    tag = "webhooks",
    summary = "TwiML for a call the server placed",
    description = "Twilio fetches it when the participant who asked for a call answers: it dials the other participant's real number (the provider's from the provider directory, the patient's from the booking), showing our number. Called by Twilio, not by clients. No bearer token: `X-Twilio-Signature` must match `PUBLIC_BASE_URL` + this path and query and the sorted form parameters; otherwise 403 `forbidden` and nothing is recorded. A signed request with a NUL character in a form or query parameter gives 400 `validation_failed`.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        ("caller" = Option<String>, Query, description = "`patient` or `provider`: who was rung. Set by the server.", nullable = false),
        ("call_id" = Option<String>, Query, description = "Set by the server.", nullable = false),
        crate::openapi::RequestIdHeader
    ),
    request_body(content = Object, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "TwiML: `<Response><Say>…</Say><Dial callerId=\"our number\"><Number>the other participant's number</Number></Dial></Response>`, or a `<Say>` and `<Hangup/>` when the consultation cannot be connected now.", body = String, content_type = "text/xml", headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::BadSignature),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
    security(("twilioSignature" = [])),
)]
pub async fn voice_twiml(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    // An undecodable id is not refused before the signature is checked: like any unknown id,
    // it is a call that cannot be connected.
    id: Result<PathParam, ApiError>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    verify_twilio(&state, &uri, &headers, &body)?;
    let id = id.map(|PathParam(id)| id).unwrap_or_default();
    let query = query(&uri);
    let caller = match param(&query, "caller") {
        Some("patient") => Party::Patient,
        Some("provider") => Party::Provider,
        _ => return Ok(say_and_hang_up("This call cannot be connected.")),
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return Ok(say_and_hang_up("This call cannot be connected."));
    };
    let Some(loaded) = state.store.load::<Consultation>(&id.to_string()).await? else {
        return Ok(say_and_hang_up("This call cannot be connected."));
    };
    let consultation = loaded.aggregate;
    let Some(booking) = consultation.booking.as_ref() else {
        return Ok(say_and_hang_up("This call cannot be connected."));
    };
    if booking.mode != Mode::Voice
        || !matches!(consultation.status, Status::Confirmed | Status::InProgress)
    {
        return Ok(say_and_hang_up(
            "This consultation cannot be connected now. Goodbye.",
        ));
    }
    let other = match caller {
        Party::Patient => state
            .store
            .load::<Provider>(booking.provider_id.as_str())
            .await?
            .and_then(|p| p.aggregate.profile)
            .map(|p| p.phone.as_str().to_owned()),
        Party::Provider => booking
            .contact
            .phone
            .as_ref()
            .map(|p| p.as_str().to_owned()),
    };
    let (Some(other), Some(ours)) = (other, state.media.voice_number.as_deref()) else {
        return Ok(say_and_hang_up(
            "The other participant cannot be reached by phone. Goodbye.",
        ));
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<Say>Connecting you to your consultation.</Say><Dial callerId=\"{}\"><Number>{}</Number></Dial>",
        xml_escape(ours),
        xml_escape(&other)
    );
    tracing::info!(consultation_id = %id, "call connected to the other participant");
    Ok(twiml(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(
            xml_escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;"
        );
        assert_eq!(xml_escape("+15551234567"), "+15551234567");
    }
}
