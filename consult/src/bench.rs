//! `consult bench`: drives book → accept through the HTTP API of a real engine process on
//! PostgreSQL at several client counts, and measures in the same run the ceiling of this
//! machine and database: a bare single-row INSERT loop.

use std::time::{Duration, Instant};

use clap::Args;
use consult_api::{Claims, Role, TokenKey};
use secrecy::SecretString;
use serde_json::json;
use sqlx::Connection;
use tokio::process::Command;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A PostgreSQL URL whose server may get a scratch database (created and dropped here).
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Client counts to run, comma-separated.
    #[arg(long, default_value = "1,8,32")]
    clients: String,
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep the scratch database afterwards.
    #[arg(long)]
    keep: bool,
    /// Scenarios to run, comma-separated: commands, freshness, notifications, rebuild.
    #[arg(long, default_value = "commands,freshness,notifications,rebuild")]
    scenarios: String,
    /// Events in the store for the rebuild scenario (4 per consultation).
    #[arg(long, default_value_t = 1_000_000)]
    rebuild_events: u64,
    /// What the engine process runs while commands are measured (ROLES).
    #[arg(long, default_value = "api,workers")]
    engine_roles: String,
    /// Background command rate of the freshness and notifications scenarios, per second.
    #[arg(long, default_value_t = 500)]
    freshness_load: u32,
    /// Jobs queued at once for the dispatch-rate measurement of the notifications scenario.
    #[arg(long, default_value_t = 20_000)]
    dispatch_jobs: u32,
}

/// Which scenarios a run includes.
#[derive(Debug, Clone, Copy)]
struct Scenarios {
    commands: bool,
    freshness: bool,
    notifications: bool,
    rebuild: bool,
}

impl Scenarios {
    fn parse(text: &str) -> Result<Self, String> {
        let mut scenarios = Self {
            commands: false,
            freshness: false,
            notifications: false,
            rebuild: false,
        };
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "commands" => scenarios.commands = true,
                "freshness" => scenarios.freshness = true,
                "notifications" => scenarios.notifications = true,
                "rebuild" => scenarios.rebuild = true,
                other => {
                    return Err(format!(
                        "unknown scenario {other}: commands, freshness, notifications, rebuild"
                    ))
                }
            }
        }
        Ok(scenarios)
    }
}

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0";

/// Latencies of one measurement.
struct Sample {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let levels: Vec<usize> = args
        .clients
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| "--clients must be numbers separated by commas")?;
    let duration = Duration::from_secs(args.seconds.max(1));
    let scenarios = Scenarios::parse(&args.scenarios)?;

    let name = format!("consult_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&args.postgres_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let base = args
        .postgres_url
        .rsplit_once('/')
        .map_or(args.postgres_url.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    eprintln!("bench: scratch database {name}");

    let result = run_on(&url, &levels, duration, scenarios, &args).await;

    if !args.keep {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    result
}

async fn run_on(
    url: &str,
    levels: &[usize],
    duration: Duration,
    scenarios: Scenarios,
    args: &BenchArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::temp_dir().join(format!("consult-bench-{}", std::process::id()));
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    // Text messages go to a Twilio stand-in in this process that answers at once and notes when
    // each request arrived.
    let twilio = crate::bench_twilio::TwilioStandIn::start().await?;
    let mut engine = Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("TWILIO_ACCOUNT_SID", crate::bench_twilio::ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", crate::bench_twilio::AUTH_TOKEN)
        .env("TWILIO_FROM_SMS", "+15005550006")
        .env("TWILIO_API_BASE", &twilio.base_url)
        .env("NOTIFY_FLOOD_LIMIT", "1000000/1h")
        .env("DATABASE_URL", url)
        .env("DATA_DIR", &data_dir)
        .env("BIND", format!("127.0.0.1:{port}"))
        .env("ROLES", &args.engine_roles)
        .env("AUTH_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = engine.id().ok_or("the engine exited at once")?;
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    wait_ready(&client, &address).await?;
    eprintln!("bench: engine pid {pid} on port {port}");

    let key = TokenKey::new(SecretString::from(SECRET));
    let token = |role, sub: &str| {
        key.mint(&Claims {
            sub: sub.to_owned(),
            role,
            exp: chrono::Utc::now().timestamp() + 3600,
            iat: None,
        })
    };
    let max_clients = levels.iter().copied().max().unwrap_or(1);
    let admin = token(Role::Admin, "bench-admin");
    for c in 0..max_clients {
        let response = client
            .post(format!("{address}/v1/providers"))
            .bearer_auth(&admin)
            .json(
                &json!({"id": format!("bench-prov-{c}"), "name": "Bench Provider",
                "phone": "+14155550100", "email": "bench@example.org", "timezone": "UTC",
                "fee": {"amount_minor": 4500, "currency": "EUR"}}),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("registering a provider failed: {}", response.status()).into());
        }
    }

    if scenarios.commands {
        commands(url, &client, &address, &token, levels, duration).await?;
    }
    if scenarios.freshness {
        let admin = token(Role::Admin, "bench-admin");
        freshness(
            &client,
            &address,
            &token,
            &admin,
            args.freshness_load,
            duration,
        )
        .await?;
    }
    if scenarios.notifications {
        notifications(
            url,
            &client,
            &address,
            &token,
            &twilio,
            args.freshness_load,
            args.dispatch_jobs,
            duration,
        )
        .await?;
    }
    println!();
    println!(
        "engine peak RSS: {:.1} MiB",
        peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0
    );
    engine.start_kill()?;
    let _ = engine.wait().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    if scenarios.rebuild {
        rebuild(url, args.rebuild_events).await?;
    }
    Ok(())
}

/// Command throughput and latency at each client count, beside the INSERT-loop ceilings.
async fn commands(
    url: &str,
    client: &reqwest::Client,
    address: &str,
    token: &impl Fn(Role, &str) -> String,
    levels: &[usize],
    duration: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    // The ceiling named by the targets: one connection inserting one row per statement.
    let single = insert_loop(url, 1, duration).await?;
    println!(
        "bare single-row INSERT loop, 1 connection: {:.0} rows/s",
        single.rate()
    );
    println!();
    println!("| clients | API commands/s | p50 ms | p99 ms | errors | ratio to 1-connection INSERT loop | INSERT loop with as many connections | ratio to it |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut slot_offset = 0i64;
    for &clients in levels {
        let mut sample = drive(client, address, token, clients, duration, slot_offset, None).await;
        slot_offset += 1_000_000;
        let ceiling = insert_loop(url, clients, duration).await?;
        println!(
            "| {clients} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.0} | {:.2} |",
            sample.rate(),
            sample.percentile_ms(50.0),
            sample.percentile_ms(99.0),
            sample.errors,
            sample.rate() / single.rate(),
            ceiling.rate(),
            sample.rate() / ceiling.rate(),
        );
    }
    Ok(())
}

async fn wait_ready(
    client: &reqwest::Client,
    address: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..100 {
        if let Ok(response) = client.get(format!("{address}/readyz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the engine did not become ready within 10 s".into())
}

/// `clients` connections each inserting one row per autocommit statement, for `duration`.
async fn insert_loop(
    url: &str,
    clients: usize,
    duration: Duration,
) -> Result<Sample, Box<dyn std::error::Error>> {
    let mut setup = sqlx::PgConnection::connect(url).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_ceiling (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(&mut setup)
        .await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let url = url.to_owned();
        tasks.spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let t = Instant::now();
                sqlx::query("INSERT INTO bench_ceiling (payload) VALUES ($1)")
                    .bind(json!({"Booked": {"n": 1}}))
                    .execute(&mut conn)
                    .await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, sqlx::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    Ok(Sample {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
        errors: 0,
    })
}

/// `clients` loops of book → accept, each on its own provider and its own time slots.
async fn drive(
    client: &reqwest::Client,
    address: &str,
    token: &impl Fn(Role, &str) -> String,
    clients: usize,
    duration: Duration,
    slot_offset: i64,
    pace: Option<Duration>,
) -> Sample {
    let started = Instant::now();
    let base = chrono::Utc::now() + chrono::Duration::days(2);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let client = client.clone();
        let address = address.to_owned();
        let patient = token(Role::Patient, &format!("bench-pat-{c}"));
        let provider = token(Role::Provider, &format!("bench-prov-{c}"));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut n = slot_offset;
            let mut ticker = pace.map(|p| {
                let mut ticker = tokio::time::interval(p);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            while started.elapsed() < duration {
                n += 1;
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let starts_at = base + chrono::Duration::minutes(30 * n);
                let t = Instant::now();
                let booked = client
                    .post(format!("{address}/v1/consultations"))
                    .bearer_auth(&patient)
                    .json(&json!({"provider_id": format!("bench-prov-{c}"),
                        "starts_at": starts_at.format("%Y-%m-%dT%H:%M:00Z").to_string(),
                        "duration_minutes": 30, "mode": "video", "timezone": "UTC",
                        "contact": {"email": "patient@example.org"}}))
                    .send()
                    .await;
                let id = match booked {
                    Ok(r) if r.status().is_success() => {
                        latencies.push(t.elapsed());
                        r.json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|b| b["id"].as_str().map(str::to_owned))
                    }
                    _ => None,
                };
                let Some(id) = id else {
                    errors += 1;
                    continue;
                };
                let t = Instant::now();
                match client
                    .post(format!("{address}/v1/consultations/{id}/accept"))
                    .bearer_auth(&provider)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => latencies.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(Ok((l, e))) = tasks.join_next().await {
        latencies.extend(l);
        errors += e;
    }
    Sample {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
        errors,
    }
}

/// The high-water mark of a process's resident memory, from `/proc` (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Book → accept pairs over 8 clients paced to `load` commands per second for `duration`, in
/// the background; slots start `slot_offset` half-hours ahead so that scenarios do not collide.
fn background_load(
    client: &reqwest::Client,
    address: &str,
    token: &impl Fn(Role, &str) -> String,
    load: u32,
    duration: Duration,
    slot_offset: i64,
) -> tokio::task::JoinHandle<Sample> {
    const LOADERS: usize = 8;
    // Each loader sends two commands per tick.
    let per_loader = f64::from(load.max(1)) / 2.0 / LOADERS as f64;
    let pace = Duration::from_secs_f64(1.0 / per_loader);
    let client = client.clone();
    let address = address.to_owned();
    let tokens: Vec<(String, String)> = (0..LOADERS)
        .map(|c| {
            (
                token(Role::Patient, &format!("bench-pat-{c}")),
                token(Role::Provider, &format!("bench-prov-{c}")),
            )
        })
        .collect();
    let mint = move |role: Role, sub: &str| -> String {
        let c: usize = sub
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        match role {
            Role::Patient => tokens[c].0.clone(),
            _ => tokens[c].1.clone(),
        }
    };
    tokio::spawn(async move {
        drive(
            &client,
            &address,
            &mint,
            LOADERS,
            duration,
            slot_offset,
            Some(pace),
        )
        .await
    })
}

/// Commit-to-visible latency of the read model under a steady background load: a probe books a
/// consultation, then reads it (without `?after`) every millisecond until the projection shows
/// it. The background is book → accept pairs paced to `load` commands per second.
async fn freshness(
    client: &reqwest::Client,
    address: &str,
    token: &impl Fn(Role, &str) -> String,
    admin: &str,
    load: u32,
    duration: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let background = background_load(client, address, token, load, duration, 50_000_000);
    let probe_patient = token(Role::Patient, "bench-probe");
    let started = Instant::now();
    let base = chrono::Utc::now() + chrono::Duration::days(3000);
    let mut latencies = Vec::new();
    let mut misses = 0;
    let mut n = 0i64;
    while started.elapsed() < duration {
        n += 1;
        let starts_at = base + chrono::Duration::minutes(30 * n);
        let booked = client
            .post(format!("{address}/v1/consultations"))
            .bearer_auth(&probe_patient)
            .json(&json!({"provider_id": "bench-prov-0",
                "starts_at": starts_at.format("%Y-%m-%dT%H:%M:00Z").to_string(),
                "duration_minutes": 30, "mode": "video", "timezone": "UTC",
                "contact": {"email": "patient@example.org"}}))
            .send()
            .await?;
        let committed = Instant::now();
        let body: serde_json::Value = booked.json().await?;
        let Some(id) = body["id"].as_str() else {
            misses += 1;
            continue;
        };
        let visible = loop {
            let read = client
                .get(format!("{address}/v1/consultations/{id}"))
                .bearer_auth(admin)
                .send()
                .await?;
            if read.status().is_success() {
                break Some(committed.elapsed());
            }
            if committed.elapsed() > Duration::from_secs(5) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        match visible {
            Some(latency) => latencies.push(latency),
            None => misses += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_sample = background.await?;
    let mut probe = Sample {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
        errors: misses,
    };
    println!();
    println!(
        "freshness (commit → read model visible) under {:.0} commands/s background ({} errors): \
         p50 {:.2} ms, p99 {:.2} ms over {} probes, {} not visible within 5 s",
        load_sample.rate(),
        load_sample.errors,
        probe.percentile_ms(50.0),
        probe.percentile_ms(99.0),
        probe.ops,
        probe.errors,
    );
    Ok(())
}

/// Commit-to-provider latency of a notification under background load, and the dispatch rate
/// of a burst of queued jobs against a provider that answers at once.
#[allow(clippy::too_many_arguments)]
async fn notifications(
    url: &str,
    client: &reqwest::Client,
    address: &str,
    token: &impl Fn(Role, &str) -> String,
    twilio: &crate::bench_twilio::TwilioStandIn,
    load: u32,
    jobs: u32,
    duration: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let background = background_load(client, address, token, load, duration, 80_000_000);
    // Each probe books with a provider of its own, so the provider's SMS is told apart by its
    // number. Latency is measured from the moment the booking request is sent (before its
    // commit): an upper bound of commit → provider request.
    let admin = token(Role::Admin, "bench-admin");
    let patient = token(Role::Patient, "bench-notify-probe");
    let started = Instant::now();
    let base = chrono::Utc::now() + chrono::Duration::days(4000);
    let mut latencies = Vec::new();
    let mut misses = 0;
    let mut n = 0u32;
    while started.elapsed() < duration {
        n += 1;
        let provider = format!("bench-notify-{n}");
        let phone = format!("+1777{n:07}");
        let registered = client
            .post(format!("{address}/v1/providers"))
            .bearer_auth(&admin)
            .json(
                &json!({"id": provider, "name": "Bench Provider", "phone": phone,
                "email": "bench@example.org", "timezone": "UTC",
                "fee": {"amount_minor": 4500, "currency": "EUR"}}),
            )
            .send()
            .await?;
        if !registered.status().is_success() {
            misses += 1;
            continue;
        }
        let starts_at = base + chrono::Duration::minutes(30 * i64::from(n));
        let sent = Instant::now();
        let booked = client
            .post(format!("{address}/v1/consultations"))
            .bearer_auth(&patient)
            .json(&json!({"provider_id": provider,
                "starts_at": starts_at.format("%Y-%m-%dT%H:%M:00Z").to_string(),
                "duration_minutes": 30, "mode": "video", "timezone": "UTC",
                "contact": {"email": "patient@example.org"}}))
            .send()
            .await?;
        if !booked.status().is_success() {
            misses += 1;
            continue;
        }
        let arrived = loop {
            if let Some(at) = twilio.arrival(&phone) {
                break Some(at.saturating_duration_since(sent));
            }
            if sent.elapsed() > Duration::from_secs(5) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        match arrived {
            Some(latency) => latencies.push(latency),
            None => misses += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_sample = background.await?;
    let mut probe = Sample {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
        errors: misses,
    };
    println!();
    println!(
        "notification latency (booking sent → provider's SMS request at the Twilio stand-in) under \
         {:.0} commands/s background ({} errors): p50 {:.2} ms, p99 {:.2} ms over {} probes, {} missed",
        load_sample.rate(),
        load_sample.errors,
        probe.percentile_ms(50.0),
        probe.percentile_ms(99.0),
        probe.ops,
        probe.errors,
    );

    // Dispatch rate: `jobs` notifications queued at once, each to its own number.
    let template = serde_json::to_string(&consult_reactors::reactor::NotifyPayload {
        recipient: consult_reactors::messages::Recipient::Provider,
        kind: consult_reactors::messages::NotificationKind::NewRequest,
        channel: consult_reactors::channels::ChannelKind::Sms,
        to: "+19990000000".to_owned(),
        timezone: "UTC".to_owned(),
        provider_name: "Bench Provider".to_owned(),
        mode: "video".to_owned(),
        starts_at: base,
        ends_at: base + chrono::Duration::minutes(30),
        previous_starts_at: None,
        amount_minor: None,
        currency: None,
        refund: None,
        cancelled_by: None,
        expiry: None,
        reminder_offset_secs: None,
        reminder_is_final: false,
    })?;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let before = twilio.count();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO jobs (id, key, kind, consultation_id, payload, status, due_at_ms, \
                           max_attempts, created_at_ms, updated_at_ms) \
         SELECT 'bench-job-' || g, 'bench-job-' || g, 'notify', 'bench-c-' || g, \
                replace($1, '+19990000000', '+1888' || lpad(g::text, 7, '0'))::json, \
                'pending', $2, 3, $2, $2 \
           FROM generate_series(1, $3) AS g",
    )
    .bind(&template)
    .bind(now_ms)
    .bind(i64::from(jobs))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO notification_log (id, consultation_id, recipient_role, channel, kind, \
                 recipient_masked, status, attempts, scheduled_for_ms, updated_at_ms, recipient_key) \
         SELECT 'bench-job-' || g, 'bench-c-' || g, 'provider', 'sms', 'new_request', \
                '+1888*****', 'pending', 0, $1, $1, md5('bench' || g) \
           FROM generate_series(1, $2) AS g",
    )
    .bind(now_ms)
    .bind(i64::from(jobs))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let queued = Instant::now();
    let target = before + jobs as usize;
    while twilio.count() < target {
        if queued.elapsed() > Duration::from_secs(300) {
            return Err("the queued jobs were not all dispatched within 5 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first, last) = twilio.span_since(before).ok_or("no dispatch seen")?;
    let span = last
        .saturating_duration_since(first)
        .as_secs_f64()
        .max(1e-9);
    println!(
        "dispatch: {jobs} queued SMS jobs sent in {span:.2} s from the first request to the last: \
         {:.0} jobs/s ({:.2} s after they were queued)",
        f64::from(jobs.saturating_sub(1)) / span,
        queued.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fills the store with `events` consultation events (4 per consultation, written in chunks as
/// separate transactions), measures a bare SELECT scan of them, then rebuilds the consultations
/// projection from position 0 in this process and reports events applied per second.
async fn rebuild(url: &str, events: u64) -> Result<(), Box<dyn std::error::Error>> {
    use consult_store::{Store, StoreOptions};
    let consultations = events.div_ceil(4);
    let store = Store::connect(&StoreOptions::new(url)).await?;
    store.migrate().await?;
    let consult_store::Db::Postgres(pool) = store.db() else {
        return Err("the rebuild scenario runs on PostgreSQL".into());
    };
    let before = store.event_count().await?;
    let seeding = Instant::now();
    eprintln!(
        "bench: writing {} events for the rebuild",
        consultations * 4
    );
    // 2,500 consultations (10,000 events) per round: a consultation's four events lie within
    // 10,000 positions of each other.
    const CHUNK: u64 = 2_500;
    let templates = stream_templates();
    let mut from = 0;
    while from < consultations {
        let to = (from + CHUNK).min(consultations);
        for (sequence, (event_type, payload)) in templates.iter().enumerate() {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload, metadata) \
                 SELECT 'consultation', md5('bench' || g)::uuid::text, $3, $4, '1.0', \
                        replace(replace($5, '00000000-0000-0000-0000-000000000000', \
                                        md5('bench' || g)::uuid::text), \
                                'bench-provider', 'bench-provider-' || g)::jsonb, \
                        '{\"actor_id\": \"bench\", \"actor_role\": \"system\"}' \
                   FROM generate_series($1::bigint, $2::bigint) AS g",
            )
            .bind(i64::try_from(from)?)
            .bind(i64::try_from(to - 1)?)
            .bind(i64::try_from(sequence + 1)?)
            .bind(event_type)
            .bind(payload)
            .execute(pool)
            .await?;
        }
        from = to;
        if from % 100_000 == 0 || from == consultations {
            eprintln!("bench:   {} consultations written", from);
        }
    }
    let total = store.event_count().await?;
    eprintln!(
        "bench: {} events written in {:.1}s ({} were there before)",
        total - before,
        seeding.elapsed().as_secs_f64(),
        before
    );

    // The ceiling: one streaming SELECT of the columns the log reader decodes.
    let scan = Instant::now();
    let mut rows = 0u64;
    {
        use futures_util::StreamExt as _;
        let mut stream =
            sqlx::query_as::<_, (i64, i64, String, String, i64, String, String, String)>(
                "SELECT transaction_id::text::bigint, position, aggregate_type, aggregate_id, \
                    sequence, event_type, payload::text, metadata::text \
               FROM events ORDER BY transaction_id, position",
            )
            .fetch(pool);
        while let Some(row) = stream.next().await {
            row?;
            rows += 1;
        }
    }
    let scan_rate = rows as f64 / scan.elapsed().as_secs_f64();

    eprintln!("bench: rebuilding the consultations projection");
    // Checked every 100 ms so that the end is seen promptly; shown every 2 s.
    let mut shown = Instant::now();
    let done =
        consult::rebuild::rebuild(&store, "consultations", Duration::from_millis(100), |p| {
            if shown.elapsed() >= Duration::from_secs(2) {
                shown = Instant::now();
                eprintln!(
                    "bench:   {}/{} applied, {:.0} events/s",
                    p.applied, p.total, p.rate
                );
            }
        })
        .await?;
    println!();
    println!("| rebuild of `consultations` | events | seconds | events/s |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| bare SELECT scan (ceiling) | {rows} | {:.1} | {scan_rate:.0} |",
        rows as f64 / scan_rate
    );
    println!(
        "| projection rebuild (applied) | {} | {:.1} | {:.0} |",
        done.applied,
        done.elapsed.as_secs_f64(),
        done.rate
    );
    println!("rebuild / scan: {:.2}", done.rate / scan_rate);
    store.close().await;
    Ok(())
}

/// One consultation's stream as (event type, payload JSON) with placeholder ids: booked,
/// accepted, paid, rescheduled.
fn stream_templates() -> Vec<(&'static str, String)> {
    use consult_domain::{
        Booking, ConsultationEvent as E, Contact, DurationMinutes, EmailAddress, Mode, Party,
        PatientId, ProviderId, StartTime, TimeZone,
    };
    let now = chrono::Utc::now();
    let start = now + chrono::Duration::days(30);
    let later = start + chrono::Duration::days(1);
    let parse = |at| StartTime::parse(at, now).ok();
    let (Some(starts_at), Some(moved), Ok(duration)) =
        (parse(start), parse(later), DurationMinutes::parse(30))
    else {
        return Vec::new();
    };
    let (Ok(patient_id), Ok(provider_id), Ok(timezone), Ok(email)) = (
        PatientId::parse("bench-patient"),
        ProviderId::parse("bench-provider"),
        TimeZone::parse("Europe/Paris"),
        EmailAddress::parse("patient@example.org"),
    ) else {
        return Vec::new();
    };
    let Ok(contact) = Contact::new(None, Some(email), false) else {
        return Vec::new();
    };
    let booking = Booking {
        consultation_id: uuid::Uuid::nil(),
        patient_id,
        provider_id: provider_id.clone(),
        starts_at,
        duration,
        mode: Mode::Video,
        timezone,
        contact,
        reason: None,
        price: None,
    };
    let ends = start + chrono::Duration::minutes(30);
    let events = [
        E::Booked { booking, at: now },
        E::Accepted {
            provider_id: provider_id.clone(),
            starts_at: start,
            ends_at: ends,
            at: now,
        },
        E::PaymentConfirmed {
            payment_id: "pi_bench".into(),
            amount_minor: 5000,
            currency: "EUR".into(),
            at: now,
        },
        E::Rescheduled {
            provider_id,
            previous_starts_at: start,
            starts_at: moved,
            ends_at: later + chrono::Duration::minutes(30),
            duration,
            by: Party::Patient,
            at: now,
        },
    ];
    events
        .into_iter()
        .map(|e| (e.name(), serde_json::to_string(&e).unwrap_or_default()))
        .collect()
}
