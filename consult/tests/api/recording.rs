//! Sends whose outcome cannot be recorded: a provider that answers one message id for every
//! message (as Twilio's published examples do), and a job whose outcome the database refuses.
//! Neither may turn into a resend loop once job locks run out.

use std::collections::HashMap;
use std::time::Duration;

use consult::Config;

use crate::helpers::{eventually, spawn_app_with, Backend, TestApp};
use crate::on_both_backends;

use consult_testkit as fakes;

use fakes::twilio::{TwilioBehavior, TwilioFake};

/// The sid Twilio's OpenAPI example gives every message.
const ONE_SID: &str = "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const BOOKINGS: usize = 10;
const LEASE: Duration = Duration::from_secs(1);

/// SMS through the fake, a short job lease, quick retries.
fn live_sms(twilio: &TwilioFake) -> impl Fn(&mut Config) + '_ {
    move |config: &mut Config| {
        let n = &mut config.notifications;
        let mut t = twilio.config();
        t.status_callback = None;
        n.twilio = Some(t);
        n.job_lease = LEASE;
        n.retry_base = Duration::from_millis(100);
    }
}

/// Ten patients book while no worker runs, so that their notifications wait and are claimed
/// together; returns the app (API only) and the consultation ids.
async fn booked_without_workers(
    backend: Backend,
    twilio: &TwilioFake,
) -> Option<(TestApp, Vec<String>)> {
    let setup = live_sms(twilio);
    let app = spawn_app_with(backend, |config| {
        setup(config);
        config.roles.workers = false;
    })
    .await?;
    app.register_provider("prov-1").await;
    let mut ids = Vec::new();
    for n in 0..BOOKINGS {
        let hours = 30 + i64::try_from(n).expect("small");
        ids.push(app.book(&format!("pat-{n}"), "prov-1", hours).await);
    }
    Some((app, ids))
}

/// Each SMS body the fake accepted, with how many times.
fn sent_bodies(twilio: &TwilioFake) -> HashMap<String, usize> {
    let mut bodies = HashMap::new();
    for request in twilio.accepted() {
        let body = request.field("Body").unwrap_or_default().to_owned();
        *bodies.entry(body).or_insert(0) += 1;
    }
    bodies
}

/// Waits for `expected` SMS, then three job leases more, and checks that nothing was sent
/// twice meanwhile.
async fn each_sent_once(twilio: &TwilioFake, expected: usize) {
    assert!(
        eventually(Duration::from_secs(30), || async {
            twilio.accepted().len() >= expected
        })
        .await,
        "every SMS goes out: {} of {expected}",
        twilio.accepted().len()
    );
    // Long enough for every lock taken by the batch to run out three times over.
    tokio::time::sleep(LEASE * 3 + Duration::from_millis(500)).await;
    let bodies = sent_bodies(twilio);
    assert_eq!(twilio.accepted().len(), expected, "no SMS sent again");
    assert_eq!(bodies.len(), expected, "each SMS is a different message");
    assert!(bodies.values().all(|&count| count == 1), "each sent once");
}

async fn one_sid_for_every_message_sends_each_once(backend: Backend) {
    let twilio = TwilioFake::start().await;
    twilio.set_behavior(TwilioBehavior::AcceptWithSid(ONE_SID.to_owned()));
    let Some((app, _)) = booked_without_workers(backend, &twilio).await else {
        return;
    };
    let app = app.restart_with(live_sms(&twilio)).await;
    // The provider gets an SMS of each booking.
    each_sent_once(&twilio, BOOKINGS).await;

    let sent = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM notification_log WHERE channel = 'sms' AND status = 'sent' \
               AND provider_message_id = '{ONE_SID}'"
        ))
        .await;
    assert_eq!(
        usize::try_from(sent).ok(),
        Some(BOOKINGS),
        "every SMS is recorded sent, with the sid it got"
    );
    let unfinished = app
        .db
        .scalar("SELECT count(*) FROM jobs WHERE kind = 'notify' AND status <> 'done'")
        .await;
    assert_eq!(unfinished, 0, "every notify job is done");
}

/// A job whose outcome the database refuses (here a trigger; in life any deterministic
/// failure) is narrowed down to and dead-lettered with the reason; the rest of its batch is
/// recorded; nothing is sent twice.
async fn an_outcome_that_cannot_be_recorded_is_dead_lettered_not_resent(backend: Backend) {
    let twilio = TwilioFake::start().await;
    let Some((app, ids)) = booked_without_workers(backend, &twilio).await else {
        return;
    };
    let poisoned = &ids[3];
    app.db
        .execute(&match backend {
            Backend::Sqlite => format!(
                "CREATE TRIGGER refuse_done BEFORE UPDATE ON jobs FOR EACH ROW \
                 WHEN NEW.status = 'done' AND NEW.consultation_id = '{poisoned}' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            ),
            Backend::Postgres => format!(
                "CREATE FUNCTION refuse_done() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
                 CREATE TRIGGER refuse_done BEFORE UPDATE ON jobs FOR EACH ROW \
                 WHEN (NEW.status = 'done' AND NEW.consultation_id = '{poisoned}') \
                 EXECUTE FUNCTION refuse_done()"
            ),
        })
        .await;
    let app = app.restart_with(live_sms(&twilio)).await;
    // The provider gets an SMS of each booking.
    each_sent_once(&twilio, BOOKINGS).await;

    let dead = app.dead_letters().await;
    let poisoned_jobs = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM jobs WHERE consultation_id = '{poisoned}' AND kind = 'notify'"
        ))
        .await;
    assert!(
        poisoned_jobs >= 2,
        "the poisoned consultation has notifications"
    );
    assert_eq!(
        dead.len(),
        usize::try_from(poisoned_jobs).expect("count"),
        "exactly the jobs at fault are dead-lettered: {dead:?}"
    );
    for job in &dead {
        assert_eq!(job["consultation_id"], poisoned.as_str());
        let error = job["last_error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("sent, but its outcome could not be recorded")
                && error.contains("refused by the test"),
            "the reason says what happened: {error}"
        );
    }
    let others_done = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM jobs WHERE kind = 'notify' AND status = 'done' \
               AND consultation_id <> '{poisoned}'"
        ))
        .await;
    let others = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM jobs WHERE kind = 'notify' AND consultation_id <> '{poisoned}'"
        ))
        .await;
    assert_eq!(
        others_done, others,
        "the rest of the batch is recorded done"
    );
    let logged_sent = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM notification_log WHERE consultation_id = '{poisoned}' \
               AND status = 'sent'"
        ))
        .await;
    assert_eq!(
        logged_sent, poisoned_jobs,
        "the notification log says they went out"
    );
}

/// A job whose lock ran out on its last attempt (its worker died, or could not record what
/// happened) is dead-lettered by the next claim, not run again.
async fn a_job_abandoned_on_its_last_attempt_is_dead_lettered(backend: Backend) {
    let twilio = TwilioFake::start().await;
    let Some((app, ids)) = booked_without_workers(backend, &twilio).await else {
        return;
    };
    let app = app.restart_with(live_sms(&twilio)).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            twilio.accepted().len() >= BOOKINGS
        })
        .await,
        "every SMS goes out"
    );
    let abandoned = &ids[0];
    // As a worker that died holding them on their last attempt, before it could record that
    // they went out, would have left them.
    app.db
        .execute(&format!(
            "UPDATE jobs SET status = 'running', attempts = max_attempts, locked_by = 'gone', \
                    locked_until_ms = 1 \
              WHERE consultation_id = '{abandoned}' AND kind = 'notify'"
        ))
        .await;
    app.db
        .execute(&format!(
            "UPDATE notification_log SET status = 'pending', sent_at_ms = NULL \
              WHERE consultation_id = '{abandoned}'"
        ))
        .await;
    let abandoned_jobs = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM jobs WHERE consultation_id = '{abandoned}' AND kind = 'notify'"
        ))
        .await;
    assert!(abandoned_jobs >= 2, "the consultation has notifications");
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.db
                .scalar(&format!(
                    "SELECT count(*) FROM jobs WHERE consultation_id = '{abandoned}' \
                       AND status = 'dead' AND last_error LIKE '%never finished%'"
                ))
                .await
                == abandoned_jobs
        })
        .await,
        "the abandoned jobs are dead-lettered"
    );
    each_sent_once(&twilio, BOOKINGS).await;
    let logged_dead = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM notification_log WHERE consultation_id = '{abandoned}' \
               AND status = 'dead' AND last_error LIKE '%never finished%'"
        ))
        .await;
    assert_eq!(logged_dead, abandoned_jobs, "their log rows say why");
}

on_both_backends!(
    one_sid_for_every_message_sends_each_once,
    an_outcome_that_cannot_be_recorded_is_dead_lettered_not_resent,
    a_job_abandoned_on_its_last_attempt_is_dead_lettered,
);
