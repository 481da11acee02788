//! Proxy overhead: the latency airbag adds on top of calling the provider directly, and the
//! throughput it keeps, measured against `airbag mock-provider`.
//!
//! Run with `cargo bench --bench overhead` (or `make bench`); `bench/README.md` explains
//! the method. In short: the mock provider and the gateway run as separate processes from
//! the release `airbag` binary, each on a loopback port it picks and announces. An open-loop load generator sends
//! small non-streaming chat requests at a fixed rate, first straight to the mock, then
//! through the gateway, and measures each request's latency from the moment it was
//! *scheduled* to be sent, so a stalled server cannot hide its stall by slowing the load
//! down (coordinated omission). A closed-loop run with many connections then finds the
//! maximum throughput of both. The numbers are printed as a table and written as JSON to
//! `bench/results/overhead.json`.
//!
//! Every loop is bounded in count and time, every address is 127.0.0.1, and the child
//! processes are killed when the run ends, fails, panics or is interrupted.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The latency budget the gateway is held to: p99 overhead under 1 ms at the target rate.
const TARGET_P99_OVERHEAD_US: f64 = 1000.0;

/// Above this share of one core used by other processes during a measured run, the run
/// is reported as disturbed: on two cores that much foreign work shows up in the tail.
const DISTURBED_PERCENT_OF_A_CORE: f64 = 10.0;

/// Any one request that takes longer than this counts as an error (`timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The prompt every request sends; the mock echoes it, which is how answers are checked.
const PROMPT: &str = "Say hello to the benchmark in one short sentence.";

/// A closed-loop worker stops after this many requests even if time is left, so a broken
/// server that answers instantly with errors cannot spin a worker without bound.
const MAX_REQUESTS_PER_WORKER: u64 = 2_000_000;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`. Without it the bench was started by
    // `cargo test --all-targets` (in a debug build): a short smoke run then checks that
    // the bench still works, and writes no results, which would be debug-build numbers.
    let smoke = !std::env::args().any(|arg| arg == "--bench");
    let settings = match Settings::from_env(smoke) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("overhead bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.client_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("overhead bench: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the benchmark future, which drops the process guards, which kill the
    // mock and the gateway: no orphans left listening.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(settings) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    // After an interruption the request scheduler may still be sleeping on its blocking
    // thread; it sends nothing more once the runtime is gone, so do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("overhead bench failed: {error}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Settings.

/// What a run does; each field can be overridden by the environment variable named.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    /// Set when started without `--bench` (by `cargo test --all-targets`): a few hundred
    /// requests to check that the bench works, and no results written.
    smoke: bool,
    /// BENCH_RATE: requests per second of the open-loop runs.
    rate: u32,
    /// BENCH_SECONDS: length of each measured open-loop run.
    seconds: f64,
    /// BENCH_WARMUP_SECONDS: unmeasured open-loop traffic before each measured run.
    warmup_seconds: f64,
    /// BENCH_CONNECTIONS: concurrent connections of the closed-loop throughput runs.
    connections: usize,
    /// BENCH_THROUGHPUT_SECONDS: length of each closed-loop run (default BENCH_SECONDS).
    throughput_seconds: f64,
    /// BENCH_CLIENT_THREADS: tokio worker threads of the load generator.
    client_threads: usize,
    /// BENCH_STREAM_UPSTREAM: the provider's `stream_upstream` (default true, as shipped:
    /// the gateway streams from the mock and assembles the answer; false measures the
    /// plain non-streaming path).
    stream_upstream: bool,
    /// BENCH_CLIENT: the protocol the load generator speaks to the gateway: `openai`
    /// (default: the same protocol as the mock, nothing to translate) or `anthropic`
    /// (Messages API in, OpenAI out: every request and answer translated). The direct
    /// run always speaks OpenAI to the mock, as the gateway does.
    client: String,
    /// BENCH_STREAM: clients ask for a stream (direct and through the gateway).
    stream: bool,
    /// BENCH_CACHE: rung 1 in the gateway. `off` (default: the path through the
    /// providers alone); `hits` (the cache on, every request the same prompt: all but the
    /// first are exact hits); `misses` (the cache on, every request a prompt of its own
    /// in one context: each is a semantic-eligible miss that is looked up, embedded and
    /// stored). The direct run sends the same prompts to the mock.
    cache: CacheMode,
    /// AIRBAG_BIN: the airbag binary; by default the release build next to this bench.
    #[serde(skip)]
    binary: Option<PathBuf>,
    /// BENCH_OUTPUT: where the JSON goes.
    output: PathBuf,
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a valid number")),
        _ => Ok(default),
    }
}

impl Settings {
    fn from_env(smoke: bool) -> Result<Settings, String> {
        if smoke {
            return Ok(Settings {
                smoke,
                rate: 1000,
                seconds: 0.3,
                warmup_seconds: 0.1,
                connections: 8,
                throughput_seconds: 0.3,
                client_threads: 2,
                stream_upstream: true,
                client: "openai".to_string(),
                stream: false,
                cache: CacheMode::Off,
                binary: std::env::var_os("AIRBAG_BIN").map(PathBuf::from),
                output: PathBuf::new(),
            });
        }
        let seconds: f64 = env_number("BENCH_SECONDS", 10.0)?;
        let settings = Settings {
            smoke,
            rate: env_number("BENCH_RATE", 1000)?,
            seconds,
            warmup_seconds: env_number("BENCH_WARMUP_SECONDS", 2.0)?,
            connections: env_number("BENCH_CONNECTIONS", 64)?,
            throughput_seconds: env_number("BENCH_THROUGHPUT_SECONDS", seconds)?,
            client_threads: env_number("BENCH_CLIENT_THREADS", 2)?,
            stream_upstream: env_number("BENCH_STREAM_UPSTREAM", true)?,
            client: std::env::var("BENCH_CLIENT").unwrap_or_else(|_| "openai".to_string()),
            stream: env_number("BENCH_STREAM", false)?,
            cache: CacheMode::from_env()?,
            binary: std::env::var_os("AIRBAG_BIN").map(PathBuf::from),
            output: std::env::var_os("BENCH_OUTPUT").map_or_else(
                || manifest_dir().join("bench/results/overhead.json"),
                PathBuf::from,
            ),
        };
        let positive = |name: &str, value: f64| {
            if value.is_finite() && value > 0.0 && value <= 3600.0 {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be between 0 and 3600 seconds, not {value}"
                ))
            }
        };
        positive("BENCH_SECONDS", settings.seconds)?;
        positive("BENCH_THROUGHPUT_SECONDS", settings.throughput_seconds)?;
        if !(0.0..=600.0).contains(&settings.warmup_seconds) {
            return Err("BENCH_WARMUP_SECONDS must be between 0 and 600".to_string());
        }
        if !(1..=100_000).contains(&settings.rate) {
            return Err("BENCH_RATE must be between 1 and 100000".to_string());
        }
        if !(1..=4096).contains(&settings.connections) {
            return Err("BENCH_CONNECTIONS must be between 1 and 4096".to_string());
        }
        if !matches!(settings.client.as_str(), "openai" | "anthropic") {
            return Err(format!(
                "BENCH_CLIENT must be openai or anthropic, not {:?}",
                settings.client
            ));
        }
        if !(1..=64).contains(&settings.client_threads) {
            return Err("BENCH_CLIENT_THREADS must be between 1 and 64".to_string());
        }
        Ok(settings)
    }
}

/// BENCH_CACHE: what rung 1 does in the gateway run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum CacheMode {
    Off,
    Hits,
    Misses,
}

impl CacheMode {
    fn from_env() -> Result<CacheMode, String> {
        match std::env::var("BENCH_CACHE").as_deref().map(str::trim) {
            Err(_) | Ok("" | "off") => Ok(CacheMode::Off),
            Ok("hits") => Ok(CacheMode::Hits),
            Ok("misses") => Ok(CacheMode::Misses),
            Ok(other) => Err(format!(
                "BENCH_CACHE must be off, hits or misses, not {other:?}"
            )),
        }
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// The airbag binary and the child processes.

/// The release `airbag` binary: `AIRBAG_BIN`, else the one Cargo built for this bench,
/// else `target/release/airbag` next to this bench's own executable or under the
/// manifest, built with `cargo build --release` when missing.
fn airbag_binary(settings: &Settings) -> Result<PathBuf, String> {
    if let Some(binary) = &settings.binary {
        return if binary.is_file() {
            Ok(binary.clone())
        } else {
            Err(format!("AIRBAG_BIN={} is not a file", binary.display()))
        };
    }
    // Cargo sets this for benches of a package with a binary target, and builds that
    // binary (release profile) before the bench runs, so it is never stale.
    if let Some(binary) = option_env!("CARGO_BIN_EXE_airbag") {
        return Ok(PathBuf::from(binary));
    }
    // This bench runs from target/release/deps/; the binary sits in target/release/.
    let beside_bench = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("airbag")));
    let candidates = [
        beside_bench,
        Some(manifest_dir().join("target/release/airbag")),
    ];
    if let Some(found) = candidates.iter().flatten().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    println!("building the release airbag binary (cargo build --release --bin airbag)...");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "airbag"])
        .current_dir(manifest_dir())
        .status()
        .map_err(|error| format!("cannot run cargo to build airbag: {error}"))?;
    if !status.success() {
        return Err("cargo build --release --bin airbag failed".to_string());
    }
    candidates
        .into_iter()
        .flatten()
        .find(|path| path.is_file())
        .ok_or_else(|| "cargo built airbag but target/release/airbag is not there".to_string())
}

/// A child process that is killed when this guard is dropped: at the end of the run, on
/// an error, on a panic (unwinding runs drops) and on Ctrl-C.
struct ChildGuard {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Result<Self, String> {
        let out = File::create(&log)
            .map_err(|error| format!("cannot create {}: {error}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|error| format!("cannot reopen {}: {error}", log.display()))?;
        // The children log to a file, never to a pipe nobody reads: a full pipe would
        // block the gateway's logging and show up as latency.
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|error| format!("cannot start the {name}: {error}"))?;
        Ok(ChildGuard { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited, with the end of its log.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the {} exited ({status}); its log ends with:\n{}",
                self.name,
                self.log_tail()
            )),
            Err(error) => Err(format!("cannot check the {}: {error}", self.name)),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for the log line in which a child announces the addresses it bound (both bind
/// port 0, so no port is guessed and none can be taken in between), and return it.
async fn announcement(
    child: &mut ChildGuard,
    text: &str,
    limit: Duration,
) -> Result<String, String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let log = std::fs::read_to_string(&child.log).unwrap_or_default();
        if let Some(line) = log.lines().find(|line| line.contains(text)) {
            return Ok(line.to_string());
        }
        child.check_alive()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "the {} did not log `{text}` within {limit:?}; its log ends with:\n{}",
        child.name,
        child.log_tail()
    ))
}

/// The address in the `name=` field of a log line; `base_url=http://ADDR/v1` works too.
fn announced_address(line: &str, name: &str) -> Result<SocketAddr, String> {
    let prefix = format!("{name}=");
    let value = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .ok_or_else(|| format!("no {name}= in the log line `{line}`"))?;
    let address = value.strip_prefix("http://").unwrap_or(value);
    let address = address.split('/').next().unwrap_or(address);
    address
        .parse()
        .map_err(|_| format!("{name}={value} in `{line}` is not an address"))
}

/// The gateway's config: one provider (the mock, no key), one route to it, and the cache
/// as BENCH_CACHE says. Retries are off so that a failed upstream call shows up as an error instead of a
/// slow success.
fn gateway_config(
    mock: SocketAddr,
    stream_upstream: bool,
    cache: CacheMode,
    folder: &Path,
) -> String {
    let model = manifest_dir().join(".cache/model");
    let cache = match cache {
        CacheMode::Off => "enabled = false\n".to_string(),
        // As shipped (exact and semantic, the model from `make model`), in a fresh store.
        CacheMode::Hits | CacheMode::Misses => format!(
            "enabled = true\n\
             [cache.semantic]\nmodel_dir = \"{}\"\nonnxruntime = \"{}\"\n\
             [cache.store]\npath = \"{}\"\n",
            model.join("all-minilm-l6-v2").display(),
            model.join("onnxruntime/libonnxruntime.so").display(),
            folder.join("store").display()
        ),
    };
    format!(
        r#"# Written by bench/overhead.rs for one run.
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[providers.mock]
kind = "openai"
base_url = "http://{mock}/v1"
keys = []
retries = 0
timeouts = {{ connect = "1s", first_byte = "5s", idle = "5s", total = "10s" }}
stream_upstream = {stream_upstream}

[[routes]]
model = "bench"
chain = ["mock/m"]

# BENCH_CACHE decides: off, or on as shipped in a store of its own.
[cache]
{cache}"#
    )
}

/// Poll `url` until it answers 200, the child dies, or `limit` passes.
async fn wait_ready(
    client: &reqwest::Client,
    url: &str,
    child: &mut ChildGuard,
    limit: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        child.check_alive()?;
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the {} did not answer {url} within {limit:?}; its log ends with:\n{}",
        child.name,
        child.log_tail()
    ))
}

/// Total CPU time (user + system, all threads) a process has used so far, from
/// /proc/PID/stat. Ticks are USER_HZ, which Linux fixes at 100 for user space.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields count from the
    // last ')'. After it come state (field 3), ..., utime (14) and stime (15).
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Busy CPU time of the whole machine so far (all cores, from /proc/stat): user, nice,
/// system, irq, softirq and steal; idle and iowait left out.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&index| ticks.get(index).copied().unwrap_or(0))
        .sum();
    Some(Duration::from_millis(busy * 10))
}

/// CPU time of the mock, the gateway, this load generator and the whole machine.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    mock: Option<Duration>,
    gateway: Option<Duration>,
    bench: Option<Duration>,
    machine: Option<Duration>,
    at: Instant,
}

#[derive(Debug, Serialize)]
struct CpuUse {
    mock_ms: Option<f64>,
    gateway_ms: Option<f64>,
    load_generator_ms: Option<f64>,
    /// Gateway CPU time per request it served during the run (10 ms tick resolution).
    gateway_us_per_request: Option<f64>,
    mock_us_per_request: Option<f64>,
    /// CPU used by everything else on the machine during the run (kernel threads
    /// included), in percent of one core: anything above a few percent means the run was
    /// disturbed and its tail latencies are not to be trusted.
    other_processes_percent_of_a_core: Option<f64>,
}

struct Processes {
    mock: ChildGuard,
    gateway: ChildGuard,
    mock_addr: SocketAddr,
    proxy_addr: SocketAddr,
}

impl Processes {
    fn cpu(&self) -> CpuSnapshot {
        CpuSnapshot {
            mock: cpu_time(&self.mock.pid().to_string()),
            gateway: cpu_time(&self.gateway.pid().to_string()),
            bench: cpu_time("self"),
            machine: machine_busy(),
            at: Instant::now(),
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        self.mock.check_alive()?;
        self.gateway.check_alive()
    }
}

fn cpu_use(before: CpuSnapshot, after: CpuSnapshot, requests: u64) -> CpuUse {
    let ms = |a: Option<Duration>, b: Option<Duration>| {
        Some(b?.saturating_sub(a?).as_secs_f64() * 1000.0)
    };
    let per_request = |total_ms: Option<f64>| {
        total_ms
            .filter(|_| requests > 0)
            .map(|ms| round1(ms * 1000.0 / requests as f64))
    };
    let mock_ms = ms(before.mock, after.mock);
    let gateway_ms = ms(before.gateway, after.gateway);
    let load_generator_ms = ms(before.bench, after.bench);
    let wall_ms = after.at.duration_since(before.at).as_secs_f64() * 1000.0;
    let other = ms(before.machine, after.machine).and_then(|machine_ms| {
        let ours = mock_ms? + gateway_ms? + load_generator_ms?;
        Some(round1(
            100.0 * (machine_ms - ours).max(0.0) / wall_ms.max(1.0),
        ))
    });
    CpuUse {
        mock_ms,
        gateway_ms,
        load_generator_ms,
        gateway_us_per_request: per_request(gateway_ms),
        mock_us_per_request: per_request(mock_ms),
        other_processes_percent_of_a_core: other,
    }
}

/// Start the mock, then the gateway in front of it. Both run with `RUST_LOG=info`, as
/// shipped: the gateway then logs one line per request, a cost real deployments pay too,
/// and both announce their addresses.
async fn start_processes(
    binary: &Path,
    folder: &Path,
    client: &reqwest::Client,
    settings: &Settings,
) -> Result<Processes, String> {
    let limit = Duration::from_secs(15);
    let mut mock = ChildGuard::spawn(
        "mock provider",
        Command::new(binary)
            .args([
                "mock-provider",
                "--listen",
                "127.0.0.1:0",
                "--name",
                "bench",
            ])
            .env("RUST_LOG", "info"),
        folder.join("mock.log"),
    )?;
    let line = announcement(&mut mock, "mock provider ready", limit).await?;
    let mock_addr = announced_address(&line, "base_url")?;

    let config = folder.join("airbag.toml");
    std::fs::write(
        &config,
        gateway_config(mock_addr, settings.stream_upstream, settings.cache, folder),
    )
    .map_err(|error| format!("cannot write {}: {error}", config.display()))?;
    let mut gateway = ChildGuard::spawn(
        "gateway",
        Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info"),
        folder.join("gateway.log"),
    )?;
    let line = announcement(&mut gateway, "airbag is listening", limit).await?;
    let proxy_addr = announced_address(&line, "proxy_addr")?;
    // Ready means the route's provider is enabled, not only that the port is open.
    wait_ready(
        client,
        &format!("http://{proxy_addr}/readyz"),
        &mut gateway,
        limit,
    )
    .await?;
    Ok(Processes {
        mock,
        gateway,
        mock_addr,
        proxy_addr,
    })
}

/// How many requests the mock has received since its list was last cleared.
async fn mock_received(client: &reqwest::Client, mock: SocketAddr) -> Result<u64, String> {
    let stats: Value = client
        .get(format!("http://{mock}/mock/stats"))
        .send()
        .await
        .map_err(|error| format!("cannot read the mock's stats: {error}"))?
        .json()
        .await
        .map_err(|error| format!("the mock's stats are not JSON: {error}"))?;
    stats["requests"]
        .as_u64()
        .ok_or_else(|| format!("the mock's stats have no request count: {stats}"))
}

/// The mock keeps every request it receives in memory; clearing the list between runs
/// keeps its memory (and the cost of growing that list) the same for every run.
async fn clear_mock(client: &reqwest::Client, mock: SocketAddr) -> Result<(), String> {
    let response = client
        .delete(format!("http://{mock}/mock/requests"))
        .send()
        .await
        .map_err(|error| format!("cannot clear the mock's request list: {error}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "clearing the mock's request list answered {}",
            response.status()
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Requests and their checks.

/// Where the load goes and how its answers are checked.
struct Target {
    name: &'static str,
    client: reqwest::Client,
    url: String,
    model: String,
    /// The body when every request asks the same (BENCH_CACHE off or hits).
    body: Bytes,
    /// Every request asks a question of its own (BENCH_CACHE=misses): the prompt ends
    /// with this counter.
    unique: Option<AtomicU64>,
    /// The rung every measured answer through the gateway must come from.
    expected_rung: &'static str,
    /// Through the gateway, answers must also carry the rung tag of one upstream attempt.
    via_gateway: bool,
    /// Speaks Anthropic's Messages API (else OpenAI's chat completions).
    anthropic: bool,
    stream: bool,
}

impl Target {
    fn new(
        name: &'static str,
        base: SocketAddr,
        model: &str,
        via_gateway: bool,
        settings: &Settings,
    ) -> Result<Self, String> {
        // The direct run always speaks OpenAI to the mock.
        let anthropic = via_gateway && settings.client == "anthropic";
        let stream = settings.stream;
        // One client per target, each with its own pool, so the two never share or
        // warm each other's connections.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| format!("cannot build the load generator's client: {error}"))?;
        let path = if anthropic {
            "v1/messages"
        } else {
            "v1/chat/completions"
        };
        Ok(Target {
            name,
            client,
            url: format!("http://{base}/{path}"),
            model: model.to_string(),
            body: request_body(model, PROMPT, stream),
            unique: (settings.cache == CacheMode::Misses).then(|| AtomicU64::new(0)),
            expected_rung: match settings.cache {
                CacheMode::Hits => "cache",
                CacheMode::Off | CacheMode::Misses => "provider",
            },
            via_gateway,
            anthropic,
            stream,
        })
    }

    /// The next request's body.
    fn body(&self) -> Bytes {
        match &self.unique {
            None => self.body.clone(),
            Some(counter) => {
                let number = counter.fetch_add(1, Ordering::Relaxed);
                let prompt = format!("{PROMPT} This is request number {number}.");
                request_body(&self.model, &prompt, self.stream)
            }
        }
    }
}

fn request_body(model: &str, prompt: &str, stream: bool) -> Bytes {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 32,
        "stream": stream,
    });
    Bytes::from(body.to_string())
}

/// What came back, read in full before the clock stops and checked after.
struct Raw {
    status: u16,
    rung: Option<String>,
    attempts: Option<String>,
    body: Bytes,
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

fn classify(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_string()
    } else if error.is_connect() {
        "connect".to_string()
    } else if error.is_body() || error.is_decode() {
        "body".to_string()
    } else {
        "request".to_string()
    }
}

/// Send one request and read the whole answer.
async fn call(target: &Target) -> Result<Raw, String> {
    let response = target
        .client
        .post(&target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(target.body())
        .send()
        .await
        .map_err(|error| classify(&error))?;
    let status = response.status().as_u16();
    let (rung, attempts) = if target.via_gateway {
        let headers = response.headers();
        (
            header(headers, "x-airbag-rung"),
            header(headers, "x-airbag-attempts"),
        )
    } else {
        (None, None)
    };
    let body = response.bytes().await.map_err(|error| classify(&error))?;
    Ok(Raw {
        status,
        rung,
        attempts,
        body,
    })
}

/// The answer is the mock's echo of the prompt, in the target's protocol (a stream: its
/// last word and the protocol's end event), and through the gateway it was served by the
/// provider rung on its first attempt.
fn check(target: &Target, raw: &Raw) -> Result<(), String> {
    if raw.status != 200 {
        return Err(format!("status_{}", raw.status));
    }
    if target.stream {
        let text = String::from_utf8_lossy(&raw.body);
        let end = if target.anthropic {
            "message_stop"
        } else {
            "[DONE]"
        };
        if !text.contains("sentence") || !text.contains(end) {
            return Err("unexpected_stream".to_string());
        }
    } else {
        let body: Value =
            serde_json::from_slice(&raw.body).map_err(|_| "invalid_json".to_string())?;
        let pointer = if target.anthropic {
            "/content/0/text"
        } else {
            "/choices/0/message/content"
        };
        let content = body
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !content.contains(PROMPT) {
            return Err("unexpected_answer".to_string());
        }
    }
    if target.via_gateway {
        if raw.rung.as_deref() != Some(target.expected_rung) {
            return Err(format!("not_{}_rung", target.expected_rung));
        }
        if target.expected_rung == "provider" && raw.attempts.as_deref() != Some("1") {
            return Err("more_than_one_attempt".to_string());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Open loop.

/// One open-loop request.
struct Sample {
    /// From the scheduled send time to the last byte of the answer: what a client on a
    /// fixed schedule experiences, generator lag and queueing included.
    latency: Duration,
    /// From the actual send to the last byte: the server's service time alone.
    service: Duration,
    /// How late the request left compared with its schedule.
    lag: Duration,
    outcome: Result<(), String>,
}

/// Schedule `count` requests `interval` apart from `start`, each on its own task. Runs on
/// a blocking thread so it can sleep with the OS timer (tens of microseconds of slack)
/// rather than tokio's 1 ms timer wheel. When it falls behind it sends the late requests
/// at once, each still timed from its own scheduled time: the load never slows down.
fn schedule(
    handle: &Handle,
    target: &Arc<Target>,
    rate: u32,
    count: u64,
) -> Vec<JoinHandle<Sample>> {
    let start = Instant::now() + Duration::from_millis(5);
    let nanos_per_request = 1_000_000_000 / u64::from(rate);
    let mut tasks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for index in 0..count {
        let scheduled = start + Duration::from_nanos(index * nanos_per_request);
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let target = target.clone();
        tasks.push(handle.spawn(async move {
            let sent = Instant::now();
            let outcome = call(&target).await;
            let done = Instant::now();
            Sample {
                latency: done - scheduled,
                service: done - sent,
                lag: sent.saturating_duration_since(scheduled),
                outcome: outcome.and_then(|raw| check(&target, &raw)),
            }
        }));
    }
    tasks
}

async fn open_loop(target: &Arc<Target>, rate: u32, seconds: f64) -> Result<Vec<Sample>, String> {
    let count = (f64::from(rate) * seconds).round().max(1.0) as u64;
    let handle = Handle::current();
    let scheduler_target = target.clone();
    let tasks =
        tokio::task::spawn_blocking(move || schedule(&handle, &scheduler_target, rate, count))
            .await
            .map_err(|error| format!("the request scheduler failed: {error}"))?;
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(
            task.await
                .map_err(|error| format!("a request task failed: {error}"))?,
        );
    }
    Ok(samples)
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    count: usize,
    mean_us: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn percentiles(mut durations: Vec<Duration>) -> Percentiles {
    durations.sort_unstable();
    let count = durations.len();
    // Nearest rank: the smallest value with at least p% of the samples at or below it.
    let at = |p: f64| {
        if count == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * count as f64).ceil() as usize;
        let micros = durations[rank.clamp(1, count) - 1].as_secs_f64() * 1e6;
        round1(micros)
    };
    let mean = if count == 0 {
        0.0
    } else {
        durations.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / count as f64
    };
    Percentiles {
        count,
        mean_us: round1(mean),
        p50_us: at(50.0),
        p90_us: at(90.0),
        p99_us: at(99.0),
        p999_us: at(99.9),
        max_us: at(100.0),
    }
}

#[derive(Debug, Serialize)]
struct OpenLoopResult {
    target: &'static str,
    sent: usize,
    ok: usize,
    errors: BTreeMap<String, u64>,
    /// Requests the mock received during the run, warm-up included, against those sent.
    mock_received: u64,
    mock_expected: u64,
    /// Requests sent per second of the measured run.
    achieved_rate: f64,
    /// Successful requests only, from the scheduled send time.
    latency: Percentiles,
    /// Successful requests only, from the actual send.
    service_time: Percentiles,
    /// How late the generator sent, all requests.
    send_lag: Percentiles,
    cpu: CpuUse,
}

fn count_errors<'a>(
    outcomes: impl Iterator<Item = &'a Result<(), String>>,
) -> BTreeMap<String, u64> {
    let mut errors = BTreeMap::new();
    for outcome in outcomes {
        if let Err(kind) = outcome {
            *errors.entry(kind.clone()).or_insert(0) += 1;
        }
    }
    errors
}

async fn measure_open_loop(
    settings: &Settings,
    processes: &mut Processes,
    target: &Arc<Target>,
    probe: &reqwest::Client,
) -> Result<OpenLoopResult, String> {
    clear_mock(probe, processes.mock_addr).await?;
    let mut expected = 0;
    if settings.warmup_seconds > 0.0 {
        expected += open_loop(target, settings.rate, settings.warmup_seconds)
            .await?
            .len() as u64;
    }
    processes.check_alive()?;
    let before = processes.cpu();
    let started = Instant::now();
    let samples = open_loop(target, settings.rate, settings.seconds).await?;
    let elapsed = started.elapsed();
    let after = processes.cpu();
    processes.check_alive()?;
    expected += samples.len() as u64;
    let received = mock_received(probe, processes.mock_addr).await?;
    clear_mock(probe, processes.mock_addr).await?;

    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|sample| sample.outcome.is_ok())
        .collect();
    Ok(OpenLoopResult {
        target: target.name,
        sent: samples.len(),
        ok: ok.len(),
        errors: count_errors(samples.iter().map(|sample| &sample.outcome)),
        mock_received: received,
        mock_expected: expected,
        achieved_rate: round1(samples.len() as f64 / elapsed.as_secs_f64()),
        latency: percentiles(ok.iter().map(|sample| sample.latency).collect()),
        service_time: percentiles(ok.iter().map(|sample| sample.service).collect()),
        send_lag: percentiles(samples.iter().map(|sample| sample.lag).collect()),
        cpu: cpu_use(before, after, samples.len() as u64),
    })
}

// ---------------------------------------------------------------------------------------
// Closed loop.

#[derive(Debug, Serialize)]
struct ClosedLoopResult {
    target: &'static str,
    connections: usize,
    seconds: f64,
    completed: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    mock_received: u64,
    /// Successful requests per second.
    requests_per_second: f64,
    /// Closed-loop latency (queueing behind the connection's previous request excluded).
    latency: Percentiles,
    cpu: CpuUse,
}

/// One connection's worth of back-to-back requests until `deadline`.
async fn closed_worker(
    target: Arc<Target>,
    deadline: Instant,
) -> (Vec<Duration>, Vec<Result<(), String>>) {
    let mut latencies = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..MAX_REQUESTS_PER_WORKER {
        if Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        let outcome = call(&target).await.and_then(|raw| check(&target, &raw));
        if outcome.is_ok() {
            latencies.push(sent.elapsed());
        }
        outcomes.push(outcome);
    }
    (latencies, outcomes)
}

async fn closed_loop(
    target: &Arc<Target>,
    connections: usize,
    seconds: f64,
) -> Result<(Duration, Vec<Duration>, Vec<Result<(), String>>), String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<JoinHandle<_>> = (0..connections)
        .map(|_| tokio::spawn(closed_worker(target.clone(), deadline)))
        .collect();
    let mut latencies = Vec::new();
    let mut outcomes = Vec::new();
    for worker in workers {
        let (worker_latencies, worker_outcomes) = worker
            .await
            .map_err(|error| format!("a load worker failed: {error}"))?;
        latencies.extend(worker_latencies);
        outcomes.extend(worker_outcomes);
    }
    Ok((started.elapsed(), latencies, outcomes))
}

async fn measure_closed_loop(
    settings: &Settings,
    processes: &mut Processes,
    target: &Arc<Target>,
    probe: &reqwest::Client,
) -> Result<ClosedLoopResult, String> {
    // A short warm-up opens the connections, so connection set-up is not measured.
    let warmup = settings.warmup_seconds.min(1.0);
    if warmup > 0.0 {
        closed_loop(target, settings.connections, warmup).await?;
    }
    clear_mock(probe, processes.mock_addr).await?;
    processes.check_alive()?;
    let before = processes.cpu();
    let (elapsed, latencies, outcomes) =
        closed_loop(target, settings.connections, settings.throughput_seconds).await?;
    let after = processes.cpu();
    processes.check_alive()?;
    let received = mock_received(probe, processes.mock_addr).await?;
    clear_mock(probe, processes.mock_addr).await?;
    let ok = latencies.len() as u64;
    Ok(ClosedLoopResult {
        target: target.name,
        connections: settings.connections,
        seconds: (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        completed: outcomes.len() as u64,
        ok,
        errors: count_errors(outcomes.iter()),
        mock_received: received,
        requests_per_second: round1(ok as f64 / elapsed.as_secs_f64()),
        latency: percentiles(latencies),
        cpu: cpu_use(before, after, outcomes.len() as u64),
    })
}

// ---------------------------------------------------------------------------------------
// The run and its report.

#[derive(Debug, Serialize)]
struct Overhead {
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

fn overhead(direct: &Percentiles, gateway: &Percentiles) -> Overhead {
    Overhead {
        p50_us: round1(gateway.p50_us - direct.p50_us),
        p90_us: round1(gateway.p90_us - direct.p90_us),
        p99_us: round1(gateway.p99_us - direct.p99_us),
        p999_us: round1(gateway.p999_us - direct.p999_us),
        max_us: round1(gateway.max_us - direct.max_us),
    }
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// How busy the machine is over `window`, in percent of one core.
async fn machine_busy_percent(window: Duration) -> Option<f64> {
    let before = machine_busy()?;
    tokio::time::sleep(window).await;
    let after = machine_busy()?;
    Some(round1(
        100.0 * after.saturating_sub(before).as_secs_f64() / window.as_secs_f64(),
    ))
}

fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg").ok().map(|text| {
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

async fn run(settings: Settings) -> Result<(), String> {
    let binary = airbag_binary(&settings)?;
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = load_average();
    let busy_before = machine_busy_percent(Duration::from_secs(1)).await;
    if settings.smoke {
        println!("airbag proxy-overhead benchmark: smoke run (use `cargo bench` to measure)");
    } else {
        println!("airbag proxy-overhead benchmark");
    }
    println!("  binary:   {}", binary.display());
    println!(
        "  machine:  {cpus} CPUs, load average {} (the generator, gateway and mock share them)",
        load_before.as_deref().unwrap_or("unknown")
    );
    if let Some(busy) = busy_before {
        println!("  before the run, other processes kept {busy:.0}% of one core busy");
        if busy > 10.0 {
            println!("  WARNING: the machine is not quiet; tail latencies will show it");
        }
    }
    println!(
        "  client {}{}, cache {:?} (BENCH_CLIENT, BENCH_STREAM, BENCH_CACHE)",
        settings.client,
        if settings.stream { ", streamed" } else { "" },
        settings.cache
    );
    println!(
        "  open loop {} req/s for {} s after {} s warm-up; closed loop {} connections for {} s",
        settings.rate,
        settings.seconds,
        settings.warmup_seconds,
        settings.connections,
        settings.throughput_seconds
    );

    let folder = tempfile::tempdir()
        .map_err(|error| format!("cannot create a temporary folder: {error}"))?;
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
    let mut processes = start_processes(&binary, folder.path(), &probe, &settings).await?;
    let direct = Arc::new(Target::new(
        "direct",
        processes.mock_addr,
        "m",
        false,
        &settings,
    )?);
    let gateway = Arc::new(Target::new(
        "gateway",
        processes.proxy_addr,
        "bench",
        true,
        &settings,
    )?);

    println!("\nopen loop: direct to the mock...");
    let open_direct = measure_open_loop(&settings, &mut processes, &direct, &probe).await?;
    println!("open loop: through the gateway...");
    let open_gateway = measure_open_loop(&settings, &mut processes, &gateway, &probe).await?;
    println!("closed loop: direct to the mock...");
    let closed_direct = measure_closed_loop(&settings, &mut processes, &direct, &probe).await?;
    println!("closed loop: through the gateway...");
    let closed_gateway = measure_closed_loop(&settings, &mut processes, &gateway, &probe).await?;

    let open_overhead = overhead(&open_direct.latency, &open_gateway.latency);
    let service_overhead = overhead(&open_direct.service_time, &open_gateway.service_time);
    let errors = open_direct.sent - open_direct.ok + open_gateway.sent - open_gateway.ok
        + (closed_direct.completed - closed_direct.ok) as usize
        + (closed_gateway.completed - closed_gateway.ok) as usize;
    let meets_target = open_overhead.p99_us < TARGET_P99_OVERHEAD_US && errors == 0;
    let most_foreign_cpu = [
        &open_direct.cpu,
        &open_gateway.cpu,
        &closed_direct.cpu,
        &closed_gateway.cpu,
    ]
    .iter()
    .filter_map(|cpu| cpu.other_processes_percent_of_a_core)
    .fold(0.0, f64::max);
    let disturbed = most_foreign_cpu > DISTURBED_PERCENT_OF_A_CORE;
    if settings.smoke {
        return if errors == 0 {
            println!("smoke run: every request answered as expected; no results written");
            Ok(())
        } else {
            Err(format!("smoke run: {errors} request(s) failed"))
        };
    }

    print_report(
        &settings,
        [&open_direct, &open_gateway],
        &open_overhead,
        &service_overhead,
        [&closed_direct, &closed_gateway],
        meets_target,
    );
    if disturbed {
        println!(
            "\nWARNING: other processes used up to {most_foreign_cpu:.0}% of a core during a measured run; \
             these numbers are disturbed. Rerun on a quiet machine."
        );
    }

    let report = json!({
        "benchmark": "proxy overhead: airbag gateway vs. calling airbag mock-provider directly",
        "generated_at_unix": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain"]).map(|status| !status.is_empty()),
        "binary": binary.display().to_string(),
        "cpus": cpus,
        "disturbed_by_other_processes": disturbed,
        "most_other_processes_percent_of_a_core": most_foreign_cpu,
        "load_average_before": load_before,
        "machine_busy_percent_of_a_core_before": busy_before,
        "load_average_after": load_average(),
        "settings": settings,
        "open_loop": {
            "direct": open_direct,
            "gateway": open_gateway,
            "overhead_latency_us": open_overhead,
            "overhead_service_time_us": service_overhead,
            "target_p99_overhead_us": TARGET_P99_OVERHEAD_US,
            "meets_target": meets_target,
        },
        "closed_loop": {
            "direct": closed_direct,
            "gateway": closed_gateway,
            "gateway_share_of_direct_throughput": round1(
                100.0 * closed_gateway.requests_per_second / closed_direct.requests_per_second.max(1e-9)
            ) / 100.0,
        },
    });
    write_json(&settings.output, &report)?;
    println!("\nwrote {}", settings.output.display());
    if errors > 0 {
        return Err(format!(
            "{errors} request(s) failed; see the error columns above"
        ));
    }
    Ok(())
}

fn write_json(path: &Path, report: &Value) -> Result<(), String> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)
            .map_err(|error| format!("cannot create {}: {error}", folder.display()))?;
    }
    let text = serde_json::to_string_pretty(report)
        .map_err(|error| format!("cannot encode the results: {error}"))?;
    std::fs::write(path, text + "\n")
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

fn format_errors(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".to_string();
    }
    errors
        .iter()
        .map(|(kind, count)| format!("{kind}={count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_us(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_string(), |value| format!("{value:.0}"))
}

fn print_report(
    settings: &Settings,
    open: [&OpenLoopResult; 2],
    open_overhead: &Overhead,
    service_overhead: &Overhead,
    closed: [&ClosedLoopResult; 2],
    meets_target: bool,
) {
    let row = |name: &str, p: &Percentiles| {
        println!(
            "  {name:<22} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
            p.mean_us, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us
        );
    };
    let overhead_row = |name: &str, o: &Overhead| {
        println!(
            "  {name:<22} {:>8} {:>+8.0} {:>+8.0} {:>+8.0} {:>+8.0} {:>+8.0}",
            "", o.p50_us, o.p90_us, o.p99_us, o.p999_us, o.max_us
        );
    };
    println!(
        "\nOPEN LOOP at {} req/s for {} s: latency in µs, from each request's scheduled send time",
        settings.rate, settings.seconds
    );
    println!(
        "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    for result in open {
        row(result.target, &result.latency);
    }
    overhead_row("overhead", open_overhead);
    println!("  service time (from the actual send):");
    for result in open {
        row(result.target, &result.service_time);
    }
    overhead_row("overhead", service_overhead);
    println!("  generator send lag:");
    for result in open {
        row(result.target, &result.send_lag);
    }
    for result in open {
        println!(
            "  {}: sent {} at {:.1} req/s, ok {}, errors: {}; mock received {} of {} expected",
            result.target,
            result.sent,
            result.achieved_rate,
            result.ok,
            format_errors(&result.errors),
            result.mock_received,
            result.mock_expected
        );
        println!(
            "    CPU: gateway {} µs/request, mock {} µs/request, load generator {} ms in all; other processes {}% of a core",
            format_us(result.cpu.gateway_us_per_request),
            format_us(result.cpu.mock_us_per_request),
            format_us(result.cpu.load_generator_ms),
            format_us(result.cpu.other_processes_percent_of_a_core)
        );
    }
    println!(
        "  target: p99 overhead under {TARGET_P99_OVERHEAD_US:.0} µs with no errors: {}",
        if meets_target { "MET" } else { "NOT MET" }
    );

    println!(
        "\nCLOSED LOOP, {} connections for {} s: maximum throughput",
        settings.connections, settings.throughput_seconds
    );
    println!(
        "  {:<10} {:>10} {:>10} {:>10} {:>10} {:>8}   errors",
        "", "req/s", "p50 µs", "p99 µs", "max µs", "other %"
    );
    for result in closed {
        println!(
            "  {:<10} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8}   {}",
            result.target,
            result.requests_per_second,
            result.latency.p50_us,
            result.latency.p99_us,
            result.latency.max_us,
            format_us(result.cpu.other_processes_percent_of_a_core),
            format_errors(&result.errors)
        );
    }
    let [direct, gateway] = closed;
    println!(
        "  gateway throughput is {:.0}% of direct; mock received {} (direct run) and {} (gateway run); gateway CPU {} µs/request",
        100.0 * gateway.requests_per_second / direct.requests_per_second.max(1e-9),
        direct.mock_received,
        gateway.mock_received,
        format_us(gateway.cpu.gateway_us_per_request),
    );
}
