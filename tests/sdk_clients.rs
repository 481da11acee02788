//! The official OpenAI and Anthropic Python SDKs against the real gateway: plain answers,
//! streams, tool round trips and errors, each served by an `openai`-kind and an
//! `anthropic`-kind mock provider, directly and as a fallback at depth 1, and streams that
//! break after they started.
//!
//! The SDKs live in `.venv-sdk` (`scripts/sdk-venv.sh`, run by `make test`), whose
//! interpreter is passed as `AIRBAG_SDK_PYTHON`. The checks on what the SDKs see are in
//! `tests/sdk/clients.py`; this file starts the gateway, runs it, and checks what the
//! mock providers received.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use airbag::mock::{Fault, FaultRule, MockProvider, ReceivedRequest};
use common::{TestGateway, mock, provider, route};
use serde_json::{Value, json};

const CLIENT_KEY: &str = "sk-airbag-sdk-test";
const TOOL_RESULT: &str = "17 degrees and dry";
/// Only guards against a hung run: each SDK call has its own 30 s timeout.
const PYTHON_LIMIT: Duration = Duration::from_secs(300);

/// The interpreter with the SDKs, or None when the test should be skipped.
fn sdk_python() -> Option<String> {
    if let Ok(python) = std::env::var("AIRBAG_SDK_PYTHON") {
        return Some(python);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "AIRBAG_SDK_PYTHON is not set, so the SDK test cannot run in CI; run the README's \
             test command, `make test`, which builds .venv-sdk and sets it"
        );
    }
    println!("SKIPPED: set AIRBAG_SDK_PYTHON (make test does) to run the SDK test");
    None
}

/// Runs a Python script of `tests/sdk/` on the blocking pool, so the gateway keeps
/// serving meanwhile.
async fn run_clients(python: String, script: &str, args: Vec<String>) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .args(&args)
            .env("PYTHONUNBUFFERED", "1");
        // The SDKs honour proxy variables; loopback traffic must not go through one.
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
            command.env_remove(name).env_remove(name.to_lowercase());
        }
        command.env("NO_PROXY", "127.0.0.1,localhost");
        command
            .output()
            .unwrap_or_else(|error| panic!("cannot run {python} (AIRBAG_SDK_PYTHON): {error}"))
    });
    match tokio::time::timeout(PYTHON_LIMIT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!("the task running the SDK script failed: {error}"),
        Err(_) => panic!("the SDK script did not finish within {PYTHON_LIMIT:?}"),
    }
}

/// A route entry for the script: what serving `model` through `target` looks like.
fn expectation(model: &str, mock_name: &str, target: &str, failed_primary: Option<&str>) -> Value {
    let mut attempts = Vec::new();
    if let Some(primary) = failed_primary {
        attempts.push(json!({"target": primary, "outcome": "status_503"}));
    }
    attempts.push(json!({"target": target, "outcome": "ok"}));
    json!({
        "model": model,
        "mock": mock_name,
        "served_by": format!("provider:{target}"),
        "depth": usize::from(failed_primary.is_some()),
        "attempts": attempts,
    })
}

/// The request a mock received whose body mentions `prompt` and carries a tool result.
fn tool_result_request<'a>(received: &'a [ReceivedRequest], prompt: &str) -> &'a Value {
    received
        .iter()
        .map(|request| &request.body)
        .find(|body| body.to_string().contains(prompt) && body.to_string().contains(TOOL_RESULT))
        .unwrap_or_else(|| panic!("no request with `{prompt}` and a tool result: {received:#?}"))
}

#[tokio::test]
async fn the_official_python_sdks_work_through_the_gateway() {
    let Some(python) = sdk_python() else {
        return;
    };
    let openai_upstream = mock("openai-upstream").await;
    let anthropic_upstream = mock("anthropic-upstream").await;
    let down = mock("down").await;
    down.set_faults(vec![FaultRule::always(Fault::status(503))]);
    // Three stream events, then a broken connection: after the gateway has committed.
    let flaky = mock("flaky").await;
    flaky.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 3 })]);
    let config = format!(
        "[[clients]]\nkey = \"env:SDK_CLIENT_KEY\"\ntenant = \"sdk\"\n{}{}{}{}{}{}{}{}{}{}{}{}",
        provider("oai", "openai", &openai_upstream, ""),
        provider("ant", "anthropic", &anthropic_upstream, ""),
        // One always-503 mock behind a provider of each kind, so each fallback below is
        // reached after a failure in the other protocol.
        // Breakers off: every request must show the failed attempt before the fallback.
        provider(
            "down_openai",
            "openai",
            &down,
            "retries = 0\nbreaker = { enabled = false }"
        ),
        provider(
            "down_anthropic",
            "anthropic",
            &down,
            "retries = 0\nbreaker = { enabled = false }"
        ),
        route("via-openai", &["oai/gpt-mock"]),
        route("via-anthropic", &["ant/claude-mock"]),
        route(
            "failover-to-anthropic",
            &["down_openai/big", "ant/claude-fallback"]
        ),
        route(
            "failover-to-openai",
            &["down_anthropic/big", "oai/gpt-fallback"]
        ),
        provider("flaky_openai", "openai", &flaky, "retries = 0"),
        provider("flaky_anthropic", "anthropic", &flaky, "retries = 0"),
        route("breaks-via-openai", &["flaky_openai/m"]),
        route("breaks-via-anthropic", &["flaky_anthropic/m"]),
    );
    let gateway = TestGateway::start(&config, &[("SDK_CLIENT_KEY", CLIENT_KEY)]).await;
    let routes = json!([
        expectation("via-openai", "openai-upstream", "oai/gpt-mock", None),
        expectation(
            "via-anthropic",
            "anthropic-upstream",
            "ant/claude-mock",
            None
        ),
        expectation(
            "failover-to-anthropic",
            "anthropic-upstream",
            "ant/claude-fallback",
            Some("down_openai/big"),
        ),
        expectation(
            "failover-to-openai",
            "openai-upstream",
            "oai/gpt-fallback",
            Some("down_anthropic/big"),
        ),
    ]);
    let broken = json!([
        expectation("breaks-via-openai", "flaky", "flaky_openai/m", None),
        expectation("breaks-via-anthropic", "flaky", "flaky_anthropic/m", None),
    ]);
    let args = vec![
        "--gateway".to_string(),
        gateway.url(""),
        "--key".to_string(),
        CLIENT_KEY.to_string(),
        "--bad-key".to_string(),
        "sk-not-a-client".to_string(),
        "--routes".to_string(),
        routes.to_string(),
        "--broken-routes".to_string(),
        broken.to_string(),
        "--unknown-model".to_string(),
        "no-such-model".to_string(),
    ];

    let summary = run_summary(python, args).await;
    assert_eq!(summary["failed"], json!([]), "{summary}");
    // 9 scenarios for each of 4 routes, 2 SDKs for each of 2 broken routes, then
    // 2 unknown-model, 2 wrong-key and 2 listing checks.
    assert_eq!(summary["passed"], 9 * 4 + 2 * 2 + 6, "{summary}");

    // What the SDKs sent reached the mock of the route's provider, once per request.
    let sent = |model: &str| summary["requests_per_route"][model].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        sent("via-openai"),
        13,
        "6 per SDK and a thinking history: {summary}"
    );
    assert_eq!(
        openai_upstream.request_count(),
        sent("via-openai") + sent("failover-to-openai")
    );
    assert_eq!(
        anthropic_upstream.request_count(),
        sent("via-anthropic") + sent("failover-to-anthropic")
    );
    assert_eq!(
        down.request_count(),
        sent("failover-to-anthropic") + sent("failover-to-openai"),
        "retries = 0: one failed attempt per failover request"
    );
    assert!(down.requests().iter().all(|request| request.model == "big"));
    assert_eq!(sent("breaks-via-openai"), 2, "{summary}");
    assert_eq!(
        flaky.request_count(),
        sent("breaks-via-openai") + sent("breaks-via-anthropic")
    );

    let openai_received = openai_upstream.requests();
    assert!(openai_received.iter().all(|request| {
        request.path == "/v1/chat/completions"
            && ["gpt-mock", "gpt-fallback"].contains(&request.model.as_str())
    }));
    let anthropic_received = anthropic_upstream.requests();
    assert!(anthropic_received.iter().all(|request| {
        request.path == "/v1/messages"
            && request.anthropic_version.is_some()
            && request.body["max_tokens"].is_u64()
            && ["claude-mock", "claude-fallback"].contains(&request.model.as_str())
    }));
    // Every upstream request streams, the SDK's non-streaming calls included: airbag
    // asks for a stream so a hung provider is caught at its first-byte deadline, and
    // assembles the complete answer those SDKs asked for.
    assert!(
        anthropic_received.iter().all(|request| request.stream),
        "every upstream request asked for a stream"
    );

    // Anthropic refuses empty text blocks; an OpenAI client's assembled tool-call turn
    // (`content: ""`) must not turn into one. An Anthropic client's thinking history
    // reaches an Anthropic target exactly as sent (same protocol: lossless); nothing
    // else carries thinking blocks upstream.
    for request in &anthropic_received {
        let thinking_history = request
            .body
            .to_string()
            .contains("anthropic after thinking");
        for message in request.body["messages"].as_array().expect("messages") {
            let Some(blocks) = message["content"].as_array() else {
                assert!(message["content"].is_string(), "{}", request.body);
                continue;
            };
            for block in blocks {
                assert!(
                    block["type"] != "text" || block["text"] != "",
                    "an empty text block went upstream: {}",
                    request.body
                );
                if block["type"] == "thinking" || block["type"] == "redacted_thinking" {
                    assert!(
                        thinking_history,
                        "a thinking block went upstream: {}",
                        request.body
                    );
                }
            }
        }
        if thinking_history {
            assert_eq!(
                request.body["messages"][1]["content"],
                json!([
                    {"type": "thinking", "thinking": "Let me think.", "signature": "c2lnbmF0dXJl"},
                    {"type": "redacted_thinking", "data": "b3BhcXVl"},
                    {"type": "text", "text": "first answer"},
                ]),
                "the thinking history reached the Anthropic target unchanged"
            );
        }
    }

    // The OpenAI SDK's `tool` message reached an Anthropic provider as a tool_result block
    // answering the tool_use block before it.
    let body = tool_result_request(&anthropic_received, "openai tools via via-anthropic");
    let messages = body["messages"].as_array().expect("messages");
    let tool_use = &messages[messages.len() - 2]["content"][0];
    let tool_result = &messages[messages.len() - 1]["content"][0];
    assert_eq!(tool_use["type"], "tool_use", "{body}");
    assert_eq!(
        tool_use["input"],
        json!({"query": "openai tools via via-anthropic"})
    );
    assert_eq!(tool_result["type"], "tool_result", "{body}");
    assert_eq!(tool_result["tool_use_id"], tool_use["id"]);
    assert_eq!(tool_result["content"], TOOL_RESULT);

    // The Anthropic SDK's tool_result block reached an OpenAI provider as a `tool` message
    // answering the assistant's tool call.
    let body = tool_result_request(&openai_received, "anthropic tools via via-openai");
    let messages = body["messages"].as_array().expect("messages");
    let call = &messages[messages.len() - 2]["tool_calls"][0];
    let tool = &messages[messages.len() - 1];
    assert_eq!(call["function"]["name"], "lookup", "{body}");
    assert_eq!(tool["role"], "tool", "{body}");
    assert_eq!(tool["tool_call_id"], call["id"]);
    assert_eq!(tool["content"], TOOL_RESULT);

    gateway.running.shutdown().await;
    for mock in [openai_upstream, anthropic_upstream, down, flaky] {
        MockProvider::stop(mock).await;
    }
}

/// Runs the script with `args` and returns its summary line; a failed run fails the test.
async fn run_summary(python: String, args: Vec<String>) -> Value {
    run_script_summary(python, "clients.py", args).await
}

/// The JSON summary line `script` printed, once it succeeded.
async fn run_script_summary(python: String, script: &str, args: Vec<String>) -> Value {
    let output = run_clients(python, script, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed ({}):\n{stderr}\nstdout: {stdout}",
        output.status
    );
    println!("{stderr}");
    stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("the script's last line is a JSON summary: {stdout}"))
}

/// Claude on Bedrock and Vertex through both SDKs: a Bedrock target that answers (SigV4,
/// event-stream), and one that throttles inside its stream before any content, so Vertex
/// (a minted token, SSE) serves at depth 1. Plain, streamed and tool-calling alike.
#[tokio::test]
async fn the_official_python_sdks_reach_claude_on_bedrock_and_vertex() {
    use common::cloud::{AWS_ENV, VertexMock, bedrock_mock, bedrock_provider, vertex_provider};

    let Some(python) = sdk_python() else {
        return;
    };
    let bedrock = bedrock_mock("bedrock-upstream").await;
    let throttled = bedrock_mock("throttled").await;
    throttled.set_faults(vec![FaultRule::always(Fault::Exception {
        exception_type: "throttlingException".to_string(),
        after_chunks: 0,
    })]);
    let vertex = VertexMock::start("vertex-upstream", Duration::from_secs(3600)).await;
    let models = "models = { \"claude\" = \"anthropic.claude-sonnet-4-5-20250929-v1:0\" }";
    let config = format!(
        "[[clients]]\nkey = \"env:SDK_CLIENT_KEY\"\ntenant = \"sdk\"\n{}{}{}{}{}",
        bedrock_provider("bed", &bedrock, models),
        bedrock_provider(
            "bed_throttled",
            &throttled,
            &format!("{models}\nretries = 0")
        ),
        vertex_provider(
            "vtx",
            &vertex.mock,
            "models = { \"claude\" = \"claude-sonnet-4-5@20250929\" }"
        ),
        route("claude-on-bedrock", &["bed/claude"]),
        route(
            "claude-throttled-to-vertex",
            &["bed_throttled/claude", "vtx/claude"]
        ),
    );
    // The headline: Anthropic (down) and Bedrock share tier 1 by weight, Vertex is tier 2.
    let down = mock("down").await;
    down.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let config = format!(
        "{config}{}[[routes]]\nmodel = \"claude-anthropic-down\"\nchain = [[{{ target = \"ant_down/claude\", weight = 70 }}, {{ target = \"bed/claude\", weight = 30 }}], \"vtx/claude\"]\n",
        provider("ant_down", "anthropic", &down, "retries = 0"),
    );
    let key_path = vertex.key_path();
    let gateway = TestGateway::start(
        &config,
        &[
            ("SDK_CLIENT_KEY", CLIENT_KEY),
            AWS_ENV[0],
            AWS_ENV[1],
            AWS_ENV[2],
            ("VERTEX_SERVICE_ACCOUNT", key_path.as_str()),
        ],
    )
    .await;
    let routes = json!([
        expectation("claude-on-bedrock", "bedrock-upstream", "bed/claude", None),
        {
            "model": "claude-throttled-to-vertex",
            "mock": "vertex-upstream",
            "served_by": "provider:vtx/claude",
            "depth": 1,
            "attempts": [
                {"target": "bed_throttled/claude", "outcome": "stream_throttled"},
                {"target": "vtx/claude", "outcome": "ok"},
            ],
        },
        {
            "model": "claude-anthropic-down",
            "mock": "bedrock-upstream",
            "served_by": "provider:bed/claude",
            "depth": 0,
            "attempts_one_of": [
                [{"target": "ant_down/claude", "outcome": "status_503"}, {"target": "bed/claude", "outcome": "ok"}],
                [{"target": "bed/claude", "outcome": "ok"}],
            ],
        },
    ]);
    let args = vec![
        "--gateway".to_string(),
        gateway.url(""),
        "--key".to_string(),
        CLIENT_KEY.to_string(),
        "--routes".to_string(),
        routes.to_string(),
    ];
    let summary = run_summary(python, args).await;
    assert_eq!(summary["failed"], json!([]), "{summary}");
    assert_eq!(summary["passed"], 9 * 3 + 4, "{summary}");
    let sent = |model: &str| summary["requests_per_route"][model].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        bedrock.request_count(),
        sent("claude-on-bedrock") + sent("claude-anthropic-down")
    );
    assert!(down.request_count() <= sent("claude-anthropic-down"));
    assert_eq!(
        vertex.mock.request_count(),
        sent("claude-throttled-to-vertex")
    );
    assert_eq!(
        throttled.request_count(),
        sent("claude-throttled-to-vertex")
    );
    assert!(bedrock.requests().iter().all(|request| {
        request.key.as_deref() == Some(AWS_ENV[0].1)
            && request.path
                == "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    }));
    assert_eq!(
        vertex.mock.token_exchanges(),
        1,
        "one token for the whole run"
    );

    gateway.running.shutdown().await;
    for mock in [bedrock, throttled, vertex.mock, down] {
        MockProvider::stop(mock).await;
    }
}

/// Drop-in: what the official SDKs send beyond a plain chat reaches the provider of the
/// client's own protocol unchanged (every field, prompt-caching markers, thinking), and
/// the endpoints besides chat answer (count_tokens, embeddings) with request ids kept.
#[tokio::test]
async fn the_official_python_sdks_send_every_field_through() {
    let Some(python) = sdk_python() else {
        return;
    };
    let openai_upstream = mock("openai-upstream").await;
    let anthropic_upstream = mock("anthropic-upstream").await;
    let config = format!(
        "[[clients]]\nkey = \"env:SDK_CLIENT_KEY\"\ntenant = \"sdk\"\n{}{}{}{}{}",
        provider("oai", "openai", &openai_upstream, ""),
        provider("ant", "anthropic", &anthropic_upstream, ""),
        route("chat-openai", &["oai/gpt-mock"]),
        route("chat-anthropic", &["ant/claude-mock"]),
        route("embed", &["oai/text-embed"]),
    );
    let gateway = TestGateway::start(&config, &[("SDK_CLIENT_KEY", CLIENT_KEY)]).await;
    let drop_in = json!({
        "openai_model": "chat-openai",
        "openai_mock": "openai-upstream",
        "anthropic_model": "chat-anthropic",
        "anthropic_mock": "anthropic-upstream",
        "embeddings_model": "embed",
    });
    let args = vec![
        "--gateway".to_string(),
        gateway.url(""),
        "--key".to_string(),
        CLIENT_KEY.to_string(),
        "--routes".to_string(),
        "[]".to_string(),
        "--drop-in".to_string(),
        drop_in.to_string(),
    ];
    let summary = run_summary(python, args).await;
    assert_eq!(summary["failed"], json!([]), "{summary}");
    // 4 drop-in checks, n=2, 6 + 1 of the Responses API, 2 unknown-model and 2 listing
    // checks.
    assert_eq!(summary["passed"], 4 + 1 + 7 + 4, "{summary}");

    let openai_received = openai_upstream.requests();
    let chat = openai_received
        .iter()
        .find(|request| request.path == "/v1/chat/completions")
        .expect("the chat request");
    for (field, value) in [
        ("logprobs", json!(true)),
        ("top_logprobs", json!(2)),
        ("frequency_penalty", json!(0.5)),
        ("presence_penalty", json!(-0.5)),
        ("logit_bias", json!({"50256": -100})),
        ("reasoning_effort", json!("low")),
        ("user", json!("user-7")),
        ("metadata", json!({"feature": "sdk"})),
        ("store", json!(false)),
        ("service_tier", json!("auto")),
    ] {
        assert_eq!(chat.body[field], value, "`{field}`: {}", chat.body);
    }
    assert_eq!(chat.body["messages"][0]["role"], "developer");
    assert_eq!(
        chat.traceparent.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    let embeddings = openai_received
        .iter()
        .find(|request| request.path == "/v1/embeddings")
        .expect("the embeddings request");
    assert_eq!(embeddings.model, "text-embed");
    assert_eq!(embeddings.body["input"], json!(["a tide", "the moon"]));

    let anthropic_received = anthropic_upstream.requests();
    let message = anthropic_received
        .iter()
        .find(|request| request.path == "/v1/messages")
        .expect("the messages request");
    assert_eq!(
        message.body["system"][1]["cache_control"],
        json!({"type": "ephemeral"}),
        "prompt-caching markers reach the provider: {}",
        message.body
    );
    assert_eq!(
        message.body["messages"][0]["content"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(
        message.body["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert_eq!(message.body["top_k"], 5);
    assert_eq!(message.body["metadata"], json!({"user_id": "user-7"}));
    assert!(anthropic_received.iter().any(
        |request| request.path == "/v1/messages/count_tokens" && request.model == "claude-mock"
    ));
}

/// Routing policy through both SDKs (`tests/sdk/routing.py`): a request's own
/// `fallbacks`, a refused fallback, a client kept inside its allowed providers while the
/// primary is down, a 429 from a client limit, a spill past a saturated target (held here
/// by a request that waits on the mock), and the Gemini and Mistral presets.
#[tokio::test]
async fn the_official_python_sdks_route_by_request_and_client() {
    use airbag::mock::MockOptions;

    let Some(python) = sdk_python() else {
        return;
    };
    let a = mock("a").await;
    a.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let b = mock("b").await;
    let c = mock("c").await;
    let slow = mock("slow").await;
    slow.set_faults(vec![FaultRule::times(1, Fault::Delay { ms: 60_000 })]);
    let gemini = common::mock_with(
        "gemini",
        MockOptions {
            refused_fields: vec!["store".to_string()],
            ..MockOptions::default()
        },
        Vec::new(),
    )
    .await;
    let mistral_refuses = ["stream_options", "seed", "store", "max_completion_tokens"];
    let mistral = common::mock_with(
        "mistral",
        MockOptions {
            refused_fields: mistral_refuses.iter().map(|f| f.to_string()).collect(),
            ..MockOptions::default()
        },
        Vec::new(),
    )
    .await;
    let config = format!(
        "{}{}{}{}{}\
         [providers.gemini]\nkind = \"openai\"\npreset = \"gemini\"\nbase_url = \"{}\"\n\
         [providers.mistral]\nkind = \"openai\"\npreset = \"mistral\"\nbase_url = \"{}\"\n\
         {}{}{}\
         [[clients]]\nkey = \"env:FREE_KEY\"\ntenant = \"free\"\n\
         [[clients]]\nkey = \"env:EU_KEY\"\ntenant = \"eu\"\nallowed_providers = [\"a\", \"c\"]\n\
         [[clients]]\nkey = \"env:LIMITED_KEY\"\ntenant = \"limited\"\nrequests_per_minute = 1\n",
        provider("a", "openai", &a, "retries = 0"),
        provider("b", "openai", &b, ""),
        provider("c", "openai", &c, ""),
        provider(
            "slow",
            "openai",
            &slow,
            "max_concurrent = 1\nqueue_timeout = \"50ms\"\n\
             timeouts = { connect = \"1s\", first_byte = \"120s\", idle = \"30s\", total = \"120s\" }"
        ),
        route("chat", &["a/m", "b/m", "c/m"]),
        gemini.gemini_base_url(),
        mistral.base_url(),
        route("busy", &["slow/m", "b/m"]),
        route("gemini-chat", &["gemini/gemini-2.5-flash"]),
        route("mistral-chat", &["mistral/mistral-small-latest"]),
    );
    let keys = [
        ("FREE_KEY", "sdk-free"),
        ("EU_KEY", "sdk-eu"),
        ("LIMITED_KEY", "sdk-limited"),
    ];
    let gateway = std::sync::Arc::new(TestGateway::start(&config, &keys).await);
    // Hold the saturated target's one slot for the whole run.
    let holder = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway
                .post(
                    "/v1/chat/completions",
                    common::openai_chat("busy", "hold the slot"),
                    &[("authorization", "Bearer sdk-free")],
                )
                .await
        })
    };
    while slow.request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let args = vec![
        "--gateway".to_string(),
        gateway.url(""),
        "--free-key".to_string(),
        "sdk-free".to_string(),
        "--eu-key".to_string(),
        "sdk-eu".to_string(),
        "--limited-key".to_string(),
        "sdk-limited".to_string(),
    ];
    let summary = run_script_summary(python, "routing.py", args).await;
    holder.abort();
    assert_eq!(summary["failed"], json!([]), "{summary}");
    assert_eq!(summary["passed"], 11, "{summary}");

    // The saturated target answered one request at a time: the held one.
    assert_eq!(slow.request_count(), 1);
    assert_eq!(slow.peak_concurrency(), 1);
    // b answered the two spills and the limited key's one request past the down a/m;
    // never the eu client, which stayed on a and c.
    assert_eq!(b.request_count(), 3);
    // airbag's `fallbacks` never reached any provider.
    for received in [a.requests(), b.requests(), c.requests()].concat() {
        assert!(
            received.body.get("fallbacks").is_none(),
            "{:?}",
            received.body
        );
    }
    assert!(gemini.requests().iter().all(|request| {
        request.path == "/v1beta/openai/chat/completions" && request.body.get("store").is_none()
    }));
    assert!(mistral.requests().iter().all(|request| {
        mistral_refuses
            .iter()
            .all(|field| request.body.get(*field).is_none())
    }));
    assert_eq!(mistral.requests()[0].body["random_seed"], 7);
}

/// Node.js with the TypeScript SDKs (`make sdk-node`), or None when the test should be
/// skipped.
fn sdk_node() -> Option<String> {
    if let Ok(node) = std::env::var("AIRBAG_SDK_NODE") {
        return Some(node);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "AIRBAG_SDK_NODE is not set, so the TypeScript SDK test cannot run in CI; run the \
             README's test command, `make test`, which installs tests/sdk/node and sets it"
        );
    }
    println!("SKIPPED: set AIRBAG_SDK_NODE (make test does) to run the TypeScript SDK test");
    None
}

/// The official TypeScript SDKs (`openai`, `@anthropic-ai/sdk`) on Node.js: chat, streams,
/// tool round trips, the Responses API and typed errors, each through a provider of
/// either dialect, so every call of one SDK is translated for one of the two routes.
#[tokio::test]
async fn the_official_typescript_sdks_work_against_either_dialect() {
    let Some(node) = sdk_node() else {
        return;
    };
    let openai_upstream = mock("openai-upstream").await;
    let anthropic_upstream = mock("anthropic-upstream").await;
    let config = format!(
        "[[clients]]\nkey = \"env:SDK_CLIENT_KEY\"\ntenant = \"sdk\"\n{}{}{}{}",
        provider("oai", "openai", &openai_upstream, ""),
        provider("ant", "anthropic", &anthropic_upstream, ""),
        route("via-openai", &["oai/gpt-mock"]),
        route("via-anthropic", &["ant/claude-mock"]),
    ) + &route("embed", &["oai/text-embed"]);
    let gateway = TestGateway::start(&config, &[("SDK_CLIENT_KEY", CLIENT_KEY)]).await;
    let routes = json!([
        {"model": "via-openai", "mock": "openai-upstream", "served_by": "provider:oai/gpt-mock"},
        {"model": "via-anthropic", "mock": "anthropic-upstream", "served_by": "provider:ant/claude-mock"},
    ]);
    let args = vec![
        "--gateway".to_string(),
        gateway.url(""),
        "--key".to_string(),
        CLIENT_KEY.to_string(),
        "--routes".to_string(),
        routes.to_string(),
        "--bad-key".to_string(),
        "sk-not-a-client".to_string(),
        "--embed-model".to_string(),
        "embed".to_string(),
    ];
    let summary = run_script_summary(node, "node/clients.mjs", args).await;
    assert_eq!(summary["failed"], json!([]), "{summary}");
    // 8 scenarios on each of 2 routes, the typed errors and the drop-in checks.
    assert_eq!(summary["passed"], 8 * 2 + 2, "{summary}");
    // Each SDK's calls reached the provider of the other dialect too.
    assert!(openai_upstream.requests().iter().any(|request| {
        request.body["messages"]
            .to_string()
            .contains("ts anthropic plain")
    }));
    assert!(anthropic_upstream.requests().iter().any(|request| {
        request.body["messages"]
            .to_string()
            .contains("ts openai plain")
    }));
}
