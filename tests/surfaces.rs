//! Claude on every surface: one route over Anthropic, Bedrock and Vertex mocks, as a user
//! sees it through HTTP. The route is tier 1 {anthropic 70, bedrock 30}, tier 2 {vertex};
//! each mock checks the surface's credentials (a real SigV4 signature, a token minted
//! from the service account's key), so an answer is proof they were right.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use airbag::mock::{Fault, FaultRule, MockOptions, MockProvider};
use common::cloud::{
    AWS_ENV, AWS_KEY_ID, VertexMock, bedrock_mock, bedrock_provider, vertex_provider,
};
use common::{TestGateway, anthropic_chat, config_error, mock_with, openai_chat};
use serde_json::{Value, json};

const ANTHROPIC_KEY: &str = "sk-ant-surfaces";
const ROUTE: &str = "claude";
const ANTHROPIC_TARGET: &str = "anthropic/claude-sonnet-4-5";
const BEDROCK_TARGET: &str = "bedrock/claude-sonnet-4-5";
const VERTEX_TARGET: &str = "vertex/claude-sonnet-4-5";
const BEDROCK_ID: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
const VERTEX_ID: &str = "claude-sonnet-4-5@20250929";
/// Test-sized retries and no breakers, for every provider of these tests.
const POLICY: &str =
    "retries = 1\nbackoff = { initial = \"1ms\", max = \"2ms\" }\nbreaker = { enabled = false }";

struct Surfaces {
    gateway: TestGateway,
    anthropic: MockProvider,
    bedrock: MockProvider,
    vertex: VertexMock,
}

struct Setup {
    /// The route's `chain` value.
    chain: &'static str,
    /// The secret the gateway signs Bedrock requests with.
    aws_secret: &'static str,
    token_lifetime: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            chain: r#"[[{ target = "anthropic/claude-sonnet-4-5", weight = 70 }, { target = "bedrock/claude-sonnet-4-5", weight = 30 }], "vertex/claude-sonnet-4-5"]"#,
            aws_secret: AWS_ENV[1].1,
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

async fn start_surfaces(setup: Setup) -> Surfaces {
    let anthropic = mock_with(
        "anthropic",
        MockOptions {
            valid_keys: Some(vec![ANTHROPIC_KEY.to_string()]),
            ..MockOptions::default()
        },
        Vec::new(),
    )
    .await;
    let bedrock = bedrock_mock("bedrock").await;
    let vertex = VertexMock::start("vertex", setup.token_lifetime).await;
    let config = format!(
        r#"
[providers.anthropic]
kind = "anthropic"
base_url = "{anthropic_url}"
keys = [{{ key = "env:ANTHROPIC_KEY" }}]
models = {{ "claude-sonnet-4-5" = "claude-sonnet-4-5-20250929" }}
{POLICY}

{bedrock}
{vertex}
[[routes]]
model = "{ROUTE}"
chain = {chain}
"#,
        anthropic_url = anthropic.base_url(),
        bedrock = bedrock_provider(
            "bedrock",
            &bedrock,
            &format!("models = {{ \"claude-sonnet-4-5\" = \"{BEDROCK_ID}\" }}\n{POLICY}")
        ),
        vertex = vertex_provider(
            "vertex",
            &vertex.mock,
            &format!("models = {{ \"claude-sonnet-4-5\" = \"{VERTEX_ID}\" }}\n{POLICY}")
        ),
        chain = setup.chain,
    );
    let key_path = vertex.key_path();
    let gateway = TestGateway::start(
        &config,
        &[
            ("ANTHROPIC_KEY", ANTHROPIC_KEY),
            AWS_ENV[0],
            ("AWS_SECRET_ACCESS_KEY", setup.aws_secret),
            AWS_ENV[2],
            ("VERTEX_SERVICE_ACCOUNT", key_path.as_str()),
        ],
    )
    .await;
    Surfaces {
        gateway,
        anthropic,
        bedrock,
        vertex,
    }
}

fn attempts(reply: &common::Reply) -> Vec<(String, String)> {
    let body = reply.json();
    body["airbag"]["attempts"]
        .as_array()
        .map(|attempts| {
            attempts
                .iter()
                .map(|attempt| {
                    (
                        attempt["target"].as_str().unwrap_or_default().to_string(),
                        attempt["outcome"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `x-airbag-served-by` of an answer from `target`.
fn served_by(target: &str) -> String {
    format!("provider:{target}")
}

fn down(mock: &MockProvider) {
    mock.set_faults(vec![FaultRule::always(Fault::status(503))]);
}

fn with_tool(mut body: Value) -> Value {
    body["tools"] = json!([{
        "name": "weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }]);
    body
}

fn openai_with_tool(mut body: Value) -> Value {
    body["tools"] = json!([{"type": "function", "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }}]);
    body
}

#[tokio::test]
async fn healthy_surfaces_share_the_first_tier_by_weight() {
    let surfaces = start_surfaces(Setup::default()).await;
    let total = 2_000;
    let mut served: HashMap<String, usize> = HashMap::new();
    for batch in 0..(total / 50) {
        let replies = futures_util::future::join_all((0..50).map(|index| {
            surfaces
                .gateway
                .anthropic(anthropic_chat(ROUTE, &format!("question {batch}-{index}")))
        }))
        .await;
        for reply in replies {
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert_eq!(reply.depth(), "0");
            *served.entry(reply.served_by().to_string()).or_default() += 1;
        }
    }
    let share =
        |target: &str| served.get(&served_by(target)).copied().unwrap_or(0) as f64 / total as f64;
    let anthropic_share = share(ANTHROPIC_TARGET);
    assert!(
        (0.67..=0.73).contains(&anthropic_share),
        "anthropic served {anthropic_share:.3} of the tier, not 0.70 ± 0.03: {served:?}"
    );
    assert!((share(ANTHROPIC_TARGET) + share(BEDROCK_TARGET) - 1.0).abs() < 1e-9);
    assert_eq!(surfaces.vertex.mock.request_count(), 0, "tier 2 stays idle");

    let status = surfaces
        .gateway
        .admin_get("/admin/status", None)
        .await
        .json();
    let tier = &status["routes"][0]["tiers"][0];
    assert_eq!(tier[0]["target"], ANTHROPIC_TARGET);
    assert_eq!(tier[0]["weight"], 70);
    assert_eq!(tier[0]["weight_share"], 0.7);
    assert_eq!(tier[1]["weight"], 30);
    let served_share = tier[0]["served_share"].as_f64().expect("a served share");
    assert!((served_share - anthropic_share).abs() < 0.001, "{tier}");
    assert_eq!(status["routes"][0]["tiers"][1][0]["target"], VERTEX_TARGET);
}

#[tokio::test]
async fn with_anthropic_down_bedrock_serves_at_depth_zero_signed() {
    let surfaces = start_surfaces(Setup::default()).await;
    down(&surfaces.anthropic);
    for stream in [false, true] {
        let mut body = anthropic_chat(ROUTE, "hello from an anthropic client");
        body["stream"] = json!(stream);
        let reply = surfaces.gateway.anthropic(body).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.served_by(), served_by(BEDROCK_TARGET));
        assert_eq!(reply.depth(), "0", "a tier-mate is not a fallback");
        let text = if stream {
            reply.anthropic_stream_text()
        } else {
            reply.json()["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            text.contains("mock bedrock answers: hello from an anthropic client"),
            "{text}"
        );

        let mut body = openai_chat(ROUTE, "hello from an openai client");
        body["stream"] = json!(stream);
        let reply = surfaces.gateway.openai(body).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.served_by(), served_by(BEDROCK_TARGET));
    }
    let received = surfaces.bedrock.requests();
    assert_eq!(received.len(), 4, "one signed call per request");
    for request in &received {
        assert_eq!(request.key.as_deref(), Some(AWS_KEY_ID), "SigV4 checked");
        assert_eq!(
            request.anthropic_version.as_deref(),
            Some("bedrock-2023-05-31")
        );
        assert!(request.body.get("model").is_none(), "{}", request.body);
        // Airbag streams upstream for every client, so each call is the streaming one.
        assert_eq!(
            request.path,
            "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
        );
    }
    for request in surfaces.anthropic.requests() {
        assert_eq!(request.model, "claude-sonnet-4-5-20250929", "mapped id");
    }
}

#[tokio::test]
async fn a_throttling_frame_before_content_sends_the_request_to_vertex_at_depth_one() {
    let surfaces = start_surfaces(Setup::default()).await;
    down(&surfaces.anthropic);
    surfaces
        .bedrock
        .set_faults(vec![FaultRule::always(Fault::Exception {
            exception_type: "throttlingException".to_string(),
            after_chunks: 0,
        })]);
    for stream in [false, true] {
        for tools in [false, true] {
            let mut body = anthropic_chat(ROUTE, "what is the weather in Oslo");
            if tools {
                body = with_tool(body);
            }
            body["stream"] = json!(stream);
            let reply = surfaces.gateway.anthropic(body).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert_eq!(
                reply.served_by(),
                served_by(VERTEX_TARGET),
                "stream {stream} tools {tools}"
            );
            assert_eq!(reply.depth(), "1");
            if !stream {
                let tried = attempts(&reply);
                assert!(
                    tried.contains(&(BEDROCK_TARGET.to_string(), "stream_throttled".to_string())),
                    "{tried:?}"
                );
                assert_eq!(
                    tried.last(),
                    Some(&(VERTEX_TARGET.to_string(), "ok".to_string()))
                );
                let block = &reply.json()["content"][0];
                if tools {
                    assert_eq!(block["type"], "tool_use", "{block}");
                    assert_eq!(block["name"], "weather");
                } else {
                    assert_eq!(block["type"], "text");
                }
            } else if tools {
                assert!(reply.text.contains("\"tool_use\""), "{}", reply.text);
            }
        }
    }
    // The OpenAI protocol, translated, with a tool call.
    let reply = surfaces
        .gateway
        .openai(openai_with_tool(openai_chat(ROUTE, "weather in Bergen")))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), served_by(VERTEX_TARGET));
    assert_eq!(
        reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "weather"
    );

    let received = surfaces.vertex.mock.requests();
    assert!(!received.is_empty());
    for request in &received {
        assert_eq!(
            request.path,
            "/v1/projects/airbag-test/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
        );
        assert_eq!(
            request.anthropic_version.as_deref(),
            Some("vertex-2023-10-16")
        );
        assert!(
            request
                .key
                .as_deref()
                .is_some_and(|token| token.starts_with("ya29.mock-")),
            "a minted token: {:?}",
            request.key
        );
    }
    assert_eq!(
        surfaces.vertex.mock.token_exchanges(),
        1,
        "one token, cached"
    );
}

#[tokio::test]
async fn an_exception_after_content_ends_the_stream_with_an_error_event() {
    let surfaces = start_surfaces(Setup {
        chain: r#"["bedrock/claude-sonnet-4-5"]"#,
        ..Setup::default()
    })
    .await;
    surfaces
        .bedrock
        .set_faults(vec![FaultRule::always(Fault::Exception {
            exception_type: "modelStreamErrorException".to_string(),
            after_chunks: 4,
        })]);
    let mut body = anthropic_chat(ROUTE, "one two three four five six seven");
    body["stream"] = json!(true);
    let reply = surfaces.gateway.anthropic(body).await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.anthropic_stream_text().is_empty(),
        "content came first"
    );
    let events = reply.events();
    assert_eq!(
        events.last().and_then(|(name, _)| name.as_deref()),
        Some("error"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn a_broken_crc_or_a_bad_signature_fails_over_to_the_next_tier() {
    let surfaces = start_surfaces(Setup {
        chain: r#"["bedrock/claude-sonnet-4-5", "vertex/claude-sonnet-4-5"]"#,
        ..Setup::default()
    })
    .await;
    surfaces
        .bedrock
        .set_faults(vec![FaultRule::always(Fault::BadCrc { after_chunks: 0 })]);
    let reply = surfaces.gateway.openai(openai_chat(ROUTE, "crc")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), served_by(VERTEX_TARGET));
    assert_eq!(
        attempts(&reply)[0],
        (BEDROCK_TARGET.to_string(), "malformed".to_string())
    );

    let wrong_secret = start_surfaces(Setup {
        chain: r#"["bedrock/claude-sonnet-4-5", "vertex/claude-sonnet-4-5"]"#,
        aws_secret: "not-the-secret",
        ..Setup::default()
    })
    .await;
    let reply = wrong_secret.gateway.openai(openai_chat(ROUTE, "sig")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), served_by(VERTEX_TARGET));
    assert_eq!(
        attempts(&reply)[0],
        (BEDROCK_TARGET.to_string(), "status_403".to_string()),
        "AWS refuses the signature"
    );
    assert!(
        wrong_secret.bedrock.requests().is_empty(),
        "a refused signature never reaches the model"
    );
}

#[tokio::test]
async fn vertex_tokens_are_cached_refreshed_before_expiry_and_after_a_401() {
    // Tokens that live 301 s are replaced 300 s before they expire: after 1 s.
    let surfaces = start_surfaces(Setup {
        chain: r#"["vertex/claude-sonnet-4-5"]"#,
        token_lifetime: Duration::from_secs(301),
        ..Setup::default()
    })
    .await;
    let ask = |text: &str| surfaces.gateway.openai(openai_chat(ROUTE, text));
    assert_eq!(ask("first").await.status, 200);
    assert_eq!(ask("second").await.status, 200);
    assert_eq!(surfaces.vertex.mock.token_exchanges(), 1, "cached");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(ask("third").await.status, 200);
    assert_eq!(
        surfaces.vertex.mock.token_exchanges(),
        2,
        "refreshed before expiry"
    );

    surfaces.vertex.mock.revoke_tokens();
    let reply = ask("after a revocation").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), served_by(VERTEX_TARGET));
    assert_eq!(
        attempts(&reply),
        vec![
            (VERTEX_TARGET.to_string(), "status_401".to_string()),
            (VERTEX_TARGET.to_string(), "ok".to_string()),
        ],
        "a 401 mints a new token once instead of resting the credential"
    );
    assert_eq!(surfaces.vertex.mock.token_exchanges(), 3);
    assert_eq!(ask("and again").await.status, 200, "not rested");
}

#[tokio::test]
async fn a_bedrock_api_key_is_sent_as_a_bearer_token() {
    let bedrock = mock_with(
        "bedrock",
        MockOptions {
            valid_keys: Some(vec!["bedrock-api-key-1".to_string()]),
            ..MockOptions::default()
        },
        Vec::new(),
    )
    .await;
    let config = format!(
        r#"
[providers.bedrock]
kind = "bedrock"
region = "eu-west-1"
base_url = "http://{}"
keys = [{{ key = "env:BEDROCK_API_KEY" }}]
models = {{ "claude" = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0" }}

[[routes]]
model = "claude"
chain = ["bedrock/claude"]
"#,
        bedrock.addr
    );
    let gateway = TestGateway::start(&config, &[("BEDROCK_API_KEY", "bedrock-api-key-1")]).await;
    let reply = gateway.anthropic(anthropic_chat("claude", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let received = bedrock.requests();
    assert_eq!(received[0].key.as_deref(), Some("bedrock-api-key-1"));
    assert_eq!(
        received[0].path,
        "/model/eu.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    );
}

#[tokio::test]
async fn a_drill_breaks_cloud_credentials_too() {
    let surfaces = start_surfaces(Setup {
        chain: r#"["bedrock/claude-sonnet-4-5", "vertex/claude-sonnet-4-5"]"#,
        ..Setup::default()
    })
    .await;
    let injected = surfaces
        .gateway
        .admin_send(
            reqwest::Method::POST,
            "/admin/faults",
            None,
            &[],
            Some(json!({"target": BEDROCK_TARGET, "fault": "broken_key", "duration": "1m"})),
        )
        .await;
    assert!(injected.status < 300, "{}", injected.text);
    let reply = surfaces.gateway.openai(openai_chat(ROUTE, "drill")).await;
    assert_eq!(
        reply.served_by(),
        served_by(VERTEX_TARGET),
        "{}",
        reply.text
    );
    assert_eq!(
        attempts(&reply)[0],
        (BEDROCK_TARGET.to_string(), "status_403".to_string())
    );
}

#[test]
fn check_config_names_what_each_surface_is_missing() {
    let error = config_error(
        "[providers.b]\nkind = \"bedrock\"\nmodels = { \"claude\" = \"claude-sonnet\" }\n\
         [providers.v]\nkind = \"vertex\"\nregion = \"us-east5\"\naws = { access_key_id = \"env:A\", secret_access_key = \"env:B\" }\n\
         [providers.o]\nkind = \"openai\"\n\
         [[routes]]\nmodel = \"m\"\nchain = [[{ target = \"b/claude\", weight = 0 }], \"v/claude\", \"o/x\"]\n",
    );
    for expected in [
        "providers.b.region: is required for kind = \"bedrock\"",
        "providers.b: has no credentials",
        "providers.b.models.\"claude\": `claude-sonnet` is not a Bedrock model id",
        "providers.v.project: is required",
        "providers.v.aws: is only read by kind bedrock",
        "providers.v: has no credentials",
        "providers.o.base_url: is required for kind = \"openai\"",
        "routes[0].chain[0][0].weight: must be at least 1",
    ] {
        assert!(
            error.contains(expected),
            "missing `{expected}` in:\n{error}"
        );
    }
}

#[tokio::test]
async fn anthropic_betas_reach_each_surface_its_own_way() {
    let surfaces = start_surfaces(Setup::default()).await;
    let ask = || {
        surfaces.gateway.post(
            "/v1/messages",
            anthropic_chat(ROUTE, "with betas"),
            &[
                ("anthropic-version", "2023-06-01"),
                (
                    "anthropic-beta",
                    "context-1m-2025-08-07, files-api-2025-04-14",
                ),
            ],
        )
    };
    let betas = "context-1m-2025-08-07,files-api-2025-04-14";

    down(&surfaces.bedrock);
    let reply = ask().await;
    assert_eq!(
        reply.served_by(),
        served_by(ANTHROPIC_TARGET),
        "{}",
        reply.text
    );
    let received = surfaces.anthropic.requests();
    assert_eq!(
        received.last().unwrap().anthropic_beta.as_deref(),
        Some(betas)
    );

    surfaces.bedrock.set_faults(Vec::new());
    down(&surfaces.anthropic);
    let reply = ask().await;
    assert_eq!(
        reply.served_by(),
        served_by(BEDROCK_TARGET),
        "{}",
        reply.text
    );
    let received = surfaces.bedrock.requests();
    assert_eq!(
        received.last().unwrap().body["anthropic_beta"],
        json!(["context-1m-2025-08-07", "files-api-2025-04-14"]),
        "Bedrock reads betas from the body"
    );

    down(&surfaces.bedrock);
    let reply = ask().await;
    assert_eq!(
        reply.served_by(),
        served_by(VERTEX_TARGET),
        "{}",
        reply.text
    );
    let received = surfaces.vertex.mock.requests();
    assert_eq!(
        received.last().unwrap().anthropic_beta.as_deref(),
        Some(betas)
    );
    assert!(
        received
            .last()
            .unwrap()
            .body
            .get("anthropic_beta")
            .is_none()
    );
}
