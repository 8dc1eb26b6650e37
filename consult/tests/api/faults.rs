//! Faults from outside the engine: PostgreSQL restarted under a steady command load, an SMS
//! provider down for a long time, a read-only SQLite file and a full one. The engine runs as it
//! is deployed (`consult serve` processes) or in-process, on loopback only, each test bounded
//! well under 90 s.
//!
//! The PostgreSQL test runs its own private cluster (initdb into a temporary directory, a free
//! port) so that stopping it disturbs no other test; the shared server on 5432 is never touched.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consult_api::Role;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::{
    booking, eventually, free_port, mint_token, provider_body, spawn_app_with,
    spawn_collecting_stderr, Backend, StderrLines,
};

const SECRET: &str = "fault-test-secret-that-is-long-enough-0123";
/// The user unprivileged engines run as when the tests run as root.
const NOBODY: u32 = 65534;

fn token(role: Role, sub: &str) -> String {
    mint_token(SECRET, role, sub)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says loudly why a test does not run here; in CI, where every test must run, fails instead.
fn skip(reason: &str) {
    assert!(!in_ci(), "this fault test must run in CI: {reason}");
    eprintln!("SKIPPED: {reason}");
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A fresh temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        Self::within(&std::env::temp_dir(), prefix)
    }

    /// A fresh directory under `base`.
    fn within(base: &Path, prefix: &str) -> Self {
        let simple = uuid::Uuid::new_v4().simple().to_string();
        let path = base.join(format!("{prefix}_{}", &simple[..12]));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether every user may pass through `path` and each directory above it.
fn traversable_by_all(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::canonicalize(path).is_ok_and(|path| {
        path.ancestors().all(|dir| {
            std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0)
        })
    })
}

/// A directory in which what is made 0755 can be reached by every user: the system's
/// temporary directory, or `/tmp` when that one is private.
fn reachable_base() -> PathBuf {
    [std::env::temp_dir(), PathBuf::from("/tmp")]
        .into_iter()
        .find(|dir| traversable_by_all(dir))
        .expect("a temporary directory that every user can reach")
}

/// A copy of the engine's binary that another user can run, in a fresh 0755 directory that
/// every user can reach (the build's own copy may sit under a directory only its owner can
/// enter); removed on drop.
#[derive(Debug)]
struct SharedBinary {
    dir: TempDir,
    path: PathBuf,
}

impl SharedBinary {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::within(&reachable_base(), "consult_bin");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = dir.0.join("consult");
        std::fs::copy(env!("CARGO_BIN_EXE_consult"), &path).expect("copy the binary");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir, path }
    }
}

/// `consult serve` (API and workers) on `port`, with a clean environment; the caller adds the
/// database. `file_size_limit` runs it under `prlimit --fsize`.
fn serve_command(
    data_dir: &Path,
    port: u16,
    file_size_limit: Option<u64>,
) -> tokio::process::Command {
    serve_command_of(
        Path::new(env!("CARGO_BIN_EXE_consult")),
        data_dir,
        port,
        file_size_limit,
    )
}

/// [`serve_command`] running the binary at `binary`.
fn serve_command_of(
    binary: &Path,
    data_dir: &Path,
    port: u16,
    file_size_limit: Option<u64>,
) -> tokio::process::Command {
    let mut command = match file_size_limit {
        Some(bytes) => {
            let mut c = tokio::process::Command::new("prlimit");
            c.arg(format!("--fsize={bytes}:{bytes}")).arg(binary);
            c
        }
        None => tokio::process::Command::new(binary),
    };
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATA_DIR", data_dir)
        .env("BIND", format!("127.0.0.1:{port}"))
        .env("AUTH_JWT_SECRET", SECRET)
        .env("SUBSCRIPTION_LEASE", "2s")
        // The full-disk test books as one patient until the disk is full.
        .env("BOOKING_LIMIT", "1000000/1h")
        .env("RUST_LOG", "warn");
    command
}

/// A running `consult serve` process, its standard error collected.
#[derive(Debug)]
struct Engine {
    child: tokio::process::Child,
    address: String,
    stderr: StderrLines,
    client: reqwest::Client,
}

impl Engine {
    fn spawn(command: tokio::process::Command, port: u16) -> Self {
        let (child, stderr) = spawn_collecting_stderr(command);
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            stderr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }

    /// Waits until `/healthz` answers, or the process exits (`Err` with what it said).
    async fn ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader take the last lines.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Err(format!("exited with {status}: {}", self.stderr()));
            }
            let health = self
                .client
                .get(format!("{}/healthz", self.address))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("not ready after {limit:?}: {}", self.stderr()))
    }

    async fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|s| s.is_none())
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    async fn post(
        &self,
        path: &str,
        bearer: &str,
        body: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
    }

    async fn get(&self, path: &str, bearer: &str) -> reqwest::Result<reqwest::Response> {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(bearer)
            .send()
            .await
    }
}

/// What a response was, in the terms the tests check.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// `code` of a problem+json body (`None` if the body is not problem+json).
    code: Option<String>,
    retry_after: bool,
    /// `id` of a JSON success body.
    id: Option<String>,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let problem = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        code: problem.then(|| body["code"].as_str().unwrap_or_default().to_owned()),
        retry_after,
        id: body["id"].as_str().map(str::to_owned),
    }
}

/// Whether an answer is the outage answer: 503 problem+json `storage_unavailable` with
/// Retry-After.
fn is_unavailable(a: &Answer) -> bool {
    a.status == 503 && a.code.as_deref() == Some("storage_unavailable") && a.retry_after
}

// ---------------------------------------------------------------------------------------------
// 1. PostgreSQL restarted during a steady command load
// ---------------------------------------------------------------------------------------------

/// A PostgreSQL cluster of this test only: initdb into a temporary directory, on a free port,
/// stopped (immediately) and deleted on drop. As root it runs as the `postgres` user, since
/// initdb refuses root.
#[derive(Debug)]
struct PrivatePostgres {
    root: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    fn start() -> Result<Self, String> {
        let output = std::process::Command::new("pg_config")
            .arg("--bindir")
            .output()
            .map_err(|e| format!("pg_config not found ({e}); install PostgreSQL's server"))?;
        let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if !bin.join("initdb").exists() || !bin.join("pg_ctl").exists() {
            return Err(format!("no initdb/pg_ctl in {}", bin.display()));
        }
        let root = TempDir::new("consult_pg");
        let as_postgres = running_as_root();
        if as_postgres {
            let chown = std::process::Command::new("chown")
                .arg("postgres:")
                .arg(&root.0)
                .output()
                .map_err(|e| format!("cannot chown the cluster's directory: {e}"))?;
            if !chown.status.success() {
                return Err(format!(
                    "running as root and cannot hand the cluster's directory to the postgres \
                     user: {}",
                    String::from_utf8_lossy(&chown.stderr).trim()
                ));
            }
        }
        let cluster = Self {
            root,
            bin,
            port: free_port(),
            as_postgres,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.root.0.join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let output = command
            .args(args)
            .current_dir(&self.root.0)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.root.0.display()
        );
        let log = self.root.0.join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"])
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
    }
}

/// One booking a load client sent, and what came back.
#[derive(Debug, Clone)]
struct Sent {
    patient: String,
    key: String,
    at: Instant,
    took: Duration,
    /// `Err` when no HTTP answer came (refused, reset, or the client's 10 s timeout).
    answer: Result<Answer, String>,
    /// The body sent, to retry it as it was.
    body: Value,
}

/// Books as `clients` patients in parallel, each request with its own patient, slot and
/// Idempotency-Key, until `stop` turns true.
fn load(
    engine: &Arc<Engine>,
    clients: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sent>>> {
    (0..clients)
        .map(|c| {
            let engine = Arc::clone(engine);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut sent = Vec::new();
                for n in 0..10_000i64 {
                    if *stop.borrow() {
                        break;
                    }
                    let patient = format!("pat-{c}-{n}");
                    let key = uuid::Uuid::new_v4().to_string();
                    let hours = 48 + c as i64 * 5_000 + n;
                    let body = booking("prov-1", hours);
                    let at = Instant::now();
                    let response = engine
                        .client
                        .post(format!("{}/v1/consultations", engine.address))
                        .bearer_auth(token(Role::Patient, &patient))
                        .header("Idempotency-Key", &key)
                        .json(&body)
                        .send()
                        .await;
                    let answer = match response {
                        Ok(response) => Ok(answer(response).await),
                        Err(err) => Err(err.to_string()),
                    };
                    let pause = match &answer {
                        Ok(a) if a.status == 201 => 20,
                        _ => 200,
                    };
                    sent.push(Sent {
                        patient,
                        key,
                        at,
                        took: at.elapsed(),
                        answer,
                        body,
                    });
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                sent
            })
        })
        .collect()
}

/// PostgreSQL stops (immediate shutdown, as in a crash) for 5 s under a steady booking load
/// from four clients, then starts again; the engine is not restarted.
///
/// Asserted: every request gets an answer within the client's 10 s timeout; every answer is
/// 201 or 503 `storage_unavailable` problem+json with Retry-After (never 500); the outage is
/// felt (some 503s); bookings answer 201 again within 15 s of PostgreSQL being back, from the
/// same engine process. In the store: every 201's consultation exists exactly once (one stream,
/// one `Booked` event, by its patient) with its Idempotency-Key's response stored;
/// every stream belongs to a request of the load; no patient has two; a 503'd request left no
/// stored response, and at most a complete one-event stream (a commit whose answer was lost).
/// The projection catches up: every stream has its read-model row and every 201'd
/// consultation reads back 200 through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_answers_503_then_recovers_without_loss() {
    let cluster = match tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .expect("initdb task")
    {
        Ok(cluster) => cluster,
        Err(reason) => {
            skip(&format!("no private PostgreSQL cluster: {reason}"));
            return;
        }
    };
    let cluster = Arc::new(cluster);
    let data = TempDir::new("consult_pgfault");
    let port = free_port();
    let mut command = serve_command(&data.0, port, None);
    command.env("DATABASE_URL", cluster.url());
    let mut engine = Engine::spawn(command, port);
    engine
        .ready(Duration::from_secs(30))
        .await
        .expect("the engine starts");
    let pid = engine.child.id();
    let admin = token(Role::Admin, "admin-1");
    let registered = engine
        .post("/v1/providers", &admin, &provider_body("prov-1"))
        .await
        .expect("register");
    assert_eq!(registered.status(), StatusCode::CREATED);

    let engine = Arc::new(engine);
    let (stop_load, stopped) = tokio::sync::watch::channel(false);
    let clients = load(&engine, 4, &stopped);
    let sent_so_far = || {
        // The clients only hand back what they sent at the end; watch the store instead.
        let url = cluster.url();
        async move {
            use sqlx::Connection;
            match sqlx::PgConnection::connect(&url).await {
                Ok(mut conn) => sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM events WHERE aggregate_type = 'consultation'",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap_or(0),
                Err(_) => 0,
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(20), || async {
            sent_so_far().await >= 30
        })
        .await,
        "the load books steadily before the outage"
    );

    let down_at = Instant::now();
    let stopping = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || stopping.pg_ctl_stop("immediate"))
        .await
        .expect("stop task")
        .expect("PostgreSQL stops");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let starting = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || starting.pg_ctl_start())
        .await
        .expect("start task")
        .expect("PostgreSQL starts again");
    let up_at = Instant::now();
    // Let the load run on past the recovery.
    let before = sent_so_far().await;
    let recovered = eventually(Duration::from_secs(15), || async {
        sent_so_far().await >= before + 20
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_load.send(true).expect("stop the load");
    let mut sent: Vec<Sent> = Vec::new();
    for client in clients {
        sent.extend(client.await.expect("a load client"));
    }
    let mut engine = Arc::into_inner(engine).expect("the clients are done");
    assert!(recovered, "bookings succeed again after PostgreSQL is back");

    // Every request was answered in time, with 201 or the outage's 503.
    let failures: Vec<&Sent> = sent
        .iter()
        .filter(|s| !matches!(&s.answer, Ok(a) if a.status == 201 || is_unavailable(a)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests were answered otherwise than 201 or 503 storage_unavailable: {:?}\n{}",
        failures.len(),
        sent.len(),
        failures.iter().take(5).collect::<Vec<_>>(),
        engine.stderr()
    );
    let slowest = sent.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(10),
        "a request took {slowest:?}"
    );
    let ok: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.answer.as_ref().is_ok_and(|a| a.status == 201))
        .collect();
    let refused: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.answer.as_ref().is_ok_and(|a| a.status == 503))
        .collect();
    assert!(
        refused.len() >= 4,
        "the outage is felt: {} 503s",
        refused.len()
    );
    let first_ok_after = ok
        .iter()
        .filter(|s| s.at >= up_at)
        .map(|s| s.at + s.took)
        .min()
        .expect("a booking succeeds after the restart");
    let recovery = first_ok_after.duration_since(up_at);
    assert!(
        recovery < Duration::from_secs(15),
        "recovery took {recovery:?}"
    );
    assert!(
        refused.iter().all(|s| s.at + s.took >= down_at),
        "no 503 before the outage"
    );
    assert_eq!(engine.child.id(), pid, "the same engine process throughout");
    assert!(engine.is_running(), "the engine is still running");

    // The store: direct SQL on the private cluster.
    let pool = sqlx::PgPool::connect(&cluster.url())
        .await
        .expect("connect to the private cluster");
    let streams: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
        "SELECT aggregate_id, min(metadata->>'actor_id'), count(*), max(sequence), \
                min(event_type) \
           FROM events WHERE aggregate_type = 'consultation' GROUP BY aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .expect("streams");
    let keys: HashMap<String, Option<i32>> =
        sqlx::query_as::<_, (String, Option<i32>)>("SELECT key, status FROM idempotency_keys")
            .fetch_all(&pool)
            .await
            .expect("idempotency keys")
            .into_iter()
            .collect();
    let by_id: HashMap<&str, &(String, String, i64, i64, String)> =
        streams.iter().map(|s| (s.0.as_str(), s)).collect();
    let mut streams_of: HashMap<&str, usize> = HashMap::new();
    for stream in &streams {
        assert_eq!(
            (stream.2, stream.3, stream.4.as_str()),
            (1, 1, "Booked"),
            "every stream is one whole booking: {stream:?}"
        );
        *streams_of.entry(stream.1.as_str()).or_default() += 1;
    }
    let patients: HashSet<&str> = sent.iter().map(|s| s.patient.as_str()).collect();
    for (patient, count) in &streams_of {
        assert!(
            patients.contains(patient),
            "a stream no request made: {patient}"
        );
        assert_eq!(
            *count, 1,
            "{patient} booked once, has {count} consultations"
        );
    }
    for s in &ok {
        let id = s
            .answer
            .as_ref()
            .ok()
            .and_then(|a| a.id.clone())
            .expect("an id");
        let stream = by_id
            .get(id.as_str())
            .expect("a 201's consultation is stored");
        assert_eq!(stream.1, s.patient);
        assert_eq!(keys.get(&s.key), Some(&Some(201)), "the 201 is remembered");
    }
    let mut lost_answers = 0;
    for s in &refused {
        assert!(
            matches!(keys.get(&s.key), None | Some(None)),
            "a 503 is not remembered as an answer"
        );
        if streams_of.contains_key(s.patient.as_str()) {
            lost_answers += 1;
        }
    }
    assert_eq!(
        streams.len(),
        ok.len() + lost_answers,
        "every stored booking is a 201, or a 503'd request whose commit landed"
    );

    // The projection catches up, and the API reads every 201'd consultation back.
    assert!(
        eventually(Duration::from_secs(20), || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM consultation_summaries")
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n == streams.len() as i64)
        })
        .await,
        "the read model has every consultation"
    );
    for s in &ok {
        let id = s
            .answer
            .as_ref()
            .ok()
            .and_then(|a| a.id.clone())
            .expect("an id");
        let read = engine
            .get(
                &format!("/v1/consultations/{id}"),
                &token(Role::Patient, &s.patient),
            )
            .await
            .expect("read");
        assert_eq!(read.status(), StatusCode::OK, "read {id}");
    }

    // A client retrying its 503'd bookings with the same key and body gets each one booked
    // once; a key whose claim the outage cut off (stored without an answer) answers 409
    // `concurrency_conflict` until the claim is abandoned (30 s), and is left at that.
    let mut held = 0;
    for s in &refused {
        if streams_of.contains_key(s.patient.as_str()) {
            continue;
        }
        let retried = engine
            .client
            .post(format!("{}/v1/consultations", engine.address))
            .bearer_auth(token(Role::Patient, &s.patient))
            .header("Idempotency-Key", &s.key)
            .json(&s.body)
            .send()
            .await
            .expect("the retry is answered");
        let retried = answer(retried).await;
        if retried.status == 409 {
            assert_eq!(retried.code.as_deref(), Some("concurrency_conflict"));
            assert_eq!(
                keys.get(&s.key),
                Some(&None),
                "only a held claim answers 409"
            );
            held += 1;
            continue;
        }
        assert_eq!(retried.status, 201, "{retried:?}");
        let id = retried.id.expect("an id");
        let mine: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT aggregate_id FROM events \
              WHERE aggregate_type = 'consultation' AND metadata->>'actor_id' = $1",
        )
        .bind(&s.patient)
        .fetch_all(&pool)
        .await
        .expect("the patient's streams");
        assert_eq!(mine, vec![id], "the retry booked once");
    }
    eprintln!(
        "postgres restart: {} requests, {} booked, {} answered 503 ({} of them committed, {} \
         with their key held), first 201 {:?} after PostgreSQL was back",
        sent.len(),
        ok.len(),
        refused.len(),
        lost_answers,
        held,
        recovery
    );
    let stderr = engine.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    pool.close().await;
    engine.kill().await;
}

// ---------------------------------------------------------------------------------------------
// 2. The SMS provider down for a long time
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProviderState {
    /// 201 with a message resource.
    Up,
    /// 503 with a Twilio error body.
    Unavailable,
    /// The port is closed: connections are refused.
    Refusing,
}

#[derive(Debug, Clone)]
struct Arrival {
    at: Instant,
    body: String,
    status: u16,
}

#[derive(Debug)]
struct FlakyShared {
    state: Mutex<ProviderState>,
    arrivals: Mutex<Vec<Arrival>>,
}

/// A minimal Twilio Messages endpoint on a fixed loopback port that can be up, answer 503, or
/// refuse connections. Every response closes its connection, so refusing is immediate.
#[derive(Debug)]
struct FlakyProvider {
    port: u16,
    shared: Arc<FlakyShared>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FlakyProvider {
    async fn start(state: ProviderState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the provider");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(FlakyShared {
            state: Mutex::new(state),
            arrivals: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(Self::serve(listener, Arc::clone(&shared)));
        Self {
            port,
            shared,
            server: Mutex::new(Some(server)),
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn set(&self, state: ProviderState) {
        *self.shared.state.lock().expect("state") = state;
        let running = self.server.lock().expect("server").take();
        match (state, running) {
            (ProviderState::Refusing, Some(server)) => {
                server.abort();
                let _ = server.await;
            }
            (ProviderState::Refusing, None) => {}
            (_, Some(server)) => *self.server.lock().expect("server") = Some(server),
            (_, None) => {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket.set_reuseaddr(true).expect("SO_REUSEADDR");
                socket
                    .bind(([127, 0, 0, 1], self.port).into())
                    .expect("bind the provider's port again");
                let listener = socket.listen(64).expect("listen");
                let server = tokio::spawn(Self::serve(listener, Arc::clone(&self.shared)));
                *self.server.lock().expect("server") = Some(server);
            }
        }
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().expect("arrivals").clone()
    }

    async fn serve(listener: tokio::net::TcpListener, shared: Arc<FlakyShared>) {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            connections.spawn(Self::answer(stream, Arc::clone(&shared)));
        }
    }

    async fn answer(mut stream: tokio::net::TcpStream, shared: Arc<FlakyShared>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let Ok(n) = stream.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            request.extend_from_slice(&chunk[..n]);
            let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break request[end + 4..end + 4 + length].to_vec();
            }
        };
        let message = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "Body")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let state = *shared.state.lock().expect("state");
        let (status, text) = match state {
            ProviderState::Up => (
                201,
                json!({"sid": format!("SM{}", uuid::Uuid::new_v4().simple()), "status": "queued"}),
            ),
            _ => (
                503,
                json!({"code": 20503, "message": "Service Unavailable", "status": 503}),
            ),
        };
        shared.arrivals.lock().expect("arrivals").push(Arrival {
            at: Instant::now(),
            body: message,
            status,
        });
        let text = text.to_string();
        let reason = if status == 201 {
            "Created"
        } else {
            "Service Unavailable"
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// The SMS jobs (not the emails, not the reminders).
const SMS_JOBS: &str = "kind = 'notify' AND CAST(payload AS text) LIKE '%\"channel\":\"sms\"%'";

/// The retry delay's ceiling after `attempt` failed attempts, as configured below.
fn ceiling(attempt: usize) -> Duration {
    let base = Duration::from_millis(100);
    base.saturating_mul(1 << (attempt.saturating_sub(1)).min(20))
        .min(Duration::from_secs(1))
}

/// The SMS provider is down for 12 s — 6 s answering 503, then 6 s refusing connections — while
/// four consultations' SMS wait (retry base 100 ms, longest delay 1 s: the scale of a long
/// outage under `NOTIFY_RETRY_BASE=2s`, `NOTIFY_RETRY_MAX`). Asserted: each SMS is retried
/// several times with delays never shorter than its backoff allows and growing (first delay
/// under 0.4 s, later ones over 0.5 s); nothing is dead-lettered within the 40-attempt budget;
/// once the provider is back every SMS is sent exactly once within 5 s and nothing else
/// arrives; the jobs are done and logged sent.
async fn a_provider_down_for_long_loses_nothing_and_sends_once_after(backend: Backend) {
    const BOOKINGS: usize = 4;
    let provider = FlakyProvider::start(ProviderState::Unavailable).await;
    let base_url = provider.base_url();
    let Some(app) = spawn_app_with(backend, |config| {
        let n = &mut config.notifications;
        let mut twilio = consult_reactors::channels::twilio::TwilioConfig::new(
            "AC00000000000000000000000000000001",
            SecretString::from("fake-auth-token-0123456789abcdef"),
        );
        twilio.api_base = base_url;
        twilio.from_sms = Some("+15005550006".into());
        n.twilio = Some(twilio);
        n.retry_base = Duration::from_millis(100);
        n.retry_max = Duration::from_secs(1);
        n.max_attempts = 40;
    })
    .await
    else {
        return;
    };
    app.register_provider("prov-1").await;
    for n in 0..BOOKINGS {
        app.book(&format!("pat-{n}"), "prov-1", 30 + n as i64).await;
    }

    // Down: first answering 503, then refusing connections.
    tokio::time::sleep(Duration::from_secs(6)).await;
    provider.set(ProviderState::Refusing).await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    let during = provider.arrivals();
    let mut per_body: HashMap<String, Vec<Instant>> = HashMap::new();
    for a in &during {
        assert_eq!(a.status, 503, "nothing is accepted while down");
        per_body.entry(a.body.clone()).or_default().push(a.at);
    }
    assert_eq!(
        per_body.len(),
        BOOKINGS,
        "every SMS was tried: {per_body:?}"
    );
    for (body, times) in &per_body {
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 4, "retried several times while 503: {gaps:?}");
        for (i, gap) in gaps.iter().enumerate() {
            let least = ceiling(i + 1) / 2;
            assert!(
                *gap + Duration::from_millis(10) >= least,
                "attempt {} came {gap:?} after the previous one, sooner than its backoff \
                 ({least:?} at least): {gaps:?} for {body}",
                i + 2
            );
        }
        let first = gaps[0];
        let longest = gaps.iter().max().copied().unwrap_or_default();
        assert!(
            first < Duration::from_millis(400) && longest >= Duration::from_millis(500),
            "the delays grow: {gaps:?}"
        );
    }
    assert_eq!(
        app.db
            .scalar(&format!("SELECT count(*) FROM jobs WHERE {SMS_JOBS}"))
            .await,
        BOOKINGS as i64,
        "one SMS job per booking"
    );
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM jobs WHERE status = 'dead'")
            .await,
        0,
        "nothing dead-lettered within the attempt budget"
    );
    let fewest = app
        .db
        .scalar(&format!(
            "SELECT CAST(COALESCE(min(attempts), 0) AS bigint) FROM jobs WHERE {SMS_JOBS}"
        ))
        .await;
    assert!(
        fewest >= 8,
        "each SMS was attempted through both kinds of outage ({fewest} attempts at least)"
    );
    eprintln!(
        "provider down: at least {fewest} attempts per SMS; delays while 503: {:?}",
        per_body
            .values()
            .next()
            .map(|t| t.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>())
    );
    let admin = app.token(Role::Admin, "admin-1");
    let dead: Value = app
        .get("/v1/admin/dead-letters", &admin)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(dead["items"], json!([]));

    // Back: every SMS goes out once, within the longest delay and some slack.
    provider.set(ProviderState::Up).await;
    let back = Instant::now();
    let accepted = || {
        provider
            .arrivals()
            .into_iter()
            .filter(|a| a.status == 201)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            accepted().len() >= BOOKINGS
        })
        .await,
        "every SMS is sent after the recovery: {} of {BOOKINGS}",
        accepted().len()
    );
    let last = accepted().iter().map(|a| a.at).max().expect("sent");
    assert!(last.duration_since(back) < Duration::from_secs(3));
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.db
                .scalar(&format!(
                    "SELECT count(*) FROM jobs WHERE status = 'done' AND {SMS_JOBS}"
                ))
                .await
                == BOOKINGS as i64
        })
        .await,
        "the jobs are done"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = accepted();
    let bodies: HashSet<&str> = sent.iter().map(|a| a.body.as_str()).collect();
    assert_eq!(sent.len(), BOOKINGS, "each SMS sent exactly once");
    assert_eq!(bodies.len(), BOOKINGS);
    assert!(
        bodies.iter().all(|b| per_body.contains_key(*b)),
        "the sent ones are the ones that waited"
    );
    assert!(
        provider
            .arrivals()
            .iter()
            .all(|a| a.at < back || a.status == 201),
        "no failed attempt after the recovery"
    );
    assert_eq!(
        app.db
            .scalar(
                "SELECT count(*) FROM notification_log WHERE channel = 'sms' AND status = 'sent'"
            )
            .await,
        BOOKINGS as i64
    );
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM jobs WHERE status = 'dead'")
            .await,
        0
    );
}

crate::on_both_backends!(a_provider_down_for_long_loses_nothing_and_sends_once_after);

// ---------------------------------------------------------------------------------------------
// 3. A read-only or full SQLite file
// ---------------------------------------------------------------------------------------------

/// Runs `consult migrate` on the SQLite database in `data_dir`.
async fn migrate_sqlite(data_dir: &Path) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_consult"))
        .arg("migrate")
        .env_clear()
        .env("DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run consult migrate");
    assert!(
        output.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn sqlite_pool(db: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
    sqlx::SqlitePool::connect_with(options)
        .await
        .expect("open the SQLite file")
}

async fn integrity(pool: &sqlx::SqlitePool) -> String {
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(pool)
        .await
        .expect("integrity_check")
}

/// The engine started by a user who may not write the SQLite file or its directory (as root:
/// `nobody`, running a copy of the binary in a directory every user can reach, whatever
/// directory the build lives in; otherwise the file and directory are made read-only).
/// Asserted: it exits non-zero within 15 s with an `error:` line that names the database and
/// the read-only/permission problem, without a panic; or, should it start, writes answer 503
/// `storage_unavailable` and reads 200. The file is unchanged and passes `integrity_check`. A
/// data directory that cannot be created is likewise refused with a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sqlite_file_is_refused_clearly() {
    let root = running_as_root();
    // As root the engine runs as `nobody`, who must reach its binary and the directories.
    let (dir, binary) = if root {
        (
            TempDir::within(&reachable_base(), "consult_ro"),
            Some(SharedBinary::new()),
        )
    } else {
        (TempDir::new("consult_ro"), None)
    };
    let data = dir.0.join("data");
    migrate_sqlite(&data).await;
    let db = data.join("consult.db");
    let before = std::fs::read(&db).expect("the database file");
    let outbox = dir.0.join("outbox");
    std::fs::create_dir_all(&outbox).expect("outbox dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        if root {
            std::os::unix::fs::chown(&outbox, Some(NOBODY), Some(NOBODY)).expect("chown");
            // `nobody` must reach the directory.
            std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            assert!(
                traversable_by_all(&dir.0),
                "{} is reachable",
                dir.0.display()
            );
        }
    }
    let command_for = |data_dir: &Path, port: u16| {
        let mut command = match &binary {
            Some(shared) => {
                let mut command = serve_command_of(&shared.path, data_dir, port, None);
                command.uid(NOBODY).gid(NOBODY).current_dir(&shared.dir.0);
                command
            }
            None => serve_command(data_dir, port, None),
        };
        command.env("OUTBOX_FILE", outbox.join("outbox.jsonl"));
        command
    };

    let port = free_port();
    let command = command_for(&data, port);
    let started = Instant::now();
    let mut engine = Engine::spawn(command, port);
    match engine.ready(Duration::from_secs(15)).await {
        Err(_) => {
            let status = engine
                .exit_within(Duration::from_secs(1))
                .await
                .expect("the engine exited");
            let stderr = engine.stderr();
            assert!(!status.success(), "{stderr}");
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "refused quickly"
            );
            let error = stderr
                .lines()
                .find(|l| l.starts_with("error:"))
                .unwrap_or_else(|| panic!("an error line: {stderr}"))
                .to_lowercase();
            assert!(error.contains("database"), "{error}");
            assert!(
                ["readonly", "read-only", "permission", "unable to open"]
                    .iter()
                    .any(|w| error.contains(w)),
                "the message names the problem: {error}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            eprintln!("read-only SQLite refused: {error}");
        }
        Ok(()) => {
            let refused = engine
                .post(
                    "/v1/providers",
                    &token(Role::Admin, "admin-1"),
                    &provider_body("prov-1"),
                )
                .await
                .expect("answered");
            let refused = answer(refused).await;
            assert!(is_unavailable(&refused), "{refused:?}");
            let read = engine
                .get("/v1/consultations", &token(Role::Admin, "admin-1"))
                .await
                .expect("answered");
            assert_eq!(read.status(), StatusCode::OK);
            eprintln!(
                "read-only SQLite: the engine started; writes answer 503, reads 200\n{}",
                engine.stderr()
            );
            engine.kill().await;
        }
    }
    assert_eq!(std::fs::read(&db).expect("the file"), before, "unchanged");
    let pool = sqlite_pool(&db).await;
    assert_eq!(integrity(&pool).await, "ok");
    pool.close().await;

    // A data directory that cannot be created.
    let port = free_port();
    let command = command_for(&data.join("sub"), port);
    let mut engine = Engine::spawn(command, port);
    let refused = engine.ready(Duration::from_secs(15)).await;
    assert!(refused.is_err(), "the engine cannot start");
    let stderr = engine.stderr();
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("an error line: {stderr}"));
    assert!(
        error.contains("data directory") && error.contains("ermission"),
        "{error}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755));
    }
}

/// The engine runs with a file size limit (`RLIMIT_FSIZE`, via `prlimit`) 1 MiB above the
/// migrated database, as a full disk would stop it. Bookings (without Idempotency-Key) go on
/// until 40 requests after the limit first refuses one. Asserted: every answer is 201 or 503
/// `storage_unavailable` (never 500), the process survives (SIGXFSZ does not kill it), and at
/// least five bookings in a row are refused; reads that need no write still answer 200. Then
/// the engine is killed (-9): the file passes `integrity_check` and holds exactly the 201'd
/// bookings, one event each (also those acknowledged after the first refusal); the engine
/// restarted without the limit serves them, and books again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sqlite_file_answers_503_and_keeps_exactly_what_was_acknowledged() {
    let probe = std::process::Command::new("prlimit")
        .arg("--version")
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip("prlimit (util-linux) is not installed: cannot limit the file size");
        return;
    }
    let dir = TempDir::new("consult_full");
    let data = dir.0.join("data");
    migrate_sqlite(&data).await;
    let db = data.join("consult.db");
    let size = std::fs::metadata(&db).expect("the database file").len();
    let limit = size + 1024 * 1024;

    let port = free_port();
    let mut engine = Engine::spawn(serve_command(&data, port, Some(limit)), port);
    engine
        .ready(Duration::from_secs(20))
        .await
        .expect("the engine starts under the limit");
    let admin = token(Role::Admin, "admin-1");
    let registered = engine
        .post("/v1/providers", &admin, &provider_body("prov-1"))
        .await
        .expect("register");
    assert_eq!(registered.status(), StatusCode::CREATED);

    let mut booked: Vec<String> = Vec::new();
    let mut refused_in_a_row = 0;
    let mut longest_refusal = 0;
    let mut refused = 0;
    let started = Instant::now();
    // Writes go on for 40 requests after the first refusal: a write acknowledged after the
    // disk filled up must be stored too.
    let mut after_first_refusal = 0;
    for n in 0..2_000i64 {
        if after_first_refusal >= 40 || started.elapsed() > Duration::from_secs(45) {
            break;
        }
        if refused > 0 {
            after_first_refusal += 1;
        }
        let response = engine
            .post(
                "/v1/consultations",
                &token(Role::Patient, "pat-1"),
                &booking("prov-1", 48 + n),
            )
            .await
            .unwrap_or_else(|e| panic!("booking {n} unanswered ({e}): {}", engine.stderr()));
        let a = answer(response).await;
        if a.status == 201 {
            booked.push(a.id.expect("an id"));
            refused_in_a_row = 0;
        } else {
            assert!(
                is_unavailable(&a),
                "booking {n}: {a:?} instead of 201 or 503\n{}",
                engine.stderr()
            );
            refused += 1;
            refused_in_a_row += 1;
            longest_refusal = longest_refusal.max(refused_in_a_row);
        }
    }
    assert!(
        longest_refusal >= 5,
        "the limit stops the writes ({} booked, {refused} refused)",
        booked.len()
    );
    assert!(booked.len() >= 3, "some bookings fit: {}", booked.len());
    assert!(engine.is_running(), "SIGXFSZ did not kill the engine");
    eprintln!(
        "full SQLite: {} booked, {refused} refused under a {limit}-byte file size limit: {}",
        booked.len(),
        engine
            .stderr()
            .lines()
            .find(|l| l.contains("storage unavailable"))
            .unwrap_or_default()
    );
    // Reads that write nothing still answer.
    let provider = engine
        .get("/v1/providers/prov-1", &admin)
        .await
        .expect("read");
    assert_eq!(provider.status(), StatusCode::OK);
    let list = engine
        .get("/v1/consultations?patient_id=pat-1", &admin)
        .await
        .expect("read");
    assert_eq!(list.status(), StatusCode::OK);
    let stderr = engine.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    engine.kill().await;

    let pool = sqlite_pool(&db).await;
    assert_eq!(integrity(&pool).await, "ok");
    let streams: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, count(*) FROM events WHERE aggregate_type = 'consultation' \
          GROUP BY aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .expect("streams");
    pool.close().await;
    let stored: HashSet<&str> = streams.iter().map(|s| s.0.as_str()).collect();
    let acknowledged: HashSet<&str> = booked.iter().map(String::as_str).collect();
    assert_eq!(
        stored, acknowledged,
        "exactly the 201'd bookings are stored"
    );
    assert!(streams.iter().all(|s| s.1 == 1), "one event each");

    // Without the limit, the same file serves them and takes new writes.
    let port = free_port();
    let mut engine = Engine::spawn(serve_command(&data, port, None), port);
    engine
        .ready(Duration::from_secs(20))
        .await
        .expect("the engine starts again");
    let again = engine
        .post(
            "/v1/consultations",
            &token(Role::Patient, "pat-2"),
            &booking("prov-1", 24),
        )
        .await
        .expect("book");
    assert_eq!(again.status(), StatusCode::CREATED);
    let patient = token(Role::Patient, "pat-1");
    for id in &booked {
        let path = format!("/v1/consultations/{id}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = 0;
        while status != 200 && Instant::now() < deadline {
            status = engine
                .get(&path, &patient)
                .await
                .map_or(0, |r| r.status().as_u16());
            if status != 200 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert_eq!(status, 200, "{id} reads back");
    }
    engine.kill().await;
    let pool = sqlite_pool(&db).await;
    assert_eq!(integrity(&pool).await, "ok");
    pool.close().await;
}
