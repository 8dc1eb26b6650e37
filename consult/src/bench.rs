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

    let result = run_on(&url, &levels, duration).await;

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
) -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::temp_dir().join(format!("consult-bench-{}", std::process::id()));
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let mut engine = Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("DATABASE_URL", url)
        .env("DATA_DIR", &data_dir)
        .env("BIND", format!("127.0.0.1:{port}"))
        .env("ROLES", "api")
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
                "phone": "+14155550100", "email": "bench@example.org", "timezone": "UTC"}),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("registering a provider failed: {}", response.status()).into());
        }
    }

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
        let mut sample = drive(&client, &address, &token, clients, duration, slot_offset).await;
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
    println!();
    println!(
        "engine peak RSS: {:.1} MiB",
        peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0
    );
    engine.start_kill()?;
    let _ = engine.wait().await;
    let _ = std::fs::remove_dir_all(&data_dir);
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
            while started.elapsed() < duration {
                n += 1;
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
