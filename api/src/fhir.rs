//! The FHIR R4 `Appointment` export of a consultation: a pure function of the state, its history
//! and a few links, so that it can be tested without a database and served by any route.
//!
//! # Status
//!
//! The consultation's status becomes `Appointment.status`. A consultation that ended before it
//! was held also gets a `cancelationReason` from the code system
//! `http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason`, found in the
//! history (who cancelled, why it expired, who did not show), with a short `text`:
//!
//! | consultation                     | `status`    | `cancelationReason` code | text                                  |
//! | -------------------------------- | ----------- | ------------------------ | ------------------------------------- |
//! | `new` (never booked)             | —           | —                        | refused: [`FhirError::NotBooked`]     |
//! | `requested`                      | `pending`   | —                        |                                       |
//! | `accepted` (accepted, unpaid)    | `pending`   | —                        |                                       |
//! | `confirmed`                      | `booked`    | —                        |                                       |
//! | `in_progress`                    | `arrived`   | —                        |                                       |
//! | `completed`                      | `fulfilled` | —                        |                                       |
//! | `cancelled` by the patient       | `cancelled` | `pat`                    | cancelled by the patient              |
//! | `cancelled` by the provider      | `cancelled` | `prov`                   | cancelled by the provider             |
//! | `cancelled` by the clinic/admin  | `cancelled` | `other`                  | cancelled by the clinic               |
//! | `declined`                       | `cancelled` | `prov`                   | declined by the provider              |
//! | `expired`, not accepted in time  | `cancelled` | `prov`                   | not accepted by the provider in time  |
//! | `expired`, unpaid at its start   | `cancelled` | `pat`                    | not paid before the start             |
//! | `no_show` of the patient         | `noshow`    | `pat`                    | patient did not attend                |
//! | `no_show` of the provider        | `noshow`    | `prov`                   | provider did not attend               |
//!
//! Only codes the R4 code system defines are used (its binding is only an example, but a
//! receiver can look these up). It has no no-show code (there is no `pat-noshow`), so a no-show
//! names the party that stayed away with `pat` or `prov`; R4 allows a `cancelationReason` on
//! `noshow` (invariant app-4). An admin cancellation is `other`: `maint` ("Equipment
//! Maintenance/Repair") and the `oth-*` codes each claim a cause we do not know. A consultation
//! unpaid at its start is `pat`, as the patient did not pay. The free-text reason given when
//! cancelling or declining is never exported: it may hold medical details.
//!
//! # Participants
//!
//! Always two, both `required`: `Patient/<patient_id>` and `Practitioner/<provider_id>` (with
//! the provider's name as `display` when the caller gives it). Their `status`:
//!
//! - patient: `declined` if the patient cancelled, else `accepted` (booking is accepting);
//! - provider: `declined` if the provider declined or cancelled, else `accepted` once the
//!   provider accepted, else `needs-action`, also when it ended before an answer: the provider
//!   never answered, which is not declining.
//!
//! # Other elements
//!
//! - `meta.lastUpdated` is the last event's time and `meta.versionId` the stream's version.
//! - `start`/`end` are instants (`2030-01-10T10:00:00Z`) and follow reschedules;
//!   `minutesDuration` is the booked duration; `created` is when it was booked.
//! - The mode goes in `serviceCategory`, coded in
//!   `http://terminology.hl7.org/CodeSystem/v3-ParticipationMode` (`VIDEOCONF`, `PHONE`,
//!   `ONLINEWRIT`) with a `text`. R4 has no element for it (R5 adds `virtualService`);
//!   `appointmentType` is bound to v2-0276 (routine, walk-in…), which is about something else.
//! - The join link is the extension [`MEETING_LINK_EXTENSION`] (`valueUrl`), for video and voice
//!   consultations only, and only when the caller gives a link.
//! - Nothing else from the booking is exported: no contact details, no medical reason
//!   (`description`, `comment`, `reasonCode` and `patientInstruction` stay absent), no price.

use chrono::{DateTime, SecondsFormat, Utc};
use consult_domain::{
    Canceller, Consultation, ConsultationEvent, ExpiryCause, Mode, Party, Status,
};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// The extension that carries the link participants join the consultation with. Ours, not
/// HL7's: R4 has no element for it.
pub const MEETING_LINK_EXTENSION: &str =
    "https://consult.example/fhir/StructureDefinition/meeting-link";

const CANCELLATION_REASON_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason";
const PARTICIPATION_MODE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode";

/// What the export needs from outside the consultation's own events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FhirLinks {
    /// Where participants join, e.g. `https://app.example/consultations/{id}/join`. Exported
    /// only for video and voice consultations. Blank counts as none; it must not contain
    /// whitespace (it is a FHIR `url`).
    pub meeting_link: Option<String>,
    /// The provider's name as the participant's `display`. Blank counts as none.
    pub provider_display: Option<String>,
}

/// Why a consultation cannot be exported. `NotBooked` is the caller's "not found"; the others
/// are bugs in what the caller passed and should be an opaque 500.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    #[error("the consultation was never booked: there is no appointment to export")]
    NotBooked,
    #[error("the id does not name the booked consultation")]
    IdMismatch,
    #[error("the consultation's state and history disagree: {0}")]
    Inconsistent(&'static str),
    #[error("the meeting link is not a FHIR url: it contains whitespace")]
    InvalidMeetingLink,
}

/// How a consultation ended before it was held, as its history tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Cancelled(Canceller),
    Declined,
    Expired(ExpiryCause),
    NoShow(Party),
}

impl Ending {
    /// The `cancelationReason`: code, the code system's display for it, and our text.
    fn reason(self) -> (&'static str, &'static str, &'static str) {
        const PAT: (&str, &str) = ("pat", "Patient");
        const PROV: (&str, &str) = ("prov", "Provider");
        const OTHER: (&str, &str) = ("other", "Other");
        let ((code, display), text) = match self {
            Self::Cancelled(Canceller::Patient) => (PAT, "cancelled by the patient"),
            Self::Cancelled(Canceller::Provider) => (PROV, "cancelled by the provider"),
            Self::Cancelled(Canceller::Admin) => (OTHER, "cancelled by the clinic"),
            Self::Declined => (PROV, "declined by the provider"),
            Self::Expired(ExpiryCause::NotAcceptedInTime) => {
                (PROV, "not accepted by the provider in time")
            }
            Self::Expired(ExpiryCause::UnpaidAtStart) => (PAT, "not paid before the start"),
            Self::NoShow(Party::Patient) => (PAT, "patient did not attend"),
            Self::NoShow(Party::Provider) => (PROV, "provider did not attend"),
        };
        (code, display, text)
    }
}

/// What the export reads from the history.
#[derive(Debug)]
struct History {
    booked_at: DateTime<Utc>,
    provider_accepted: bool,
    /// The last event that ended the consultation unheld, if any.
    ending: Option<Ending>,
}

impl History {
    fn read(consultation_id: Uuid, events: &[ConsultationEvent]) -> Result<Self, FhirError> {
        use ConsultationEvent as E;
        let mut booked_at = None;
        let mut provider_accepted = false;
        let mut ending = None;
        for event in events {
            match event {
                E::Booked { booking, .. } if booking.consultation_id != consultation_id => {
                    return Err(FhirError::Inconsistent(
                        "the history is another consultation's",
                    ))
                }
                E::Booked { at, .. } => {
                    booked_at.get_or_insert(*at);
                }
                E::Accepted { .. } => provider_accepted = true,
                E::Declined { .. } => ending = Some(Ending::Declined),
                E::Cancelled { by, .. } => ending = Some(Ending::Cancelled(*by)),
                E::Expired { cause, .. } => ending = Some(Ending::Expired(*cause)),
                E::NoShowRecorded { party, .. } => ending = Some(Ending::NoShow(*party)),
                _ => {}
            }
        }
        let booked_at = booked_at.ok_or(FhirError::Inconsistent("the history has no booking"))?;
        Ok(Self {
            booked_at,
            provider_accepted,
            ending,
        })
    }
}

/// The consultation's status in R4's `AppointmentStatus`, with how it ended if it ended unheld.
fn status_and_ending(
    status: Status,
    ending: Option<Ending>,
) -> Result<(&'static str, Option<Ending>), FhirError> {
    use Status as S;
    let open = match status {
        S::New => return Err(FhirError::NotBooked),
        S::Requested | S::Accepted => "pending",
        S::Confirmed => "booked",
        S::InProgress => "arrived",
        S::Completed => "fulfilled",
        S::Cancelled | S::Declined | S::Expired | S::NoShow => {
            return match (status, ending) {
                (S::Cancelled, Some(e @ Ending::Cancelled(_)))
                | (S::Declined, Some(e @ Ending::Declined))
                | (S::Expired, Some(e @ Ending::Expired(_))) => Ok(("cancelled", Some(e))),
                (S::NoShow, Some(e @ Ending::NoShow(_))) => Ok(("noshow", Some(e))),
                _ => Err(FhirError::Inconsistent(
                    "no event in the history ended it this way",
                )),
            };
        }
    };
    match ending {
        None => Ok((open, None)),
        Some(_) => Err(FhirError::Inconsistent(
            "the history ended it but the state did not",
        )),
    }
}

/// A FHIR `instant`: seconds and `Z`, e.g. `2030-01-10T10:00:00Z`.
fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A FHIR string must not be empty; surrounding whitespace is noise.
fn non_blank(value: Option<&String>) -> Option<&str> {
    value.map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn mode_concept(mode: Mode) -> Value {
    let (code, display, text) = match mode {
        Mode::Video => ("VIDEOCONF", "videoconferencing", "Video consultation"),
        Mode::Voice => ("PHONE", "telephone", "Voice consultation"),
        Mode::Messaging => ("ONLINEWRIT", "online written", "Messaging consultation"),
    };
    json!({
        "coding": [{ "system": PARTICIPATION_MODE_SYSTEM, "code": code, "display": display }],
        "text": text,
    })
}

/// The R4 `Appointment` for the consultation `id` (the id the API shows; it must be the booked
/// consultation's), from its state and its history in order. See the module documentation for
/// how each element is derived.
pub fn appointment(
    id: &str,
    consultation: &Consultation,
    events: &[ConsultationEvent],
    links: &FhirLinks,
) -> Result<Value, FhirError> {
    let booking = match &consultation.booking {
        Some(booking) if consultation.status != Status::New => booking,
        _ => return Err(FhirError::NotBooked),
    };
    if Uuid::parse_str(id).ok() != Some(booking.consultation_id) {
        return Err(FhirError::IdMismatch);
    }
    let history = History::read(booking.consultation_id, events)?;
    let (status, ending) = status_and_ending(consultation.status, history.ending)?;
    let updated_at = consultation.updated_at.ok_or(FhirError::Inconsistent(
        "a booked consultation has no last update",
    ))?;
    let starts_at = booking.starts_at.instant();
    let ends_at = starts_at + booking.duration.as_duration();

    let patient_status = match ending {
        Some(Ending::Cancelled(Canceller::Patient)) => "declined",
        _ => "accepted",
    };
    let provider_accepted = history.provider_accepted
        || matches!(
            consultation.status,
            Status::Accepted
                | Status::Confirmed
                | Status::InProgress
                | Status::Completed
                | Status::NoShow
        );
    let provider_status = match ending {
        Some(Ending::Declined | Ending::Cancelled(Canceller::Provider)) => "declined",
        _ if provider_accepted => "accepted",
        _ => "needs-action",
    };
    let mut provider = json!({ "reference": format!("Practitioner/{}", booking.provider_id) });
    if let Some(display) = non_blank(links.provider_display.as_ref()) {
        provider["display"] = json!(display);
    }

    let mut resource = Map::new();
    resource.insert("resourceType".into(), json!("Appointment"));
    // The hyphenated form: always a valid FHIR id, whatever form `id` was given in.
    resource.insert("id".into(), json!(booking.consultation_id.to_string()));
    resource.insert(
        "meta".into(),
        json!({
            "versionId": consultation.version.to_string(),
            "lastUpdated": instant(updated_at),
        }),
    );
    let link = non_blank(links.meeting_link.as_ref());
    if let (Some(link), Mode::Video | Mode::Voice) = (link, booking.mode) {
        if link.contains(char::is_whitespace) {
            return Err(FhirError::InvalidMeetingLink);
        }
        resource.insert(
            "extension".into(),
            json!([{ "url": MEETING_LINK_EXTENSION, "valueUrl": link }]),
        );
    }
    resource.insert("status".into(), json!(status));
    if let Some(ending) = ending {
        let (code, display, text) = ending.reason();
        resource.insert(
            "cancelationReason".into(),
            json!({
                "coding": [{
                    "system": CANCELLATION_REASON_SYSTEM,
                    "code": code,
                    "display": display,
                }],
                "text": text,
            }),
        );
    }
    resource.insert(
        "serviceCategory".into(),
        json!([mode_concept(booking.mode)]),
    );
    resource.insert("start".into(), json!(instant(starts_at)));
    resource.insert("end".into(), json!(instant(ends_at)));
    resource.insert("minutesDuration".into(), json!(booking.duration.minutes()));
    resource.insert("created".into(), json!(instant(history.booked_at)));
    resource.insert(
        "participant".into(),
        json!([
            {
                "actor": { "reference": format!("Patient/{}", booking.patient_id) },
                "required": "required",
                "status": patient_status,
            },
            { "actor": provider, "required": "required", "status": provider_status },
        ]),
    );
    Ok(Value::Object(resource))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::{DateTime, Duration, Utc};
    use consult_domain::{
        Booking, BoundedText, CallChannel, Canceller, Consultation, ConsultationEvent, Contact,
        DurationMinutes, EmailAddress, ExpiryCause, Mode, Party, PatientId, PhoneNumber,
        ProviderId, StartTime, Status, TimeZone,
    };
    use serde_json::Value;
    use uuid::Uuid;

    use super::{appointment, FhirError, FhirLinks, MEETING_LINK_EXTENSION};

    // -----------------------------------------------------------------------------------------
    // What R4 allows, and a checker for the rules the export must keep.
    // -----------------------------------------------------------------------------------------

    /// `AppointmentStatus` (required binding).
    const APPOINTMENT_STATUSES: [&str; 10] = [
        "proposed",
        "pending",
        "booked",
        "arrived",
        "fulfilled",
        "cancelled",
        "noshow",
        "entered-in-error",
        "checked-in",
        "waitlist",
    ];

    /// `ParticipationStatus` (required binding).
    const PARTICIPATION_STATUSES: [&str; 4] = ["accepted", "declined", "tentative", "needs-action"];

    /// `ParticipantRequired` (required binding).
    const PARTICIPANT_REQUIRED: [&str; 3] = ["required", "optional", "information-only"];

    /// Every code of R4's (4.0.1) appointment-cancellation-reason code system, in its order.
    #[rustfmt::skip]
    const R4_CANCELLATION_CODES: [&str; 32] = [
        "pat", "pat-crs", "pat-cpp", "pat-dec", "pat-fb", "pat-lt", "pat-mt", "pat-mv", "pat-preg",
        "pat-swl", "pat-ucp",
        "prov", "prov-pers", "prov-dch", "prov-edu", "prov-hosp", "prov-labs", "prov-mri",
        "prov-onc",
        "maint",
        "meds-inc",
        "other", "oth-cms", "oth-err", "oth-fin", "oth-iv", "oth-int", "oth-mu", "oth-room",
        "oth-oerr", "oth-swie", "oth-weath",
    ];

    fn is_fhir_id(s: &str) -> bool {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }

    /// A FHIR `instant` (or a `dateTime` down to the second): RFC 3339 with seconds and a zone.
    fn time_at(resource: &Value, field: &str) -> Result<Option<DateTime<Utc>>, String> {
        match resource.pointer(field) {
            None => Ok(None),
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| format!("{field} {s:?} is not an instant: {e}")),
            Some(other) => Err(format!("{field} is not a string: {other}")),
        }
    }

    /// FHIR JSON has no nulls, no empty strings, arrays or objects.
    fn no_empty_values(value: &Value, path: &str) -> Result<(), String> {
        match value {
            Value::Null => Err(format!("{path} is null")),
            Value::String(s) if s.is_empty() => Err(format!("{path} is an empty string")),
            Value::Array(items) if items.is_empty() => Err(format!("{path} is an empty array")),
            Value::Object(map) if map.is_empty() => Err(format!("{path} is an empty object")),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| no_empty_values(item, &format!("{path}/{i}"))),
            Value::Object(map) => map
                .iter()
                .try_for_each(|(key, item)| no_empty_values(item, &format!("{path}/{key}"))),
            _ => Ok(()),
        }
    }

    fn codeable_concept(concept: &Value, field: &str) -> Result<(), String> {
        let has_text = concept["text"].is_string();
        let codings = concept["coding"].as_array().map_or(&[][..], Vec::as_slice);
        if !has_text && codings.is_empty() {
            return Err(format!("{field} has neither coding nor text"));
        }
        for coding in codings {
            if !coding["system"].is_string() || !coding["code"].is_string() {
                return Err(format!("{field} has a coding without system and code"));
            }
        }
        Ok(())
    }

    /// The R4 rules an `Appointment` must keep, as far as this export touches them: its type,
    /// `status` present and in the value set, `start`/`end` both or neither (app-2) and only
    /// missing when proposed, cancelled or waitlisted (app-3), `cancelationReason` only when
    /// cancelled or noshow (app-4), at least one participant, each with a status and an actor
    /// or type (app-1), extensions with a url and one value, and well-formed primitives.
    fn validate_r4(resource: &Value) -> Result<(), String> {
        no_empty_values(resource, "")?;
        if resource["resourceType"] != "Appointment" {
            return Err(format!("resourceType is {}", resource["resourceType"]));
        }
        if let Some(id) = resource.get("id") {
            if !id.as_str().is_some_and(is_fhir_id) {
                return Err(format!("id {id} is not a FHIR id"));
            }
        }
        if let Some(version) = resource.pointer("/meta/versionId") {
            if !version.as_str().is_some_and(is_fhir_id) {
                return Err(format!("meta.versionId {version} is not a FHIR id"));
            }
        }
        time_at(resource, "/meta/lastUpdated")?;
        time_at(resource, "/created")?;

        let status = resource["status"]
            .as_str()
            .ok_or("status is missing (1..1)")?;
        if !APPOINTMENT_STATUSES.contains(&status) {
            return Err(format!("status {status:?} is not in AppointmentStatus"));
        }

        match (time_at(resource, "/start")?, time_at(resource, "/end")?) {
            (Some(start), Some(end)) if end <= start => {
                return Err(format!("end {end} is not after start {start}"))
            }
            (Some(_), Some(_)) => {}
            (None, None) if ["proposed", "cancelled", "waitlist"].contains(&status) => {}
            (None, None) => return Err(format!("app-3: a {status} appointment needs start/end")),
            _ => return Err("app-2: start and end must both be present or both absent".into()),
        }

        if let Some(reason) = resource.get("cancelationReason") {
            if !["cancelled", "noshow"].contains(&status) {
                return Err(format!(
                    "app-4: cancelationReason on a {status} appointment"
                ));
            }
            codeable_concept(reason, "cancelationReason")?;
        }
        if let Some(minutes) = resource.get("minutesDuration") {
            if minutes.as_u64().is_none_or(|m| m == 0) {
                return Err(format!("minutesDuration {minutes} is not a positiveInt"));
            }
        }
        for concept in resource["serviceCategory"].as_array().into_iter().flatten() {
            codeable_concept(concept, "serviceCategory")?;
        }

        let participants = resource["participant"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or("participant is missing (1..*)")?;
        for participant in participants {
            let status = participant["status"]
                .as_str()
                .ok_or("a participant has no status (1..1)")?;
            if !PARTICIPATION_STATUSES.contains(&status) {
                return Err(format!("participant status {status:?} is not allowed"));
            }
            if participant.get("actor").is_none() && participant.get("type").is_none() {
                return Err("app-1: a participant has neither actor nor type".into());
            }
            if let Some(actor) = participant.get("actor") {
                if !actor["reference"].is_string() {
                    return Err("a participant's actor has no reference".into());
                }
            }
            if let Some(required) = participant.get("required") {
                if !required
                    .as_str()
                    .is_some_and(|r| PARTICIPANT_REQUIRED.contains(&r))
                {
                    return Err(format!("participant required {required} is not allowed"));
                }
            }
        }

        for extension in resource["extension"].as_array().into_iter().flatten() {
            let url = extension["url"].as_str().ok_or("an extension has no url")?;
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(format!("extension url {url:?} is not absolute"));
            }
            let values = extension
                .as_object()
                .map_or(0, |e| e.keys().filter(|k| k.starts_with("value")).count());
            if values != 1 {
                return Err(format!("extension {url} has {values} values, not one"));
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Fixtures. No test reads the clock.
    // -----------------------------------------------------------------------------------------

    const MEDICAL_REASON: &str = "Persistent cough for two weeks";
    const PHONE: &str = "+14155550123";
    const EMAIL: &str = "patient@example.org";
    const CANCEL_REASON: &str = "Feeling worse about my asthma";
    const DECLINE_REASON: &str = "Outside my specialty: see a pulmonologist";

    fn instant(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("a valid RFC 3339 instant")
            .with_timezone(&Utc)
    }

    fn booked_at() -> DateTime<Utc> {
        instant("2030-01-01T09:00:00Z")
    }

    fn accepted_at() -> DateTime<Utc> {
        instant("2030-01-02T08:00:00Z")
    }

    fn paid_at() -> DateTime<Utc> {
        instant("2030-01-02T09:00:00Z")
    }

    fn before_start() -> DateTime<Utc> {
        instant("2030-01-05T12:00:00Z")
    }

    fn start() -> DateTime<Utc> {
        instant("2030-01-10T10:00:00Z")
    }

    fn consultation_id() -> Uuid {
        Uuid::parse_str("0b6e8f5c-3d1a-4c2e-9f47-6a2d8c1e5b90").expect("a valid uuid")
    }

    fn id() -> String {
        consultation_id().to_string()
    }

    fn provider_id() -> ProviderId {
        ProviderId::parse("prov-1").expect("a valid provider id")
    }

    fn text(s: &str) -> BoundedText {
        BoundedText::parse(s, 500).expect("valid text")
    }

    fn minutes(m: i64) -> DurationMinutes {
        DurationMinutes::parse(m).expect("a duration within bounds")
    }

    fn booking_in(mode: Mode) -> Booking {
        let phone = PhoneNumber::parse(PHONE).expect("a valid phone number");
        let email = EmailAddress::parse(EMAIL).expect("a valid email address");
        Booking {
            consultation_id: consultation_id(),
            patient_id: PatientId::parse("patient-42").expect("a valid patient id"),
            provider_id: provider_id(),
            starts_at: StartTime::parse(start(), booked_at()).expect("a start after booking"),
            duration: minutes(30),
            mode,
            timezone: TimeZone::parse("America/New_York").expect("a valid time zone"),
            contact: Contact::new(Some(phone), Some(email), true).expect("a valid contact"),
            reason: Some(text(MEDICAL_REASON)),
            price: None,
        }
    }

    fn booked(mode: Mode) -> ConsultationEvent {
        ConsultationEvent::Booked {
            booking: booking_in(mode),
            at: booked_at(),
        }
    }

    fn accepted() -> ConsultationEvent {
        ConsultationEvent::Accepted {
            provider_id: provider_id(),
            starts_at: start(),
            ends_at: start() + Duration::minutes(30),
            at: accepted_at(),
        }
    }

    fn paid() -> ConsultationEvent {
        ConsultationEvent::PaymentConfirmed {
            payment_id: "pay-1".to_owned(),
            amount_minor: 4500,
            currency: "USD".to_owned(),
            at: paid_at(),
        }
    }

    fn cancelled_by(by: Canceller) -> ConsultationEvent {
        ConsultationEvent::Cancelled {
            by,
            reason: text(CANCEL_REASON),
            refund: consult_domain::RefundDue::NotDue,
            at: before_start(),
        }
    }

    fn declined() -> ConsultationEvent {
        ConsultationEvent::Declined {
            reason: text(DECLINE_REASON),
            at: accepted_at(),
        }
    }

    fn expired(cause: ExpiryCause) -> ConsultationEvent {
        ConsultationEvent::Expired { cause, at: start() }
    }

    fn call_started() -> ConsultationEvent {
        ConsultationEvent::CallStarted {
            via: CallChannel::Video,
            at: start() + Duration::minutes(1),
        }
    }

    fn completed() -> Vec<ConsultationEvent> {
        vec![
            ConsultationEvent::CallEnded {
                duration_seconds: 1500,
                at: start() + Duration::minutes(28),
            },
            // Sub-second precision in the last event: `lastUpdated` stays whole seconds.
            ConsultationEvent::Completed {
                at: instant("2030-01-10T10:30:00.250Z"),
            },
        ]
    }

    fn no_show_of(party: Party) -> ConsultationEvent {
        ConsultationEvent::NoShowRecorded {
            party,
            at: start() + Duration::minutes(15),
        }
    }

    fn rescheduled() -> ConsultationEvent {
        let new_start = instant("2030-01-12T15:00:00Z");
        ConsultationEvent::Rescheduled {
            provider_id: provider_id(),
            previous_starts_at: start(),
            starts_at: StartTime::parse(new_start, before_start()).expect("a later start"),
            ends_at: new_start + Duration::minutes(45),
            duration: minutes(45),
            by: Party::Patient,
            at: before_start(),
        }
    }

    fn with(
        mut events: Vec<ConsultationEvent>,
        more: Vec<ConsultationEvent>,
    ) -> Vec<ConsultationEvent> {
        events.extend(more);
        events
    }

    fn requested(mode: Mode) -> Vec<ConsultationEvent> {
        vec![booked(mode)]
    }

    fn confirmed(mode: Mode) -> Vec<ConsultationEvent> {
        vec![booked(mode), accepted(), paid()]
    }

    fn fold(events: &[ConsultationEvent]) -> Consultation {
        let mut consultation = Consultation::default();
        for event in events {
            consultation.evolve(event.clone());
        }
        consultation
    }

    fn export_with(events: &[ConsultationEvent], links: &FhirLinks) -> Result<Value, FhirError> {
        appointment(&id(), &fold(events), events, links)
    }

    fn export(events: &[ConsultationEvent]) -> Value {
        export_with(events, &FhirLinks::default()).expect("an exportable consultation")
    }

    /// A history and what its export must say.
    struct Case {
        name: &'static str,
        events: Vec<ConsultationEvent>,
        /// The state the history folds into.
        state: Status,
        status: &'static str,
        /// The `cancelationReason` code and text.
        reason: Option<(&'static str, &'static str)>,
        /// The patient's and the provider's participation status.
        participants: [&'static str; 2],
    }

    /// One history for every way a booked consultation can be, in the given mode: a table, so
    /// kept out of rustfmt's one-argument-per-line layout.
    #[rustfmt::skip]
    fn cases(mode: Mode) -> Vec<Case> {
        use Status as S;
        let case = |name, events, state, status, reason, participants| Case {
            name, events, state, status, reason, participants,
        };
        let then = |events: Vec<ConsultationEvent>, event| with(events, vec![event]);
        let held = with(then(confirmed(mode), call_started()), completed());
        let (ok, needs, no) = ("accepted", "needs-action", "declined");
        vec![
            case("requested", requested(mode),
                 S::Requested, "pending", None, [ok, needs]),
            case("requested and paid", then(requested(mode), paid()),
                 S::Requested, "pending", None, [ok, needs]),
            case("accepted, unpaid", then(requested(mode), accepted()),
                 S::Accepted, "pending", None, [ok, ok]),
            case("confirmed", confirmed(mode),
                 S::Confirmed, "booked", None, [ok, ok]),
            case("paid, then accepted", vec![booked(mode), paid(), accepted()],
                 S::Confirmed, "booked", None, [ok, ok]),
            case("rescheduled", then(confirmed(mode), rescheduled()),
                 S::Confirmed, "booked", None, [ok, ok]),
            case("in progress", then(confirmed(mode), call_started()),
                 S::InProgress, "arrived", None, [ok, ok]),
            case("completed", held,
                 S::Completed, "fulfilled", None, [ok, ok]),
            case("completed without a call", with(confirmed(mode), completed().split_off(1)),
                 S::Completed, "fulfilled", None, [ok, ok]),
            case("cancelled by the patient unanswered", then(requested(mode), cancelled_by(Canceller::Patient)),
                 S::Cancelled, "cancelled", Some(("pat", "cancelled by the patient")), [no, needs]),
            case("cancelled by the patient once confirmed", then(confirmed(mode), cancelled_by(Canceller::Patient)),
                 S::Cancelled, "cancelled", Some(("pat", "cancelled by the patient")), [no, ok]),
            case("cancelled by the provider", then(confirmed(mode), cancelled_by(Canceller::Provider)),
                 S::Cancelled, "cancelled", Some(("prov", "cancelled by the provider")), [ok, no]),
            case("cancelled by the clinic", vec![booked(mode), accepted(), cancelled_by(Canceller::Admin)],
                 S::Cancelled, "cancelled", Some(("other", "cancelled by the clinic")), [ok, ok]),
            case("declined", then(requested(mode), declined()),
                 S::Declined, "cancelled", Some(("prov", "declined by the provider")), [ok, no]),
            case("expired unanswered", then(requested(mode), expired(ExpiryCause::NotAcceptedInTime)),
                 S::Expired, "cancelled", Some(("prov", "not accepted by the provider in time")), [ok, needs]),
            case("expired unpaid", vec![booked(mode), accepted(), expired(ExpiryCause::UnpaidAtStart)],
                 S::Expired, "cancelled", Some(("pat", "not paid before the start")), [ok, ok]),
            case("patient did not show", then(confirmed(mode), no_show_of(Party::Patient)),
                 S::NoShow, "noshow", Some(("pat", "patient did not attend")), [ok, ok]),
            case("provider did not show", then(confirmed(mode), no_show_of(Party::Provider)),
                 S::NoShow, "noshow", Some(("prov", "provider did not attend")), [ok, ok]),
        ]
    }

    fn every_case() -> Vec<(Mode, Case)> {
        [Mode::Video, Mode::Voice, Mode::Messaging]
            .into_iter()
            .flat_map(|mode| cases(mode).into_iter().map(move |case| (mode, case)))
            .collect()
    }

    fn all_links() -> FhirLinks {
        FhirLinks {
            meeting_link: Some(format!("https://app.example/consultations/{}/join", id())),
            provider_display: Some("Dr Ada Lovelace".to_owned()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Tests.
    // -----------------------------------------------------------------------------------------

    #[test]
    fn every_consultation_status_maps_to_its_r4_status() {
        let mut states = BTreeSet::new();
        for case in cases(Mode::Video) {
            let consultation = fold(&case.events);
            assert_eq!(consultation.status, case.state, "{}", case.name);
            states.insert(case.state.as_str());
            let resource = export(&case.events);
            assert_eq!(resource["status"], case.status, "{}", case.name);
            assert_eq!(resource["resourceType"], "Appointment");
        }
        use Status as S;
        let booked_states = [
            S::Requested,
            S::Accepted,
            S::Confirmed,
            S::InProgress,
            S::Completed,
            S::Declined,
            S::Cancelled,
            S::Expired,
            S::NoShow,
        ];
        let expected: BTreeSet<_> = booked_states.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, expected, "the cases cover every booked state");
    }

    #[test]
    fn a_consultation_that_was_never_booked_has_no_appointment() {
        let never_booked = Consultation::default();
        assert_eq!(
            appointment(&id(), &never_booked, &[], &all_links()),
            Err(FhirError::NotBooked)
        );
    }

    #[test]
    fn cancelation_reason_is_present_exactly_when_cancelled_or_noshow() {
        for (mode, case) in every_case() {
            let resource = export_with(&case.events, &all_links()).expect("exportable");
            let ended_unheld = ["cancelled", "noshow"].contains(&case.status);
            assert_eq!(
                resource.get("cancelationReason").is_some(),
                ended_unheld,
                "{} ({mode:?})",
                case.name
            );
        }
    }

    #[test]
    fn cancelation_reasons_say_who_ended_it_and_why_in_r4_codes() {
        for case in cases(Mode::Video) {
            let resource = export(&case.events);
            let Some((code, text)) = case.reason else {
                continue;
            };
            let reason = &resource["cancelationReason"];
            let coding = &reason["coding"][0];
            assert_eq!(
                coding["system"],
                "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"
            );
            assert_eq!(coding["code"], code, "{}", case.name);
            assert_eq!(reason["text"], text, "{}", case.name);
            let expected_display = match code {
                "pat" => "Patient",
                "prov" => "Provider",
                _ => "Other",
            };
            assert_eq!(coding["display"], expected_display, "{}", case.name);
            assert!(
                R4_CANCELLATION_CODES.contains(&code),
                "{code} is an R4 code"
            );
            assert_eq!(reason["coding"].as_array().map(Vec::len), Some(1));
        }
    }

    #[test]
    fn participants_are_the_patient_and_the_practitioner_with_their_answers() {
        for case in cases(Mode::Video) {
            let resource = export(&case.events);
            let participants = resource["participant"].as_array().expect("participants");
            assert_eq!(participants.len(), 2, "{}", case.name);
            let [patient, provider] = [&participants[0], &participants[1]];
            assert_eq!(patient["actor"]["reference"], "Patient/patient-42");
            assert_eq!(provider["actor"]["reference"], "Practitioner/prov-1");
            assert_eq!(patient["required"], "required");
            assert_eq!(provider["required"], "required");
            assert_eq!(
                [&patient["status"], &provider["status"]],
                case.participants,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn the_provider_display_is_shown_only_when_given() {
        let events = confirmed(Mode::Video);
        let display_for = |provider_display: Option<&str>| {
            let links = FhirLinks {
                meeting_link: None,
                provider_display: provider_display.map(str::to_owned),
            };
            let resource = export_with(&events, &links).expect("exportable");
            resource["participant"][1]["actor"].get("display").cloned()
        };
        assert_eq!(display_for(None), None);
        assert_eq!(display_for(Some("  ")), None, "blank counts as none");
        assert_eq!(
            display_for(Some(" Dr Ada Lovelace ")),
            Some(Value::from("Dr Ada Lovelace"))
        );
    }

    #[test]
    fn start_end_and_duration_follow_the_booking_and_its_reschedules() {
        for case in cases(Mode::Video) {
            let resource = export(&case.events);
            let start = resource["start"].as_str().expect("start");
            let end = resource["end"].as_str().expect("end");
            assert!(instant(end) > instant(start), "{}", case.name);
            let (expected, duration) = if case.name == "rescheduled" {
                (["2030-01-12T15:00:00Z", "2030-01-12T15:45:00Z"], 45)
            } else {
                (["2030-01-10T10:00:00Z", "2030-01-10T10:30:00Z"], 30)
            };
            assert_eq!([start, end], expected, "{}", case.name);
            assert_eq!(resource["minutesDuration"], duration, "{}", case.name);
        }
    }

    #[test]
    fn meta_and_created_come_from_the_state_and_the_history() {
        let resource = export(&confirmed(Mode::Video));
        assert_eq!(resource["id"], "0b6e8f5c-3d1a-4c2e-9f47-6a2d8c1e5b90");
        assert_eq!(resource["meta"]["versionId"], "3");
        assert_eq!(resource["meta"]["lastUpdated"], "2030-01-02T09:00:00Z");
        assert_eq!(resource["created"], "2030-01-01T09:00:00Z");

        let events = with(
            with(confirmed(Mode::Video), vec![call_started()]),
            completed(),
        );
        let resource = export(&events);
        assert_eq!(resource["meta"]["versionId"], "6");
        assert_eq!(resource["meta"]["lastUpdated"], "2030-01-10T10:30:00Z");
        assert_eq!(resource["created"], "2030-01-01T09:00:00Z");
    }

    #[test]
    fn the_mode_is_a_coded_service_category() {
        for (mode, code, text) in [
            (Mode::Video, "VIDEOCONF", "Video consultation"),
            (Mode::Voice, "PHONE", "Voice consultation"),
            (Mode::Messaging, "ONLINEWRIT", "Messaging consultation"),
        ] {
            let resource = export(&confirmed(mode));
            let category = &resource["serviceCategory"][0];
            assert_eq!(
                category["coding"][0]["system"],
                "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
            );
            assert_eq!(category["coding"][0]["code"], code);
            assert_eq!(category["text"], text);
            assert!(resource.get("appointmentType").is_none());
        }
    }

    #[test]
    fn the_meeting_link_is_an_extension_for_video_and_voice_with_a_link() {
        let link = "https://app.example/consultations/0b6e8f5c/join";
        let extension = |mode, meeting_link: Option<&str>| {
            let links = FhirLinks {
                meeting_link: meeting_link.map(str::to_owned),
                provider_display: None,
            };
            let resource = export_with(&confirmed(mode), &links).expect("exportable");
            resource.get("extension").cloned()
        };
        let expected = serde_json::json!([{ "url": MEETING_LINK_EXTENSION, "valueUrl": link }]);
        assert_eq!(extension(Mode::Video, Some(link)), Some(expected.clone()));
        assert_eq!(extension(Mode::Voice, Some(link)), Some(expected));
        assert_eq!(extension(Mode::Messaging, Some(link)), None);
        assert_eq!(extension(Mode::Video, None), None);
        assert_eq!(
            extension(Mode::Video, Some(" ")),
            None,
            "blank counts as none"
        );

        let links = FhirLinks {
            meeting_link: Some("https://app.example/join me".to_owned()),
            provider_display: None,
        };
        assert_eq!(
            export_with(&confirmed(Mode::Video), &links),
            Err(FhirError::InvalidMeetingLink)
        );
    }

    #[test]
    fn every_exported_state_keeps_the_r4_rules() {
        for (mode, case) in every_case() {
            for links in [FhirLinks::default(), all_links()] {
                let resource = export_with(&case.events, &links).expect("exportable");
                if let Err(broken) = validate_r4(&resource) {
                    panic!(
                        "{} ({mode:?}, {links:?}): {broken}\n{resource:#}",
                        case.name
                    );
                }
            }
        }
    }

    /// A change that breaks an R4 rule.
    type Change<'a> = &'a dyn Fn(&mut Value);

    fn remove(value: &mut Value, key: &str) {
        if let Some(object) = value.as_object_mut() {
            object.remove(key);
        }
    }

    #[test]
    fn the_r4_checker_refuses_what_r4_forbids() {
        let valid = export_with(&confirmed(Mode::Video), &all_links()).expect("exportable");
        assert_eq!(validate_r4(&valid), Ok(()));
        let reason = serde_json::json!({ "text": "no reason" });
        let refusals: [(&str, Change); 11] = [
            ("wrong type", &|r| r["resourceType"] = "Encounter".into()),
            ("no status", &|r| remove(r, "status")),
            ("unknown status", &|r| r["status"] = "done".into()),
            ("start without end", &|r| remove(r, "end")),
            ("booked without times", &|r| {
                remove(r, "start");
                remove(r, "end");
            }),
            ("end before start", &|r| {
                r["end"] = "2030-01-10T09:00:00Z".into()
            }),
            ("reason on booked", &|r| {
                r["cancelationReason"] = reason.clone()
            }),
            ("no participant", &|r| {
                r["participant"] = serde_json::json!([])
            }),
            ("participant without status", &|r| {
                remove(&mut r["participant"][0], "status")
            }),
            ("unknown participant status", &|r| {
                r["participant"][1]["status"] = "maybe".into()
            }),
            ("extension without a value", &|r| {
                remove(&mut r["extension"][0], "valueUrl")
            }),
        ];
        for (name, change) in refusals {
            let mut resource = valid.clone();
            change(&mut resource);
            assert!(
                validate_r4(&resource).is_err(),
                "the checker lets through: {name}"
            );
        }

        // Cancelled appointments may lack times, and may carry a reason.
        let cancelled = export(&with(requested(Mode::Video), vec![declined()]));
        let mut timeless = cancelled.clone();
        remove(&mut timeless, "start");
        remove(&mut timeless, "end");
        assert_eq!(validate_r4(&cancelled), Ok(()));
        assert_eq!(validate_r4(&timeless), Ok(()));
    }

    #[test]
    fn no_medical_reason_or_contact_details_are_exported() {
        for (mode, case) in every_case() {
            let resource = export_with(&case.events, &all_links()).expect("exportable");
            let json = serde_json::to_string(&resource).expect("serializable");
            for secret in [
                MEDICAL_REASON,
                "cough",
                PHONE,
                "4155550123",
                EMAIL,
                CANCEL_REASON,
                "asthma",
                DECLINE_REASON,
                "pulmonologist",
                "America/New_York",
            ] {
                assert!(
                    !json.contains(secret),
                    "{} ({mode:?}) exports {secret:?}: {json}",
                    case.name
                );
            }
            for field in [
                "description",
                "comment",
                "patientInstruction",
                "reasonCode",
                "reasonReference",
                "contained",
            ] {
                assert!(resource.get(field).is_none(), "{} has {field}", case.name);
            }
        }
    }

    #[test]
    fn the_id_must_name_the_booked_consultation() {
        let events = confirmed(Mode::Video);
        let consultation = fold(&events);
        let links = FhirLinks::default();
        for other in ["5f0c1d2e-0000-4000-8000-000000000001", "consultation-1", ""] {
            assert_eq!(
                appointment(other, &consultation, &events, &links),
                Err(FhirError::IdMismatch),
                "{other:?}"
            );
        }
        let upper = id().to_uppercase();
        let resource = appointment(&upper, &consultation, &events, &links).expect("same uuid");
        assert_eq!(
            resource["id"],
            id(),
            "the id is exported in its canonical form"
        );
    }

    #[test]
    fn a_history_that_does_not_explain_the_state_is_refused() {
        let cancelled = with(
            confirmed(Mode::Video),
            vec![cancelled_by(Canceller::Patient)],
        );
        let state = fold(&cancelled);
        let links = FhirLinks::default();
        let inconsistent = |events: &[ConsultationEvent]| {
            matches!(
                appointment(&id(), &state, events, &links),
                Err(FhirError::Inconsistent(_))
            )
        };
        assert!(inconsistent(&[]), "no history at all");
        assert!(
            inconsistent(&confirmed(Mode::Video)),
            "no cancellation in it"
        );
        assert!(
            inconsistent(&with(requested(Mode::Video), vec![declined()])),
            "ended another way"
        );

        let mut elsewhere = booking_in(Mode::Video);
        elsewhere.consultation_id = Uuid::nil();
        let foreign = vec![
            ConsultationEvent::Booked {
                booking: elsewhere,
                at: booked_at(),
            },
            cancelled_by(Canceller::Patient),
        ];
        assert!(inconsistent(&foreign), "another consultation's history");

        let open = fold(&confirmed(Mode::Video));
        assert!(
            matches!(
                appointment(&id(), &open, &cancelled, &links),
                Err(FhirError::Inconsistent(_))
            ),
            "an open state with a history that ended it"
        );
    }
}
