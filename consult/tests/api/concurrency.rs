use consult_api::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::helpers::{assert_problem, spawn_app, Backend};
use crate::on_both_backends;

on_both_backends!(
    sixteen_concurrent_accepts_of_one_consultation_let_exactly_one_through,
    overlapping_consultations_accepted_concurrently_let_exactly_one_through,
    an_overlapping_accept_or_reschedule_is_refused_and_adjacent_slots_are_fine,
);

async fn sixteen_concurrent_accepts_of_one_consultation_let_exactly_one_through(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 24).await;
    let token = app.token(Role::Provider, "prov-1");
    let mut requests = JoinSet::new();
    for _ in 0..16 {
        let request = app
            .client
            .post(format!("{}/v1/consultations/{id}/accept", app.address))
            .bearer_auth(&token)
            .send();
        requests.spawn(async move {
            let response = request.await.expect("reaches the server");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            (status, body)
        });
    }
    let mut ok = 0;
    let mut conflicts = 0;
    while let Some(joined) = requests.join_next().await {
        let (status, body) = joined.expect("request task");
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {
                assert!(
                    body["code"] == "invalid_transition" || body["code"] == "concurrency_conflict",
                    "{body}"
                );
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, conflicts), (1, 15));
    let stream = app.db.stream(&id).await;
    let sequences: Vec<i64> = stream.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, [1, 2], "contiguous, no gap, no duplicate");
    let types: Vec<&str> = stream.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(types, ["Booked", "Accepted"]);
}

async fn overlapping_consultations_accepted_concurrently_let_exactly_one_through(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let token = app.token(Role::Provider, "prov-1");
    // Several rounds, each a pair of bookings of the same hour raced against each other.
    for round in 0..5 {
        let hours = 24 + round * 2;
        let first = app.book("pat-1", "prov-1", hours).await;
        let second = app.book("pat-2", "prov-1", hours).await;
        let accept = |id: &String| {
            app.client
                .post(format!("{}/v1/consultations/{id}/accept", app.address))
                .bearer_auth(&token)
                .send()
        };
        let (a, b) = tokio::join!(accept(&first), accept(&second));
        let (a, b) = (a.expect("sent"), b.expect("sent"));
        let mut statuses = [a.status(), b.status()];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}"
        );
        let loser = if a.status() == StatusCode::CONFLICT {
            a
        } else {
            b
        };
        assert_problem(loser, StatusCode::CONFLICT, "slot_conflict").await;
        let mut accepted = 0;
        for id in [&first, &second] {
            let body: Value = app
                .read(&format!("/v1/consultations/{id}"), &token)
                .await
                .json()
                .await
                .expect("json");
            if body["status"] == "accepted" {
                accepted += 1;
            } else {
                assert_eq!(body["status"], "requested");
            }
        }
        assert_eq!(accepted, 1, "round {round}");
    }
}

async fn an_overlapping_accept_or_reschedule_is_refused_and_adjacent_slots_are_fine(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let provider = app.token(Role::Provider, "prov-1");
    let accept = |id: String| {
        let request = app
            .client
            .post(format!("{}/v1/consultations/{id}/accept", app.address))
            .bearer_auth(&provider)
            .send();
        async move { request.await.expect("sent") }
    };
    // 30-minute slots at +24 h and +25 h; a third booking at +24 h overlaps the first.
    let first = app.book("pat-1", "prov-1", 24).await;
    let later = app.book("pat-2", "prov-1", 25).await;
    let overlapping = app.book("pat-3", "prov-1", 24).await;
    assert_eq!(accept(first.clone()).await.status(), StatusCode::OK);
    assert_eq!(accept(later.clone()).await.status(), StatusCode::OK);
    let before = app.db.event_count().await;
    assert_problem(
        accept(overlapping.clone()).await,
        StatusCode::CONFLICT,
        "slot_conflict",
    )
    .await;
    assert_eq!(app.db.event_count().await, before, "nothing stored");

    // Moving the later one onto the first one's time is refused as well...
    let onto_first = app
        .post(
            &format!("/v1/consultations/{later}/reschedule"),
            &provider,
            &json!({"starts_at": (chrono::Utc::now() + chrono::Duration::hours(24))
                .format("%Y-%m-%dT%H:15:00Z").to_string()}),
        )
        .await;
    assert_problem(onto_first, StatusCode::CONFLICT, "slot_conflict").await;
    // ...but once the first is cancelled its slot is free again.
    let cancel = app
        .post(
            &format!("/v1/consultations/{first}/cancel"),
            &provider,
            &json!({"reason": "provider unavailable"}),
        )
        .await;
    assert_eq!(cancel.status(), StatusCode::OK);
    assert_eq!(accept(overlapping).await.status(), StatusCode::OK);
}
