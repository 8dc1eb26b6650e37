use consult_api::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{booking, logs, spawn_app, Backend};
use crate::on_both_backends;

on_both_backends!(the_reason_for_the_visit_never_appears_in_the_logs);

async fn the_reason_for_the_visit_never_appears_in_the_logs(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let marker = format!("persistent-chest-pain-{}", uuid::Uuid::new_v4().simple());
    let patient = app.token(Role::Patient, "pat-1");
    let provider = app.token(Role::Provider, "prov-1");

    let mut body = booking("prov-1", 24);
    body["reason"] = json!(format!("{marker} since Tuesday"));
    let response = app.post("/v1/consultations", &patient, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Read it back: the reason is shown to the participants...
    let read: serde_json::Value = app
        .read(&format!("/v1/consultations/{id}"), &provider)
        .await
        .json()
        .await
        .expect("json");
    assert!(read["reason"].as_str().is_some_and(|r| r.contains(&marker)));
    // ...and travels in refusals and other commands, none of which may log it.
    let mut wrong = booking("prov-1", 24);
    wrong["duration_minutes"] = json!(marker);
    let refused = app.post("/v1/consultations", &patient, &wrong).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let declined = app
        .post(
            &format!("/v1/consultations/{id}/decline"),
            &provider,
            &json!({"reason": format!("{marker} needs in-person visit")}),
        )
        .await;
    assert_eq!(declined.status(), StatusCode::OK);

    let logs = logs();
    assert!(
        logs.contains(&id),
        "the logs were captured and name the consultation by id"
    );
    assert!(!logs.contains(&marker), "the reason leaked into the logs");
    assert!(
        !logs.contains("+33612345678"),
        "a phone number leaked into the logs"
    );
    assert!(
        !logs.contains("patient@example.org"),
        "an email leaked into the logs"
    );
}
