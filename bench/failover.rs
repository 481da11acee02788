//! Failover in numbers: how long a client waits when the primary hangs, what hedging does
//! to the tail of a route whose primary is sometimes slow, and how many broken streams a
//! client still sees with stream resume on and off.
//!
//! Run with `cargo bench --bench failover` (or `make bench-failover`); `bench/README.md`
//! explains the method. The gateway and the mock providers run in this process (the
//! library's `server::start` and `mock::MockProvider`, each on a loopback port of its
//! own); the clients send over real HTTP. Requests are sent open-loop at a fixed rate
//! and timed from their scheduled start, so a slow answer cannot slow the load down.
//! Results are printed and written to `bench/results/failover.json`.
//!
//! Every loop is bounded in count and time and every address is 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use airbag::config::{Config, Env};
use airbag::mock::{Fault, FaultRule, MockOptions, MockProvider};
use airbag::server::{self, RunningGateway};
use serde_json::{Value, json};

/// Any one request that takes longer than this counts as a client error.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

struct Sizes {
    /// The first-byte timeout of the hung primary.
    first_byte: Duration,
    hang_requests: usize,
    hang_rate: f64,
    slow_requests: usize,
    slow_rate: f64,
    resume_streams: usize,
    resume_rate: f64,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                first_byte: Duration::from_millis(300),
                hang_requests: 4,
                hang_rate: 20.0,
                slow_requests: 10,
                slow_rate: 20.0,
                resume_streams: 20,
                resume_rate: 50.0,
            }
        } else {
            Sizes {
                first_byte: Duration::from_secs(5),
                hang_requests: 60,
                hang_rate: 5.0,
                slow_requests: 400,
                slow_rate: 20.0,
                resume_streams: 2_000,
                resume_rate: 100.0,
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) a short smoke
    // run checks that the bench still works and writes no results.
    let smoke = !std::env::args().any(|arg| arg == "--bench");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("failover bench: cannot start the tokio runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Sizes::new(smoke), smoke)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("failover bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn mock(name: &str) -> Result<MockProvider, String> {
    let options = MockOptions {
        name: name.to_string(),
        ..MockOptions::default()
    };
    MockProvider::start(([127, 0, 0, 1], 0).into(), options, Vec::new())
        .await
        .map_err(|error| format!("mock provider {name}: {error}"))
}

/// A gateway with route `chat` → `primary/big`, `fallback/small`. `primary` and
/// `fallback` are provider-section lines; `route` adds keys to the route.
async fn gateway(
    primary_mock: &MockProvider,
    fallback_mock: &MockProvider,
    primary: &str,
    route: &str,
    canned: &Path,
) -> Result<RunningGateway, String> {
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[providers.primary]
kind = "openai"
base_url = "{}"
{primary}
[providers.fallback]
kind = "openai"
base_url = "{}"
[[routes]]
model = "chat"
chain = ["primary/big", "fallback/small"]
{route}
[cache]
enabled = false
[canned]
dir = {:?}
"#,
        primary_mock.base_url(),
        fallback_mock.base_url(),
        canned.to_string_lossy(),
    );
    let env = Env::default();
    let config = Config::from_toml(&text, Path::new("bench.toml"), &env)
        .map_err(|error| format!("bench config: {error}"))?;
    server::start(&config, &env)
        .await
        .map_err(|error| format!("gateway: {error}"))
}

/// What one client request came to.
struct Outcome {
    latency: Duration,
    status: u16,
    served_by: String,
    /// A stream that ended in an error event, or a body that never finished.
    broken: bool,
}

async fn send(client: &reqwest::Client, url: &str, body: Value, stream: bool) -> Outcome {
    let started = Instant::now();
    let request = client
        .post(url)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache")
        .body(body.to_string())
        .timeout(CLIENT_TIMEOUT);
    let Ok(response) = request.send().await else {
        return Outcome {
            latency: started.elapsed(),
            status: 0,
            served_by: String::new(),
            broken: true,
        };
    };
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("x-airbag-served-by")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await;
    let broken = match (&text, stream) {
        (Err(_), _) => true,
        (Ok(text), true) => !text.trim_end().ends_with("data: [DONE]"),
        (Ok(_), false) => false,
    };
    Outcome {
        latency: started.elapsed(),
        status,
        served_by,
        broken,
    }
}

/// `count` requests at `rate` per second, each timed from its scheduled start.
async fn open_loop(
    url: &str,
    count: usize,
    rate: f64,
    stream: bool,
    prompt: impl Fn(usize) -> String,
) -> Vec<Outcome> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let scheduled = started + Duration::from_secs_f64(index as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let body = json!({"model": "chat", "stream": stream,
            "messages": [{"role": "user", "content": prompt(index)}]});
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut outcome = send(&client, &url, body, stream).await;
            // Timed from the schedule: a late send counts against the gateway too.
            outcome.latency = scheduled.elapsed();
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(count);
    for task in tasks {
        if let Ok(outcome) = task.await {
            outcomes.push(outcome);
        }
    }
    outcomes
}

fn percentile(sorted: &[f64], share: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((share * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(outcomes: &[Outcome]) -> Value {
    let mut millis: Vec<f64> = outcomes
        .iter()
        .filter(|outcome| outcome.status == 200)
        .map(|outcome| outcome.latency.as_secs_f64() * 1000.0)
        .collect();
    millis.sort_by(f64::total_cmp);
    let mut served_by = std::collections::BTreeMap::<String, u64>::new();
    for outcome in outcomes {
        *served_by.entry(outcome.served_by.clone()).or_default() += 1;
    }
    json!({
        "requests": outcomes.len(),
        "errors": outcomes.iter().filter(|outcome| outcome.status != 200).count(),
        "broken_streams": outcomes.iter().filter(|outcome| outcome.broken).count(),
        "p50_ms": (percentile(&millis, 0.50) * 10.0).round() / 10.0,
        "p99_ms": (percentile(&millis, 0.99) * 10.0).round() / 10.0,
        "max_ms": (millis.last().copied().unwrap_or(f64::NAN) * 10.0).round() / 10.0,
        "served_by": served_by,
    })
}

async fn run(sizes: Sizes, smoke: bool) -> Result<(), String> {
    let canned = std::env::temp_dir().join(format!("airbag-bench-canned-{}", std::process::id()));
    std::fs::create_dir_all(&canned).map_err(|error| format!("{}: {error}", canned.display()))?;
    let mut report = serde_json::Map::new();
    let first_byte = humantime::format_duration(sizes.first_byte).to_string();

    // 1. A hung primary: time to the answer, both client modes, breaker off (every request
    //    meets the hang) and on (as shipped: it opens after a few and the rest skip it).
    for breaker in ["off", "on"] {
        for stream in [false, true] {
            let (primary, fallback) = (mock("primary").await?, mock("fallback").await?);
            primary.set_faults(vec![FaultRule::always(Fault::Hang)]);
            let breaker_line = if breaker == "off" {
                "breaker = { enabled = false }"
            } else {
                ""
            };
            let running = gateway(
                &primary,
                &fallback,
                &format!(
                    "timeouts = {{ connect = \"3s\", first_byte = \"{first_byte}\", idle = \"15s\", total = \"300s\" }}\nretries = 2\n{breaker_line}"
                ),
                "",
                &canned,
            )
            .await?;
            let url = format!("http://{}/v1/chat/completions", running.proxy_addr);
            let outcomes = open_loop(
                &url,
                sizes.hang_requests,
                sizes.hang_rate,
                stream,
                |index| format!("hung primary question {index}"),
            )
            .await;
            let key = format!(
                "hung_primary_breaker_{breaker}_{}",
                if stream { "stream" } else { "complete" }
            );
            let mut result = summary(&outcomes);
            result["first_byte_ms"] = json!(sizes.first_byte.as_millis() as u64);
            println!("{key}: {result}");
            report.insert(key, result);
            running.shutdown().await;
        }
    }

    // 2. A primary that answers 20% of requests 5s late: the route's tail with and
    //    without hedging.
    for hedge in [None, Some("1s")] {
        let (primary, fallback) = (mock("primary").await?, mock("fallback").await?);
        primary.set_faults(vec![FaultRule {
            probability: 0.2,
            ..FaultRule::always(Fault::Delay { ms: 5_000 })
        }]);
        let route = match hedge {
            Some(after) => format!("hedge_after = \"{after}\"\nhedge_max_share = 0.3"),
            None => String::new(),
        };
        let running = gateway(
            &primary,
            &fallback,
            "timeouts = { connect = \"3s\", first_byte = \"20s\", idle = \"15s\", total = \"300s\" }\nbreaker = { enabled = false }",
            &route,
            &canned,
        )
        .await?;
        let url = format!("http://{}/v1/chat/completions", running.proxy_addr);
        let outcomes = open_loop(&url, sizes.slow_requests, sizes.slow_rate, false, |index| {
            format!("sometimes slow question {index}")
        })
        .await;
        let key = format!("slow_20pct_hedge_{}", hedge.unwrap_or("off"));
        let result = summary(&outcomes);
        println!("{key}: {result}");
        report.insert(key, result);
        running.shutdown().await;
    }

    // 3. Streams through a primary that breaks 30% of them after their first content:
    //    broken streams a client sees, resume off and on.
    for resume in [false, true] {
        let (primary, fallback) = (mock("same").await?, mock("same").await?);
        primary.set_faults(vec![FaultRule {
            probability: 0.3,
            ..FaultRule::always(Fault::FailAfter { chunks: 4 })
        }]);
        let running = gateway(
            &primary,
            &fallback,
            "breaker = { enabled = false }",
            &format!("resume_streams = {resume}"),
            &canned,
        )
        .await?;
        let url = format!("http://{}/v1/chat/completions", running.proxy_addr);
        let outcomes = open_loop(
            &url,
            sizes.resume_streams,
            sizes.resume_rate,
            true,
            |index| format!("tell me a story about number {index} in a few words"),
        )
        .await;
        let key = format!(
            "streams_30pct_broken_resume_{}",
            if resume { "on" } else { "off" }
        );
        let result = summary(&outcomes);
        println!("{key}: {result}");
        report.insert(key, result);
        running.shutdown().await;
    }

    let _ = std::fs::remove_dir_all(&canned);
    if smoke {
        println!("failover bench: smoke run (no --bench): results not written");
        return Ok(());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/failover.json");
    let text = serde_json::to_string_pretty(&Value::Object(report))
        .map_err(|error| format!("cannot encode the results: {error}"))?;
    std::fs::write(&path, text + "\n").map_err(|error| format!("{}: {error}", path.display()))?;
    println!("failover bench: wrote {}", path.display());
    Ok(())
}
