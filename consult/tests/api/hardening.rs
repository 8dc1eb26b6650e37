//! Data at rest and on the wire, and what operators need: private files whatever the umask,
//! response headers, bounded connections, `/metrics` behind a token, bearer-token rules, a
//! listener for worker-only processes, JSON logs, and the settings other systems' `.env` files
//! use.
//!
//! Several tests run `consult serve` as a process of its own, with a clean environment: file
//! modes depend on the umask, connections on the server's own file descriptors, and logs on
//! what the binary prints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use consult_api::{Claims, Role, TokenKey};
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::{
    assert_problem, booking, eventually, free_port, mint_token, provider_body, spawn_app_with,
    spawn_collecting_stderr, voice_call, Backend, DbGuard, StderrLines, TestApp, TestDb,
};
use crate::on_both_backends;

use consult_testkit as fakes;

use fakes::smtp::SmtpFake;
use fakes::twilio::{TwilioFake, ACCOUNT_SID, AUTH_TOKEN, FROM_SMS, FROM_WHATSAPP};

/// The token secret of the engines started here.
const SECRET: &str = "hardening-test-secret-that-is-long-enough";
/// How long a process gets to start and migrate.
const START: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// A `consult serve` process
// ---------------------------------------------------------------------------------------------

/// A running `consult serve`, its standard error collected line by line.
struct Process {
    child: tokio::process::Child,
    stderr: StderrLines,
}

impl Process {
    /// Starts `command` (a `consult serve` with its environment), collecting standard error.
    fn start(command: tokio::process::Command) -> Self {
        let (child, stderr) = spawn_collecting_stderr(command);
        Self { child, stderr }
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn logs(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until `GET {base}/readyz` answers 200; panics with the logs if it never does.
    async fn wait_ready(&mut self, base: &str) {
        let client = reqwest::Client::new();
        let url = format!("{base}/readyz");
        let ready = eventually(START, || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        if !ready {
            let status = self.child.try_wait().ok().flatten();
            panic!(
                "consult serve never became ready at {base} (exited: {status:?}); logs:\n{}",
                self.logs()
            );
        }
    }
}

/// `consult serve` on `db` with a clean environment and `env` on top.
fn serve(db: &TestDb, env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_consult"));
    command.arg("serve");
    environment(&mut command, db, env);
    command
}

fn environment(command: &mut tokio::process::Command, db: &TestDb, env: &[(&str, &str)]) {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("DATA_DIR", &db.data_dir)
        .env("AUTH_JWT_SECRET", SECRET)
        .env("RUST_LOG", "info,sqlx=warn")
        .env("NO_COLOR", "1");
    for (name, value) in env {
        command.env(name, value);
    }
}

/// A fresh SQLite database whose data directory is removed when the test ends.
struct SqliteDir(TestDb);

impl Drop for SqliteDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.data_dir);
    }
}

async fn fresh_sqlite() -> SqliteDir {
    SqliteDir(
        TestDb::fresh(Backend::Sqlite)
            .await
            .expect("SQLite is always available"),
    )
}

// ---------------------------------------------------------------------------------------------
// Data at rest
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
fn mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// Under `umask 000`, which would leave everything open to every user, the data directory is
/// 0700 and the database, its `-wal` and `-shm` files, the outbox and the token secret 0600.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private_whatever_the_umask() {
    let dir = fresh_sqlite().await;
    let db = &dir.0;
    let port = free_port();
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg("umask 000 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_consult"));
    environment(&mut command, db, &[("BIND", &format!("127.0.0.1:{port}"))]);
    // No AUTH_JWT_SECRET: the engine generates one into the data directory.
    command.env_remove("AUTH_JWT_SECRET");
    let mut process = Process::start(command);
    process
        .wait_ready(&format!("http://127.0.0.1:{port}"))
        .await;

    let data = &db.data_dir;
    let files: Vec<PathBuf> = [
        "consult.db",
        "consult.db-wal",
        "consult.db-shm",
        "outbox.jsonl",
        "jwt-secret",
    ]
    .iter()
    .map(|name| data.join(name))
    .collect();
    let present = eventually(Duration::from_secs(10), || async {
        files.iter().all(|f| f.exists())
    })
    .await;
    assert!(present, "files of the data directory: {files:?}");
    assert_eq!(mode(data), Some(0o700), "the data directory");
    for file in &files {
        assert_eq!(mode(file), Some(0o600), "{}", file.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Every response is `nosniff`; every response carrying personal data (and every other API
/// response) is `no-store`; `/docs` has a Content-Security-Policy that allows its own inline
/// script and style by hash, and no framing.
async fn responses_are_not_stored_or_sniffed_and_docs_have_a_policy(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    let patient = app.token(Role::Patient, "pat-1");
    let auditor = app.token(Role::Auditor, "aud-1");
    let admin = app.token(Role::Admin, "admin-1");
    let reads = [
        (format!("/v1/consultations/{id}"), &patient),
        ("/v1/consultations".to_owned(), &patient),
        (format!("/v1/consultations/{id}/history"), &auditor),
        (format!("/v1/consultations/{id}/fhir"), &patient),
        (format!("/v1/consultations/{id}/notifications"), &patient),
        (
            format!("/v1/admin/access-log?consultation_id={id}"),
            &auditor,
        ),
        ("/v1/admin/subscriptions".to_owned(), &admin),
        ("/v1/providers/prov-1".to_owned(), &patient),
    ];
    for (n, (path, token)) in reads.into_iter().enumerate() {
        // The two reads of the projection wait for it; the others are not projected.
        let response = if n < 2 {
            app.read(&path, token).await
        } else {
            app.get(&path, token).await
        };
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, "cache-control"), "no-store", "{path}");
        assert_eq!(
            header(&response, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
    }
    let booked = app
        .post("/v1/consultations", &patient, &booking("prov-1", 72))
        .await;
    assert_eq!(booked.status(), StatusCode::CREATED);
    assert_eq!(header(&booked, "cache-control"), "no-store", "a command");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/no-such-route",
        "/v1/consultations",
    ] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .expect("GET");
        assert_eq!(
            header(&response, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
        assert_eq!(header(&response, "cache-control"), "no-store", "{path}");
    }

    let docs = app
        .client
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .expect("GET /docs");
    assert_eq!(docs.status(), StatusCode::OK);
    assert_eq!(header(&docs, "x-content-type-options"), "nosniff");
    assert_eq!(header(&docs, "x-frame-options"), "DENY");
    let policy = header(&docs, "content-security-policy");
    let page = docs.text().await.expect("the page");
    let directive = |name: &str| -> Vec<String> {
        policy
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix(name).map(|rest| rest.trim().to_owned()))
            .map(|sources| sources.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    assert_eq!(directive("frame-ancestors"), ["'none'"], "{policy}");
    assert_eq!(directive("default-src"), ["'none'"], "{policy}");
    assert_eq!(directive("connect-src"), ["'self'"], "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    for tag in ["script", "style"] {
        let inline = page
            .split_once(&format!("<{tag}>"))
            .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
            .map(|(inline, _)| inline)
            .expect("an inline element");
        let hash = format!("'sha256-{}'", STANDARD.encode(Sha256::digest(inline)));
        assert_eq!(directive(&format!("{tag}-src")), [hash], "{policy}");
    }
}

/// The served `/openapi.json` and the router agree: every documented operation is routed (it
/// is answered by its handler, not by the fallback's 404 or the 405 for other methods), and
/// on a documented path every method the document does not name answers 405. The document is
/// generated from the router's own route list, so this holds by construction; the test keeps
/// it that way (a route added outside that list, or a description without its route, fails).
async fn the_router_answers_exactly_the_operations_of_its_document(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let document = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(document.status(), StatusCode::OK);
    assert_eq!(header(&document, "content-type"), "application/json");
    assert_eq!(header(&document, "cache-control"), "public, max-age=300");
    let document: Value = document.json().await.expect("a JSON document");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().expect("paths");
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ];
    let mut operations = 0;
    for (template, item) in paths {
        let path = template
            .replace("{id}", "00000000-0000-4000-8000-000000000000")
            .replace("{name}", "consultations");
        let path = if template.starts_with("/v1/providers/{id}") {
            template.replace("{id}", "prov-1")
        } else {
            path
        };
        for method in &methods {
            let documented = item.get(method.as_str().to_lowercase()).is_some();
            let response = app
                .client
                .request(method.clone(), format!("{}{path}", app.address))
                .send()
                .await
                .expect("a response");
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if documented {
                operations += 1;
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is documented but not routed"
                );
                assert!(
                    !(status == StatusCode::NOT_FOUND && body.contains("no such resource")),
                    "{method} {template} is documented but not routed"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is routed but not documented"
                );
            }
        }
    }
    assert!(operations >= 33, "only {operations} operations documented");
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens, /metrics, voice calls
// ---------------------------------------------------------------------------------------------

fn key() -> TokenKey {
    TokenKey::new(SecretString::from(SECRET))
}

fn token(role: Role, sub: &str, iat: Option<i64>, exp: i64) -> String {
    key().mint(&Claims {
        sub: sub.into(),
        role,
        exp,
        iat,
    })
}

async fn get_with(app: &TestApp, path: &str, authorization: &str) -> Response {
    app.client
        .get(format!("{}{path}", app.address))
        .header("authorization", authorization)
        .send()
        .await
        .expect("GET")
}

/// `bearer` and `BEARER` work as `Bearer` (RFC 7235); a token made to live longer than
/// `AUTH_MAX_TOKEN_LIFETIME` (24 h by default, 2 h here) is refused 401, whether it says so
/// with `iat` or only with a far `exp`.
async fn the_scheme_is_case_insensitive_and_long_lived_tokens_are_refused(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |config| {
        config.jwt_secret = SecretString::from(SECRET);
        config.http.max_token_lifetime = Duration::from_secs(2 * 3600);
    })
    .await
    else {
        return;
    };
    let now = chrono::Utc::now().timestamp();
    let hour = 3600;
    let ok = token(Role::Patient, "pat-1", Some(now), now + hour);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let response = get_with(&app, "/v1/consultations", &format!("{scheme} {ok}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
    let within = token(Role::Patient, "pat-1", Some(now - hour), now + hour);
    let response = get_with(&app, "/v1/consultations", &format!("Bearer {within}")).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "exactly the longest lifetime"
    );

    let refused = [
        (
            "iat to exp",
            token(Role::Patient, "pat-1", Some(now - hour), now + 2 * hour),
        ),
        (
            "no iat, far exp",
            token(Role::Admin, "admin-1", None, now + 3 * hour),
        ),
        (
            "iat in the future",
            token(
                Role::Admin,
                "admin-1",
                Some(now + 10 * hour),
                now + 11 * hour,
            ),
        ),
        (
            "a year",
            token(Role::Admin, "admin-1", Some(now), now + 365 * 24 * hour),
        ),
    ];
    for (what, long) in refused {
        let response = get_with(&app, "/v1/consultations", &format!("Bearer {long}")).await;
        let body = assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("lifetime")),
            "{what}: {body}"
        );
    }
    let basic = get_with(&app, "/v1/consultations", &format!("Basic {ok}")).await;
    assert_problem(basic, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// With `METRICS_TOKEN` set, `/metrics` answers only that bearer token.
async fn metrics_can_require_a_token(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |config| {
        config.http.metrics_token = Some(SecretString::from("metrics-s3cret-0123456789"));
    })
    .await
    else {
        return;
    };
    let bare = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("GET /metrics");
    assert_problem(bare, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let admin = app.token(Role::Admin, "admin-1");
    for wrong in [
        "Bearer metrics-s3cret-012345678",
        "Bearer metrics-s3cret-01234567890",
        &format!("Bearer {admin}"),
    ] {
        let response = get_with(&app, "/metrics", wrong).await;
        assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let response = get_with(&app, "/metrics", "bearer metrics-s3cret-0123456789").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("metrics");
    assert!(text.contains("consult_log_head_position"), "{text}");
    // The other open routes stay open.
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), StatusCode::OK);
}

/// Without a voice provider, `voice-call` still tells a stranger nothing: 403 for someone
/// else's consultation, 404 for none; only its parties learn that calls are not configured.
async fn voice_call_checks_the_caller_before_saying_it_is_not_configured(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    let stranger = voice_call(&app, Role::Patient, "pat-2", &id).await;
    assert_problem(stranger, StatusCode::FORBIDDEN, "forbidden").await;
    let other_provider = voice_call(&app, Role::Provider, "prov-2", &id).await;
    assert_problem(other_provider, StatusCode::FORBIDDEN, "forbidden").await;
    let unknown = voice_call(
        &app,
        Role::Patient,
        "pat-1",
        &uuid::Uuid::new_v4().to_string(),
    )
    .await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
    let party = voice_call(&app, Role::Patient, "pat-1", &id).await;
    assert_problem(party, StatusCode::SERVICE_UNAVAILABLE, "not_configured").await;
}

// ---------------------------------------------------------------------------------------------
// Worker-only processes
// ---------------------------------------------------------------------------------------------

/// A worker-only process (`ROLES=workers`) answers `/healthz`, `/readyz` and `/metrics` on
/// `ADMIN_BIND`, with `/metrics` behind `METRICS_TOKEN` when set, and nothing else there.
async fn a_worker_only_process_answers_probes_on_its_admin_listener(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let _guard = DbGuard(db.clone());
    let _dir = (backend == Backend::Sqlite).then(|| SqliteDir(db.clone()));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = Process::start(serve(
        &db,
        &[
            ("ROLES", "workers"),
            ("ADMIN_BIND", &format!("127.0.0.1:{port}")),
            ("METRICS_TOKEN", "worker-metrics-token-0123"),
        ],
    ));
    worker.wait_ready(&base).await;
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let health = get("/healthz", None).await.expect("GET /healthz");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(header(&health, "x-content-type-options"), "nosniff");
    let ready: Value = get("/readyz", None)
        .await
        .expect("GET /readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready", "{ready}");
    let refused = get("/metrics", None).await.expect("GET /metrics");
    assert_problem(refused, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let metrics = get("/metrics", Some("worker-metrics-token-0123"))
        .await
        .expect("GET /metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("metrics");
    // The worker runs the subscriptions: they show up once it has taken their leases.
    assert!(text.contains("consult_log_head_position"), "{text}");
    let api = get(
        "/v1/consultations",
        Some(&mint_token(SECRET, Role::Admin, "admin-1")),
    )
    .await
    .expect("GET");
    assert_problem(api, StatusCode::NOT_FOUND, "not_found").await;
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// Reads `stream` until the server closes it (end of file or reset) or `deadline` passes;
/// returns what arrived and whether it was closed.
async fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// 500 connections that send nothing or half a header are closed within the header bound,
/// while a normal request is answered at once; a kept-alive connection is closed after the
/// idle bound (and not at the header bound); a body that stops coming is answered and its
/// connection closed after the body bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_header_and_slow_body_connections_are_closed_in_time() {
    const HEADER: Duration = Duration::from_secs(1);
    const IDLE: Duration = Duration::from_secs(6);
    const BODY: Duration = Duration::from_secs(2);
    /// What a busy machine may add to a bound.
    const SLACK: Duration = Duration::from_secs(4);
    let dir = fresh_sqlite().await;
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let base = format!("http://{address}");
    let mut process = Process::start(serve(
        &dir.0,
        &[
            ("BIND", address.as_str()),
            ("HTTP_HEADER_TIMEOUT", "1s"),
            ("HTTP_IDLE_TIMEOUT", "6s"),
            ("HTTP_BODY_TIMEOUT", "2s"),
            ("RUST_LOG", "warn"),
        ],
    ));
    process.wait_ready(&base).await;
    let client = reqwest::Client::new();
    let admin = mint_token(SECRET, Role::Admin, "admin-1");
    let registered = client
        .post(format!("{base}/v1/providers"))
        .bearer_auth(&admin)
        .json(&provider_body("prov-1"))
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status(), StatusCode::CREATED);

    // A kept-alive connection: one whole request, then silence.
    let mut idle = TcpStream::connect(&address).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\"ok\"}") {
        let n = tokio::time::timeout(SLACK, idle.read(&mut buffer))
            .await
            .expect("the answer in time")
            .expect("read");
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buffer[..n]);
    }
    let idle_since = Instant::now();
    // Watched from now on: still open just after the header bound, closed at the idle bound.
    let idle = tokio::spawn(async move {
        let early = idle_since + HEADER + Duration::from_millis(500);
        let (_, closed_early) = read_until_closed(&mut idle, early).await;
        let (_, closed) = read_until_closed(&mut idle, idle_since + IDLE + SLACK).await;
        (closed_early, closed, idle_since.elapsed())
    });

    // A body that stops coming, from a caller allowed to book.
    let patient = mint_token(SECRET, Role::Patient, "pat-1");
    let mut slow_body = TcpStream::connect(&address).await.expect("connect");
    slow_body
        .write_all(
            format!(
                "POST /v1/consultations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {patient}\r\n\
                 Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{{\"provider_id\":"
            )
            .as_bytes(),
        )
        .await
        .expect("a part of the body");
    let body_since = Instant::now();

    // 500 held connections: half send nothing, half half a header.
    let held_since = Instant::now();
    let mut held = Vec::new();
    for n in 0..500 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        if n % 2 == 1 {
            stream
                .write_all(b"GET /v1/consultations HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .expect("half a header");
        }
        held.push(stream);
    }
    let opened = held_since.elapsed();

    // A normal request is answered while they are held.
    let started = Instant::now();
    let health = tokio::time::timeout(SLACK, client.get(format!("{base}/healthz")).send())
        .await
        .expect("answered while 500 connections are held")
        .expect("GET /healthz");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(started.elapsed() < SLACK);

    // Every held connection is closed within the header bound.
    let deadline = held_since + opened + HEADER + SLACK;
    let mut readers = tokio::task::JoinSet::new();
    for mut stream in held {
        readers.spawn(async move { read_until_closed(&mut stream, deadline).await.1 });
    }
    let mut open = 0;
    while let Some(closed) = readers.join_next().await {
        if !closed.expect("reader") {
            open += 1;
        }
    }
    assert_eq!(open, 0, "connections still open after the header bound");

    // The body that stopped: answered (a problem) and closed within the body bound.
    let (answer, closed) = read_until_closed(&mut slow_body, body_since + BODY + SLACK).await;
    assert!(closed, "the slow body's connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // The kept-alive connection outlived the header bound and was closed at the idle bound.
    let (closed_early, closed, after) = idle.await.expect("the idle connection's watch");
    assert!(
        !closed_early,
        "an idle connection is held to the idle bound, not the header's"
    );
    assert!(closed, "the idle connection is closed");
    assert!(
        after >= IDLE - Duration::from_millis(100),
        "closed after {after:?}"
    );

    // Still serving.
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        process.child.try_wait().ok().flatten().is_none(),
        "still running"
    );
}

// ---------------------------------------------------------------------------------------------
// Logs and settings
// ---------------------------------------------------------------------------------------------

/// `LOG_FORMAT=json`: every line is a JSON object with a timestamp, level, target and message,
/// the request lines carry their fields, the start-up line of each channel is there, and no
/// line holds the visit's reason or the patient's contact details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_the_same_fields_and_no_personal_data() {
    let dir = fresh_sqlite().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut process = Process::start(serve(
        &dir.0,
        &[
            ("BIND", &format!("127.0.0.1:{port}")),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "debug,sqlx=warn,hyper=info,reqwest=info"),
        ],
    ));
    process.wait_ready(&base).await;
    let client = reqwest::Client::new();
    let admin = mint_token(SECRET, Role::Admin, "admin-1");
    let registered = client
        .post(format!("{base}/v1/providers"))
        .bearer_auth(&admin)
        .json(&provider_body("prov-1"))
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status(), StatusCode::CREATED);
    let reason = "a persistent cough since the wedding";
    let mut body = booking("prov-1", 48);
    body["reason"] = json!(reason);
    let booked = client
        .post(format!("{base}/v1/consultations"))
        .bearer_auth(mint_token(SECRET, Role::Patient, "pat-1"))
        .json(&body)
        .send()
        .await
        .expect("book");
    assert_eq!(booked.status(), StatusCode::CREATED);
    // The provider's notice goes to the outbox: the dispatcher logs it.
    let outbox = dir.0.data_dir.join("outbox.jsonl");
    let sent = eventually(Duration::from_secs(20), || async {
        std::fs::read_to_string(&outbox).is_ok_and(|text| text.contains("\"email\""))
    })
    .await;
    assert!(sent, "the notice reached the outbox");
    let logged = eventually(Duration::from_secs(5), || async {
        process
            .logs()
            .contains("message written to the console sink")
    })
    .await;
    assert!(logged, "the dispatcher logged the send");

    let lines = process.lines();
    let mut requests = 0;
    let mut channels = Vec::new();
    for line in &lines {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(entry.get(field).is_some(), "no {field}: {line}");
        }
        if entry["message"] == "request" {
            requests += 1;
            for field in ["method", "route", "status", "elapsed_ms", "request_id"] {
                assert!(entry.get(field).is_some(), "no {field}: {line}");
            }
        }
        if let Some(channel) = entry["channel"].as_str() {
            if entry["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("channel"))
            {
                channels.push(channel.to_owned());
            }
        }
    }
    assert!(requests >= 3, "request lines: {requests}");
    for channel in ["sms", "whatsapp", "email", "video", "voice", "payments"] {
        assert!(
            channels.iter().any(|c| c == channel),
            "a start-up line for {channel}: {channels:?}"
        );
    }
    let logs = process.logs();
    for private in [
        reason,
        "patient@example.org",
        "+33612345678",
        "grace@example.org",
    ] {
        assert!(!logs.contains(private), "{private} is in the logs");
    }
}

/// The settings the source systems' `.env` files use work as they are: `TWILIO_PHONE_NUMBER`
/// sends SMS, `TWILIO_WHATSAPP_FROM` (with its `whatsapp:` prefix) sends WhatsApp,
/// `SMTP_URL` and `EMAIL_FROM` send email; each channel says at start-up that it is live and
/// where, and no secret is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_systems_env_settings_deliver_on_every_channel() {
    let twilio = TwilioFake::start().await;
    let smtp = SmtpFake::start();
    let dir = fresh_sqlite().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let whatsapp_from = format!("whatsapp:{FROM_WHATSAPP}");
    let mut process = Process::start(serve(
        &dir.0,
        &[
            ("BIND", &format!("127.0.0.1:{port}")),
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
            ("TWILIO_API_BASE", &twilio.base_url),
            ("TWILIO_PHONE_NUMBER", FROM_SMS),
            ("TWILIO_WHATSAPP_FROM", &whatsapp_from),
            ("SMTP_URL", &smtp_url),
            ("EMAIL_FROM", "Clinic <no-reply@clinic.example>"),
        ],
    ));
    process.wait_ready(&base).await;
    let client = reqwest::Client::new();
    let registered = client
        .post(format!("{base}/v1/providers"))
        .bearer_auth(mint_token(SECRET, Role::Admin, "admin-1"))
        .json(&provider_body("prov-1"))
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status(), StatusCode::CREATED);
    let mut body = booking("prov-1", 48);
    body["contact"]["whatsapp"] = json!(true);
    let booked: Value = client
        .post(format!("{base}/v1/consultations"))
        .bearer_auth(mint_token(SECRET, Role::Patient, "pat-1"))
        .json(&body)
        .send()
        .await
        .expect("book")
        .json()
        .await
        .expect("json");
    let id = booked["id"].as_str().expect("an id");
    let accepted = client
        .post(format!("{base}/v1/consultations/{id}/accept"))
        .bearer_auth(mint_token(SECRET, Role::Provider, "prov-1"))
        .json(&json!({}))
        .send()
        .await
        .expect("accept");
    assert_eq!(accepted.status(), StatusCode::OK);

    let from = |want: &str| {
        let want = want.to_owned();
        let twilio = &twilio;
        move || {
            let want = want.clone();
            async move {
                twilio
                    .accepted()
                    .iter()
                    .any(|r| r.field("From") == Some(want.as_str()))
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(30), from(FROM_SMS)).await,
        "an SMS from TWILIO_PHONE_NUMBER; logs:\n{}",
        process.logs()
    );
    assert!(
        eventually(Duration::from_secs(30), from(&whatsapp_from)).await,
        "a WhatsApp message from TWILIO_WHATSAPP_FROM; logs:\n{}",
        process.logs()
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            smtp.received().iter().any(|m| {
                m.header("From")
                    .is_some_and(|f| f.contains("no-reply@clinic.example"))
            })
        })
        .await,
        "an email through SMTP_URL from EMAIL_FROM; logs:\n{}",
        process.logs()
    );

    let lines = process.lines();
    let live = |channel: &str, host: &str| {
        lines.iter().any(|l| {
            l.contains("channel live")
                && l.contains(&format!("channel=\"{channel}\""))
                && l.contains(host)
        })
    };
    let twilio_host = twilio.base_url.trim_start_matches("http://");
    assert!(live("sms", twilio_host), "{lines:#?}");
    assert!(live("whatsapp", twilio_host), "{lines:#?}");
    assert!(
        live("email", &format!("127.0.0.1:{}", smtp.port)),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("outbox")
            && ["sms", "whatsapp", "email"]
                .iter()
                .any(|c| l.contains(&format!("channel=\"{c}\"")))),
        "{lines:#?}"
    );
    assert!(
        !process.logs().contains(AUTH_TOKEN),
        "the Twilio auth token is in the logs"
    );
}

on_both_backends!(
    responses_are_not_stored_or_sniffed_and_docs_have_a_policy,
    the_router_answers_exactly_the_operations_of_its_document,
    the_scheme_is_case_insensitive_and_long_lived_tokens_are_refused,
    metrics_can_require_a_token,
    voice_call_checks_the_caller_before_saying_it_is_not_configured,
    a_worker_only_process_answers_probes_on_its_admin_listener,
);
