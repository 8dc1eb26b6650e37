//! Given/when/then tests of the `Consultation` aggregate: every transition `decide` allows,
//! every one it refuses (a table of states × commands with the exact outcome of each pair),
//! and the state that `apply` builds from events.

use chrono::{DateTime, Duration, Utc};
use consult_domain::{
    Action, Booking, BoundedText, CallChannel, Canceller, Consultation, ConsultationCommand,
    ConsultationError, ConsultationEvent, Contact, DurationMinutes, EmailAddress, ExpiryCause,
    Mode, Money, Party, PatientId, PaymentStatus, PhoneNumber, ProviderId, RefundDue, Room,
    RoomEndReason, Rule, StartTime, Status, TimeZone,
};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use uuid::Uuid;

type Outcome = Result<Vec<ConsultationEvent>, ConsultationError>;

// ---------------------------------------------------------------------------------------------
// Fixed instants. No test reads the clock.
// ---------------------------------------------------------------------------------------------

fn instant(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("a valid RFC 3339 instant")
        .with_timezone(&Utc)
}

/// When the patient books.
fn booked_at() -> DateTime<Utc> {
    instant("2030-01-01T09:00:00Z")
}

/// When the provider accepts, in the given histories.
fn accepted_at() -> DateTime<Utc> {
    instant("2030-01-02T08:00:00Z")
}

/// When the payment succeeds, in the given histories.
fn paid_at() -> DateTime<Utc> {
    instant("2030-01-02T09:00:00Z")
}

/// A moment well before the start, when most commands under test are issued.
fn before_start() -> DateTime<Utc> {
    instant("2030-01-05T12:00:00Z")
}

/// When the booked consultation starts.
fn start() -> DateTime<Utc> {
    instant("2030-01-10T10:00:00Z")
}

/// When the booked consultation ends: 30 minutes after its start.
fn end() -> DateTime<Utc> {
    instant("2030-01-10T10:30:00Z")
}

/// The slot a reschedule moves the consultation to.
fn new_start() -> DateTime<Utc> {
    instant("2030-01-12T15:00:00Z")
}

// ---------------------------------------------------------------------------------------------
// Validated values.
// ---------------------------------------------------------------------------------------------

fn consultation_id() -> Uuid {
    Uuid::parse_str("0b6e8f5c-3d1a-4c2e-9f47-6a2d8c1e5b90").expect("a valid uuid")
}

fn provider_id() -> ProviderId {
    ProviderId::parse("prov-1").expect("a valid provider id")
}

fn minutes(m: i64) -> DurationMinutes {
    DurationMinutes::parse(m).expect("a duration within bounds")
}

fn start_time(at: DateTime<Utc>, now: DateTime<Utc>) -> StartTime {
    StartTime::parse(at, now).expect("a start after now")
}

fn text(s: &str) -> BoundedText {
    BoundedText::parse(s, 500).expect("valid text")
}

fn room() -> Room {
    Room {
        name: "consult-0b6e8f5c".to_owned(),
        provider: "daily".to_owned(),
        sid: None,
        for_start: None,
    }
}

fn booking_in(mode: Mode) -> Booking {
    let phone = PhoneNumber::parse("+14155550123").expect("a valid phone number");
    let email = EmailAddress::parse("patient@example.org").expect("a valid email address");
    Booking {
        consultation_id: consultation_id(),
        patient_id: PatientId::parse("patient-42").expect("a valid patient id"),
        provider_id: provider_id(),
        starts_at: start_time(start(), booked_at()),
        duration: minutes(30),
        mode,
        timezone: TimeZone::parse("America/New_York").expect("a valid time zone"),
        contact: Contact::new(Some(phone), Some(email), true).expect("a valid contact"),
        reason: Some(text("Persistent cough for two weeks")),
        price: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------------------------

fn booked_as(mode: Mode) -> ConsultationEvent {
    ConsultationEvent::Booked {
        booking: booking_in(mode),
        at: booked_at(),
    }
}

fn booked() -> ConsultationEvent {
    booked_as(Mode::Video)
}

fn accepted_on(at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::Accepted {
        provider_id: provider_id(),
        starts_at: start(),
        ends_at: end(),
        at,
    }
}

fn accepted() -> ConsultationEvent {
    accepted_on(accepted_at())
}

fn payment_confirmed_on(at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::PaymentConfirmed {
        payment_id: "pay-1".to_owned(),
        amount_minor: 4500,
        currency: "USD".to_owned(),
        at,
    }
}

fn paid() -> ConsultationEvent {
    payment_confirmed_on(paid_at())
}

fn payment_failed_on(at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::PaymentFailed {
        payment_id: "pay-0".to_owned(),
        at,
    }
}

fn payment_failed() -> ConsultationEvent {
    payment_failed_on(instant("2030-01-02T08:30:00Z"))
}

fn refunded_on(at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::Refunded {
        payment_id: "pay-1".to_owned(),
        amount_minor: 4500,
        at,
    }
}

fn declined_on(at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::Declined {
        reason: text("Outside my specialty"),
        at,
    }
}

fn cancelled_by(by: Canceller, at: DateTime<Utc>) -> ConsultationEvent {
    cancelled_with(by, None, at)
}

fn cancelled_with(
    by: Canceller,
    refund: Option<RefundDue>,
    at: DateTime<Utc>,
) -> ConsultationEvent {
    ConsultationEvent::Cancelled {
        by,
        reason: text("No longer needed"),
        refund: refund.unwrap_or(RefundDue::NotDue),
        at,
    }
}

fn expired_because(cause: ExpiryCause, at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::Expired { cause, at }
}

fn rescheduled(
    duration: DurationMinutes,
    starts_at: DateTime<Utc>,
    by: Party,
    at: DateTime<Utc>,
) -> ConsultationEvent {
    ConsultationEvent::Rescheduled {
        provider_id: provider_id(),
        previous_starts_at: start(),
        starts_at: start_time(starts_at, at),
        ends_at: starts_at + duration.as_duration(),
        duration,
        by,
        at,
    }
}

fn room_provisioned_on(at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::RoomProvisioned { room: room(), at }
}

fn call_started_on(via: CallChannel, at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::CallStarted { via, at }
}

fn call_ended_on(at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::CallEnded {
        duration_seconds: 1500,
        at,
    }
}

fn completed_on(at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::Completed { at }
}

fn no_show_of(party: Party, at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::NoShowRecorded { party, at }
}

// ---------------------------------------------------------------------------------------------
// Commands. Each `*_cmd` produces, when allowed, the event of the matching builder above with
// the same arguments.
// ---------------------------------------------------------------------------------------------

fn book_cmd(mode: Mode) -> ConsultationCommand {
    ConsultationCommand::Book {
        booking: booking_in(mode),
        at: booked_at(),
    }
}

fn accept_cmd(at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::Accept { at }
}

fn decline_cmd(at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::Decline {
        reason: text("Outside my specialty"),
        at,
    }
}

fn confirm_payment_cmd(at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::ConfirmPayment {
        payment_id: "pay-1".to_owned(),
        amount_minor: 4500,
        currency: "USD".to_owned(),
        at,
    }
}

fn fail_payment_cmd(at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::FailPayment {
        payment_id: "pay-0".to_owned(),
        at,
    }
}

fn refund_cmd(at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::RecordRefund {
        payment_id: "pay-1".to_owned(),
        amount_minor: 4500,
        at,
    }
}

fn reschedule_cmd(
    duration: Option<DurationMinutes>,
    starts_at: DateTime<Utc>,
    by: Party,
    at: DateTime<Utc>,
) -> ConsultationCommand {
    ConsultationCommand::Reschedule {
        starts_at: start_time(starts_at, at),
        duration,
        by,
        at,
    }
}

fn cancel_cmd(by: Canceller, at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::Cancel {
        by,
        reason: text("No longer needed"),
        refund_notice: Duration::hours(24),
        at,
    }
}

fn expire_cmd(cause: ExpiryCause, at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::Expire { cause, at }
}

fn provision_room_cmd(at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::ProvisionRoom { room: room(), at }
}

fn start_call_cmd(via: CallChannel, at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::StartCall { via, at }
}

fn end_call_cmd(at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::EndCall {
        duration_seconds: 1500,
        at,
    }
}

fn complete_cmd(at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::Complete { at }
}

fn no_show_cmd(party: Party, at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::RecordNoShow { party, at }
}

// ---------------------------------------------------------------------------------------------
// Histories: the event lists that put a consultation in each state.
// ---------------------------------------------------------------------------------------------

fn requested() -> Vec<ConsultationEvent> {
    vec![booked()]
}

fn requested_after_failed_payment() -> Vec<ConsultationEvent> {
    vec![booked(), payment_failed()]
}

fn requested_and_paid() -> Vec<ConsultationEvent> {
    vec![booked(), paid()]
}

fn accepted_unpaid() -> Vec<ConsultationEvent> {
    vec![booked(), accepted()]
}

fn accepted_after_failed_payment() -> Vec<ConsultationEvent> {
    vec![booked(), accepted(), payment_failed()]
}

fn confirmed_as(mode: Mode) -> Vec<ConsultationEvent> {
    vec![booked_as(mode), accepted(), paid()]
}

/// Accepted first, then paid.
fn confirmed() -> Vec<ConsultationEvent> {
    confirmed_as(Mode::Video)
}

/// Paid first, then accepted.
fn confirmed_paid_before_acceptance() -> Vec<ConsultationEvent> {
    vec![booked(), paid(), accepted()]
}

fn confirmed_with_room() -> Vec<ConsultationEvent> {
    with(confirmed(), [room_provisioned_on(before_start())])
}

fn in_progress_as(mode: Mode) -> Vec<ConsultationEvent> {
    with(
        confirmed_as(mode),
        [call_started_on(CallChannel::Video, start())],
    )
}

fn in_progress() -> Vec<ConsultationEvent> {
    in_progress_as(Mode::Video)
}

fn in_progress_with_room() -> Vec<ConsultationEvent> {
    with(
        confirmed_with_room(),
        [call_started_on(CallChannel::Video, start())],
    )
}

fn in_progress_call_ended() -> Vec<ConsultationEvent> {
    with(
        in_progress(),
        [call_ended_on(start() + Duration::minutes(25))],
    )
}

fn completed() -> Vec<ConsultationEvent> {
    with(in_progress_call_ended(), [completed_on(end())])
}

fn declined() -> Vec<ConsultationEvent> {
    vec![booked(), declined_on(accepted_at())]
}

fn cancelled_unpaid() -> Vec<ConsultationEvent> {
    vec![booked(), cancelled_by(Canceller::Patient, accepted_at())]
}

fn cancelled_after_payment() -> Vec<ConsultationEvent> {
    with(
        confirmed(),
        [cancelled_by(Canceller::Provider, before_start())],
    )
}

fn cancelled_and_refunded() -> Vec<ConsultationEvent> {
    with(
        cancelled_after_payment(),
        [refunded_on(before_start() + Duration::hours(1))],
    )
}

fn expired_unaccepted() -> Vec<ConsultationEvent> {
    vec![
        booked(),
        expired_because(ExpiryCause::NotAcceptedInTime, before_start()),
    ]
}

fn expired_unpaid() -> Vec<ConsultationEvent> {
    with(
        accepted_unpaid(),
        [expired_because(ExpiryCause::UnpaidAtStart, start())],
    )
}

fn no_show() -> Vec<ConsultationEvent> {
    with(
        confirmed(),
        [no_show_of(Party::Patient, start() + Duration::minutes(15))],
    )
}

fn with<const N: usize>(
    mut events: Vec<ConsultationEvent>,
    more: [ConsultationEvent; N],
) -> Vec<ConsultationEvent> {
    events.extend(more);
    events
}

/// The consultation the events make, through `Aggregate::apply`.
fn state_from(events: &[ConsultationEvent]) -> Consultation {
    let mut consultation = Consultation::default();
    for event in events {
        consultation.apply(event.clone());
    }
    consultation
}

fn decide(given: Vec<ConsultationEvent>, command: ConsultationCommand) -> Outcome {
    TestFramework::<Consultation>::with(())
        .given(given)
        .when(command)
        .inspect_result()
}

fn invalid(action: Action, state: Status) -> ConsultationError {
    ConsultationError::InvalidTransition { action, state }
}

fn refused(action: Action, state: Status, rule: Rule) -> ConsultationError {
    ConsultationError::Refused {
        action,
        state,
        rule,
    }
}

// =============================================================================================
// Allowed transitions.
// =============================================================================================

#[test]
fn booking_a_new_consultation_records_the_booking() {
    TestFramework::<Consultation>::with(())
        .given_no_previous_events()
        .when(book_cmd(Mode::Video))
        .then_expect_events(vec![booked()]);
}

#[test]
fn accepting_a_requested_consultation_claims_the_providers_slot() {
    TestFramework::<Consultation>::with(())
        .given(requested())
        .when(accept_cmd(before_start()))
        .then_expect_events(vec![accepted_on(before_start())]);
}

#[test]
fn accepting_one_second_before_the_start_is_still_allowed() {
    let at = start() - Duration::seconds(1);
    TestFramework::<Consultation>::with(())
        .given(requested())
        .when(accept_cmd(at))
        .then_expect_events(vec![accepted_on(at)]);
}

#[test]
fn accepting_after_a_failed_payment_leaves_it_accepted_and_unpaid() {
    let given = requested_after_failed_payment();
    TestFramework::<Consultation>::with(())
        .given(given.clone())
        .when(accept_cmd(before_start()))
        .then_expect_events(vec![accepted_on(before_start())]);
    let state = state_from(&with(given, [accepted_on(before_start())]));
    assert_eq!(
        (state.status, state.payment),
        (Status::Accepted, PaymentStatus::Failed)
    );
}

#[test]
fn payment_before_acceptance_ends_confirmed() {
    let given = requested_and_paid();
    TestFramework::<Consultation>::with(())
        .given(given.clone())
        .when(accept_cmd(before_start()))
        .then_expect_events(vec![accepted_on(before_start())]);
    let state = state_from(&with(given, [accepted_on(before_start())]));
    assert_eq!(
        (state.status, state.payment),
        (Status::Confirmed, PaymentStatus::Paid)
    );
}

#[test]
fn acceptance_before_payment_ends_confirmed() {
    let given = accepted_unpaid();
    TestFramework::<Consultation>::with(())
        .given(given.clone())
        .when(confirm_payment_cmd(before_start()))
        .then_expect_events(vec![payment_confirmed_on(before_start())]);
    let state = state_from(&with(given, [payment_confirmed_on(before_start())]));
    assert_eq!(
        (state.status, state.payment),
        (Status::Confirmed, PaymentStatus::Paid)
    );
}

#[test]
fn a_requested_consultation_can_be_declined() {
    TestFramework::<Consultation>::with(())
        .given(requested())
        .when(decline_cmd(before_start()))
        .then_expect_events(vec![declined_on(before_start())]);
}

#[test]
fn a_paid_request_can_still_be_declined() {
    TestFramework::<Consultation>::with(())
        .given(requested_and_paid())
        .when(decline_cmd(before_start()))
        .then_expect_events(vec![declined_on(before_start())]);
}

#[test]
fn payment_is_confirmed_on_a_requested_consultation_which_stays_requested() {
    let given = requested();
    TestFramework::<Consultation>::with(())
        .given(given.clone())
        .when(confirm_payment_cmd(before_start()))
        .then_expect_events(vec![payment_confirmed_on(before_start())]);
    let state = state_from(&with(given, [payment_confirmed_on(before_start())]));
    assert_eq!(
        (state.status, state.payment),
        (Status::Requested, PaymentStatus::Paid)
    );
}

#[test]
fn payment_succeeds_after_a_failed_attempt_while_requested_or_accepted() {
    for (name, given) in [
        ("requested", requested_after_failed_payment()),
        ("accepted", accepted_after_failed_payment()),
    ] {
        let outcome = decide(given, confirm_payment_cmd(before_start()));
        assert_eq!(
            outcome,
            Ok(vec![payment_confirmed_on(before_start())]),
            "{name}"
        );
    }
}

#[test]
fn a_failed_payment_is_recorded_while_requested_or_accepted() {
    for (name, given) in [
        ("requested", requested()),
        ("accepted", accepted_unpaid()),
        (
            "requested after a failure",
            requested_after_failed_payment(),
        ),
        ("accepted after a failure", accepted_after_failed_payment()),
    ] {
        let outcome = decide(given, fail_payment_cmd(before_start()));
        assert_eq!(
            outcome,
            Ok(vec![payment_failed_on(before_start())]),
            "{name}"
        );
    }
}

#[test]
fn a_paid_consultation_is_refunded() {
    for (name, given) in [
        ("requested and paid", requested_and_paid()),
        ("confirmed", confirmed()),
        ("cancelled after payment", cancelled_after_payment()),
        ("completed", completed()),
        ("no-show", no_show()),
    ] {
        let outcome = decide(given, refund_cmd(before_start()));
        assert_eq!(outcome, Ok(vec![refunded_on(before_start())]), "{name}");
    }
}

#[test]
fn a_refund_after_cancellation_marks_the_payment_refunded() {
    TestFramework::<Consultation>::with(())
        .given(cancelled_after_payment())
        .when(refund_cmd(before_start()))
        .then_expect_events(vec![refunded_on(before_start())]);
}

#[test]
fn requested_accepted_and_confirmed_consultations_are_rescheduled() {
    for (name, given) in [
        ("requested", requested()),
        ("accepted", accepted_unpaid()),
        ("confirmed", confirmed()),
    ] {
        for by in [Party::Patient, Party::Provider] {
            let outcome = decide(
                given.clone(),
                reschedule_cmd(None, new_start(), by, before_start()),
            );
            assert_eq!(
                outcome,
                Ok(vec![rescheduled(
                    minutes(30),
                    new_start(),
                    by,
                    before_start()
                )]),
                "{name} by {by:?}"
            );
        }
    }
}

#[test]
fn rescheduling_with_a_new_duration_moves_the_end() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(reschedule_cmd(
            Some(minutes(45)),
            new_start(),
            Party::Provider,
            before_start(),
        ))
        .then_expect_events(vec![rescheduled(
            minutes(45),
            new_start(),
            Party::Provider,
            before_start(),
        )]);
}

#[test]
fn rescheduling_only_the_duration_keeps_the_start() {
    TestFramework::<Consultation>::with(())
        .given(accepted_unpaid())
        .when(reschedule_cmd(
            Some(minutes(60)),
            start(),
            Party::Patient,
            before_start(),
        ))
        .then_expect_events(vec![rescheduled(
            minutes(60),
            start(),
            Party::Patient,
            before_start(),
        )]);
}

#[test]
fn rescheduling_to_the_same_slot_produces_no_events() {
    for (name, given) in [
        ("requested", requested()),
        ("accepted", accepted_unpaid()),
        ("confirmed", confirmed()),
    ] {
        for duration in [None, Some(minutes(30))] {
            let outcome = decide(
                given.clone(),
                reschedule_cmd(duration, start(), Party::Patient, before_start()),
            );
            assert_eq!(outcome, Ok(vec![]), "{name} with duration {duration:?}");
        }
    }
}

#[test]
fn any_canceller_can_cancel_any_open_consultation() {
    for (name, given) in [
        ("requested", requested()),
        ("requested and paid", requested_and_paid()),
        ("accepted", accepted_unpaid()),
        ("confirmed", confirmed()),
    ] {
        for by in [Canceller::Patient, Canceller::Provider, Canceller::Admin] {
            let outcome = decide(given.clone(), cancel_cmd(by, before_start()));
            let paid = state_from(&given).payment == PaymentStatus::Paid;
            let refund = paid.then_some(RefundDue::Full);
            assert_eq!(
                outcome,
                Ok(vec![cancelled_with(by, refund, before_start())]),
                "{name} by {by:?}"
            );
        }
    }
}

#[test]
fn an_unaccepted_request_expires() {
    TestFramework::<Consultation>::with(())
        .given(requested())
        .when(expire_cmd(ExpiryCause::NotAcceptedInTime, before_start()))
        .then_expect_events(vec![expired_because(
            ExpiryCause::NotAcceptedInTime,
            before_start(),
        )]);
}

#[test]
fn an_accepted_but_unpaid_consultation_expires_at_its_start() {
    TestFramework::<Consultation>::with(())
        .given(accepted_unpaid())
        .when(expire_cmd(ExpiryCause::UnpaidAtStart, start()))
        .then_expect_events(vec![expired_because(ExpiryCause::UnpaidAtStart, start())]);
}

#[test]
fn a_confirmed_video_consultation_gets_a_room() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(provision_room_cmd(before_start()))
        .then_expect_events(vec![room_provisioned_on(before_start())]);
}

#[test]
fn a_video_consultation_in_progress_without_a_room_gets_one() {
    TestFramework::<Consultation>::with(())
        .given(in_progress())
        .when(provision_room_cmd(start()))
        .then_expect_events(vec![room_provisioned_on(start())]);
}

#[test]
fn a_confirmed_consultation_starts_its_call() {
    for via in [CallChannel::Video, CallChannel::Voice] {
        let at = start() - Duration::minutes(5);
        let outcome = decide(confirmed_with_room(), start_call_cmd(via, at));
        assert_eq!(outcome, Ok(vec![call_started_on(via, at)]), "{via:?}");
    }
}

#[test]
fn a_call_in_progress_ends() {
    let at = start() + Duration::minutes(25);
    TestFramework::<Consultation>::with(())
        .given(in_progress())
        .when(end_call_cmd(at))
        .then_expect_events(vec![call_ended_on(at)]);
}

#[test]
fn a_consultation_in_progress_is_completed() {
    for (name, given) in [
        ("call running", in_progress()),
        ("call ended", in_progress_call_ended()),
    ] {
        let outcome = decide(given, complete_cmd(end()));
        assert_eq!(outcome, Ok(vec![completed_on(end())]), "{name}");
    }
}

#[test]
fn a_confirmed_consultation_is_completed_from_its_start_on() {
    for at in [start(), end()] {
        let outcome = decide(confirmed(), complete_cmd(at));
        assert_eq!(outcome, Ok(vec![completed_on(at)]), "at {at}");
    }
}

#[test]
fn a_no_show_is_recorded_from_the_start_on() {
    for party in [Party::Patient, Party::Provider] {
        for at in [start(), start() + Duration::minutes(10)] {
            let outcome = decide(confirmed(), no_show_cmd(party, at));
            assert_eq!(
                outcome,
                Ok(vec![no_show_of(party, at)]),
                "{party:?} at {at}"
            );
        }
    }
}

// =============================================================================================
// Refused transitions, a few spelled out; the table below covers every pair.
// =============================================================================================

#[test]
fn commands_on_a_consultation_never_booked_are_invalid() {
    TestFramework::<Consultation>::with(())
        .given_no_previous_events()
        .when(accept_cmd(before_start()))
        .then_expect_error(invalid(Action::Accept, Status::New));
}

#[test]
fn booking_twice_is_invalid() {
    TestFramework::<Consultation>::with(())
        .given(requested())
        .when(book_cmd(Mode::Video))
        .then_expect_error(invalid(Action::Book, Status::Requested));
}

#[test]
fn accepting_at_the_start_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(requested())
        .when(accept_cmd(start()))
        .then_expect_error(refused(
            Action::Accept,
            Status::Requested,
            Rule::StartPassed,
        ));
}

#[test]
fn accepting_twice_is_invalid() {
    TestFramework::<Consultation>::with(())
        .given(accepted_unpaid())
        .when(accept_cmd(before_start()))
        .then_expect_error(invalid(Action::Accept, Status::Accepted));
}

#[test]
fn paying_a_paid_request_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(requested_and_paid())
        .when(confirm_payment_cmd(before_start()))
        .then_expect_error(refused(
            Action::ConfirmPayment,
            Status::Requested,
            Rule::AlreadyPaid,
        ));
}

#[test]
fn a_failed_payment_after_success_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(requested_and_paid())
        .when(fail_payment_cmd(before_start()))
        .then_expect_error(refused(
            Action::FailPayment,
            Status::Requested,
            Rule::AlreadyPaid,
        ));
}

#[test]
fn paying_a_confirmed_consultation_is_invalid() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(confirm_payment_cmd(before_start()))
        .then_expect_error(invalid(Action::ConfirmPayment, Status::Confirmed));
}

#[test]
fn refunding_an_unpaid_consultation_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(accepted_unpaid())
        .when(refund_cmd(before_start()))
        .then_expect_error(refused(
            Action::RecordRefund,
            Status::Accepted,
            Rule::NotPaid,
        ));
}

#[test]
fn refunding_twice_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(cancelled_and_refunded())
        .when(refund_cmd(before_start()))
        .then_expect_error(refused(
            Action::RecordRefund,
            Status::Cancelled,
            Rule::NotPaid,
        ));
}

#[test]
fn rescheduling_once_the_start_has_passed_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(reschedule_cmd(None, new_start(), Party::Patient, start()))
        .then_expect_error(refused(
            Action::Reschedule,
            Status::Confirmed,
            Rule::StartPassed,
        ));
}

#[test]
fn a_consultation_in_progress_can_be_neither_rescheduled_nor_cancelled() {
    TestFramework::<Consultation>::with(())
        .given(in_progress())
        .when(reschedule_cmd(
            None,
            new_start(),
            Party::Provider,
            before_start(),
        ))
        .then_expect_error(invalid(Action::Reschedule, Status::InProgress));
    TestFramework::<Consultation>::with(())
        .given(in_progress())
        .when(cancel_cmd(Canceller::Admin, before_start()))
        .then_expect_error(invalid(Action::Cancel, Status::InProgress));
}

#[test]
fn a_confirmed_consultation_does_not_expire() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(expire_cmd(ExpiryCause::UnpaidAtStart, start()))
        .then_expect_error(invalid(Action::Expire, Status::Confirmed));
}

#[test]
fn a_voice_consultation_gets_no_room() {
    TestFramework::<Consultation>::with(())
        .given(confirmed_as(Mode::Voice))
        .when(provision_room_cmd(before_start()))
        .then_expect_error(refused(
            Action::ProvisionRoom,
            Status::Confirmed,
            Rule::NotVideo,
        ));
}

#[test]
fn a_second_room_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(confirmed_with_room())
        .when(provision_room_cmd(before_start()))
        .then_expect_error(refused(
            Action::ProvisionRoom,
            Status::Confirmed,
            Rule::RoomExists,
        ));
}

#[test]
fn an_unpaid_consultation_gets_no_room_and_no_call() {
    TestFramework::<Consultation>::with(())
        .given(accepted_unpaid())
        .when(provision_room_cmd(before_start()))
        .then_expect_error(invalid(Action::ProvisionRoom, Status::Accepted));
    TestFramework::<Consultation>::with(())
        .given(accepted_unpaid())
        .when(start_call_cmd(CallChannel::Video, start()))
        .then_expect_error(invalid(Action::StartCall, Status::Accepted));
}

#[test]
fn starting_a_call_twice_is_invalid() {
    TestFramework::<Consultation>::with(())
        .given(in_progress())
        .when(start_call_cmd(CallChannel::Video, start()))
        .then_expect_error(invalid(Action::StartCall, Status::InProgress));
}

#[test]
fn ending_a_call_twice_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(in_progress_call_ended())
        .when(end_call_cmd(end()))
        .then_expect_error(refused(
            Action::EndCall,
            Status::InProgress,
            Rule::CallEnded,
        ));
}

#[test]
fn ending_a_call_that_never_started_is_invalid() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(end_call_cmd(end()))
        .then_expect_error(invalid(Action::EndCall, Status::Confirmed));
}

#[test]
fn completing_a_confirmed_consultation_before_its_start_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(complete_cmd(start() - Duration::seconds(1)))
        .then_expect_error(refused(
            Action::Complete,
            Status::Confirmed,
            Rule::NotStarted,
        ));
}

#[test]
fn a_no_show_before_the_start_is_refused() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(no_show_cmd(Party::Provider, start() - Duration::seconds(1)))
        .then_expect_error(refused(
            Action::RecordNoShow,
            Status::Confirmed,
            Rule::NotStarted,
        ));
}

#[test]
fn a_no_show_during_the_call_is_invalid() {
    TestFramework::<Consultation>::with(())
        .given(in_progress())
        .when(no_show_cmd(Party::Patient, start() + Duration::minutes(10)))
        .then_expect_error(invalid(Action::RecordNoShow, Status::InProgress));
}

#[test]
fn a_completed_consultation_cannot_be_completed_again() {
    TestFramework::<Consultation>::with(())
        .given(completed())
        .when(complete_cmd(end()))
        .then_expect_error(invalid(Action::Complete, Status::Completed));
}

#[test]
fn refusals_name_the_action_the_state_and_the_rule() {
    TestFramework::<Consultation>::with(())
        .given(confirmed())
        .when(confirm_payment_cmd(before_start()))
        .then_expect_error_message("cannot confirm payment of a consultation that is confirmed");
    TestFramework::<Consultation>::with(())
        .given(confirmed_with_room())
        .when(provision_room_cmd(before_start()))
        .then_expect_error_message(
            "cannot provision a room for a consultation that is confirmed: it has a room already",
        );
}

// =============================================================================================
// The table: every command in every state, with the exact outcome of each pair.
// =============================================================================================

/// What one command does in one state.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Produces exactly the column's event.
    Emits,
    /// Succeeds without producing any event.
    Nothing,
    /// `InvalidTransition` naming the column's action and the row's state.
    Invalid,
    /// `Refused` naming the column's action, the row's state and this rule.
    Refused(Rule),
}

const EV: Expect = Expect::Emits;
const NIL: Expect = Expect::Nothing;
const INV: Expect = Expect::Invalid;
const SP: Expect = Expect::Refused(Rule::StartPassed);
const NS: Expect = Expect::Refused(Rule::NotStarted);
const NV: Expect = Expect::Refused(Rule::NotVideo);
const RX: Expect = Expect::Refused(Rule::RoomExists);
const AP: Expect = Expect::Refused(Rule::AlreadyPaid);
const NP: Expect = Expect::Refused(Rule::NotPaid);
const CE: Expect = Expect::Refused(Rule::CallEnded);

const COLUMNS: usize = 22;

#[derive(Debug)]
struct Column {
    name: &'static str,
    action: Action,
    command: ConsultationCommand,
    /// What the command produces where it is allowed.
    emits: Vec<ConsultationEvent>,
}

fn column(
    name: &'static str,
    action: Action,
    command: ConsultationCommand,
    emits: Vec<ConsultationEvent>,
) -> Column {
    Column {
        name,
        action,
        command,
        emits,
    }
}

fn columns() -> [Column; COLUMNS] {
    let early = before_start();
    let just_before = start() - Duration::seconds(1);
    let after = start() + Duration::minutes(10);
    let call_at = start() - Duration::minutes(5);
    let call_end = start() + Duration::minutes(25);
    [
        column("book", Action::Book, book_cmd(Mode::Video), vec![booked()]),
        column(
            "accept before the start",
            Action::Accept,
            accept_cmd(early),
            vec![accepted_on(early)],
        ),
        column(
            "accept at the start",
            Action::Accept,
            accept_cmd(start()),
            vec![accepted_on(start())],
        ),
        column(
            "decline",
            Action::Decline,
            decline_cmd(early),
            vec![declined_on(early)],
        ),
        column(
            "confirm payment",
            Action::ConfirmPayment,
            confirm_payment_cmd(early),
            vec![payment_confirmed_on(early)],
        ),
        column(
            "fail payment",
            Action::FailPayment,
            fail_payment_cmd(early),
            vec![payment_failed_on(early)],
        ),
        column(
            "record refund",
            Action::RecordRefund,
            refund_cmd(early),
            vec![refunded_on(early)],
        ),
        column(
            "reschedule to a new slot",
            Action::Reschedule,
            reschedule_cmd(None, new_start(), Party::Patient, early),
            vec![rescheduled(minutes(30), new_start(), Party::Patient, early)],
        ),
        column(
            "reschedule to the same slot",
            Action::Reschedule,
            reschedule_cmd(Some(minutes(30)), start(), Party::Provider, early),
            vec![],
        ),
        column(
            "reschedule at the start",
            Action::Reschedule,
            reschedule_cmd(None, new_start(), Party::Provider, start()),
            vec![rescheduled(
                minutes(30),
                new_start(),
                Party::Provider,
                start(),
            )],
        ),
        column(
            "cancel by patient",
            Action::Cancel,
            cancel_cmd(Canceller::Patient, early),
            vec![cancelled_by(Canceller::Patient, early)],
        ),
        column(
            "cancel by provider",
            Action::Cancel,
            cancel_cmd(Canceller::Provider, early),
            vec![cancelled_by(Canceller::Provider, early)],
        ),
        column(
            "cancel by admin",
            Action::Cancel,
            cancel_cmd(Canceller::Admin, early),
            vec![cancelled_by(Canceller::Admin, early)],
        ),
        column(
            "expire: not accepted in time",
            Action::Expire,
            expire_cmd(ExpiryCause::NotAcceptedInTime, early),
            vec![expired_because(ExpiryCause::NotAcceptedInTime, early)],
        ),
        column(
            "expire: unpaid at start",
            Action::Expire,
            expire_cmd(ExpiryCause::UnpaidAtStart, start()),
            vec![expired_because(ExpiryCause::UnpaidAtStart, start())],
        ),
        column(
            "provision room",
            Action::ProvisionRoom,
            provision_room_cmd(early),
            vec![room_provisioned_on(early)],
        ),
        column(
            "start call",
            Action::StartCall,
            start_call_cmd(CallChannel::Video, call_at),
            vec![call_started_on(CallChannel::Video, call_at)],
        ),
        column(
            "end call",
            Action::EndCall,
            end_call_cmd(call_end),
            vec![call_ended_on(call_end)],
        ),
        column(
            "complete a second before the start",
            Action::Complete,
            complete_cmd(just_before),
            vec![completed_on(just_before)],
        ),
        column(
            "complete at the start",
            Action::Complete,
            complete_cmd(start()),
            vec![completed_on(start())],
        ),
        column(
            "record no-show a second before the start",
            Action::RecordNoShow,
            no_show_cmd(Party::Patient, just_before),
            vec![no_show_of(Party::Patient, just_before)],
        ),
        column(
            "record no-show after the start",
            Action::RecordNoShow,
            no_show_cmd(Party::Provider, after),
            vec![no_show_of(Party::Provider, after)],
        ),
    ]
}

#[derive(Debug)]
struct Row {
    name: &'static str,
    given: Vec<ConsultationEvent>,
    /// The state the history leads to, which every refusal must name.
    status: Status,
    expect: [Expect; COLUMNS],
}

fn row(
    name: &'static str,
    given: Vec<ConsultationEvent>,
    status: Status,
    expect: [Expect; COLUMNS],
) -> Row {
    Row {
        name,
        given,
        status,
        expect,
    }
}

#[rustfmt::skip]
fn rows() -> Vec<Row> {
    use Status as S;
    // Columns, in the order of `columns()`:
    //   book | accept early, at start | decline | pay | fail pay | refund |
    //   reschedule new slot, same slot, at start | cancel patient, provider, admin |
    //   expire not accepted, unpaid | room | start call | end call |
    //   complete early, at start | no-show early, after start
    vec![
        //                                                                    bk   acc  acc@ dec  pay  fail ref  rsc  rsc= rsc@ cnP  cnV  cnA  exN  exU  room strt end  cmp< cmp@ ns<  ns@
        row("new", vec![], S::New,                                           [EV,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV]),
        row("requested", requested(), S::Requested,                          [INV, EV,  SP,  EV,  EV,  EV,  NP,  EV,  NIL, SP,  EV,  EV,  EV,  EV,  EV,  INV, INV, INV, INV, INV, INV, INV]),
        row("requested, payment failed", requested_after_failed_payment(), S::Requested,
                                                                             [INV, EV,  SP,  EV,  EV,  EV,  NP,  EV,  NIL, SP,  EV,  EV,  EV,  EV,  EV,  INV, INV, INV, INV, INV, INV, INV]),
        row("requested and paid", requested_and_paid(), S::Requested,        [INV, EV,  SP,  EV,  AP,  AP,  EV,  EV,  NIL, SP,  EV,  EV,  EV,  EV,  EV,  INV, INV, INV, INV, INV, INV, INV]),
        row("accepted", accepted_unpaid(), S::Accepted,                      [INV, INV, INV, INV, EV,  EV,  NP,  EV,  NIL, SP,  EV,  EV,  EV,  EV,  EV,  INV, INV, INV, INV, INV, INV, INV]),
        row("accepted, payment failed", accepted_after_failed_payment(), S::Accepted,
                                                                             [INV, INV, INV, INV, EV,  EV,  NP,  EV,  NIL, SP,  EV,  EV,  EV,  EV,  EV,  INV, INV, INV, INV, INV, INV, INV]),
        row("confirmed (accepted, then paid)", confirmed(), S::Confirmed,    [INV, INV, INV, INV, INV, INV, EV,  EV,  NIL, SP,  EV,  EV,  EV,  INV, INV, EV,  EV,  INV, NS,  EV,  NS,  EV ]),
        row("confirmed (paid, then accepted)", confirmed_paid_before_acceptance(), S::Confirmed,
                                                                             [INV, INV, INV, INV, INV, INV, EV,  EV,  NIL, SP,  EV,  EV,  EV,  INV, INV, EV,  EV,  INV, NS,  EV,  NS,  EV ]),
        row("confirmed with a room", confirmed_with_room(), S::Confirmed,    [INV, INV, INV, INV, INV, INV, EV,  EV,  NIL, SP,  EV,  EV,  EV,  INV, INV, RX,  EV,  INV, NS,  EV,  NS,  EV ]),
        row("confirmed voice", confirmed_as(Mode::Voice), S::Confirmed,      [INV, INV, INV, INV, INV, INV, EV,  EV,  NIL, SP,  EV,  EV,  EV,  INV, INV, NV,  EV,  INV, NS,  EV,  NS,  EV ]),
        row("confirmed messaging", confirmed_as(Mode::Messaging), S::Confirmed,
                                                                             [INV, INV, INV, INV, INV, INV, EV,  EV,  NIL, SP,  EV,  EV,  EV,  INV, INV, NV,  EV,  INV, NS,  EV,  NS,  EV ]),
        row("in progress", in_progress(), S::InProgress,                     [INV, INV, INV, INV, INV, INV, EV,  INV, INV, INV, INV, INV, INV, INV, INV, EV,  INV, EV,  EV,  EV,  INV, INV]),
        row("in progress with a room", in_progress_with_room(), S::InProgress,
                                                                             [INV, INV, INV, INV, INV, INV, EV,  INV, INV, INV, INV, INV, INV, INV, INV, RX,  INV, EV,  EV,  EV,  INV, INV]),
        row("in progress, voice", in_progress_as(Mode::Voice), S::InProgress,
                                                                             [INV, INV, INV, INV, INV, INV, EV,  INV, INV, INV, INV, INV, INV, INV, INV, NV,  INV, EV,  EV,  EV,  INV, INV]),
        row("in progress, call ended", in_progress_call_ended(), S::InProgress,
                                                                             [INV, INV, INV, INV, INV, INV, EV,  INV, INV, INV, INV, INV, INV, INV, INV, EV,  INV, CE,  EV,  EV,  INV, INV]),
        row("completed", completed(), S::Completed,                          [INV, INV, INV, INV, INV, INV, EV,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, CE,  INV, INV, INV, INV]),
        row("declined", declined(), S::Declined,                             [INV, INV, INV, INV, INV, INV, NP,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV]),
        row("cancelled unpaid", cancelled_unpaid(), S::Cancelled,            [INV, INV, INV, INV, INV, INV, NP,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV]),
        row("cancelled after payment", cancelled_after_payment(), S::Cancelled,
                                                                             [INV, INV, INV, INV, INV, INV, EV,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV]),
        row("cancelled and refunded", cancelled_and_refunded(), S::Cancelled,
                                                                             [INV, INV, INV, INV, INV, INV, NP,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV]),
        row("expired unaccepted", expired_unaccepted(), S::Expired,          [INV, INV, INV, INV, INV, INV, NP,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV]),
        row("expired unpaid", expired_unpaid(), S::Expired,                  [INV, INV, INV, INV, INV, INV, NP,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV]),
        row("no-show", no_show(), S::NoShow,                                 [INV, INV, INV, INV, INV, INV, EV,  INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV, INV]),
    ]
}

fn expected_outcome(row: &Row, column: &Column, expect: Expect) -> Outcome {
    match expect {
        // A paid consultation cancelled early is refunded in full.
        Expect::Emits if state_from(&row.given).payment == PaymentStatus::Paid => Ok(column
            .emits
            .iter()
            .map(|event| match event {
                ConsultationEvent::Cancelled { by, at, .. } => {
                    cancelled_with(*by, Some(RefundDue::Full), *at)
                }
                other => other.clone(),
            })
            .collect()),
        Expect::Emits => Ok(column.emits.clone()),
        Expect::Nothing => Ok(vec![]),
        Expect::Invalid => Err(invalid(column.action, row.status)),
        Expect::Refused(rule) => Err(refused(column.action, row.status, rule)),
    }
}

#[test]
fn every_command_in_every_state_has_its_exact_outcome() {
    let columns = columns();
    let mut failures = Vec::new();
    let mut cases = 0;
    for row in rows() {
        let reached = state_from(&row.given).status;
        if reached != row.status {
            failures.push(format!(
                "[{}] history leads to {reached}, the table says {}",
                row.name, row.status
            ));
        }
        for (column, expect) in columns.iter().zip(row.expect) {
            cases += 1;
            let expected = expected_outcome(&row, column, expect);
            let actual = decide(row.given.clone(), column.command.clone());
            if actual != expected {
                failures.push(format!(
                    "[{} × {}]\n    expected {expected:?}\n    got      {actual:?}",
                    row.name, column.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_table_covers_every_action_and_every_status() {
    let actions: Vec<Action> = columns().iter().map(|c| c.action).collect();
    for action in [
        Action::Book,
        Action::Accept,
        Action::Decline,
        Action::ConfirmPayment,
        Action::FailPayment,
        Action::RecordRefund,
        Action::Reschedule,
        Action::Cancel,
        Action::Expire,
        Action::ProvisionRoom,
        Action::StartCall,
        Action::EndCall,
        Action::Complete,
        Action::RecordNoShow,
    ] {
        assert!(actions.contains(&action), "no column for {action:?}");
    }
    for column in columns() {
        assert_eq!(
            column.command.action(),
            column.action,
            "column {}",
            column.name
        );
    }
    let statuses: Vec<Status> = rows().iter().map(|r| r.status).collect();
    for status in [
        Status::New,
        Status::Requested,
        Status::Accepted,
        Status::Confirmed,
        Status::InProgress,
        Status::Completed,
        Status::Declined,
        Status::Cancelled,
        Status::Expired,
        Status::NoShow,
    ] {
        assert!(statuses.contains(&status), "no row in {status}");
    }
}

// =============================================================================================
// The state that applying events builds.
// =============================================================================================

#[test]
fn a_default_consultation_is_new_unpaid_and_empty() {
    let state = Consultation::default();
    assert_eq!(state.status, Status::New);
    assert_eq!(state.payment, PaymentStatus::Unpaid);
    assert_eq!(state.booking, None);
    assert_eq!(state.room, None);
    assert!(!state.call_started && !state.call_ended);
    assert_eq!(state.updated_at, None);
    assert_eq!(state.version, 0);
    assert_eq!(state.starts_at(), None);
    assert_eq!(state.ends_at(), None);
}

#[test]
fn booking_makes_it_requested_with_the_booked_slot() {
    let state = state_from(&requested());
    assert_eq!(state.status, Status::Requested);
    assert_eq!(state.payment, PaymentStatus::Unpaid);
    assert_eq!(state.booking, Some(booking_in(Mode::Video)));
    assert_eq!(state.starts_at(), Some(start()));
    assert_eq!(state.ends_at(), Some(end()));
}

#[test]
fn accepting_then_paying_passes_through_accepted_to_confirmed() {
    let mut state = state_from(&requested());
    state.apply(accepted());
    assert_eq!(
        (state.status, state.payment),
        (Status::Accepted, PaymentStatus::Unpaid)
    );
    state.apply(paid());
    assert_eq!(
        (state.status, state.payment),
        (Status::Confirmed, PaymentStatus::Paid)
    );
}

#[test]
fn paying_then_accepting_stays_requested_until_confirmed() {
    let mut state = state_from(&requested());
    state.apply(paid());
    assert_eq!(
        (state.status, state.payment),
        (Status::Requested, PaymentStatus::Paid)
    );
    state.apply(accepted());
    assert_eq!(
        (state.status, state.payment),
        (Status::Confirmed, PaymentStatus::Paid)
    );
}

#[test]
fn a_failed_payment_followed_by_success_is_paid() {
    let state = state_from(&with(accepted_after_failed_payment(), [paid()]));
    assert_eq!(
        (state.status, state.payment),
        (Status::Confirmed, PaymentStatus::Paid)
    );
}

#[test]
fn a_failed_payment_leaves_the_status_alone() {
    let state = state_from(&accepted_after_failed_payment());
    assert_eq!(
        (state.status, state.payment),
        (Status::Accepted, PaymentStatus::Failed)
    );
}

#[test]
fn the_version_counts_every_event_and_updated_at_follows_the_last() {
    let mut state = Consultation::default();
    let history = completed();
    for (applied, event) in history.iter().enumerate() {
        let at = event.at();
        state.apply(event.clone());
        assert_eq!(state.version, applied as u64 + 1);
        assert_eq!(state.updated_at, Some(at));
    }
    assert_eq!(state.version, 6);
    assert_eq!(state.updated_at, Some(end()));
}

#[test]
fn rescheduling_moves_the_start_and_the_end() {
    let mut state = state_from(&confirmed());
    state.apply(rescheduled(
        minutes(45),
        new_start(),
        Party::Patient,
        before_start(),
    ));
    assert_eq!(state.starts_at(), Some(new_start()));
    assert_eq!(state.ends_at(), Some(new_start() + Duration::minutes(45)));
    assert_eq!(
        state.booking.as_ref().map(|b| b.duration),
        Some(minutes(45))
    );
    assert_eq!(state.status, Status::Confirmed);
    assert_eq!(state.payment, PaymentStatus::Paid);
    assert_eq!(state.version, 4);
}

#[test]
fn after_a_reschedule_the_old_start_no_longer_blocks_acceptance() {
    // Rescheduled while requested: acceptance is now judged against the new start and carries
    // the new slot.
    let moved = with(
        requested(),
        [rescheduled(
            minutes(30),
            new_start(),
            Party::Patient,
            before_start(),
        )],
    );
    TestFramework::<Consultation>::with(())
        .given(moved)
        .when(accept_cmd(start()))
        .then_expect_events(vec![ConsultationEvent::Accepted {
            provider_id: provider_id(),
            starts_at: new_start(),
            ends_at: new_start() + Duration::minutes(30),
            at: start(),
        }]);
}

#[test]
fn a_refund_marks_the_payment_refunded_and_keeps_the_status() {
    let state = state_from(&cancelled_and_refunded());
    assert_eq!(
        (state.status, state.payment),
        (Status::Cancelled, PaymentStatus::Refunded)
    );
}

#[test]
fn a_room_is_kept_once_provisioned() {
    let state = state_from(&confirmed_with_room());
    assert_eq!(state.room, Some(room()));
    assert_eq!(state.status, Status::Confirmed);
}

#[test]
fn call_events_set_the_call_flags_and_the_status() {
    let started = state_from(&in_progress());
    assert_eq!(started.status, Status::InProgress);
    assert!(started.call_started && !started.call_ended);
    let ended = state_from(&in_progress_call_ended());
    assert_eq!(ended.status, Status::InProgress);
    assert!(ended.call_started && ended.call_ended);
    let done = state_from(&completed());
    assert_eq!(done.status, Status::Completed);
}

#[test]
fn closing_events_set_their_status() {
    for (name, given, status) in [
        ("declined", declined(), Status::Declined),
        ("cancelled", cancelled_unpaid(), Status::Cancelled),
        ("expired unaccepted", expired_unaccepted(), Status::Expired),
        ("expired unpaid", expired_unpaid(), Status::Expired),
        ("no-show", no_show(), Status::NoShow),
    ] {
        assert_eq!(state_from(&given).status, status, "{name}");
    }
}

// =============================================================================================
// Rooms and calls.
// =============================================================================================

fn room_ended_on(reason: RoomEndReason, at: DateTime<Utc>) -> ConsultationEvent {
    ConsultationEvent::RoomEnded {
        name: room().name,
        reason,
        at,
    }
}

fn end_room_cmd(name: &str, at: DateTime<Utc>) -> ConsultationCommand {
    ConsultationCommand::EndRoom {
        name: name.to_owned(),
        reason: RoomEndReason::ConsultationEnded,
        at,
    }
}

#[test]
fn an_open_room_ends_once_even_after_the_consultation_closed() {
    let cancelled = with(
        confirmed_with_room(),
        [cancelled_by(Canceller::Provider, before_start())],
    );
    TestFramework::<Consultation>::with(())
        .given(cancelled.clone())
        .when(end_room_cmd(&room().name, before_start()))
        .then_expect_events(vec![room_ended_on(
            RoomEndReason::ConsultationEnded,
            before_start(),
        )]);
    let ended = with(
        cancelled,
        [room_ended_on(
            RoomEndReason::ConsultationEnded,
            before_start(),
        )],
    );
    let state = state_from(&ended);
    assert!(state.room_ended && state.open_room().is_none());
    assert_eq!(state.room, Some(room()), "the room stays on record");
    assert_eq!(
        decide(ended, end_room_cmd(&room().name, before_start())).err(),
        Some(refused(
            Action::EndRoom,
            Status::Cancelled,
            Rule::NoSuchRoom
        )),
        "a second end is refused"
    );
}

#[test]
fn ending_a_room_by_another_name_is_refused() {
    assert_eq!(
        decide(
            confirmed_with_room(),
            end_room_cmd("consult-other", start())
        )
        .err(),
        Some(refused(
            Action::EndRoom,
            Status::Confirmed,
            Rule::NoSuchRoom
        ))
    );
    assert_eq!(
        decide(confirmed(), end_room_cmd(&room().name, start())).err(),
        Some(refused(
            Action::EndRoom,
            Status::Confirmed,
            Rule::NoSuchRoom
        ))
    );
}

#[test]
fn an_ended_room_can_be_replaced_but_an_open_one_cannot() {
    assert_eq!(
        decide(confirmed_with_room(), provision_room_cmd(before_start())).err(),
        Some(refused(
            Action::ProvisionRoom,
            Status::Confirmed,
            Rule::RoomExists
        ))
    );
    let ended = with(
        confirmed_with_room(),
        [room_ended_on(RoomEndReason::Rescheduled, before_start())],
    );
    TestFramework::<Consultation>::with(())
        .given(ended)
        .when(provision_room_cmd(before_start()))
        .then_expect_events(vec![room_provisioned_on(before_start())]);
}

#[test]
fn only_a_confirmed_voice_consultation_takes_call_requests() {
    let call_id = Uuid::from_u128(7);
    let request = |at| ConsultationCommand::RequestCall {
        call_id,
        by: Party::Patient,
        at,
    };
    TestFramework::<Consultation>::with(())
        .given(confirmed_as(Mode::Voice))
        .when(request(start()))
        .then_expect_events(vec![ConsultationEvent::CallRequested {
            call_id,
            by: Party::Patient,
            at: start(),
        }]);
    assert_eq!(
        decide(confirmed_as(Mode::Video), request(start())).err(),
        Some(refused(
            Action::RequestCall,
            Status::Confirmed,
            Rule::NotVoice
        ))
    );
    assert_eq!(
        decide(cancelled_after_payment(), request(start())).err(),
        Some(invalid(Action::RequestCall, Status::Cancelled))
    );
}

// =============================================================================================
// Price, refunds and the cancellation policy.
// =============================================================================================

fn priced(mut events: Vec<ConsultationEvent>) -> Vec<ConsultationEvent> {
    if let Some(ConsultationEvent::Booked { booking, .. }) = events.first_mut() {
        booking.price = Some(Money::parse(4500, "USD").expect("a price"));
    }
    events
}

#[test]
fn a_payment_that_is_not_the_price_is_flagged_and_does_not_confirm() {
    for (amount, currency) in [(4000, "USD"), (4500, "EUR")] {
        let command = ConsultationCommand::ConfirmPayment {
            payment_id: "pay-9".to_owned(),
            amount_minor: amount,
            currency: currency.to_owned(),
            at: paid_at(),
        };
        let outcome = decide(priced(accepted_unpaid()), command.clone());
        assert_eq!(
            outcome,
            Ok(vec![ConsultationEvent::PaymentFlagged {
                payment_id: "pay-9".to_owned(),
                amount_minor: amount,
                currency: currency.to_owned(),
                expected: Money::parse(4500, "USD").expect("a price"),
                at: paid_at(),
            }])
        );
        let mut events = priced(accepted_unpaid());
        events.extend(outcome.expect("flagged"));
        let state = state_from(&events);
        assert_eq!(state.status, Status::Accepted, "not confirmed");
        assert_eq!(state.payment, PaymentStatus::Unpaid);
        assert!(state.payment_flagged);
    }
    // The price in any letter case confirms.
    let exact = ConsultationCommand::ConfirmPayment {
        payment_id: "pay-1".to_owned(),
        amount_minor: 4500,
        currency: "usd".to_owned(),
        at: paid_at(),
    };
    let outcome = decide(priced(accepted_unpaid()), exact).expect("confirmed");
    assert!(matches!(
        outcome.as_slice(),
        [ConsultationEvent::PaymentConfirmed { .. }]
    ));
}

#[test]
fn a_paid_consultation_that_ends_unheld_owes_a_refund() {
    for (name, given) in [
        (
            "declined after payment",
            with(requested_and_paid(), [declined_on(accepted_at())]),
        ),
        (
            "expired after payment",
            with(
                requested_and_paid(),
                [expired_because(
                    ExpiryCause::NotAcceptedInTime,
                    before_start(),
                )],
            ),
        ),
        (
            "cancelled by the provider",
            with(
                confirmed(),
                [cancelled_with(
                    Canceller::Provider,
                    Some(RefundDue::Full),
                    before_start(),
                )],
            ),
        ),
    ] {
        let state = state_from(&given);
        assert_eq!(state.payment, PaymentStatus::RefundPending, "{name}");
        assert_eq!(state.payment_id.as_deref(), Some("pay-1"), "{name}");
    }
    // Unpaid: nothing to refund.
    assert_eq!(state_from(&declined()).payment, PaymentStatus::Unpaid);
}

#[test]
fn a_patient_cancelling_within_the_notice_is_not_refunded() {
    let late = start() - Duration::hours(2);
    assert_eq!(
        decide(confirmed(), cancel_cmd(Canceller::Patient, late)),
        Ok(vec![cancelled_with(
            Canceller::Patient,
            Some(RefundDue::NoneLate),
            late
        )])
    );
    let state = state_from(&with(
        confirmed(),
        [cancelled_with(
            Canceller::Patient,
            Some(RefundDue::NoneLate),
            late,
        )],
    ));
    assert_eq!(
        state.payment,
        PaymentStatus::Paid,
        "kept: a late cancellation"
    );
    // Exactly the notice before the start still counts as in time; the provider always refunds.
    let edge = start() - Duration::hours(24);
    assert_eq!(
        decide(confirmed(), cancel_cmd(Canceller::Patient, edge)),
        Ok(vec![cancelled_with(
            Canceller::Patient,
            Some(RefundDue::Full),
            edge
        )])
    );
    assert_eq!(
        decide(confirmed(), cancel_cmd(Canceller::Provider, late)),
        Ok(vec![cancelled_with(
            Canceller::Provider,
            Some(RefundDue::Full),
            late
        )])
    );
}

#[test]
fn a_refund_request_is_recorded_once_and_only_when_one_is_due() {
    let due = with(
        confirmed(),
        [cancelled_with(
            Canceller::Provider,
            Some(RefundDue::Full),
            before_start(),
        )],
    );
    let request = ConsultationCommand::RecordRefundRequest {
        payment_id: "pay-1".to_owned(),
        refund_id: "re_1".to_owned(),
        at: before_start(),
    };
    let requested = ConsultationEvent::RefundRequested {
        payment_id: "pay-1".to_owned(),
        refund_id: "re_1".to_owned(),
        at: before_start(),
    };
    assert_eq!(
        decide(due.clone(), request.clone()),
        Ok(vec![requested.clone()])
    );
    let refused_again = decide(with(due, [requested]), request.clone());
    assert_eq!(
        refused_again.err(),
        Some(refused(
            Action::RecordRefundRequest,
            Status::Cancelled,
            Rule::NoRefundDue
        ))
    );
    assert_eq!(
        decide(confirmed(), request).err(),
        Some(refused(
            Action::RecordRefundRequest,
            Status::Confirmed,
            Rule::NoRefundDue
        ))
    );
}

#[test]
fn a_call_still_open_when_the_consultation_completes_can_end_after() {
    let given = with(
        in_progress(),
        [completed_on(start() + Duration::minutes(20))],
    );
    assert_eq!(
        decide(given.clone(), end_call_cmd(start() + Duration::minutes(25))),
        Ok(vec![call_ended_on(start() + Duration::minutes(25))])
    );
    let ended = with(given, [call_ended_on(start() + Duration::minutes(25))]);
    assert_eq!(
        decide(ended, end_call_cmd(start() + Duration::minutes(26))).err(),
        Some(refused(Action::EndCall, Status::Completed, Rule::CallEnded))
    );
}
