//! The read side: lists and their scoping, filters and pagination, bad query strings, reading
//! one's own writes with `?after=`, provider schedules, and the operations endpoints.

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, FixedOffset, TimeZone as _, Utc};
use consult_api::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, booking, instant, spawn_app, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    lists_are_scoped_to_the_caller_and_filtered_exactly,
    pages_follow_the_cursor_through_every_consultation_once,
    bad_query_strings_are_refused_as_validation_failures,
    a_read_after_a_command_sees_it_and_a_read_after_the_future_is_marked_stale,
    a_schedule_shows_what_occupies_the_provider_in_the_range,
    admins_watch_subscriptions_rebuild_projections_and_scrape_metrics,
    a_rebuild_starts_promptly,
);

/// The top of the current hour, `hours` later.
fn on_the_hour(hours: i64) -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    Utc.timestamp_opt(now - now.rem_euclid(3600), 0)
        .single()
        .expect("an instant")
        + Duration::hours(hours)
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Books a 30-minute video consultation starting at `start`; returns the command's answer.
async fn book_at(app: &TestApp, patient: &str, provider: &str, start: DateTime<Utc>) -> Value {
    let mut body = booking(provider, 24);
    body["starts_at"] = json!(stamp(start));
    let response = app
        .post(
            "/v1/consultations",
            &app.token(Role::Patient, patient),
            &body,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED, "book at {start}");
    response.json().await.expect("json")
}

fn id_of(answer: &Value) -> String {
    answer["id"].as_str().expect("an id").to_owned()
}

/// Gives a command on a consultation; it must succeed. Returns its answer.
async fn command(app: &TestApp, id: &str, action: &str, token: &str, body: Value) -> Value {
    let response = app
        .post(&format!("/v1/consultations/{id}/{action}"), token, &body)
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{action} {id}");
    response.json().await.expect("json")
}

/// A read of the caller's own writes that must succeed.
async fn read_ok(app: &TestApp, path: &str, token: &str) -> Value {
    let response = app.read(path, token).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.expect("json")
}

fn item_ids(page: &Value, key: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item[key].as_str().expect("an id").to_owned())
        .collect()
}

/// The ids a list answers (one page, large enough for these tests).
async fn listed(app: &TestApp, path: &str, token: &str) -> Vec<String> {
    let page = read_ok(app, path, token).await;
    assert!(page["next_cursor"].is_null(), "one page only: {page}");
    item_ids(&page, "id")
}

async fn lists_are_scoped_to_the_caller_and_filtered_exactly(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-a").await;
    app.register_provider("prov-b").await;
    let base = on_the_hour(24);
    let at = |hours: i64| base + Duration::hours(hours);
    // Booked out of start order, so that the list's order is its own.
    let c5 = id_of(&book_at(&app, "pat-1", "prov-a", at(4)).await);
    let c1 = id_of(&book_at(&app, "pat-1", "prov-a", at(0)).await);
    let c3 = id_of(&book_at(&app, "pat-1", "prov-b", at(2)).await);
    let c2 = id_of(&book_at(&app, "pat-2", "prov-a", at(1)).await);
    let c4 = id_of(&book_at(&app, "pat-2", "prov-b", at(3)).await);
    let (c1, c2, c3, c4, c5) = (
        c1.as_str(),
        c2.as_str(),
        c3.as_str(),
        c4.as_str(),
        c5.as_str(),
    );

    let pat1 = app.token(Role::Patient, "pat-1");
    let pat2 = app.token(Role::Patient, "pat-2");
    let prov_a = app.token(Role::Provider, "prov-a");
    let prov_b = app.token(Role::Provider, "prov-b");
    let admin = app.token(Role::Admin, "admin-1");
    let auditor = app.token(Role::Auditor, "auditor-1");

    command(&app, c1, "accept", &prov_a, json!({})).await;
    command(&app, c3, "accept", &prov_b, json!({})).await;
    command(&app, c3, "cancel", &pat1, json!({"reason": "travelling"})).await;
    command(&app, c4, "decline", &prov_b, json!({"reason": "full"})).await;
    // c1 accepted, c2 requested, c3 cancelled, c4 declined, c5 requested.

    let list = "/v1/consultations";
    let all = [c1, c2, c3, c4, c5];
    assert_eq!(listed(&app, list, &pat1).await, [c1, c3, c5]);
    assert_eq!(listed(&app, list, &pat2).await, [c2, c4]);
    assert_eq!(listed(&app, list, &prov_a).await, [c1, c2, c5]);
    assert_eq!(listed(&app, list, &prov_b).await, [c3, c4]);
    assert_eq!(listed(&app, list, &admin).await, all);
    assert_eq!(listed(&app, list, &auditor).await, all);

    // Naming oneself, or narrowing by the other party, is fine; naming someone else is not.
    let path = "/v1/consultations?patient_id=pat-1";
    assert_eq!(listed(&app, path, &pat1).await, [c1, c3, c5]);
    let path = "/v1/consultations?provider_id=prov-a";
    assert_eq!(listed(&app, path, &pat1).await, [c1, c5]);
    let path = "/v1/consultations?patient_id=pat-2";
    assert_eq!(listed(&app, path, &prov_a).await, [c2]);
    assert_eq!(listed(&app, path, &admin).await, [c2, c4]);
    let path = "/v1/consultations?provider_id=prov-b";
    assert_eq!(listed(&app, path, &auditor).await, [c3, c4]);
    assert_problem(
        app.get("/v1/consultations?patient_id=pat-2", &pat1).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_problem(
        app.get("/v1/consultations?provider_id=prov-b", &prov_a)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // Status: one, or a comma-separated list.
    let path = "/v1/consultations?status=requested";
    assert_eq!(listed(&app, path, &admin).await, [c2, c5]);
    let path = "/v1/consultations?status=accepted,cancelled";
    assert_eq!(listed(&app, path, &admin).await, [c1, c3]);
    let path = "/v1/consultations?status=declined";
    assert_eq!(listed(&app, path, &pat2).await, [c4]);
    assert!(listed(&app, path, &pat1).await.is_empty());
    let path = "/v1/consultations?status=completed,no_show";
    assert!(listed(&app, path, &admin).await.is_empty());

    // from <= starts_at < to.
    let path = format!(
        "/v1/consultations?from={}&to={}",
        stamp(at(1)),
        stamp(at(3))
    );
    assert_eq!(listed(&app, &path, &admin).await, [c2, c3]);
    let path = format!("/v1/consultations?from={}", stamp(at(3)));
    assert_eq!(listed(&app, &path, &admin).await, [c4, c5]);
    let path = format!("/v1/consultations?to={}", stamp(at(1)));
    assert_eq!(listed(&app, &path, &admin).await, [c1]);
    let path = format!(
        "/v1/consultations?from={}&to={}",
        stamp(at(1) - Duration::seconds(1)),
        stamp(at(1) + Duration::seconds(1))
    );
    assert_eq!(listed(&app, &path, &admin).await, [c2]);
    // The same instant in another offset (`+` encoded) selects the same.
    let paris = at(1).with_timezone(&FixedOffset::east_opt(2 * 3600).expect("an offset"));
    let from = paris
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
        .replace('+', "%2B");
    let path = format!("/v1/consultations?from={from}&to={}", stamp(at(3)));
    assert_eq!(listed(&app, &path, &admin).await, [c2, c3]);
    // Filters combine.
    let path = format!(
        "/v1/consultations?provider_id=prov-a&status=requested&from={}",
        stamp(at(2))
    );
    assert_eq!(listed(&app, &path, &admin).await, [c5]);

    // Items carry the summary, never the reason; the single read has it.
    let page = read_ok(&app, "/v1/consultations", &admin).await;
    for item in page["items"].as_array().expect("items") {
        assert!(
            item.get("reason").is_none(),
            "a list item has a reason: {item}"
        );
        assert!(item["patient_id"].is_string() && item["provider_id"].is_string());
    }
    let first = &page["items"][0];
    assert_eq!(first["id"], json!(c1));
    assert_eq!(first["status"], "accepted");
    assert_eq!(first["patient_id"], "pat-1");
    assert_eq!(first["provider_id"], "prov-a");
    assert_eq!(instant(&first["starts_at"]), at(0));
    let one = read_ok(&app, &format!("/v1/consultations/{c1}"), &pat1).await;
    assert_eq!(one["reason"], "follow-up");
}

async fn pages_follow_the_cursor_through_every_consultation_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let base = on_the_hour(24);
    // Out of order, with two pairs starting together (ordered by id then).
    let mut booked = Vec::new();
    for hours in [6, 2, 6, 0, 4, 2, 7] {
        let start = base + Duration::hours(hours);
        let id = id_of(&book_at(&app, "pat-1", "prov-1", start).await);
        booked.push((start, id));
    }
    booked.sort();
    let expected: Vec<String> = booked.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(expected.len(), 7);

    for token in [
        app.token(Role::Patient, "pat-1"),
        app.token(Role::Provider, "prov-1"),
        app.token(Role::Admin, "admin-1"),
    ] {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut path = "/v1/consultations?limit=3".to_owned();
        loop {
            let page = read_ok(&app, &path, &token).await;
            let ids = item_ids(&page, "id");
            sizes.push(ids.len());
            seen.extend(ids);
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/v1/consultations?limit=3&cursor={cursor}"),
                None => {
                    assert!(page["next_cursor"].is_null(), "{page}");
                    break;
                }
            }
            assert!(sizes.len() < 10, "the cursor does not end");
        }
        assert_eq!(sizes, [3, 3, 1]);
        assert_eq!(seen, expected, "every consultation once, in start order");
        let starts: Vec<DateTime<Utc>> = {
            let page = read_ok(&app, "/v1/consultations", &token).await;
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|item| instant(&item["starts_at"]))
                .collect()
        };
        assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    }

    let admin = app.token(Role::Admin, "admin-1");
    // A page that ends exactly at the last item has no next cursor.
    let page = read_ok(&app, "/v1/consultations?limit=7", &admin).await;
    assert_eq!(item_ids(&page, "id"), expected);
    assert!(page["next_cursor"].is_null());
    // A cursor keeps the filter it is used with.
    let page = read_ok(&app, "/v1/consultations?limit=2", &admin).await;
    let cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();
    let path = format!(
        "/v1/consultations?limit=2&cursor={cursor}&to={}",
        stamp(base + Duration::hours(5))
    );
    let page = read_ok(&app, &path, &admin).await;
    assert_eq!(item_ids(&page, "id"), expected[2..4]);
    assert!(page["next_cursor"].is_null(), "{page}");

    for garbage in ["garbage!", "YWJjLmRlZg", "MTIz", ""] {
        let body = assert_problem(
            app.get(&format!("/v1/consultations?cursor={garbage}"), &admin)
                .await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(body["field"], "cursor", "{garbage}: {body}");
    }
}

async fn bad_query_strings_are_refused_as_validation_failures(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 24).await;
    let admin = app.token(Role::Admin, "admin-1");
    let provider = app.token(Role::Provider, "prov-1");

    let cases: &[(&str, &str)] = &[
        ("/v1/consultations?colour=blue", "colour"),
        ("/v1/consultations?limit=3&limit=4", "limit"),
        ("/v1/consultations?patient_id=a&patient_id=b", "patient_id"),
        ("/v1/consultations?limit=0", "limit"),
        ("/v1/consultations?limit=201", "limit"),
        ("/v1/consultations?limit=abc", "limit"),
        ("/v1/consultations?limit=-1", "limit"),
        ("/v1/consultations?limit=", "limit"),
        ("/v1/consultations?from=yesterday", "from"),
        ("/v1/consultations?from=2030-01-01", "from"),
        ("/v1/consultations?to=2030-13-01T00:00:00Z", "to"),
        (
            "/v1/consultations?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z",
            "to",
        ),
        (
            "/v1/consultations?from=2030-01-01T00:00:00Z&to=2030-01-01T00:00:00Z",
            "to",
        ),
        ("/v1/consultations?status=bogus", "status"),
        ("/v1/consultations?status=accepted,bogus", "status"),
        ("/v1/consultations?status=", "status"),
        ("/v1/consultations?after=-1", "after"),
        ("/v1/consultations?after=abc", "after"),
        ("/v1/consultations?after=1.5", "after"),
    ];
    for (path, field) in cases {
        let body = assert_problem(
            app.get(path, &admin).await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(body["field"], *field, "{path}: {body}");
    }

    let one = format!("/v1/consultations/{id}");
    let schedule = "/v1/providers/prov-1/schedule";
    let cases = [
        (format!("{one}?limit=1"), "limit"),
        (format!("{one}?after=-1"), "after"),
        (format!("{one}?after=1&after=2"), "after"),
        (format!("{schedule}?status=accepted"), "status"),
        (format!("{schedule}?limit=0"), "limit"),
        (format!("{schedule}?limit=201"), "limit"),
        (format!("{schedule}?from=soon"), "from"),
        (format!("{schedule}?after=-1"), "after"),
        (format!("{schedule}?cursor=garbage!"), "cursor"),
        (
            format!("{schedule}?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z"),
            "to",
        ),
    ];
    for (path, field) in &cases {
        let body = assert_problem(
            app.get(path, &provider).await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(body["field"], *field, "{path}: {body}");
    }

    // The same reads with good parameters answer.
    for path in [
        "/v1/consultations?limit=1".to_owned(),
        "/v1/consultations?limit=200&status=requested".to_owned(),
        one.clone(),
        format!("{schedule}?limit=200"),
    ] {
        read_ok(&app, &path, &provider).await;
    }
    // `after=0` waits for nothing.
    let response = app.get(&format!("{one}?after=0"), &provider).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stale(&response), None);
    let read: Value = response.json().await.expect("json");
    assert_eq!(read["id"], json!(id));
}

fn stale(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-projection-stale")
        .map(|v| v.to_str().expect("ascii").to_owned())
}

async fn a_read_after_a_command_sees_it_and_a_read_after_the_future_is_marked_stale(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let patient = app.token(Role::Patient, "pat-1");
    let provider = app.token(Role::Provider, "prov-1");

    let booked = book_at(&app, "pat-1", "prov-1", on_the_hour(30)).await;
    let id = id_of(&booked);
    let path = format!("/v1/consultations/{id}");
    let steps = [
        (None, "requested", 1),
        (Some(("accept", &provider, json!({}))), "accepted", 2),
        (
            Some(("cancel", &patient, json!({"reason": "better"}))),
            "cancelled",
            3,
        ),
    ];
    let mut last = 0;
    for (step, status, version) in steps {
        let answer = match step {
            None => booked.clone(),
            Some((action, token, body)) => command(&app, &id, action, token, body).await,
        };
        assert_eq!(answer["status"], status);
        let position = answer["position"].as_i64().expect("a position");
        assert!(position > last, "positions grow: {answer}");
        last = position;
        // Read at once, with the position the command answered.
        let response = app.get(&format!("{path}?after={position}"), &patient).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(stale(&response), None, "after={position}");
        let read: Value = response.json().await.expect("json");
        assert_eq!(read["status"], status, "{read}");
        assert_eq!(read["version"], version);
        assert_eq!(read["position"], position);

        let response = app
            .get(&format!("/v1/consultations?after={position}"), &provider)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(stale(&response), None);
        let page: Value = response.json().await.expect("json");
        assert_eq!(page["items"][0]["status"], status, "{page}");
        assert_eq!(page["items"][0]["version"], version, "{page}");
    }

    // A position the log has not reached: answered after the wait, marked stale.
    let future = 1_000_000_000_000_i64;
    for (path, token) in [
        (format!("{path}?after={future}"), &patient),
        (format!("/v1/consultations?after={future}"), &provider),
        (
            format!("/v1/providers/prov-1/schedule?after={future}"),
            &provider,
        ),
    ] {
        let started = Instant::now();
        let response = app.get(&path, token).await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(stale(&response).as_deref(), Some("true"), "{path}");
        assert!(
            elapsed >= StdDuration::from_millis(1500) && elapsed < StdDuration::from_secs(5),
            "{path} answered after {elapsed:?}"
        );
        let body: Value = response.json().await.expect("json");
        if path.starts_with("/v1/consultations/") {
            assert_eq!(body["status"], "cancelled", "the read is still served");
        } else {
            assert!(body["items"].is_array(), "{body}");
        }
    }
}

async fn a_schedule_shows_what_occupies_the_provider_in_the_range(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-a").await;
    app.register_provider("prov-b").await;
    let prov_a = app.token(Role::Provider, "prov-a");
    let prov_b = app.token(Role::Provider, "prov-b");
    let admin = app.token(Role::Admin, "admin-1");
    let base = on_the_hour(48);
    let at = |minutes: i64| base + Duration::minutes(minutes);

    let accepted = id_of(&book_at(&app, "pat-1", "prov-a", at(0)).await);
    let requested = id_of(&book_at(&app, "pat-2", "prov-a", at(120)).await);
    let to_cancel = id_of(&book_at(&app, "pat-1", "prov-a", at(240)).await);
    let declined = id_of(&book_at(&app, "pat-2", "prov-a", at(360)).await);
    let _elsewhere = id_of(&book_at(&app, "pat-1", "prov-b", at(60)).await);
    let far = id_of(&book_at(&app, "pat-1", "prov-a", base + Duration::days(10)).await);
    let (accepted, requested, to_cancel, declined, far) = (
        accepted.as_str(),
        requested.as_str(),
        to_cancel.as_str(),
        declined.as_str(),
        far.as_str(),
    );
    command(&app, accepted, "accept", &prov_a, json!({})).await;
    command(&app, to_cancel, "accept", &prov_a, json!({})).await;
    command(&app, declined, "decline", &prov_a, json!({"reason": "no"})).await;

    let range = |from: DateTime<Utc>, to: DateTime<Utc>| {
        format!(
            "/v1/providers/prov-a/schedule?from={}&to={}",
            stamp(from),
            stamp(to)
        )
    };
    let path = range(at(-60), at(420));
    let page = read_ok(&app, &path, &prov_a).await;
    assert_eq!(
        item_ids(&page, "consultation_id"),
        [accepted, requested, to_cancel]
    );
    assert_eq!(page["provider_id"], "prov-a");
    assert_eq!(instant(&page["from"]), at(-60));
    assert_eq!(instant(&page["to"]), at(420));
    assert!(page["next_cursor"].is_null());
    let first = &page["items"][0];
    assert_eq!(first["status"], "accepted");
    assert_eq!(first["patient_id"], "pat-1");
    assert_eq!(first["mode"], "video");
    assert_eq!(instant(&first["starts_at"]), at(0));
    assert_eq!(instant(&first["ends_at"]), at(30));
    assert!(first.get("reason").is_none());
    assert_eq!(page["items"][1]["status"], "requested");

    // Cancelled ones disappear.
    command(
        &app,
        to_cancel,
        "cancel",
        &prov_a,
        json!({"reason": "away"}),
    )
    .await;
    let page = read_ok(&app, &path, &prov_a).await;
    assert_eq!(item_ids(&page, "consultation_id"), [accepted, requested]);
    // The admin sees the same.
    let page = read_ok(&app, &path, &admin).await;
    assert_eq!(item_ids(&page, "consultation_id"), [accepted, requested]);

    // Overlap: whatever occupies part of the range, even if it started before it.
    let page = read_ok(&app, &range(at(15), at(121)), &prov_a).await;
    assert_eq!(item_ids(&page, "consultation_id"), [accepted, requested]);
    let page = read_ok(&app, &range(at(29), at(30)), &prov_a).await;
    assert_eq!(item_ids(&page, "consultation_id"), [accepted]);
    // Ends are exclusive: touching the range is not occupying it.
    let page = read_ok(&app, &range(at(30), at(120)), &prov_a).await;
    assert!(item_ids(&page, "consultation_id").is_empty(), "{page}");
    let page = read_ok(&app, &range(at(-30), at(0)), &prov_a).await;
    assert!(item_ids(&page, "consultation_id").is_empty(), "{page}");

    // The default range is the next seven days: the one ten days out is not in it.
    let page = read_ok(&app, "/v1/providers/prov-a/schedule", &prov_a).await;
    assert_eq!(item_ids(&page, "consultation_id"), [accepted, requested]);
    let page = read_ok(&app, &range(at(-60), base + Duration::days(11)), &prov_a).await;
    assert_eq!(
        item_ids(&page, "consultation_id"),
        [accepted, requested, far]
    );
    // Paginated like the list.
    let page = read_ok(
        &app,
        &format!("{}&limit=2", range(at(-60), base + Duration::days(11))),
        &prov_a,
    )
    .await;
    assert_eq!(item_ids(&page, "consultation_id"), [accepted, requested]);
    let cursor = page["next_cursor"].as_str().expect("a cursor");
    let page = read_ok(
        &app,
        &format!(
            "{}&limit=2&cursor={cursor}",
            range(at(-60), base + Duration::days(11))
        ),
        &prov_a,
    )
    .await;
    assert_eq!(item_ids(&page, "consultation_id"), [far]);
    assert!(page["next_cursor"].is_null());

    // Only the provider itself and admins.
    for token in [
        prov_b.clone(),
        app.token(Role::Patient, "pat-1"),
        app.token(Role::Auditor, "auditor-1"),
    ] {
        assert_problem(
            app.get(&path, &token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    assert_problem(
        app.get("/v1/providers/nobody/schedule", &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // At most 92 days.
    let ok = app
        .get(&range(base, base + Duration::days(92)), &admin)
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let body = assert_problem(
        app.get(
            &range(base, base + Duration::days(92) + Duration::seconds(1)),
            &admin,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_eq!(body["field"], "to");
    let body = assert_problem(
        app.get(&range(base, base + Duration::days(200)), &prov_a)
            .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_eq!(body["field"], "to");
}

/// The `consultations` entry of `GET /v1/admin/subscriptions`.
async fn consultations_subscription(app: &TestApp, admin: &str) -> (Value, Value) {
    let response = app.get("/v1/admin/subscriptions", admin).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let entry = body["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .find(|s| s["name"] == "consultations")
        .cloned()
        .unwrap_or_else(|| panic!("no consultations subscription: {body}"));
    (body, entry)
}

/// Polls until the `consultations` subscription is live with no lag; returns its entry.
async fn until_live(app: &TestApp, admin: &str) -> (Value, Value) {
    let deadline = Instant::now() + StdDuration::from_secs(10);
    loop {
        let (body, entry) = consultations_subscription(app, admin).await;
        if entry["state"] == "live" && entry["lag_events"] == 0 {
            return (body, entry);
        }
        assert!(
            Instant::now() < deadline,
            "the subscription is not live after 10 s: {entry}"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

async fn admins_watch_subscriptions_rebuild_projections_and_scrape_metrics(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-a").await;
    app.register_provider("prov-b").await;
    let prov_a = app.token(Role::Provider, "prov-a");
    let prov_b = app.token(Role::Provider, "prov-b");
    let admin = app.token(Role::Admin, "admin-1");
    let base = on_the_hour(24);
    let mut ids = Vec::new();
    for (i, (patient, provider)) in [
        ("pat-1", "prov-a"),
        ("pat-2", "prov-a"),
        ("pat-1", "prov-b"),
        ("pat-2", "prov-b"),
        ("pat-3", "prov-a"),
    ]
    .into_iter()
    .enumerate()
    {
        let start = base + Duration::hours(i64::try_from(i).expect("small"));
        ids.push(id_of(&book_at(&app, patient, provider, start).await));
    }
    command(&app, &ids[0], "accept", &prov_a, json!({})).await;
    command(&app, &ids[2], "accept", &prov_b, json!({})).await;
    command(&app, &ids[3], "decline", &prov_b, json!({"reason": "no"})).await;
    command(&app, &ids[0], "cancel", &admin, json!({"reason": "ops"})).await;
    let new_start = stamp(base + Duration::days(3));
    command(
        &app,
        &ids[2],
        "reschedule",
        &prov_b,
        json!({"starts_at": new_start, "duration_minutes": 45}),
    )
    .await;

    let mut before = Vec::new();
    for id in &ids {
        before.push(read_ok(&app, &format!("/v1/consultations/{id}"), &admin).await);
    }
    let listed_before = read_ok(&app, "/v1/consultations", &admin).await;

    let (body, entry) = until_live(&app, &admin).await;
    assert_eq!(entry["kind"], "projection");
    assert_eq!(entry["lag_events"], 0);
    assert_eq!(entry["lag_events_capped"], false);
    assert_eq!(entry["failures"], 0);
    assert!(entry["owner"].is_string(), "{entry}");
    assert_eq!(body["head_position"], app.db.head_position().await);
    assert_eq!(entry["position"], app.db.head_position().await);
    for token in [
        prov_a.clone(),
        app.token(Role::Patient, "pat-1"),
        app.token(Role::Auditor, "auditor-1"),
    ] {
        assert_problem(
            app.get("/v1/admin/subscriptions", &token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_problem(
            app.post(
                "/v1/admin/projections/consultations/rebuild",
                &token,
                &json!({}),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    assert_problem(
        app.post("/v1/admin/projections/nothing/rebuild", &admin, &json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let response = app
        .post(
            "/v1/admin/projections/consultations/rebuild",
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("json");
    assert_eq!(accepted["name"], "consultations");
    assert_eq!(accepted["state"], "reset_requested");
    // Reads are served during the rebuild; one that claims to be fresh is exact.
    let head = app.db.head_position().await;
    let response = app
        .get(
            &format!("/v1/consultations/{}?after={head}", ids[2]),
            &admin,
        )
        .await;
    let fresh = stale(&response).is_none();
    let status = response.status();
    if fresh {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response.json::<Value>().await.expect("json"), before[2]);
    } else {
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "{status}"
        );
    }

    let (_, entry) = until_live(&app, &admin).await;
    assert!(entry["last_reset_at"].is_string(), "{entry}");
    assert_eq!(entry["applied_since_reset"], app.db.event_count().await);
    assert_eq!(entry["position"], app.db.head_position().await);
    for (id, expected) in ids.iter().zip(&before) {
        let after = read_ok(&app, &format!("/v1/consultations/{id}"), &admin).await;
        assert_eq!(&after, expected, "{id} reads back as before the rebuild");
    }
    assert_eq!(
        read_ok(&app, "/v1/consultations", &admin).await,
        listed_before
    );

    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("reaches the server");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("text");
    let metric = "consult_subscription_lag_events{subscription=\"consultations\"}";
    let line = text
        .lines()
        .find(|line| line.starts_with(metric))
        .unwrap_or_else(|| panic!("no {metric} in:\n{text}"));
    let lag: i64 = line[metric.len()..].trim().parse().expect("a number");
    assert_eq!(lag, 0, "{line}");
    let head = format!("consult_log_head_position {}", app.db.head_position().await);
    assert!(text.lines().any(|line| line == head), "{text}");
}

/// An idle projection notices a rebuild request at once, not at its next lease renewal.
async fn a_rebuild_starts_promptly(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 24).await;
    let admin = app.token(Role::Admin, "admin-1");
    let before = read_ok(&app, &format!("/v1/consultations/{id}"), &admin).await;
    until_live(&app, &admin).await;
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let asked = Instant::now();
    let response = app
        .post(
            "/v1/admin/projections/consultations/rebuild",
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (_, entry) = until_live(&app, &admin).await;
    let took = asked.elapsed();
    assert_eq!(
        read_ok(&app, &format!("/v1/consultations/{id}"), &admin).await,
        before
    );
    assert!(
        took < StdDuration::from_secs(1),
        "rebuild took {took:?}: {entry}"
    );
}
