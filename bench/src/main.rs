//! `consult-bench`: the engine measured through its HTTP API on PostgreSQL, each figure beside
//! the same run's physical ceiling on this machine and database, at one or more store sizes.
//!
//! For each size (`--consultations 10k,1M`) the bench grows a scratch database to that many
//! consultations (four events each, plus their sent notifications and finished timers), rebuilds
//! the `consultations` projection over the whole store (timed against a bare `SELECT` scan),
//! starts the engine as a child process (`consult serve`, the `consult` binary beside this one
//! unless `--engine` or `CONSULT_ENGINE` names another) and runs the scenarios against it:
//!
//! - **commands**: book → accept at each client count, against a bare single-row `INSERT` loop;
//! - **freshness**: commit → read model visible under background load, against one
//!   LISTEN/NOTIFY hop;
//! - **notifications**: booking sent → provider's SMS at a Twilio stand-in, against the same
//!   hop, and the dispatch rate of a burst of queued jobs;
//! - **history**: an auditor's history read of a random consultation, against a bare `SELECT` of
//!   that consultation's events;
//!
//! then the engine's peak resident memory. It prints a table per size and, with several sizes,
//! how each figure changed.
//!
//! With `--engine-roles api` the engine runs no workers: only the API path is measured (commands
//! and history reads); the scenarios that need workers (freshness, notifications) are skipped,
//! and so is the wait for the subscriptions to catch up.
//!
//! Every statement the bench runs on the database directly (seeding, ceilings) lives in
//! `consult_store::bench`.

mod twilio;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use consult_api::{Claims, Role, TokenKey};
use consult_store::bench::{BenchDb, ScratchDatabase};
use secrecy::SecretString;
use serde_json::json;
use tokio::process::{Child, Command};

type BoxError = Box<dyn std::error::Error>;

/// Drive book → accept through the engine's HTTP API and report throughput, latency and memory,
/// each beside the same run's ceiling on this machine and database.
#[derive(Debug, Parser)]
#[command(name = "consult-bench", version)]
pub struct BenchArgs {
    /// The engine binary to measure (run as `<engine> serve`); default: `consult` beside this
    /// executable.
    #[arg(long, env = "CONSULT_ENGINE")]
    engine: Option<PathBuf>,
    /// A PostgreSQL URL whose server may get a scratch database (created and dropped here).
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Store sizes to measure at, in consultations, ascending, comma-separated (`k` and `M`
    /// suffixes allowed), e.g. `10k,1M`. The store grows from one size to the next.
    #[arg(long, default_value = "10k")]
    consultations: String,
    /// Client counts to run, comma-separated.
    #[arg(long, default_value = "1,8,32")]
    clients: String,
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep the scratch database afterwards.
    #[arg(long)]
    keep: bool,
    /// Scenarios to run, comma-separated: commands, freshness, notifications, history, rebuild.
    #[arg(
        long,
        default_value = "commands,freshness,notifications,history,rebuild"
    )]
    scenarios: String,
    /// What the engine process runs while it is measured (ROLES). With `api` alone only the API
    /// path is measured: the scenarios that need workers (freshness, notifications) are skipped.
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
    /// Whether the engine runs workers (so its subscriptions catch up).
    workers: bool,
    commands: bool,
    freshness: bool,
    notifications: bool,
    history: bool,
    rebuild: bool,
}

impl Scenarios {
    fn parse(text: &str) -> Result<Self, String> {
        let mut scenarios = Self {
            workers: true,
            commands: false,
            freshness: false,
            notifications: false,
            history: false,
            rebuild: false,
        };
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "commands" => scenarios.commands = true,
                "freshness" => scenarios.freshness = true,
                "notifications" => scenarios.notifications = true,
                "history" => scenarios.history = true,
                "rebuild" => scenarios.rebuild = true,
                other => {
                    return Err(format!(
                        "unknown scenario {other}: commands, freshness, notifications, history, \
                         rebuild"
                    ))
                }
            }
        }
        Ok(scenarios)
    }

    /// Without workers only the API path is measured: nothing would refresh the read model or
    /// send notifications.
    fn api_only(&mut self) {
        let skipped: Vec<&str> = [
            ("freshness", self.freshness),
            ("notifications", self.notifications),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        println!(
            "engine roles without workers: measuring the API path alone (no wait for the \
             subscriptions){}",
            if skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped, as they need workers: {}", skipped.join(", "))
            }
        );
        self.freshness = false;
        self.notifications = false;
        self.workers = false;
    }
}

/// `10000`, `10k`, `1M` → a count.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, factor) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 1_000),
        Some('m' | 'M') => (&text[..text.len() - 1], 1_000_000),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("--consultations: {text:?} is not a positive count like 10k or 1M"))
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

/// One measured figure, with the ceiling measured beside it in the same run.
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    /// What bounds the figure on this machine, and its value in the same unit.
    ceiling: Option<(&'static str, f64)>,
    target: &'static str,
}

impl Figure {
    fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            ceiling: None,
            target: "",
        }
    }

    fn beside(mut self, what: &'static str, value: f64) -> Self {
        self.ceiling = Some((what, value));
        self
    }

    fn target(mut self, target: &'static str) -> Self {
        self.target = target;
        self
    }
}

fn show(value: f64, unit: &str) -> String {
    if value.is_nan() {
        return "—".to_owned();
    }
    match unit {
        "ms" => format!("{value:.2} ms"),
        "MiB" => format!("{value:.1} MiB"),
        _ => format!("{value:.0} {unit}"),
    }
}

fn print_figures(size: u64, events: i64, figures: &[Figure]) {
    println!();
    println!("### {size} consultations ({events} events in the store)");
    println!();
    println!("| figure | engine | ceiling in the same run | engine ÷ ceiling | target |");
    println!("| --- | ---: | --- | ---: | --- |");
    for f in figures {
        let (ceiling, ratio) = match f.ceiling {
            Some((what, c)) => (
                format!("{what}: {}", show(c, f.unit)),
                format!("{:.2}", f.value / c),
            ),
            None => ("—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {} | {} | {ceiling} | {ratio} | {} |",
            f.name,
            show(f.value, f.unit),
            f.target
        );
    }
}

fn print_comparison(runs: &[(u64, Vec<Figure>)]) {
    let Some(((first_size, first), rest)) = runs.split_first() else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    println!();
    println!("### How the figures change with the store's size");
    println!();
    let mut header = format!("| figure | {first_size} consultations |");
    let mut rule = "| --- | ---: |".to_owned();
    for (size, _) in rest {
        header.push_str(&format!(" {size} consultations | change |"));
        rule.push_str(" ---: | ---: |");
    }
    println!("{header}");
    println!("{rule}");
    for f in first {
        let mut line = format!("| {} | {} |", f.name, show(f.value, f.unit));
        for (_, figures) in rest {
            match figures.iter().find(|g| g.name == f.name) {
                Some(g) => line.push_str(&format!(
                    " {} | {:+.0}% |",
                    show(g.value, g.unit),
                    (g.value / f.value - 1.0) * 100.0
                )),
                None => line.push_str(" — | — |"),
            }
        }
        println!("{line}");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", consult_store::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The engine binary: `--engine` (a path, or a bare name looked up in `PATH`), else `consult`
/// beside this executable. Checked before the scratch database is made.
fn engine_binary(configured: Option<PathBuf>) -> Result<PathBuf, BoxError> {
    if let Some(path) = configured {
        if path.components().count() > 1 && !path.is_file() {
            return Err(format!("--engine: no engine binary at {}", path.display()).into());
        }
        return Ok(path);
    }
    let me = std::env::current_exe()?;
    let beside = me
        .with_file_name("consult")
        .with_extension(std::env::consts::EXE_EXTENSION);
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(format!(
            "no engine binary at {}: build it (cargo build --release -p consult) or name it with \
             --engine or CONSULT_ENGINE",
            beside.display()
        )
        .into())
    }
}

async fn run(args: BenchArgs) -> Result<(), BoxError> {
    let levels: Vec<usize> = args
        .clients
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| "--clients must be numbers separated by commas")?;
    let sizes: Vec<u64> = args
        .consultations
        .split(',')
        .map(parse_size)
        .collect::<Result<_, _>>()?;
    if sizes.windows(2).any(|w| w[0] >= w[1]) {
        return Err(
            "--consultations must be ascending: the store grows from one to the next".into(),
        );
    }
    let duration = Duration::from_secs(args.seconds.max(1));
    let mut scenarios = Scenarios::parse(&args.scenarios)?;
    let roles = consult::Roles::parse(&args.engine_roles)?;
    if !roles.workers {
        scenarios.api_only();
    }
    let engine = engine_binary(args.engine.clone())?;

    let name = format!("consult_bench_{}", std::process::id());
    let scratch = ScratchDatabase::create(&args.postgres_url, &name).await?;
    eprintln!("bench: scratch database {name}");

    let result = run_sizes(
        scratch.url(),
        &engine,
        &sizes,
        &levels,
        duration,
        scenarios,
        &args,
    )
    .await;

    if !args.keep {
        scratch.drop_database().await?;
    }
    result
}

async fn run_sizes(
    url: &str,
    engine_binary: &std::path::Path,
    sizes: &[u64],
    levels: &[usize],
    duration: Duration,
    scenarios: Scenarios,
    args: &BenchArgs,
) -> Result<(), BoxError> {
    use consult_store::{Store, StoreOptions};
    let store = Store::connect(&StoreOptions::new(url)).await?;
    store.migrate().await?;
    let db = BenchDb::new(&store, url)?;
    // Text messages go to a Twilio stand-in in this process that answers at once and notes when
    // each request arrived.
    let twilio = twilio::TwilioStandIn::start().await?;
    let mut runs = Vec::new();
    let mut seeded = 0u64;
    for (run, &size) in sizes.iter().enumerate() {
        let mut figures = Vec::new();
        seed(&db, seeded, size).await?;
        seeded = size;
        skip_reactors_to_head(&store, &db).await?;
        // The projection is rebuilt over the whole store at every size: the engine then starts
        // with a read model of `size` consultations, and the rebuild is one of the figures.
        rebuild(&store, &db, scenarios.rebuild, &mut figures).await?;
        let engine = Engine::start(engine_binary, url, &twilio, &args.engine_roles, run).await?;
        let outcome = measure(
            &engine, &db, &twilio, levels, duration, scenarios, args, run, seeded,
        )
        .await;
        let rss = engine.stop().await;
        figures.extend(outcome?);
        if let Some(kib) = rss {
            figures.push(
                Figure::new("engine peak RSS", kib as f64 / 1024.0, "MiB").target("≤ 100 MB"),
            );
        }
        let events = store.event_count().await?;
        print_figures(size, events, &figures);
        runs.push((size, figures));
    }
    print_comparison(&runs);
    store.close().await;
    Ok(())
}

/// The engine as a child process on a free loopback port.
struct Engine {
    child: Child,
    pid: u32,
    address: String,
    client: reqwest::Client,
    data_dir: std::path::PathBuf,
}

impl Engine {
    async fn start(
        binary: &std::path::Path,
        url: &str,
        twilio: &twilio::TwilioStandIn,
        roles: &str,
        run: usize,
    ) -> Result<Self, BoxError> {
        let data_dir =
            std::env::temp_dir().join(format!("consult-bench-{}-{run}", std::process::id()));
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let child = Command::new(binary)
            .arg("serve")
            .env("TWILIO_ACCOUNT_SID", twilio::ACCOUNT_SID)
            .env("TWILIO_AUTH_TOKEN", twilio::AUTH_TOKEN)
            .env("TWILIO_FROM_SMS", "+15005550006")
            .env("TWILIO_API_BASE", &twilio.base_url)
            .env("NOTIFY_FLOOD_LIMIT", "1000000/1h")
            .env("BOOKING_LIMIT", "1000000/1h")
            .env("DATABASE_URL", url)
            .env("DATA_DIR", &data_dir)
            .env("BIND", format!("127.0.0.1:{port}"))
            .env("ROLES", roles)
            .env("AUTH_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("the engine exited at once")?;
        let engine = Self {
            child,
            pid,
            address: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            data_dir,
        };
        wait_ready(&engine.client, &engine.address).await?;
        eprintln!("bench: engine pid {pid} on port {port}");
        Ok(engine)
    }

    /// Stops the engine the way an operator would (SIGTERM, so it hands its leases back) and
    /// returns its peak resident memory.
    async fn stop(mut self) -> Option<u64> {
        let rss = peak_rss_kib(self.pid);
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("bench: the engine did not stop within 20 s of SIGTERM; killing it");
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        rss
    }
}

/// Everything measured against a running engine.
#[allow(clippy::too_many_arguments)]
async fn measure(
    engine: &Engine,
    db: &BenchDb,
    twilio: &twilio::TwilioStandIn,
    levels: &[usize],
    duration: Duration,
    scenarios: Scenarios,
    args: &BenchArgs,
    run: usize,
    seeded: u64,
) -> Result<Vec<Figure>, BoxError> {
    let key = TokenKey::new(SecretString::from(SECRET));
    let token = |role, sub: &str| {
        key.mint(&Claims {
            sub: sub.to_owned(),
            role,
            exp: chrono::Utc::now().timestamp() + 3600,
            iat: None,
        })
    };
    let admin = token(Role::Admin, "bench-admin");
    let clients = levels.iter().copied().max().unwrap_or(1).max(8);
    let mut parties = Vec::with_capacity(clients);
    for c in 0..clients {
        let provider = format!("bench-{run}-prov-{c}");
        let response = engine
            .client
            .post(format!("{}/v1/providers", engine.address))
            .bearer_auth(&admin)
            .json(&json!({"id": provider, "name": "Bench Provider",
                "phone": format!("+1415{run:02}{c:05}"),
                "email": format!("{provider}@example.org"), "timezone": "UTC",
                "fee": {"amount_minor": 4500, "currency": "EUR"}}))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("registering a provider failed: {}", response.status()).into());
        }
        parties.push(Party {
            patient: token(Role::Patient, &format!("bench-pat-{c}")),
            provider_token: token(Role::Provider, &provider),
            provider,
        });
    }
    // Each run books its own stretch of the calendar.
    // (20,000,000 half-hours are 1,141 years: three sizes stay within the year 9999 that start
    // times are checked against.)
    let offset = i64::try_from(run)? * 20_000_000;
    let mut figures = Vec::new();
    if scenarios.commands {
        commands(db, engine, &parties, levels, duration, offset, &mut figures).await?;
    }
    // Each latency scenario starts from an engine that has caught up with what the command
    // runs wrote (each run's INSERT-loop ceiling usually leaves it the time).
    if scenarios.commands && scenarios.workers {
        let waited = caught_up(db).await?;
        println!(
            "subscriptions at the head of the log {:.1} s after the command runs",
            waited.as_secs_f64()
        );
    }
    let hop = if scenarios.freshness || scenarios.notifications {
        let mut hop = notify_hop(db, Duration::from_secs(3)).await?;
        let hop = (hop.percentile_ms(50.0), hop.percentile_ms(99.0));
        println!(
            "one LISTEN/NOTIFY hop between two connections (ceiling of every wake-up): p50 {:.2} ms, \
             p99 {:.2} ms",
            hop.0, hop.1
        );
        hop
    } else {
        (f64::NAN, f64::NAN)
    };
    if scenarios.freshness {
        let mut probe = freshness(
            engine,
            &parties,
            &admin,
            &token(Role::Patient, "bench-probe"),
            args.freshness_load,
            duration,
            offset + 5_000_000,
        )
        .await?;
        figures.push(
            Figure::new(
                "freshness p99 (commit → read model)",
                probe.percentile_ms(99.0),
                "ms",
            )
            .beside("one NOTIFY hop p99", hop.1)
            .target("p99 ≤ 50 ms"),
        );
    }
    if scenarios.notifications {
        let (mut probe, rate) = notifications(
            db,
            engine,
            &parties,
            &admin,
            &token(Role::Patient, "bench-notify-probe"),
            twilio,
            args,
            duration,
            run,
            offset + 8_000_000,
        )
        .await?;
        figures.push(
            Figure::new(
                "notification p50 (booking → SMS request)",
                probe.percentile_ms(50.0),
                "ms",
            )
            .beside("one NOTIFY hop p50", hop.0),
        );
        figures.push(
            Figure::new(
                "notification p99 (booking → SMS request)",
                probe.percentile_ms(99.0),
                "ms",
            )
            .beside("one NOTIFY hop p99", hop.1)
            .target("p99 ≤ 100 ms"),
        );
        figures.push(Figure::new("dispatch of queued jobs", rate, "jobs/s").target("≥ 2,000/s"));
    }
    if scenarios.history {
        history(
            db,
            engine,
            &token(Role::Auditor, "bench-auditor"),
            seeded,
            duration,
            &mut figures,
        )
        .await?;
    }
    Ok(figures)
}

/// Waits (up to 5 minutes) until every subscription has reached the head of the log.
async fn caught_up(db: &BenchDb) -> Result<Duration, BoxError> {
    let started = Instant::now();
    loop {
        let behind = db.subscriptions_behind().await?;
        if behind == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the subscriptions did not catch up within 5 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One booking client: its patient token and the provider it books with.
#[derive(Clone)]
struct Party {
    patient: String,
    provider: String,
    provider_token: String,
}

/// Command throughput and latency at each client count, beside the INSERT-loop ceilings.
async fn commands(
    db: &BenchDb,
    engine: &Engine,
    parties: &[Party],
    levels: &[usize],
    duration: Duration,
    offset: i64,
    figures: &mut Vec<Figure>,
) -> Result<(), BoxError> {
    // The ceiling named by the targets: one connection inserting one row per statement.
    let single = insert_loop(db, 1, duration).await?;
    println!();
    println!(
        "bare single-row INSERT loop, 1 connection: {:.0} rows/s",
        single.rate()
    );
    println!();
    println!("| clients | API commands/s | p50 ms | p99 ms | errors | ratio to 1-connection INSERT loop | INSERT loop with as many connections | ratio to it | its p50 / p99 ms |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, &clients) in levels.iter().enumerate() {
        let slots = offset + i64::try_from(n)? * 1_000_000;
        let mut sample = drive(
            &engine.client,
            &engine.address,
            &parties[..clients],
            duration,
            slots,
            None,
        )
        .await;
        let mut ceiling = insert_loop(db, clients, duration).await?;
        let (p50, p99) = (sample.percentile_ms(50.0), sample.percentile_ms(99.0));
        let (c50, c99) = (ceiling.percentile_ms(50.0), ceiling.percentile_ms(99.0));
        println!(
            "| {clients} | {:.0} | {p50:.2} | {p99:.2} | {} | {:.2} | {:.0} | {:.2} | {c50:.2} / {c99:.2} |",
            sample.rate(),
            sample.errors,
            sample.rate() / single.rate(),
            ceiling.rate(),
            sample.rate() / ceiling.rate(),
        );
        let at_most = clients == levels.iter().copied().max().unwrap_or(clients);
        figures.push(
            Figure::new(
                format!("commands/s, {clients} clients"),
                sample.rate(),
                "/s",
            )
            .beside("INSERT loop, 1 connection", single.rate())
            .target(if at_most {
                "≥ 0.5× the INSERT loop"
            } else {
                ""
            }),
        );
        figures.push(
            Figure::new(format!("command p50, {clients} clients"), p50, "ms")
                .beside("INSERT p50, as many connections", c50),
        );
        figures.push(
            Figure::new(format!("command p99, {clients} clients"), p99, "ms")
                .beside("INSERT p99, as many connections", c99)
                .target(if at_most { "≤ 20 ms" } else { "" }),
        );
        if sample.errors > 0 {
            figures.push(Figure::new(
                format!("command errors, {clients} clients"),
                sample.errors as f64,
                "",
            ));
        }
    }
    Ok(())
}

async fn wait_ready(client: &reqwest::Client, address: &str) -> Result<(), BoxError> {
    for _ in 0..300 {
        if let Ok(response) = client.get(format!("{address}/readyz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the engine did not become ready within 30 s".into())
}

/// `clients` connections each inserting one row per autocommit statement, for `duration`.
async fn insert_loop(db: &BenchDb, clients: usize, duration: Duration) -> Result<Sample, BoxError> {
    let started = Instant::now();
    let latencies = db.bare_insert_loop(clients, duration).await?;
    Ok(Sample {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
        errors: 0,
    })
}

/// Round trips of one NOTIFY from one connection to a LISTEN on another: the least any wake-up
/// from a commit to another process can take here.
async fn notify_hop(db: &BenchDb, duration: Duration) -> Result<Sample, BoxError> {
    let started = Instant::now();
    let latencies = db.notify_hop(duration).await?;
    Ok(Sample {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
        errors: 0,
    })
}

/// Each party loops book → accept on its own provider and its own time slots.
async fn drive(
    client: &reqwest::Client,
    address: &str,
    parties: &[Party],
    duration: Duration,
    slot_offset: i64,
    pace: Option<Duration>,
) -> Sample {
    let started = Instant::now();
    let base = chrono::Utc::now() + chrono::Duration::days(2);
    let mut tasks = tokio::task::JoinSet::new();
    for party in parties.iter().cloned() {
        let client = client.clone();
        let address = address.to_owned();
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
                    .bearer_auth(&party.patient)
                    .json(&booking_body(&party.provider, starts_at))
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
                    .bearer_auth(&party.provider_token)
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

/// Book → accept pairs over 8 parties paced to `load` commands per second for `duration`, in
/// the background; slots start `slot_offset` half-hours ahead so that scenarios do not collide.
fn background_load(
    engine: &Engine,
    parties: &[Party],
    load: u32,
    duration: Duration,
    slot_offset: i64,
) -> tokio::task::JoinHandle<Sample> {
    const LOADERS: usize = 8;
    // Each loader sends two commands per tick.
    let per_loader = f64::from(load.max(1)) / 2.0 / LOADERS as f64;
    let pace = Duration::from_secs_f64(1.0 / per_loader);
    let loaders: Vec<Party> = parties.iter().take(LOADERS).cloned().collect();
    let (client, address) = (engine.client.clone(), engine.address.clone());
    tokio::spawn(async move {
        drive(
            &client,
            &address,
            &loaders,
            duration,
            slot_offset,
            Some(pace),
        )
        .await
    })
}

/// A booking with a contact address of its own: a clinic's patients each have theirs, and the
/// flood guard counts messages per recipient.
fn booking_body(provider: &str, starts_at: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    json!({"provider_id": provider,
        "starts_at": starts_at.format("%Y-%m-%dT%H:%M:00Z").to_string(),
        "duration_minutes": 30, "mode": "video", "timezone": "UTC",
        "contact": {"email": format!("p-{}@example.org", uuid::Uuid::new_v4().simple())}})
}

/// Commit-to-visible latency of the read model under a steady background load: a probe books a
/// consultation, then reads it (without `?after`) every millisecond until the projection shows
/// it. The background is book → accept pairs paced to `load` commands per second.
async fn freshness(
    engine: &Engine,
    parties: &[Party],
    admin: &str,
    probe_patient: &str,
    load: u32,
    duration: Duration,
    slot_offset: i64,
) -> Result<Sample, BoxError> {
    let background = background_load(engine, parties, load, duration, slot_offset);
    let (client, address) = (&engine.client, &engine.address);
    let started = Instant::now();
    let base = chrono::Utc::now() + chrono::Duration::days(3000);
    let mut latencies = Vec::new();
    let mut misses = 0;
    let mut n = 0i64;
    while started.elapsed() < duration {
        n += 1;
        let starts_at = base + chrono::Duration::minutes(30 * (slot_offset + n));
        let booked = client
            .post(format!("{address}/v1/consultations"))
            .bearer_auth(probe_patient)
            .json(&booking_body(&parties[0].provider, starts_at))
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
    Ok(probe)
}

/// Commit-to-provider latency of a notification under background load, and the dispatch rate
/// of a burst of queued jobs against a provider that answers at once.
#[allow(clippy::too_many_arguments)]
async fn notifications(
    db: &BenchDb,
    engine: &Engine,
    parties: &[Party],
    admin: &str,
    patient: &str,
    twilio: &twilio::TwilioStandIn,
    args: &BenchArgs,
    duration: Duration,
    run: usize,
    slot_offset: i64,
) -> Result<(Sample, f64), BoxError> {
    let background = background_load(engine, parties, args.freshness_load, duration, slot_offset);
    let (client, address) = (&engine.client, &engine.address);
    // Each probe books with a provider of its own, so the provider's SMS is told apart by its
    // number. Latency is measured from the moment the booking request is sent (before its
    // commit): an upper bound of commit → provider request.
    let started = Instant::now();
    let base = chrono::Utc::now() + chrono::Duration::days(4000);
    let mut latencies = Vec::new();
    let mut misses = 0;
    let mut n = 0u32;
    while started.elapsed() < duration {
        n += 1;
        let provider = format!("bench-{run}-notify-{n}");
        let phone = format!("+1777{run:02}{n:05}");
        let registered = client
            .post(format!("{address}/v1/providers"))
            .bearer_auth(admin)
            .json(
                &json!({"id": provider, "name": "Bench Provider", "phone": phone,
                "email": format!("{provider}@example.org"), "timezone": "UTC",
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
            .bearer_auth(patient)
            .json(&booking_body(&provider, starts_at))
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
    let jobs = args.dispatch_jobs;
    let template = serde_json::to_string(&consult_reactors::notifications::NotifyPayload {
        recipient: consult_reactors::messages::Recipient::Provider,
        kind: consult_reactors::messages::NotificationKind::NewRequest,
        channel: consult_reactors::channels::ChannelKind::Sms,
        to: "+19990000000".to_owned(),
        timezone: consult_domain::TimeZone::parse("UTC").expect("UTC is a time zone"),
        provider_name: "Bench Provider".to_owned(),
        mode: consult_domain::Mode::Video,
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
        sender: "bench-patient".to_owned(),
    })?;
    let before = twilio.count();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let prefix = format!("bench-job-{run}-");
    db.insert_notification_jobs(&template, jobs, &prefix, run, now_ms)
        .await?;
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
    let rate = f64::from(jobs.saturating_sub(1)) / span;
    println!(
        "dispatch: {jobs} queued SMS jobs sent in {span:.2} s from the first request to the last: \
         {rate:.0} jobs/s ({:.2} s after they were queued)",
        queued.elapsed().as_secs_f64()
    );
    Ok((probe, rate))
}

/// An auditor's history read (`GET /v1/consultations/{id}/history`) of random seeded
/// consultations from one client, beside a bare `SELECT` of each one's events.
async fn history(
    db: &BenchDb,
    engine: &Engine,
    auditor: &str,
    seeded: u64,
    duration: Duration,
    figures: &mut Vec<Figure>,
) -> Result<(), BoxError> {
    let ids = db.random_seeded_ids(5000, seeded).await?;
    let started = Instant::now();
    let mut engine_latencies = Vec::new();
    let mut errors = 0;
    for id in ids.iter().cycle() {
        if started.elapsed() >= duration {
            break;
        }
        let t = Instant::now();
        let response = engine
            .client
            .get(format!("{}/v1/consultations/{id}/history", engine.address))
            .bearer_auth(auditor)
            .send()
            .await?;
        let ok = response.status().is_success();
        let body = response.bytes().await?;
        if ok && !body.is_empty() {
            engine_latencies.push(t.elapsed());
        } else {
            errors += 1;
        }
    }
    let mut engine_sample = Sample {
        ops: engine_latencies.len(),
        elapsed: started.elapsed(),
        latencies: engine_latencies,
        errors,
    };
    let started = Instant::now();
    let bare = db.stream_select_loop(&ids, duration).await?;
    let mut bare = Sample {
        ops: bare.len(),
        elapsed: started.elapsed(),
        latencies: bare,
        errors: 0,
    };
    println!();
    println!(
        "history reads of random consultations, 1 client: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, \
         {} errors; bare SELECT of the same streams: p50 {:.2} ms, p99 {:.2} ms",
        engine_sample.rate(),
        engine_sample.percentile_ms(50.0),
        engine_sample.percentile_ms(99.0),
        engine_sample.errors,
        bare.percentile_ms(50.0),
        bare.percentile_ms(99.0),
    );
    figures.push(
        Figure::new("history read p50", engine_sample.percentile_ms(50.0), "ms")
            .beside("SELECT of the stream p50", bare.percentile_ms(50.0)),
    );
    figures.push(
        Figure::new("history read p99", engine_sample.percentile_ms(99.0), "ms")
            .beside("SELECT of the stream p99", bare.percentile_ms(99.0)),
    );
    if engine_sample.errors > 0 {
        figures.push(Figure::new(
            "history read errors",
            engine_sample.errors as f64,
            "",
        ));
    }
    Ok(())
}

/// Grows the store from `from` to `to` seeded consultations: each has four events (booked,
/// accepted, paid, rescheduled), two sent notifications and three reminder timers, finished as
/// a consultation that has run its course leaves them, except for one consultation in a hundred
/// that is still ahead and whose timers are pending.
async fn seed(db: &BenchDb, from: u64, to: u64) -> Result<(), BoxError> {
    if to <= from {
        return Ok(());
    }
    let seeding = Instant::now();
    eprintln!("bench: seeding consultations {from}..{to}");
    // 2,500 consultations (10,000 events) per round: a consultation's four events lie within
    // 10,000 positions of each other.
    const CHUNK: u64 = 2_500;
    let templates = stream_templates();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut at = from;
    while at < to {
        let end = (at + CHUNK).min(to);
        let (first, last) = (i64::try_from(at)?, i64::try_from(end - 1)?);
        db.insert_seeded_consultations(first, last, &templates, now_ms)
            .await?;
        at = end;
        if at.is_multiple_of(100_000) || at == to {
            eprintln!(
                "bench:   {at} consultations seeded ({:.0} s)",
                seeding.elapsed().as_secs_f64()
            );
        }
    }
    db.analyze().await?;
    Ok(())
}

/// The seeded consultations are history the reactors would long have handled: their
/// checkpoints move to the head of the log, so the engine starts caught up, as it would on a
/// store of that size. (The `consultations` projection is rebuilt instead, so that its table
/// holds every seeded consultation.)
async fn skip_reactors_to_head(store: &consult_store::Store, db: &BenchDb) -> Result<(), BoxError> {
    const REACTORS: [&str; 4] = ["notifications", "rooms", "refunds", "chain"];
    for name in REACTORS {
        store.register_subscription(name).await?;
    }
    db.move_subscriptions_to_head(&REACTORS).await?;
    Ok(())
}

/// Measures a bare SELECT scan of every event (the ceiling), then rebuilds the consultations
/// projection from position 0 in this process; with `report`, both are figures.
async fn rebuild(
    store: &consult_store::Store,
    db: &BenchDb,
    report: bool,
    figures: &mut Vec<Figure>,
) -> Result<(), BoxError> {
    // The ceiling: one streaming SELECT of the columns the log reader decodes.
    let scan = Instant::now();
    let rows = db.scan_events().await?;
    let scan_rate = rows as f64 / scan.elapsed().as_secs_f64();

    eprintln!("bench: rebuilding the consultations projection over {rows} events");
    // Checked every 100 ms so that the end is seen promptly; shown every 2 s.
    let mut shown = Instant::now();
    let done = consult::rebuild::rebuild(store, "consultations", Duration::from_millis(100), |p| {
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = Instant::now();
            eprintln!(
                "bench:   {}/{} applied, {:.0} events/s",
                p.applied, p.total, p.rate
            );
        }
    })
    .await?;
    if report {
        println!();
        println!(
            "rebuild of `consultations`: {} events applied in {:.1} s, {:.0} events/s; bare SELECT \
             scan of {rows} events: {scan_rate:.0} rows/s",
            done.applied,
            done.elapsed.as_secs_f64(),
            done.rate
        );
        figures.push(
            Figure::new("projection rebuild", done.rate, "events/s")
                .beside("bare SELECT scan", scan_rate)
                .target("≥ 100,000 events/s"),
        );
    }
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_k_and_m_suffixes() {
        assert_eq!(parse_size("10k"), Ok(10_000));
        assert_eq!(parse_size("1M"), Ok(1_000_000));
        assert_eq!(parse_size(" 2500 "), Ok(2_500));
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("k").is_err());
    }
}
