//! `spawn_app`: the engine on a random port over a fresh database of either backend, with a
//! client, token minting and a window on the stored events.

use std::io::Write;
use std::sync::{Mutex, Once};

use consult::{Application, Config, Roles};
use consult_api::{Claims, Role, TokenKey};
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";
/// The payment webhook secret of every test engine.
pub const PAYMENT_SECRET: &str = "whsec_test_0123456789abcdef0123456789abcdef";
/// How long [`TestApp::read`] asks again while the projection has not reached its position.
pub const READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Everything the engine logged while the tests ran, at debug level and above.
pub static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = LOGS.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(|| LogSink)
            .init();
    });
}

pub fn logs() -> String {
    LOGS.lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default()
}

/// The database a test runs on; PostgreSQL databases are made fresh per test.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub data_dir: std::path::PathBuf,
}

impl TestDb {
    /// A fresh database, or `None` when PostgreSQL is not reachable outside CI.
    pub async fn fresh(backend: Backend) -> Option<Self> {
        let name = format!("consult_test_{}", uuid::Uuid::new_v4().simple());
        let data_dir = std::env::temp_dir().join(&name);
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", data_dir.join("consult.db").display()),
            Backend::Postgres => {
                let admin = std::env::var("TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                use sqlx::Connection;
                match sqlx::PgConnection::connect(&admin).await {
                    Ok(mut conn) => {
                        sqlx::query(&format!("CREATE DATABASE {name}"))
                            .execute(&mut conn)
                            .await
                            .expect("create a test database");
                        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                        format!("{base}/{name}")
                    }
                    Err(err) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                        panic!("PostgreSQL is required in CI and is not reachable: {err}")
                    }
                    Err(err) => {
                        eprintln!(
                            "SKIPPED: PostgreSQL test, no server at {admin} ({err}); \
                             set TEST_POSTGRES_URL or start one"
                        );
                        return None;
                    }
                }
            }
        };
        Some(Self {
            backend,
            url,
            data_dir,
        })
    }

    /// `(sequence, event_type)` of a stream, in order.
    pub async fn stream(&self, aggregate_id: &str) -> Vec<(i64, String)> {
        let sql =
            "SELECT sequence, event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence";
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url)
                    .await
                    .expect("open sqlite");
                let rows = sqlx::query_as(sql)
                    .bind(aggregate_id)
                    .fetch_all(&pool)
                    .await;
                pool.close().await;
                rows.expect("read stream")
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url)
                    .await
                    .expect("open postgres");
                let rows = sqlx::query_as(sql)
                    .bind(aggregate_id)
                    .fetch_all(&pool)
                    .await;
                pool.close().await;
                rows.expect("read stream")
            }
        }
    }

    /// How many events the store holds.
    pub async fn event_count(&self) -> i64 {
        self.scalar("SELECT count(*) FROM events").await
    }

    /// The highest position in the log (0 when empty).
    pub async fn head_position(&self) -> i64 {
        self.scalar("SELECT COALESCE(max(position), 0) FROM events")
            .await
    }

    /// One integer computed by `sql`.
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.value(sql).await
    }

    /// One text computed by `sql`.
    pub async fn text(&self, sql: &str) -> String {
        self.value(sql).await
    }

    /// Runs one statement (`sql` may hold several on SQLite, one on PostgreSQL).
    pub async fn execute(&self, sql: &str) {
        use sqlx::Executor as _;
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url)
                    .await
                    .expect("open sqlite");
                let done = pool.execute(sql).await;
                pool.close().await;
                done.expect("statement runs");
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url)
                    .await
                    .expect("open postgres");
                let done = pool.execute(sql).await;
                pool.close().await;
                done.expect("statement runs");
            }
        }
    }

    async fn value<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>
            + for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + Send
            + Unpin,
    {
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url)
                    .await
                    .expect("open sqlite");
                let value = sqlx::query_scalar(sql).fetch_one(&pool).await;
                pool.close().await;
                value.expect("one value")
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url)
                    .await
                    .expect("open postgres");
                let value = sqlx::query_scalar(sql).fetch_one(&pool).await;
                pool.close().await;
                value.expect("one value")
            }
        }
    }
}

#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    key: TokenKey,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    /// Whether dropping this app drops its database (not when a restart hands it on).
    owns_db: bool,
}

/// The engine over a fresh database; `None` when the backend is not available here.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    let db = TestDb::fresh(backend).await?;
    Some(start(db).await)
}

/// An app whose configuration `adjust` changes first (notification channels, reminders, …).
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let db = TestDb::fresh(backend).await?;
    let mut config = config(&db);
    adjust(&mut config);
    Some(start_with(db, config).await)
}

async fn start(db: TestDb) -> TestApp {
    let config = config(&db);
    start_with(db, config).await
}

fn config(db: &TestDb) -> Config {
    Config {
        database_url: db.url.clone(),
        data_dir: db.data_dir.clone(),
        bind: "127.0.0.1:0".into(),
        public_base_url: "http://127.0.0.1".into(),
        app_url: "http://127.0.0.1".into(),
        roles: Roles {
            api: true,
            workers: true,
        },
        jwt_secret: SecretString::from(SECRET),
        subscription_lease: std::time::Duration::from_secs(10),
        notifications: consult::config::Notifications::new(&db.data_dir),
        media: consult::config::Media::default(),
        payments: consult::config::Payments {
            webhook_secret: Some(SecretString::from(PAYMENT_SECRET)),
            ..consult::config::Payments::default()
        },
        http: consult::config::Http::default(),
    }
}

async fn start_with(db: TestDb, config: Config) -> TestApp {
    capture_logs();
    let app = Application::build(&config).await.expect("build the app");
    let port = app.port().expect("the api role listens");
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
        db,
        key: TokenKey::new(SecretString::from(SECRET)),
        shutdown: Some(tx),
        server: Some(server),
        owns_db: true,
    }
}

impl Drop for TestApp {
    /// Drops a PostgreSQL test database once its test is over, closing what still uses it.
    fn drop(&mut self) {
        if self.owns_db {
            self.db.drop_database();
        }
    }
}

/// Drops its PostgreSQL database (and removes its data directory) when the test that made it
/// ends, even by a panic.
#[derive(Debug)]
pub struct DbGuard(pub TestDb);

impl Drop for DbGuard {
    fn drop(&mut self) {
        self.0.drop_database();
    }
}

impl TestDb {
    /// Removes the test's data directory (the SQLite file, the outbox, secrets), unless the
    /// test failed, whose data is kept for a look; and drops the database (PostgreSQL),
    /// closing the connections that still use it.
    pub fn drop_database(&self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        if self.backend != Backend::Postgres {
            return;
        }
        let url = self.url.clone();
        let cleanup = std::thread::spawn(move || {
            let Some((base, name)) = url.rsplit_once('/') else {
                return;
            };
            let admin = format!("{base}/postgres");
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&sql).execute(&mut conn).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

impl TestApp {
    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        self.owns_db = false;
        start(self.db.clone()).await
    }

    /// Stops the server gracefully and starts a new one on the same database, with the test
    /// configuration that `adjust` changes.
    pub async fn restart_with(mut self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        self.stop().await;
        self.owns_db = false;
        let mut config = config(&self.db);
        adjust(&mut config);
        start_with(self.db.clone(), config).await
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }

    pub fn token(&self, role: Role, sub: &str) -> String {
        self.key.mint(&Claims {
            sub: sub.into(),
            role,
            exp: chrono::Utc::now().timestamp() + 3600,
            iat: None,
        })
    }

    pub fn token_signed_with(&self, secret: &str, role: Role, sub: &str, exp: i64) -> String {
        mint_until(secret, role, sub, exp)
    }

    pub fn expired_token(&self, role: Role, sub: &str) -> String {
        self.token_signed_with(SECRET, role, sub, chrono::Utc::now().timestamp() - 10)
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST reaches the server")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET reaches the server")
    }

    /// Reads its own writes: a GET with `?after=` the log's head, as a client passes the
    /// position of its last command. An answer marked stale (the server waits a bounded time
    /// for the projection, which a busy machine or another database's long transaction on the
    /// same PostgreSQL server can hold back) is asked again, as a client would, for up to
    /// [`READ_PATIENCE`].
    pub async fn read(&self, path: &str, token: &str) -> Response {
        let head = self.db.head_position().await;
        let separator = if path.contains('?') { '&' } else { '?' };
        let deadline = std::time::Instant::now() + READ_PATIENCE;
        loop {
            let response = self
                .get(&format!("{path}{separator}after={head}"), token)
                .await;
            if response.headers().get("x-projection-stale").is_none() {
                return response;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the projection did not reach position {head} within {READ_PATIENCE:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A consultation's notification log, as an admin reads it.
    pub async fn notifications(&self, id: &str) -> Vec<Value> {
        let admin = self.token(Role::Admin, "admin-1");
        let response = self
            .get(&format!("/v1/consultations/{id}/notifications"), &admin)
            .await;
        assert_eq!(response.status(), StatusCode::OK, "notifications of {id}");
        let body: Value = response.json().await.expect("json");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// The dead-lettered jobs, as an admin reads them.
    pub async fn dead_letters(&self) -> Vec<Value> {
        let admin = self.token(Role::Admin, "admin-1");
        let response = self.get("/v1/admin/dead-letters", &admin).await;
        assert_eq!(response.status(), StatusCode::OK, "dead letters");
        let body: Value = response.json().await.expect("json");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    pub async fn register_provider(&self, id: &str) {
        let admin = self.token(Role::Admin, "admin-1");
        let response = self.post("/v1/providers", &admin, &provider_body(id)).await;
        assert_eq!(response.status(), StatusCode::CREATED, "register {id}");
    }

    /// Books a 30-minute video consultation `hours_ahead` from now; returns its id.
    pub async fn book(&self, patient: &str, provider: &str, hours_ahead: i64) -> String {
        let response = self
            .post(
                "/v1/consultations",
                &self.token(Role::Patient, patient),
                &booking(provider, hours_ahead),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "book");
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("an id").to_owned()
    }
}

/// A valid booking body: 30 minutes of video, `hours_ahead` from now (on the hour).
pub fn booking(provider: &str, hours_ahead: i64) -> Value {
    let start = chrono::Utc::now() + chrono::Duration::hours(hours_ahead);
    json!({
        "provider_id": provider,
        "starts_at": start.format("%Y-%m-%dT%H:00:00Z").to_string(),
        "duration_minutes": 30,
        "mode": "video",
        "timezone": "Europe/Paris",
        "contact": {"phone": "+33612345678", "email": "patient@example.org", "whatsapp": false},
        "reason": "follow-up",
    })
}

/// Asserts a problem+json response with `status` and `code`; returns its body.
/// `POST /v1/consultations/{id}/voice-call` as `who` in `role`.
pub async fn voice_call(app: &TestApp, role: Role, who: &str, id: &str) -> Response {
    app.post(
        &format!("/v1/consultations/{id}/voice-call"),
        &app.token(role, who),
        &json!({}),
    )
    .await
}

/// An RFC 3339 instant of a response body.
pub fn instant(value: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().expect("an instant"))
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc)
}

/// Posts `action` on consultation `id` as `who` in `role` and expects 200.
pub async fn act(app: &TestApp, role: Role, who: &str, id: &str, action: &str, body: Value) {
    let response = app
        .post(
            &format!("/v1/consultations/{id}/{action}"),
            &app.token(role, who),
            &body,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{action} {id}");
}

pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

/// Runs a test body on each backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

/// Polls `check` every 100 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    check().await
}

/// A bearer token for `sub` in `role`, valid for an hour, signed with `secret` (for engines
/// run as separate processes with their own secret).
pub fn mint_token(secret: &str, role: Role, sub: &str) -> String {
    mint_until(secret, role, sub, chrono::Utc::now().timestamp() + 3600)
}

fn mint_until(secret: &str, role: Role, sub: &str, exp: i64) -> String {
    TokenKey::new(SecretString::from(secret.to_owned())).mint(&Claims {
        sub: sub.into(),
        role,
        exp,
        iat: None,
    })
}

/// A provider registration body with a fee.
pub fn provider_body(id: &str) -> Value {
    json!({
        "id": id,
        "name": "Dr. Grace Hopper",
        "phone": "+14155550100",
        "email": "grace@example.org",
        "timezone": "America/New_York",
        "fee": {"amount_minor": 4500, "currency": "EUR"},
    })
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The pid in a subscription lease owner's name (`pid<N>-<random>`).
pub fn owner_pid(owner: Option<&str>) -> Option<u32> {
    owner?.strip_prefix("pid")?.split('-').next()?.parse().ok()
}

/// What a process wrote to its standard error, line by line, as it writes it.
pub type StderrLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts `command` (a `consult serve` with its environment) with no input, its output
/// discarded and its standard error collected line by line; the process is killed when the
/// returned child is dropped.
pub fn spawn_collecting_stderr(
    mut command: tokio::process::Command,
) -> (tokio::process::Child, StderrLines) {
    use tokio::io::AsyncBufReadExt as _;
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start consult serve");
    let stderr = StderrLines::default();
    if let Some(pipe) = child.stderr.take() {
        let sink = std::sync::Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut collected) = sink.lock() {
                    collected.push(line);
                }
            }
        });
    }
    (child, stderr)
}
