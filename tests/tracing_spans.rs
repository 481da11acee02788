//! Every request runs in one `request` span whose fields say how it was served, so its
//! log lines (attempts included) carry the rung, the target and the attempt count.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use airbag::mock::{Fault, FaultRule};
use common::{TestGateway, mock, openai_chat, provider, route};

/// Collects formatted log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread, so the gateway's tasks see this test's thread-local subscriber.
#[tokio::test(flavor = "current_thread")]
async fn request_logs_carry_rung_target_and_attempts() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("airbag=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    primary.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let config = format!(
        "{}{}{}",
        provider("primary", "openai", &primary, "retries = 1"),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["primary/big", "fallback/small"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway.openai(openai_chat("chat", "a secret prompt")).await;
    assert_eq!(reply.status, 200);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let served = logs
        .lines()
        .find(|line| line.contains("request served"))
        .unwrap_or_else(|| panic!("no request line in:\n{logs}"));
    for field in [
        "protocol=\"openai\"",
        "model=\"chat\"",
        "rung=\"provider\"",
        "served_by=\"provider:fallback/small\"",
        "attempts=3",
        "fallback_depth=1",
    ] {
        assert!(served.contains(field), "{field} missing from: {served}");
    }
    let failed_attempt = logs
        .lines()
        .find(|line| line.contains("upstream attempt failed"))
        .unwrap_or_else(|| panic!("no attempt line in:\n{logs}"));
    assert!(
        failed_attempt.contains("request{"),
        "attempt logs sit in the request span: {failed_attempt}"
    );
    assert!(
        !logs.contains("a secret prompt"),
        "prompt text is never logged:\n{logs}"
    );
}
