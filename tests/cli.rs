//! The `airbag` binary as a user runs it: `check-config`, `serve` with the shipped config,
//! and `mock-provider` with fault flags.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AIRBAG: &str = env!("CARGO_BIN_EXE_airbag");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, even on a failed assertion.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_until_up(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::get(url).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
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
    let output = Command::new(AIRBAG)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
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
    let output = Command::new(AIRBAG)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
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
    let (mock_port, proxy_port, admin_port) = (free_port(), free_port(), free_port());
    let _mock = Running(
        Command::new(AIRBAG)
            .args([
                "mock-provider",
                "--listen",
                &format!("127.0.0.1:{mock_port}"),
                "--name",
                "cli",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let shipped = std::fs::read_to_string("config/airbag.toml").unwrap();
    let config = shipped
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{proxy_port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{admin_port}"))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{mock_port}"));
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("airbag.toml");
    std::fs::write(&path, config).unwrap();
    let mut gateway = Running(
        Command::new(AIRBAG)
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_up(&format!("http://127.0.0.1:{mock_port}/mock/stats")).await;
    wait_until_up(&format!("http://127.0.0.1:{proxy_port}/healthz")).await;

    let client = reqwest::Client::new();
    let reply = client
        .post(format!("http://127.0.0.1:{proxy_port}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "ping"}]}))
        .send()
        .await
        .unwrap();
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

    // The `chat` route's providers have no keys here: every target is skipped.
    let reply = client
        .post(format!("http://127.0.0.1:{proxy_port}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "ping"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 503);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["airbag"]["attempts"][0]["outcome"], "disabled");

    let metrics = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
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

#[tokio::test]
async fn mock_provider_flags_inject_faults() {
    let port = free_port();
    let _mock = Running(
        Command::new(AIRBAG)
            .args([
                "mock-provider",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--fail-rate",
                "1",
                "--fail-status",
                "529",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_up(&format!("http://127.0.0.1:{port}/mock/stats")).await;
    let reply = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 529);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
}
