//! Surviving a crash, as an operator sees it: the real `airbag serve` binary killed with
//! SIGKILL keeps the cache answers it stored more than `cache.flush_interval` before
//! (exact, semantic and stale-if-error), and a start-up removes the temporary files that
//! interrupted canned writes left behind, and nothing else.
//!
//! The model comes from `make model`; the cache test fails (it does not skip) without it.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use airbag::mock::{Fault, FaultRule};
use common::process::{Running, field, spawn_announced};
use common::{
    TestGateway, cache_section, canned_dir, canned_section, mock, openai_chat, provider, route,
};
use serde_json::Value;

/// A gateway process and the addresses it announced; killed when dropped.
struct Gateway {
    process: Running,
    proxy: String,
    admin: String,
}

impl Gateway {
    /// Start `airbag serve --config path` and wait for it to announce its addresses.
    fn serve(config: &Path) -> Gateway {
        let config = config.to_string_lossy();
        let (process, line) =
            spawn_announced(&["serve", "--config", &config], "airbag is listening");
        Gateway {
            process,
            proxy: field(&line, "proxy_addr"),
            admin: field(&line, "admin_addr"),
        }
    }

    /// Ask route `chat` one question; returns what served it (the rung tag) and the answer.
    async fn ask(&self, client: &reqwest::Client, question: &str, ttl: Option<&str>) -> String {
        let mut request = client
            .post(format!("http://{}/v1/chat/completions", self.proxy))
            .json(&openai_chat("chat", question));
        if let Some(ttl) = ttl {
            request = request.header("x-airbag-cache-ttl", ttl);
        }
        let reply = request.send().await.unwrap();
        let served_by = reply
            .headers()
            .get("x-airbag-served-by")
            .map(|value| value.to_str().unwrap().to_string())
            .unwrap_or_default();
        let status = reply.status();
        let body = reply.text().await.unwrap();
        assert_eq!(status, 200, "{question}: {body}");
        served_by
    }

    async fn cache_stats(&self, client: &reqwest::Client) -> Value {
        client
            .get(format!("http://{}/admin/cache", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// SIGKILL: no shutdown, no flush, exactly like a crash.
    fn crash(self) {
        self.process.crash();
    }
}

/// Questions stored before the crash, each asked again after it.
const STORED: usize = 20;

fn question(number: usize) -> String {
    format!("Which topic does chapter {number} of the handbook cover?")
}

#[tokio::test]
async fn answers_flushed_before_a_sigkill_serve_after_the_restart() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let canned = canned_dir(&[]);
    let folder = tempfile::tempdir().unwrap();
    let config_path = folder.path().join("airbag.toml");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}{}{}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
        cache_section(store.path(), "flush_interval = \"100ms\"", ""),
        canned_section(canned.path()),
    );
    std::fs::write(&config_path, config).unwrap();
    let client = reqwest::Client::new();

    let gateway = Gateway::serve(&config_path);
    for number in 0..STORED {
        let served_by = gateway.ask(&client, &question(number), None).await;
        assert_eq!(served_by, "provider:up/m");
    }
    let opening_hours = "What are your opening hours?";
    assert_eq!(
        gateway.ask(&client, opening_hours, None).await,
        "provider:up/m"
    );
    // Kept for one second, then only servable as stale-if-error.
    let service_up = "Is the service up?";
    assert_eq!(
        gateway.ask(&client, service_up, Some("1")).await,
        "provider:up/m"
    );
    let stale_from = Instant::now() + Duration::from_millis(2100);
    let total = STORED as u64 + 2;

    // Wait (bounded) until the store holds every answer and a flush has covered them.
    let mut stats = Value::Null;
    for _ in 0..400 {
        stats = gateway.cache_stats(&client).await;
        if stats["entries"].as_u64() == Some(total) && stats["unflushed_changes"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(stats["entries"].as_u64(), Some(total), "{stats}");
    assert_eq!(stats["unflushed_changes"], 0, "{stats}");
    gateway.crash();

    let restarted = Gateway::serve(&config_path);
    let stats = restarted.cache_stats(&client).await;
    assert_eq!(stats["entries"].as_u64(), Some(total), "{stats}");
    for number in 0..STORED {
        let served_by = restarted.ask(&client, &question(number), None).await;
        assert_eq!(served_by, "cache:exact", "question {number}");
    }
    assert_eq!(
        restarted.ask(&client, opening_hours, None).await,
        "cache:exact"
    );
    assert_eq!(
        restarted
            .ask(&client, "what are your opening hours", None)
            .await,
        "cache:semantic"
    );
    assert_eq!(upstream.request_count(), STORED + 2);

    // The provider is down and the short-lived answer has expired: stale-if-error.
    tokio::time::sleep(stale_from.saturating_duration_since(Instant::now())).await;
    upstream.set_faults(vec![FaultRule::always(Fault::status(503))]);
    assert_eq!(
        restarted.ask(&client, service_up, None).await,
        "cache:stale"
    );
    assert_eq!(
        restarted.ask(&client, "is the service up", None).await,
        "cache:stale"
    );
}

#[tokio::test]
async fn start_up_removes_only_the_leftovers_of_interrupted_canned_writes() {
    let entry = "priority = -1000\ntext = \"We are on it.\"\n";
    let kept = [
        ("default.toml", entry),
        ("notes.txt", "not an entry"),
        // Hidden or temporary-looking, but not a name airbag writes.
        (".default.toml.swp", "an editor's swap file"),
        (".default.toml.tmp", "no random suffix"),
        (".backup.AbC123xyz789.tmp", "not an entry's file"),
    ];
    let leftovers = [
        (
            ".default.toml.AbC123xyz789.tmp",
            "priority = -1000\ntext = \"half",
        ),
        (".billing.toml.0123456789ab.tmp", ""),
        (".refund-2.toml.ZZZZZZZZZZZZ.tmp", "text = \"x\"\n"),
    ];
    let dir = canned_dir(&[kept.as_slice(), leftovers.as_slice()].concat());
    let upstream = mock("up").await;
    let config = format!(
        "{}{}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
        canned_section(dir.path()),
    );
    let gateway = TestGateway::start(&config, &[]).await;

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|item| item.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut expected: Vec<String> = kept.iter().map(|(name, _)| name.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected);
    for (name, content) in kept {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(name)).unwrap(),
            content,
            "{name}"
        );
    }
    // The entry itself still serves.
    let entries = gateway.admin_get("/admin/canned", None).await.json();
    assert!(entries.to_string().contains("default"), "{entries}");
}
