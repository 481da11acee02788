//! The cache at load: misses at a fixed rate (default 1,000/s) through a gateway with the
//! semantic cache on, against the same traffic through a gateway with the cache off.
//! Run with `BENCH_CACHE_ONLY=load cargo bench --bench cache` (also part of
//! `make bench-cache`); results go to `bench/results/cache_load.json`.
//!
//! Environment: `LOAD_SECONDS` (default 20), `LOAD_RATE` (default 1000 requests/s),
//! `LOAD_CONTEXT`: `shared` (default: every unique question is a first turn, all in the
//! one context the stored questions fill) or `conversations` (every unique question is
//! the second turn of a conversation of its own, so its context partition is empty, as
//! for later turns of real chats; results go to `bench/results/cache_load_conversations.json`).
//! One request in twenty is a rewording of a question stored before the run (pairs from
//! `bench/data/semantic_pairs.jsonl`, sent with `no-store`), to count the semantic hits
//! still found under load against those found at idle.
//!
//! Reported: the latency of a miss with the cache on and off (p50/p99) and the difference
//! (what the cache adds to a miss), the share of lookups that skipped the semantic stage
//! and why, the hits found, and what the writer did (stored, dropped, embedded late).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{percentile, root};

fn config(mock: &airbag::mock::MockProvider, cache: bool, store: &std::path::Path) -> String {
    let model = root().join(".cache/model");
    let cache_section = if cache {
        format!(
            "[cache]\n[cache.semantic]\nmodel_dir = \"{}\"\nonnxruntime = \"{}\"\n[cache.store]\npath = \"{}\"\n",
            model.join("all-minilm-l6-v2").display(),
            model.join("onnxruntime/libonnxruntime.so").display(),
            store.display()
        )
    } else {
        "[cache]\nenabled = false\n".to_string()
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [providers.mock]\nkind = \"openai\"\nbase_url = \"{}\"\nkeys = []\n\
         [[routes]]\nmodel = \"chat\"\nchain = [\"mock/m\"]\n{cache_section}",
        mock.base_url()
    )
}

async fn start(text: &str) -> airbag::server::RunningGateway {
    let env = airbag::config::Env::default();
    let config =
        airbag::config::Config::from_toml(text, std::path::Path::new("bench.toml"), &env).unwrap();
    airbag::server::start(&config, &env).await.unwrap()
}

fn unique_question(index: u64) -> String {
    const TOPICS: [&str; 6] = [
        "sourdough starters",
        "electric scooters",
        "roof insulation",
        "chess openings",
        "marathon training",
        "wine storage",
    ];
    format!(
        "What matters most about {} in situation {index}?",
        TOPICS[(index % 6) as usize]
    )
}

fn paraphrases() -> Vec<(String, String)> {
    std::fs::read_to_string(root().join("bench/data/semantic_pairs.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|pair| pair["kind"] == "paraphrase")
        .map(|pair| {
            (
                pair["a"].as_str().unwrap().to_string(),
                pair["b"].as_str().unwrap().to_string(),
            )
        })
        .take(100)
        .collect()
}

struct Outcome {
    micros: f64,
    served_by: String,
    reworded: bool,
}

/// Whether unique questions come as later turns of conversations of their own.
fn in_conversations() -> bool {
    std::env::var("LOAD_CONTEXT").is_ok_and(|context| context == "conversations")
}

async fn ask(
    client: &reqwest::Client,
    url: &str,
    question: &str,
    no_store: bool,
) -> Option<(f64, String)> {
    ask_after(client, url, None, question, no_store).await
}

/// [`ask`], as the second turn after `earlier` (a user turn and a short answer).
async fn ask_after(
    client: &reqwest::Client,
    url: &str,
    earlier: Option<String>,
    question: &str,
    no_store: bool,
) -> Option<(f64, String)> {
    let started = Instant::now();
    let messages = match earlier {
        Some(earlier) => json!([
            {"role": "user", "content": earlier},
            {"role": "assistant", "content": "Sure, ask away."},
            {"role": "user", "content": question},
        ]),
        None => json!([{"role": "user", "content": question}]),
    };
    let mut request = client
        .post(url)
        .json(&json!({"model": "chat", "messages": messages}));
    if no_store {
        request = request.header("cache-control", "no-store");
    }
    let reply = request.send().await.ok()?;
    let served_by = reply
        .headers()
        .get("x-airbag-served-by")?
        .to_str()
        .ok()?
        .to_string();
    reply.bytes().await.ok()?;
    Some((started.elapsed().as_secs_f64() * 1e6, served_by))
}

/// Open loop: one request every 1/rate s for `seconds`, whatever the answers' speed.
async fn drive(
    url: &str,
    seconds: u64,
    rate: u64,
    offset: u64,
    rewordings: &[(String, String)],
) -> (Vec<Outcome>, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = seconds * rate;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let conversations = in_conversations();
    for index in 0..total {
        ticks.tick().await;
        let reworded = !rewordings.is_empty() && index % 20 == 7;
        let question = if reworded {
            rewordings[(index / 20) as usize % rewordings.len()]
                .1
                .clone()
        } else {
            unique_question(offset + index)
        };
        let earlier = (conversations && !reworded).then(|| {
            format!(
                "I have a few questions for conversation {}.",
                offset + index
            )
        });
        let client = client.clone();
        let url = url.to_string();
        tasks.spawn(async move {
            ask_after(&client, &url, earlier, &question, reworded)
                .await
                .map(|(micros, served_by)| Outcome {
                    micros,
                    served_by,
                    reworded,
                })
        });
    }
    let sent_rate = total as f64 / started.elapsed().as_secs_f64();
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(outcome)) = done {
            outcomes.push(outcome);
        }
    }
    (outcomes, sent_rate)
}

fn latency(mut micros: Vec<f64>) -> Value {
    micros.sort_by(|a, b| a.total_cmp(b));
    json!({
        "count": micros.len(),
        "p50_us": percentile(&micros, 0.50).round(),
        "p99_us": percentile(&micros, 0.99).round(),
    })
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

pub async fn run() -> Value {
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20);
    let rate: u64 = std::env::var("LOAD_RATE")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1000);
    let mock = super::echo_mock().await;
    let store = tempfile::tempdir().unwrap();

    // Baseline: the cache off.
    let off = start(&config(&mock, false, store.path())).await;
    let off_url = format!("http://{}/v1/chat/completions", off.proxy_addr);
    let (outcomes, off_rate) = drive(&off_url, seconds, rate, 0, &[]).await;
    off.shutdown().await;
    let off_latency = latency(outcomes.iter().map(|outcome| outcome.micros).collect());

    // The cache on: seed the stored questions, count the rewordings found at idle.
    let on = start(&config(&mock, true, store.path())).await;
    let url = format!("http://{}/v1/chat/completions", on.proxy_addr);
    let client = reqwest::Client::new();
    let pairs = paraphrases();
    for (stored, _) in &pairs {
        ask(&client, &url, stored, false).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut idle_hits = 0;
    for (_, reworded) in &pairs {
        if let Some((_, served_by)) = ask(&client, &url, reworded, true).await
            && served_by == "cache:semantic"
        {
            idle_hits += 1;
        }
    }
    let before = on.gateway.metrics.render();
    let (outcomes, on_rate) = drive(&url, seconds, rate, 1_000_000, &pairs).await;
    // Let the writer finish what was queued.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = on.gateway.metrics.render();
    on.shutdown().await;
    let delta = |series: &str| counter(&after, series) - counter(&before, series);

    let misses: Vec<f64> = outcomes
        .iter()
        .filter(|outcome| !outcome.reworded && outcome.served_by.starts_with("provider:"))
        .map(|outcome| outcome.micros)
        .collect();
    let reworded = outcomes.iter().filter(|outcome| outcome.reworded).count();
    let found = outcomes
        .iter()
        .filter(|outcome| outcome.reworded && outcome.served_by == "cache:semantic")
        .count();
    let on_latency = latency(misses);
    let added = |key: &str| {
        on_latency[key].as_f64().unwrap_or(0.0) - off_latency[key].as_f64().unwrap_or(0.0)
    };
    let empty_context =
        delta("airbag_cache_lookups_total{kind=\"semantic\",result=\"empty_context\"}");
    let saturated = delta("airbag_cache_semantic_skipped_total{reason=\"saturated\"}");
    let late = delta("airbag_cache_semantic_skipped_total{reason=\"deadline\"}");
    let lookups = outcomes.len() as f64;
    let results = json!({
        "seconds": seconds,
        "rate_asked": rate,
        "context": if in_conversations() { "conversations" } else { "shared" },
        "rate_sent_cache_off": off_rate.round(),
        "rate_sent_cache_on": on_rate.round(),
        "miss_latency_cache_off": off_latency,
        "miss_latency_cache_on": on_latency,
        "added_per_miss_us": {"p50": added("p50_us"), "p99": added("p99_us")},
        "semantic_skipped_share": (saturated + late) / lookups.max(1.0),
        "semantic_skipped": {"saturated": saturated, "deadline": late},
        "empty_context_share": empty_context / lookups.max(1.0),
        "embedding_abandoned": delta("airbag_cache_embedding_abandoned_total"),
        "rewordings": {"asked": reworded, "hits_under_load": found, "hit_share_at_idle": idle_hits as f64 / pairs.len().max(1) as f64},
        "writes": {
            "stored": delta("airbag_cache_writes_total{outcome=\"stored\"}"),
            "dropped": delta("airbag_cache_writes_total{outcome=\"dropped\"}"),
            "embedded_by_writer": delta("airbag_cache_writer_embedded_total"),
        },
    });
    println!(
        "\ncache at load: {}",
        serde_json::to_string_pretty(&results).unwrap()
    );
    let path = root().join(if in_conversations() {
        "bench/results/cache_load_conversations.json"
    } else {
        "bench/results/cache_load.json"
    });
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    results
}
