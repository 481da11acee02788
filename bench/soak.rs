//! Memory over time: the release binary with the cache on (model loaded, embedded store)
//! in front of a mock provider, storing new answers at a steady rate well past
//! `cache.max_entries`, with its resident memory (VmRSS from /proc/PID/status) sampled
//! every few seconds. Run with `make bench-soak` (`cargo bench --bench soak`); results go
//! to `bench/results/soak.json`.
//!
//! Environment: `SOAK_SECONDS` (default 1800), `SOAK_RATE` new questions per second
//! (default 40), `SOAK_MAX_ENTRIES` (default 10000), `SOAK_SAMPLE_SECONDS` (default 10),
//! `SOAK_OUTPUT` (default `bench/results/soak.json`), `SOAK_SEMANTIC` (default `true`;
//! `false` runs the exact cache alone, without the model, to tell the store's memory from
//! the model's).
//! A fifth of the requests repeat a recent question (hits). The verdict: resident memory
//! after the entry cap was reached stays within ±10% of its value at the cap, and the
//! peak stays under 200 MiB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// One KiB line of /proc/PID/status: `VmRSS:` (all resident memory), `RssAnon:` (heap
/// and stacks) or `RssFile:` (pages of mapped files, such as the store's segments).
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

struct Gateway {
    child: Child,
    proxy: String,
    admin: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
        .to_string()
}

fn start_gateway(config: &std::path::Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_airbag"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("airbag starts");
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // Owned at once: dropping the gateway kills and reaps the child.
    let mut gateway = Gateway {
        child,
        proxy: String::new(),
        admin: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Ok(line) = received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("airbag is listening") {
            gateway.proxy = field(&line, "proxy_addr");
            gateway.admin = field(&line, "admin_addr");
            return gateway;
        }
    }
    panic!("airbag never announced its listeners");
}

/// A question nobody asked before: a few words from fixed lists and a number, so
/// questions look like chat and embed differently.
fn question(index: u64) -> String {
    const TOPICS: [&str; 8] = [
        "ocean tides",
        "bread baking",
        "tax returns",
        "mountain bikes",
        "solar panels",
        "jazz history",
        "house plants",
        "train timetables",
    ];
    const ASKS: [&str; 4] = [
        "What should I know about",
        "Give me three tips on",
        "Explain briefly",
        "What is a common mistake with",
    ];
    format!(
        "{} {} (case {index})?",
        ASKS[(index / 8 % 4) as usize],
        TOPICS[(index % 8) as usize]
    )
}

async fn run() -> Value {
    let seconds = env_number("SOAK_SECONDS", 1800);
    let rate = env_number("SOAK_RATE", 40).max(1);
    let max_entries = env_number("SOAK_MAX_ENTRIES", 10_000);
    let sample_every = Duration::from_secs(env_number("SOAK_SAMPLE_SECONDS", 10).max(1));
    let semantic = std::env::var("SOAK_SEMANTIC").map_or(true, |value| value != "false");
    let mock = airbag::mock::MockProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        airbag::mock::MockOptions::default(),
        Vec::new(),
    )
    .await
    .unwrap();
    let folder = tempfile::tempdir().unwrap();
    let model = root().join(".cache/model");
    let config = folder.path().join("soak.toml");
    let canned = folder.path().join("canned");
    std::fs::create_dir_all(&canned).unwrap();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [providers.mock]\nkind = \"openai\"\nbase_url = \"{}\"\nkeys = []\n\
             [[routes]]\nmodel = \"chat\"\nchain = [\"mock/m\"]\n\
             [canned]\ndir = \"{}\"\n\
             [cache]\nmax_entries = {max_entries}\n\
             [cache.semantic]\nenabled = {semantic}\nmodel_dir = \"{}\"\nonnxruntime = \"{}\"\n\
             [cache.store]\npath = \"{}\"\n",
            mock.base_url(),
            canned.display(),
            model.join("all-minilm-l6-v2").display(),
            model.join("onnxruntime/libonnxruntime.so").display(),
            folder.path().join("store").display()
        ),
    )
    .unwrap();
    let gateway = start_gateway(&config);
    let pid = gateway.child.id();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", gateway.proxy);
    let stats_url = format!("http://{}/admin/cache", gateway.admin);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(pid);
    println!(
        "soak: {seconds} s at {rate} new questions/s, cap {max_entries} entries; idle RSS {} MiB",
        rss_idle / 1024
    );

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut index = 0u64;
    let mut failures = 0u64;
    let mut in_flight = tokio::task::JoinSet::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        index += 1;
        // Every fifth request repeats a recent question: some hits, and recency to track.
        let asked = if index.is_multiple_of(5) {
            question(index.saturating_sub(1 + index % 50))
        } else {
            question(index)
        };
        let sender = client.clone();
        let url = url.clone();
        in_flight.spawn(async move {
            sender
                .post(url)
                .json(&json!({"model": "chat", "messages": [{"role": "user", "content": asked}]}))
                .send()
                .await
                .map(|reply| reply.status().is_success())
                .unwrap_or(false)
        });
        while let Some(done) = in_flight.try_join_next() {
            if !matches!(done, Ok(true)) {
                failures += 1;
            }
        }
        if Instant::now() >= next_sample {
            next_sample += sample_every;
            let stats: Value = match client.get(&stats_url).send().await {
                Ok(reply) => reply.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let sample = json!({
                "seconds": started.elapsed().as_secs(),
                "rss_mib": mib(rss_kib(pid)),
                "anon_mib": mib(status_kib(pid, "RssAnon:")),
                "file_mib": mib(status_kib(pid, "RssFile:")),
                "entries": stats["entries"],
                "evicted": stats["bound"]["evicted"],
                "memory_layer_mib": (stats["memory"]["bytes"].as_f64().unwrap_or(0.0) / 1048576.0 * 10.0).round() / 10.0,
                "requests": index,
            });
            println!("{sample}");
            samples.push(sample);
        }
    }
    while in_flight.join_next().await.is_some() {}
    let at_cap = samples
        .iter()
        .position(|sample| sample["entries"].as_u64().unwrap_or(0) >= max_entries * 9 / 10);
    let rss = |sample: &Value| sample["rss_mib"].as_f64().unwrap_or(0.0);
    let peak = samples.iter().map(rss).fold(0.0, f64::max);
    let verdict = match at_cap {
        Some(position) => {
            let base = rss(&samples[position]);
            let after: Vec<f64> = samples[position..].iter().map(rss).collect();
            let low = after.iter().copied().fold(f64::MAX, f64::min);
            let high = after.iter().copied().fold(0.0, f64::max);
            json!({
                "cap_reached_at_seconds": samples[position]["seconds"],
                "rss_at_cap_mib": base,
                "rss_after_cap_min_mib": low,
                "rss_after_cap_max_mib": high,
                "flat_within_10_percent": high <= base * 1.1 && low >= base * 0.9,
                "peak_under_200_mib": peak < 200.0,
            })
        }
        None => json!({"cap_reached_at_seconds": null, "peak_under_200_mib": peak < 200.0}),
    };
    json!({
        "seconds": seconds,
        "rate_per_second": rate,
        "max_entries": max_entries,
        "semantic": semantic,
        "requests": index,
        "failed_requests": failures,
        "rss_idle_mib": rss_idle as f64 / 1024.0,
        "rss_peak_mib": peak,
        "verdict": verdict,
        "samples": samples,
    })
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "soak bench: run with `cargo bench --bench soak`; nothing measured in a test build"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results = runtime.block_on(run());
    println!(
        "{}",
        serde_json::to_string_pretty(&results["verdict"]).unwrap()
    );
    // `SOAK_OUTPUT=FILE` keeps a short or experimental run apart from the committed one.
    let path = std::env::var("SOAK_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("bench/results/soak.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("written to {}", path.display());
}
