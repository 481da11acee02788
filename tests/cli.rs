//! The `airbag` binary as a user runs it: `check-config`, `serve` with the shipped config,
//! and `mock-provider` with fault flags.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{AIRBAG, field, spawn_announced, spawn_logging};

/// A one-message OpenAI chat request for `model` through the gateway at `proxy`.
async fn ping(client: &reqwest::Client, proxy: &str, model: &str) -> reqwest::Response {
    client
        .post(format!("http://{proxy}/v1/chat/completions"))
        .json(
            &serde_json::json!({"model": model, "messages": [{"role": "user", "content": "ping"}]}),
        )
        .send()
        .await
        .unwrap()
}

#[test]
fn the_shipped_config_checks_clean_on_a_machine_without_keys() {
    let output = Command::new(AIRBAG)
        .args(["check-config", "--config", "config/airbag.toml"])
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("provider openai"), "{stdout}");
    assert!(
        stdout.contains("disabled: none of its keys are set"),
        "{stdout}"
    );
    assert!(
        stdout.contains("canned canned: account-access, billing, default"),
        "{stdout}"
    );
}

#[test]
fn check_config_fails_on_a_canned_file_that_would_be_skipped() {
    let folder = tempfile::tempdir().unwrap();
    let canned = folder.path().join("canned");
    std::fs::create_dir(&canned).unwrap();
    std::fs::write(canned.join("good.toml"), "text = \"fine\"\n").unwrap();
    std::fs::write(
        canned.join("billing.toml"),
        "patterns = [\"(unclosed\"]\ntext = \"x\"\n",
    )
    .unwrap();
    let path = folder.path().join("airbag.toml");
    std::fs::write(
        &path,
        format!("[canned]\ndir = {:?}\n", canned.to_string_lossy()),
    )
    .unwrap();
    let (ok, stderr) = check_config(&path);
    assert!(!ok);
    assert!(
        stderr.contains("billing.toml: `patterns[0]`: is not a valid regex"),
        "{stderr}"
    );

    std::fs::write(&path, "[canned]\ndir = \"/nonexistent/canned\"\n").unwrap();
    let (ok, stderr) = check_config(&path);
    assert!(!ok);
    assert!(stderr.contains("canned.dir"), "{stderr}");
}

/// `airbag check-config` on a file: whether it passed, and what it said on stderr.
fn check_config(path: &std::path::Path) -> (bool, String) {
    let output = Command::new(AIRBAG)
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status.success(), stderr)
}

#[test]
fn a_bad_config_is_reported_with_every_path_and_fix() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
keys = [{ key = "sk-live-inline-secret" }]
timeouts = { first_byte = "0s" }

[[routes]]
model = "chat"
chain = ["openai/gpt-4o", "azure/gpt-4o"]
"#,
    )
    .unwrap();
    let (ok, stderr) = check_config(&path);
    assert!(!ok);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(
        stderr.contains("providers.openai.keys[0].key: secrets are never written inline"),
        "{stderr}"
    );
    assert!(
        stderr.contains("providers.openai.timeouts.first_byte: must be longer than 0"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("routes[0].chain[1]: provider `azure` is not defined; add [providers.azure]"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sk-live-inline-secret"),
        "the secret itself is never echoed"
    );

    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:1\"\nmax_bodyy = \"1MiB\"\n",
    )
    .unwrap();
    let (ok, stderr) = check_config(&path);
    assert!(!ok);
    assert!(stderr.contains("max_bodyy"), "{stderr}");

    let output = Command::new(AIRBAG)
        .args(["serve", "--config", "/nonexistent/airbag.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/airbag.toml"), "{stderr}");
}

#[tokio::test]
async fn serve_and_mock_provider_work_together_from_the_command_line() {
    let (_mock, announced) = spawn_announced(
        &["mock-provider", "--listen", "127.0.0.1:0", "--name", "cli"],
        "mock provider ready",
    );
    let mock_url = field(&announced, "base_url");
    let shipped = std::fs::read_to_string("config/airbag.toml").unwrap();
    let store = tempfile::tempdir().unwrap();
    let config = shipped
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8081", "127.0.0.1:0")
        .replace("http://127.0.0.1:9000/v1", &mock_url)
        .replace(
            "path = \"data/cache\"",
            &format!("path = \"{}\"", store.path().display()),
        );
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("airbag.toml");
    std::fs::write(&path, config).unwrap();
    let path_text = path.to_string_lossy().to_string();
    let (mut gateway, announced) =
        spawn_announced(&["serve", "--config", &path_text], "airbag is listening");
    let proxy = field(&announced, "proxy_addr");
    let admin = field(&announced, "admin_addr");
    let client = reqwest::Client::new();
    let reply = ping(&client, &proxy, "demo").await;
    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.headers()["x-airbag-served-by"],
        "provider:mock/demo-model"
    );
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "mock cli answers: ping"
    );
    // The shipped config caches: the repeat never reaches the mock.
    let repeat = ping(&client, &proxy, "demo").await;
    assert_eq!(repeat.headers()["x-airbag-served-by"], "cache:exact");

    // The `chat` route's providers have no keys here: every target is skipped, and the
    // shipped catch-all in canned/ (the working directory's) answers.
    let reply = ping(&client, &proxy, "chat").await;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["x-airbag-served-by"], "canned:default");
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["airbag"]["rung"], "canned");
    assert_eq!(body["airbag"]["attempts"][0]["outcome"], "disabled");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("temporarily unavailable"), "{text}");

    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("airbag_requests_total"), "{metrics}");

    // SIGTERM: a graceful stop with exit status 0.
    let pid = gateway.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `log.format = "json"`: every line is one JSON object, with the fields of the text
/// format (the request span's rung and served_by included).
#[tokio::test]
async fn json_logs_carry_the_same_fields() {
    let (_mock, announced) = spawn_announced(
        &["mock-provider", "--listen", "127.0.0.1:0", "--name", "cli"],
        "mock provider ready",
    );
    let mock_url = field(&announced, "base_url");
    let folder = tempfile::tempdir().unwrap();
    let canned = folder.path().join("canned");
    std::fs::create_dir(&canned).unwrap();
    let path = folder.path().join("airbag.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\n[cache]\nenabled = false\n[canned]\ndir = {canned:?}\n\
             [providers.mock]\nkind = \"openai\"\nbase_url = \"{mock_url}\"\n\
             [[routes]]\nmodel = \"demo\"\nchain = [\"mock/demo-model\"]\n"
        ),
    )
    .unwrap();
    let path_text = path.to_string_lossy().to_string();
    let (_gateway, announced, rest) =
        spawn_logging(&["serve", "--config", &path_text], "airbag is listening");
    let line: serde_json::Value = serde_json::from_str(&announced)
        .unwrap_or_else(|error| panic!("not a JSON line ({error}): {announced}"));
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["message"], "airbag is listening");
    let proxy = line["fields"]["proxy_addr"].as_str().unwrap().to_string();
    let reply = ping(&reqwest::Client::new(), &proxy, "demo").await;
    assert_eq!(reply.status(), 200);
    let served = loop {
        let text = rest
            .recv_timeout(Duration::from_secs(10))
            .expect("the request is logged");
        let line: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {text}"));
        if line["fields"]["message"] == "request served" {
            break line;
        }
    };
    assert_eq!(served["span"]["rung"], "provider", "{served}");
    assert_eq!(
        served["span"]["served_by"], "provider:mock/demo-model",
        "{served}"
    );
    assert!(served["span"]["request_id"].is_string(), "{served}");
    assert!(served["fields"]["elapsed_ms"].is_u64(), "{served}");
}

#[tokio::test]
async fn mock_provider_flags_inject_faults() {
    let (_mock, announced) = spawn_announced(
        &[
            "mock-provider",
            "--listen",
            "127.0.0.1:0",
            "--fail-rate",
            "1",
            "--fail-status",
            "529",
        ],
        "mock provider ready",
    );
    let base_url = field(&announced, "base_url");
    let reply = reqwest::Client::new()
        .post(format!("{base_url}/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 529);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
}

#[test]
fn a_drill_against_an_unreachable_gateway_fails_with_the_reason() {
    let output = Command::new(AIRBAG)
        .args([
            "drill",
            "--gateway",
            "http://127.0.0.1:9",
            "--admin",
            "http://127.0.0.1:9",
            "--target",
            "openai/gpt-4o",
            "--rate",
            "10",
            "--before",
            "100ms",
            "--during",
            "100ms",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the admin listener at http://127.0.0.1:9"),
        "{stderr}"
    );
}

#[test]
fn check_config_into_a_closed_pipe_exits_quietly() {
    // The reading end is closed before airbag starts, so every write fails with a broken
    // pipe, as with `airbag check-config | head` once head has what it wants.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(AIRBAG)
        .args(["check-config", "--config", "config/airbag.toml"])
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        output.status.success(),
        "the config is fine, whoever reads: {stderr}"
    );
}

#[test]
fn check_config_refuses_secrets_that_are_only_whitespace_naming_each_key() {
    let folder = tempfile::tempdir().unwrap();
    let canned = folder.path().join("canned");
    std::fs::create_dir(&canned).unwrap();
    let path = folder.path().join("airbag.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[admin]
token = "env:AIRBAG_TEST_ADMIN_TOKEN"

[[clients]]
key = "env:AIRBAG_TEST_CLIENT_KEY"
tenant = "acme"

[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
keys = [{{ key = "env:AIRBAG_TEST_PROVIDER_KEY" }}]

[[routes]]
model = "chat"
chain = ["openai/gpt-4o"]

[canned]
dir = {:?}
"#,
            canned.to_string_lossy()
        ),
    )
    .unwrap();
    let run = |admin: &str| {
        Command::new(AIRBAG)
            .args(["check-config", "--config"])
            .arg(&path)
            .env("AIRBAG_TEST_ADMIN_TOKEN", admin)
            .env("AIRBAG_TEST_CLIENT_KEY", " \t ")
            .env("AIRBAG_TEST_PROVIDER_KEY", "\n")
            .output()
            .unwrap()
    };
    let output = run("   ");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for problem in [
        "admin.token: environment variable AIRBAG_TEST_ADMIN_TOKEN holds only whitespace",
        "clients[0].key: environment variable AIRBAG_TEST_CLIENT_KEY holds only whitespace",
        "providers.openai.keys[0].key: environment variable AIRBAG_TEST_PROVIDER_KEY holds only whitespace",
    ] {
        assert!(stderr.contains(problem), "missing `{problem}` in {stderr}");
    }
    // A real token is fine; the other two are still refused.
    let output = run("s3cret");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("admin.token"), "{stderr}");
    assert!(stderr.contains("clients[0].key"), "{stderr}");
}
