//! Scale-out as documented in README.md: two API processes and two worker processes, all real
//! `consult serve` children, on one PostgreSQL. Commands are spread over both APIs and both
//! read the same; every notification leaves once; each subscription has one owner, always a
//! worker; and when the worker owning `notifications` is killed with -9 while commands keep
//! coming, the other worker takes over everything within the lease and the bookings made
//! meanwhile are all notified.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consult_api::Role;
use consult_store::{Store, StoreOptions, SubscriptionStatus};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::helpers::{free_port, mint_token, owner_pid, Backend, DbGuard, TestDb};

use consult_testkit as fakes;

use fakes::smtp::SmtpFake;
use fakes::twilio::{TwilioFake, ACCOUNT_SID, AUTH_TOKEN, FROM_SMS};

/// The token secret every process shares (`AUTH_JWT_SECRET`).
const SECRET: &str = "scale-out-test-secret-long-enough-0123456789";
/// `SUBSCRIPTION_LEASE` and `JOB_LEASE` of the workers.
const LEASE: Duration = Duration::from_secs(2);
/// How soon the survivor must own what the killed worker held: the lease, one renewal period
/// (a third of it) and a margin for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(6);
/// The whole scenario, processes started to last check.
const SCENARIO: Duration = Duration::from_secs(60);
/// Every subscription a worker runs.
const SUBSCRIPTIONS: [&str; 5] = [
    "chain",
    "consultations",
    "notifications",
    "refunds",
    "rooms",
];
/// Consultations booked before the kill, and from just before it on.
const BEFORE_KILL: usize = 6;
const AROUND_KILL: usize = 8;

fn token(role: Role, sub: &str) -> String {
    mint_token(SECRET, role, sub)
}

/// Consultation `n` has its own provider and patient, so each address gets exactly one
/// message: the provider's on `Booked`, the patient's on `Accepted` (SMS and email each).
fn provider_phone(n: usize) -> String {
    format!("+1415555{:04}", 1000 + n)
}

fn patient_phone(n: usize) -> String {
    format!("+3361234{:04}", 1000 + n)
}

fn provider_email(n: usize) -> String {
    format!("provider-{n}@example.org")
}

fn patient_email(n: usize) -> String {
    format!("patient-{n}@example.org")
}

/// One `consult serve` process; its stderr (at warn) goes to `<data dir>/<name>/stderr.log`.
fn serve(
    db: &TestDb,
    name: &str,
    roles: &str,
    bind: &str,
    twilio: &TwilioFake,
    smtp: &SmtpFake,
) -> Child {
    let dir = db.data_dir.join(name);
    std::fs::create_dir_all(&dir).expect("a data directory per process");
    let log = std::fs::File::create(dir.join("stderr.log")).expect("a log file");
    let lease = format!("{}s", LEASE.as_secs());
    Command::new(env!("CARGO_BIN_EXE_consult"))
        .arg("serve")
        .env("ROLES", roles)
        .env("BIND", bind)
        // A worker's probes on a port of its own: several run at once.
        .env("ADMIN_BIND", "127.0.0.1:0")
        .env("PUBLIC_BASE_URL", "http://127.0.0.1")
        .env("DATABASE_URL", &db.url)
        .env("DATA_DIR", &dir)
        .env("AUTH_JWT_SECRET", SECRET)
        .env("SUBSCRIPTION_LEASE", &lease)
        .env("JOB_LEASE", &lease)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .env("TWILIO_FROM_SMS", FROM_SMS)
        .env("TWILIO_API_BASE", &twilio.base_url)
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", smtp.port.to_string())
        .env("SMTP_TLS", "none")
        .env("SMTP_FROM", "Clinic <no-reply@clinic.example>")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start consult serve")
}

/// Prints the end of every process's log if the test fails (warn level: no personal data).
struct LogsOnFailure(PathBuf);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for entry in entries.flatten() {
            let log = entry.path().join("stderr.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(30)..];
                eprintln!(
                    "--- {} (last {} lines) ---\n{}",
                    entry.file_name().to_string_lossy(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }
}

/// One API process as a client sees it. Every command carries an `X-Request-Id` naming the
/// API it went to, so the stored events tell which process served them.
struct Api {
    label: &'static str,
    base: String,
    client: reqwest::Client,
    pid: u32,
    commands: AtomicUsize,
}

impl Api {
    async fn post(&self, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
        let n = self.commands.fetch_add(1, Ordering::SeqCst);
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("x-request-id", format!("scaleout-{}-{n}", self.label))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|err| panic!("POST {path} reaches {}: {err}", self.label));
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `(status, stale, body)` of a GET as an admin.
    async fn get(&self, path: &str) -> (StatusCode, bool, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token(Role::Admin, "admin-1"))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path} reaches {}: {err}", self.label));
        let status = response.status();
        let stale = response.headers().get("x-projection-stale").is_some();
        (status, stale, response.json().await.unwrap_or(Value::Null))
    }
}

/// Starts an API process on a free loopback port and waits for `/readyz`; a port taken in the
/// meantime by someone else is retried on another.
async fn start_api(
    db: &TestDb,
    label: &'static str,
    twilio: &TwilioFake,
    smtp: &SmtpFake,
) -> (Child, Api) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    for _ in 0..3 {
        let port = free_port();
        let mut child = serve(db, label, "api", &format!("127.0.0.1:{port}"), twilio, smtp);
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().expect("process status").is_some() {
                break;
            }
            let ready = client.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                let pid = child.id().expect("a running process has a pid");
                let api = Api {
                    label,
                    base,
                    client,
                    pid,
                    commands: AtomicUsize::new(0),
                };
                return (child, api);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    panic!("{label} did not become ready on a free port within 3 attempts of 20 s");
}

/// A booked and accepted consultation.
#[derive(Debug, Clone)]
struct Booked {
    id: String,
    /// The log position of its acceptance.
    position: i64,
}

/// Consultation `n`: its provider is registered through one API, the booking goes to the other,
/// the acceptance to the first again (which API starts alternates with `n`).
async fn book_and_accept(apis: &[Api; 2], n: usize) -> Booked {
    let (first, second) = (&apis[n % 2], &apis[(n + 1) % 2]);
    let provider = format!("prov-{n}");
    let (status, body) = first
        .post(
            "/v1/providers",
            &token(Role::Admin, "admin-1"),
            &json!({
                "id": provider,
                "name": format!("Dr. Provider {n}"),
                "phone": provider_phone(n),
                "email": provider_email(n),
                "timezone": "America/New_York",
                "fee": {"amount_minor": 4500, "currency": "EUR"},
            }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "register {provider} via {}: {body}",
        first.label
    );
    // Two days ahead and an hour apart: no reminder or deadline fires during the test.
    let start = chrono::Utc::now() + chrono::Duration::hours(48 + n as i64);
    let (status, body) = second
        .post(
            "/v1/consultations",
            &token(Role::Patient, &format!("pat-{n}")),
            &json!({
                "provider_id": provider,
                "starts_at": start.format("%Y-%m-%dT%H:00:00Z").to_string(),
                "duration_minutes": 30,
                "mode": "video",
                "timezone": "Europe/Paris",
                "contact": {"phone": patient_phone(n), "email": patient_email(n), "whatsapp": false},
            }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "book {n} via {}: {body}",
        second.label
    );
    let id = body["id"].as_str().expect("the booking's id").to_owned();
    let (status, body) = first
        .post(
            &format!("/v1/consultations/{id}/accept"),
            &token(Role::Provider, &provider),
            &json!({}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "accept {n} via {}: {body}",
        first.label
    );
    let position = body["position"]
        .as_i64()
        .expect("the acceptance's position");
    Booked { id, position }
}

/// Both APIs read the consultation once it is projected up to its acceptance, and read the
/// same thing.
async fn reads_agree(apis: &[Api; 2], booked: &Booked) {
    let path = format!("/v1/consultations/{}?after={}", booked.id, booked.position);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut bodies = Vec::new();
    for api in apis {
        loop {
            let (status, stale, body) = api.get(&path).await;
            if status == StatusCode::OK && !stale {
                bodies.push(body);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not read consultation {} projected within 15 s: {status}, stale {stale}",
                api.label,
                booked.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(bodies[0]["id"], booked.id.as_str());
    assert_eq!(bodies[0]["status"], "accepted", "{}", bodies[0]);
    assert_eq!(
        bodies[0], bodies[1],
        "api1 and api2 read consultation {} alike",
        booked.id
    );
}

async fn statuses(store: &Store) -> Vec<SubscriptionStatus> {
    store
        .subscription_statuses()
        .await
        .expect("subscription statuses")
}

/// Each subscription's owner pid, by name.
async fn owners(store: &Store) -> BTreeMap<String, Option<u32>> {
    statuses(store)
        .await
        .into_iter()
        .map(|s| (s.name.clone(), owner_pid(s.owner.as_deref())))
        .collect()
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`.
async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One IPv4 TCP socket as `/proc/net/tcp` lists it.
struct TcpSocket {
    /// `address:port`, in hexadecimal as listed.
    local: String,
    remote: String,
    state: u8,
    /// 0 when no process holds it any more (closed, or its process died) or not yet accepted.
    inode: u64,
}

/// The IPv4 TCP sockets of this network namespace; `None` where `/proc/net/tcp` is not there.
fn tcp_sockets() -> Option<Vec<TcpSocket>> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let sockets = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(TcpSocket {
                local: (*fields.get(1)?).to_owned(),
                remote: (*fields.get(2)?).to_owned(),
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect();
    Some(sockets)
}

/// How many connections to the fakes (listening on `ports`) were given up by their client (its
/// process closed them, or died, as a killed worker's are) and have not yet been read to their
/// end and closed by the fake: until there are none, a request the client wrote may still be on
/// its way to being recorded. `None` where the sockets cannot be seen (not Linux).
fn unread_by_fakes(ports: &[u16]) -> Option<usize> {
    const ESTABLISHED: u8 = 0x01;
    const TIME_WAIT: u8 = 0x06;
    const CLOSE_WAIT: u8 = 0x08;
    let sockets = tcp_sockets()?;
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
    };
    // Client ends no process holds: closed, FIN sent, waiting for the other end.
    let given_up: BTreeSet<(&str, &str)> = sockets
        .iter()
        .filter(|s| s.inode == 0 && s.state != TIME_WAIT)
        .map(|s| (s.local.as_str(), s.remote.as_str()))
        .collect();
    let open = sockets
        .iter()
        .filter(|s| port(&s.local).is_some_and(|p| ports.contains(&p)))
        .filter(|s| s.state == ESTABLISHED || s.state == CLOSE_WAIT)
        .filter(|s| given_up.contains(&(s.remote.as_str(), s.local.as_str())))
        .count();
    Some(open)
}

/// Every address a message went to: SMS by `To`, email by recipient.
fn arrived(twilio: &TwilioFake, smtp: &SmtpFake) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for form in twilio.arrivals() {
        if let Some((_, to)) = form.iter().find(|(k, _)| k == "To") {
            *seen.entry(to.clone()).or_default() += 1;
        }
    }
    for email in smtp.received() {
        for to in email.to {
            *seen.entry(to).or_default() += 1;
        }
    }
    seen
}

fn expected_addresses(consultations: usize) -> BTreeSet<String> {
    (0..consultations)
        .flat_map(|n| {
            [
                provider_phone(n),
                patient_phone(n),
                provider_email(n),
                patient_email(n),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_and_two_workers_share_the_load_and_survive_a_killed_worker() {
    let Some(db) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let _db = DbGuard(db.clone());
    let _logs = LogsOnFailure(db.data_dir.clone());
    let started = Instant::now();
    tokio::time::timeout(SCENARIO, scenario(&db))
        .await
        .unwrap_or_else(|_| panic!("the scale-out scenario did not finish within {SCENARIO:?}"));
    eprintln!("scale-out scenario: {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&db.data_dir);
}

async fn scenario(db: &TestDb) {
    let store = Store::connect(&StoreOptions::new(db.url.clone()))
        .await
        .expect("open the store");
    store.migrate().await.expect("migrate");
    let twilio = TwilioFake::start().await;
    let smtp = SmtpFake::start();

    let mut workers = [
        serve(db, "worker1", "workers", "127.0.0.1:0", &twilio, &smtp),
        serve(db, "worker2", "workers", "127.0.0.1:0", &twilio, &smtp),
    ];
    let worker_pids: Vec<u32> = workers
        .iter()
        .map(|w| w.id().expect("a worker's pid"))
        .collect();
    let ((_api1, a1), (_api2, a2)) = tokio::join!(
        start_api(db, "api1", &twilio, &smtp),
        start_api(db, "api2", &twilio, &smtp)
    );
    let apis = Arc::new([a1, a2]);
    let api_pids: Vec<u32> = apis.iter().map(|a| a.pid).collect();

    // Watches the lease rows for the whole test: every owner ever seen must be a worker.
    let owners_seen: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
    let monitor = {
        let store = store.clone();
        let seen = Arc::clone(&owners_seen);
        tokio::spawn(async move {
            // Ends when the database goes away after the test.
            while let Ok(rows) = store.subscription_statuses().await {
                for s in rows {
                    if let Some(owner) = s.owner {
                        seen.lock().expect("owners seen").insert((s.name, owner));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_for(
        Duration::from_secs(20),
        "the workers take every subscription",
        || async {
            let owners = owners(&store).await;
            owners.keys().map(String::as_str).eq(SUBSCRIPTIONS)
                && owners
                    .values()
                    .all(|pid| pid.is_some_and(|p| worker_pids.contains(&p)))
        },
    )
    .await;

    // Commands over both APIs; each consultation touches both.
    let mut booked = Vec::new();
    for n in 0..BEFORE_KILL {
        booked.push(book_and_accept(&apis, n).await);
    }
    for b in &booked {
        reads_agree(&apis, b).await;
    }
    let expected = expected_addresses(BEFORE_KILL);
    wait_for(
        Duration::from_secs(20),
        "every notification of the first bookings goes out",
        || async {
            let arrived = arrived(&twilio, &smtp);
            expected.iter().all(|a| arrived.contains_key(a))
                && db
                    .scalar("SELECT count(*) FROM notification_log WHERE status = 'sent'")
                    .await
                    == expected.len() as i64
        },
    )
    .await;
    let arrived_so_far = arrived(&twilio, &smtp);
    assert_eq!(
        arrived_so_far.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "messages went to the expected addresses only"
    );
    let repeated = arrived_so_far.values().filter(|count| **count > 1).count();
    assert_eq!(
        repeated, 0,
        "two workers send every message exactly once: {repeated} addresses got more than one"
    );

    // What the admin endpoint of each API says: one live owner per subscription, a worker.
    let mut views = Vec::new();
    for api in apis.iter() {
        let (status, _, body) = api.get("/v1/admin/subscriptions").await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", api.label);
        let rows = body["subscriptions"].as_array().expect("subscriptions");
        let names: Vec<&str> = rows.iter().filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(
            names, SUBSCRIPTIONS,
            "{}: one row per subscription",
            api.label
        );
        let mut view = BTreeMap::new();
        for row in rows {
            let pid = owner_pid(row["owner"].as_str());
            assert!(
                pid.is_some_and(|p| worker_pids.contains(&p)),
                "{}: {} is owned by a worker ({:?} not in {worker_pids:?}; the APIs are \
                 {api_pids:?})",
                api.label,
                row["name"],
                row["owner"]
            );
            assert!(
                row["state"] == "live" || row["state"] == "catching_up",
                "{}: {} runs: {row}",
                api.label,
                row["name"]
            );
            view.insert(row["name"].to_string(), pid);
        }
        views.push(view);
    }
    assert_eq!(views[0], views[1], "both APIs report the same owners");

    // Kill -9 the worker owning `notifications` while commands keep coming through both APIs.
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let apis = Arc::clone(&apis);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut booked = Vec::new();
            for n in BEFORE_KILL..BEFORE_KILL + AROUND_KILL {
                booked.push(book_and_accept(&apis, n).await);
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            booked
        })
    };
    wait_for(
        Duration::from_secs(15),
        "the writer books while both workers live",
        || async { done.load(Ordering::SeqCst) >= 2 },
    )
    .await;
    let before = owners(&store).await;
    let victim_pid = before["notifications"].expect("notifications has an owner");
    let victim = worker_pids
        .iter()
        .position(|p| *p == victim_pid)
        .expect("the owner of notifications is a worker");
    let survivor_pid = worker_pids[1 - victim];
    let lost: Vec<&String> = before
        .iter()
        .filter(|(_, pid)| **pid == Some(victim_pid))
        .map(|(name, _)| name)
        .collect();
    workers[victim].start_kill().expect("kill -9 a worker");
    let _ = workers[victim].wait().await;
    let killed_at = Instant::now();
    assert!(
        done.load(Ordering::SeqCst) < AROUND_KILL,
        "the kill happens while commands are still coming"
    );

    // At-least-once accounting, as in delivery.rs: a message may go twice only if it reached
    // the provider before the kill and its job was not recorded done by then (the dead worker
    // sent it and died before committing; its job lock runs out after JOB_LEASE and the
    // survivor sends it again). The jobs not done are read at once: the dead worker's stay
    // running until their locks run out. A request it wrote just before the kill is in the
    // fakes' sockets: wait until the fakes have read every connection it left to its end.
    let unfinished: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'to' FROM jobs WHERE kind = 'notify' AND status <> 'done'",
    )
    .fetch_all(match store.db() {
        consult_store::Db::Postgres(pool) => pool,
        consult_store::Db::Sqlite(_) => unreachable!("a PostgreSQL store"),
    })
    .await
    .expect("unfinished jobs");
    let fake_ports = [
        twilio
            .base_url
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .expect("the Twilio fake's port"),
        smtp.port,
    ];
    if unread_by_fakes(&fake_ports).is_some() {
        wait_for(
            Duration::from_secs(10),
            "the fakes read to its end every connection the killed worker left",
            || async { unread_by_fakes(&fake_ports) == Some(0) },
        )
        .await;
    } else {
        eprintln!("no /proc/net/tcp here: cannot see what the fakes have left to read");
    }
    let arrived_before_kill: BTreeSet<String> = arrived(&twilio, &smtp).into_keys().collect();
    let in_flight: BTreeSet<String> = unfinished
        .into_iter()
        .filter(|to| arrived_before_kill.contains(to))
        .collect();

    // The survivor takes over every subscription the dead worker held, within the bound.
    loop {
        let now = owners(&store).await;
        if now.values().all(|pid| *pid == Some(survivor_pid)) {
            break;
        }
        assert!(
            killed_at.elapsed() < TAKEOVER,
            "the surviving worker {survivor_pid} takes over {lost:?} from the killed one \
             {victim_pid} within {TAKEOVER:?}; owners now {now:?} (APIs {api_pids:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed_at.elapsed();

    let later = match writer.await {
        Ok(booked) => booked,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    };
    booked.extend(later);
    let total = booked.len();
    assert_eq!(total, BEFORE_KILL + AROUND_KILL);
    for b in &booked {
        reads_agree(&apis, b).await;
    }
    let head = booked.iter().map(|b| b.position).max().unwrap_or(0);
    let mut lists = Vec::new();
    for api in apis.iter() {
        let (status, stale, body) = api
            .get(&format!(
                "/v1/consultations?status=accepted&limit=200&after={head}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", api.label);
        assert!(!stale, "{}: the list is projected", api.label);
        let ids: BTreeSet<String> = body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect();
        lists.push(ids);
    }
    let all_ids: BTreeSet<String> = booked.iter().map(|b| b.id.clone()).collect();
    assert_eq!(lists[0], all_ids, "api1 lists every consultation");
    assert_eq!(lists[1], all_ids, "api2 lists every consultation");

    // Both APIs served commands, and the log says so.
    let commands = (total * 3) as i64;
    let mut served = 0;
    for api in apis.iter() {
        let recorded = db
            .scalar(&format!(
                "SELECT count(DISTINCT metadata->>'request_id') FROM events \
                 WHERE metadata->>'request_id' LIKE 'scaleout-{}-%'",
                api.label
            ))
            .await;
        assert_eq!(
            recorded,
            api.commands.load(Ordering::SeqCst) as i64,
            "every command sent to {} is in the log under its request id",
            api.label
        );
        assert!(recorded > 0, "{} served commands", api.label);
        served += recorded;
    }
    assert_eq!(served, commands);

    // Every notification, before and after the kill, goes out; nothing beyond the window twice.
    let expected = expected_addresses(total);
    wait_for(
        Duration::from_secs(20),
        "every notification is sent after the takeover",
        || async {
            let arrived = arrived(&twilio, &smtp);
            expected.iter().all(|a| arrived.contains_key(a))
                && db
                    .scalar("SELECT count(*) FROM notification_log WHERE status = 'sent'")
                    .await
                    == expected.len() as i64
        },
    )
    .await;
    // Anything left to resend after the dead worker's job locks ran out has been by now.
    let quiet = (killed_at + LEASE + Duration::from_millis(1500)).max(Instant::now());
    tokio::time::sleep_until(quiet.into()).await;
    let arrived = arrived(&twilio, &smtp);
    assert_eq!(
        arrived.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "messages went to the expected addresses only, none missing"
    );
    let twice: Vec<&String> = arrived
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(to, _)| to)
        .collect();
    for (to, count) in &arrived {
        assert!(
            *count == 1 || (*count == 2 && in_flight.contains(to)),
            "a message went {count} times; only one in flight at the kill may go twice \
             (in flight: {} messages)",
            in_flight.len()
        );
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM notification_log").await,
        expected.len() as i64,
        "one notification per address"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM jobs WHERE kind = 'notify' AND status <> 'done'")
            .await,
        0,
        "every notification job is done"
    );

    // The survivor runs every subscription to the head, each event applied once.
    wait_for(
        Duration::from_secs(10),
        "every subscription catches up",
        || async { statuses(&store).await.iter().all(|s| s.lag_events == 0) },
    )
    .await;
    let events = db.event_count().await;
    for s in statuses(&store).await {
        assert_eq!(
            owner_pid(s.owner.as_deref()),
            Some(survivor_pid),
            "{} is the survivor's",
            s.name
        );
        assert_eq!(s.failures, 0, "{}: {:?}", s.name, s.last_error);
        assert_eq!(s.applied, events, "{} applied every event once", s.name);
    }
    monitor.abort();
    let seen = owners_seen.lock().expect("owners seen").clone();
    assert!(
        !seen.is_empty()
            && seen.iter().all(|(_, owner)| {
                owner_pid(Some(owner)).is_some_and(|pid| worker_pids.contains(&pid))
            }),
        "only workers ever owned a subscription (workers {worker_pids:?}, APIs {api_pids:?}): \
         {seen:?}"
    );
    assert!(
        workers[1 - victim].try_wait().expect("status").is_none(),
        "the survivor still runs"
    );
    eprintln!(
        "scale-out: {total} consultations, {commands} commands ({} via api1, {} via api2), \
         takeover of {lost:?} in {takeover:?}, {} in flight at the kill, {} sent twice \
         ({} emails)",
        apis[0].commands.load(Ordering::SeqCst),
        apis[1].commands.load(Ordering::SeqCst),
        in_flight.len(),
        twice.len(),
        twice.iter().filter(|to| to.contains('@')).count()
    );
    store.close().await;
}
