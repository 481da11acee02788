#![allow(clippy::expect_used, clippy::unwrap_used)]
//! More clouds by preset: Gemini and Mistral through their OpenAI-compatible endpoints
//! (`kind = "openai"` with `preset`), each against a mock that serves the endpoint's path
//! shape and refuses what the real one refuses, as a user sees it through HTTP.

mod common;

use airbag::mock::{Fault, FaultRule, MockOptions, MockProvider};
use common::{TestGateway, anthropic_chat, config_error, mock_with, openai_chat};
use serde_json::json;

/// Test-sized retries, backoff and timeouts, no breaker.
const POLICY: &str = "retries = 0\nbreaker = { enabled = false }\n\
    timeouts = { connect = \"1s\", first_byte = \"2s\", idle = \"1s\", total = \"10s\" }";

/// A mock that refuses `refused` top-level fields as the cloud does.
async fn cloud_mock(name: &str, refused: &[&str]) -> MockProvider {
    let options = MockOptions {
        valid_keys: Some(vec![format!("{name}-secret")]),
        refused_fields: refused.iter().map(|field| field.to_string()).collect(),
        ..MockOptions::default()
    };
    mock_with(name, options, Vec::new()).await
}

async fn gateway_for(preset: &str, base_url: &str, model: &str) -> TestGateway {
    let config = format!(
        r#"
[providers.{preset}]
kind = "openai"
preset = "{preset}"
base_url = "{base_url}"
keys = [{{ key = "env:CLOUD_KEY" }}]
{POLICY}

[[routes]]
model = "chat"
chain = ["{preset}/{model}"]
"#
    );
    let key = format!("{preset}-secret");
    TestGateway::start(&config, &[("CLOUD_KEY", key.as_str())]).await
}

#[tokio::test]
async fn gemini_is_reached_at_its_openai_path_with_a_bearer_key_and_only_fields_it_defines() {
    // Gemini refuses fields it does not define ("Unknown name … Cannot find field").
    let gemini = cloud_mock("gemini", &["store", "logit_bias", "user"]).await;
    let gateway = gateway_for("gemini", &gemini.gemini_base_url(), "gemini-2.5-flash").await;
    let mut body = openai_chat("chat", "hello gemini");
    body["store"] = json!(false);
    body["logit_bias"] = json!({"50256": -100});
    body["seed"] = json!(3);
    let reply = gateway.openai(body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:gemini/gemini-2.5-flash");
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "mock gemini answers: hello gemini"
    );
    let dropped = reply.header("x-airbag-dropped-fields");
    assert!(
        dropped.contains("store") && dropped.contains("logit_bias"),
        "{dropped}"
    );
    let sent = &gemini.requests()[0];
    assert_eq!(sent.path, "/v1beta/openai/chat/completions");
    assert_eq!(sent.key.as_deref(), Some("gemini-secret"));
    assert_eq!(sent.model, "gemini-2.5-flash");
    assert_eq!(sent.body["seed"], 3, "a field Gemini defines goes as sent");
    assert!(sent.body.get("store").is_none() && sent.body.get("logit_bias").is_none());
    // Gemini takes `stream_options`: a streaming client's usage comes back.
    let mut streamed = openai_chat("chat", "count for me");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = gateway.openai(streamed).await;
    assert_eq!(
        reply.openai_stream_text(),
        "mock gemini answers: count for me"
    );
    assert!(reply.text.contains("\"prompt_tokens\":3"), "{}", reply.text);
}

#[tokio::test]
async fn a_gemini_error_list_reaches_the_client_in_its_own_shape() {
    let gemini = cloud_mock("gemini", &[]).await;
    let gateway = gateway_for("gemini", &gemini.gemini_base_url(), "gemini-2.5-flash").await;
    gemini.set_faults(vec![FaultRule::always(Fault::status(400))]);
    let reply = gateway.openai(openai_chat("chat", "refuse me")).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    // Google answers `[{"error": …}]`; an OpenAI client gets OpenAI's object, message kept.
    assert_eq!(reply.json()["error"]["message"], "mock 400");
    let reply = gateway.anthropic(anthropic_chat("chat", "refuse me")).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json()["error"]["message"], "mock 400");
}

#[tokio::test]
async fn mistral_gets_random_seed_max_tokens_and_no_stream_options_yet_usage_comes_back() {
    // Mistral's 422 `extra_forbidden` for each of these.
    let mistral = cloud_mock(
        "mistral",
        &[
            "stream_options",
            "store",
            "max_completion_tokens",
            "seed",
            "user",
        ],
    )
    .await;
    let gateway = gateway_for("mistral", &mistral.base_url(), "mistral-small-latest").await;
    let mut body = openai_chat("chat", "bonjour mistral");
    body["seed"] = json!(7);
    body["user"] = json!("end-user-1");
    body["store"] = json!(true);
    body["max_completion_tokens"] = json!(50);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = gateway.openai(body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:mistral/mistral-small-latest");
    assert_eq!(
        reply.openai_stream_text(),
        "mock mistral answers: bonjour mistral"
    );
    // Mistral sends usage unasked; the client that asked for it gets it.
    assert!(
        reply.text.contains("\"completion_tokens\":5"),
        "{}",
        reply.text
    );
    let sent = &mistral.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.key.as_deref(), Some("mistral-secret"));
    assert_eq!(sent.body["random_seed"], 7);
    assert_eq!(sent.body["max_tokens"], 50);
    for refused in [
        "stream_options",
        "seed",
        "store",
        "user",
        "max_completion_tokens",
    ] {
        assert!(sent.body.get(refused).is_none(), "{refused}: {}", sent.body);
    }

    // An Anthropic client is translated, and still gets only what Mistral defines.
    let mut body = anthropic_chat("chat", "salut");
    body["metadata"] = json!({"user_id": "end-user-2"});
    let reply = gateway.anthropic(body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.json()["content"][0]["text"],
        "mock mistral answers: salut"
    );
    assert!(
        reply.header("x-airbag-dropped-fields").contains("user"),
        "{}",
        reply.header("x-airbag-dropped-fields")
    );
    assert!(mistral.requests()[1].body.get("user").is_none());
}

#[test]
fn a_preset_supplies_the_base_url_and_is_only_for_the_openai_kind() {
    let env = airbag::config::Env::default();
    let config = airbag::config::Config::from_toml(
        "[providers.gemini]\nkind = \"openai\"\npreset = \"gemini\"\n\
         [providers.mistral]\nkind = \"openai\"\npreset = \"mistral\"\n",
        std::path::Path::new("t.toml"),
        &env,
    )
    .expect("a preset needs no base_url");
    assert!(config.providers["gemini"].base_url.is_none());
    let message = config_error(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"https://api.anthropic.com/v1\"\npreset = \"mistral\"\n\
         [providers.mistral]\nkind = \"openai\"\npreset = \"mistral\"\nmax_tokens_field = \"max_completion_tokens\"\n",
    );
    assert!(
        message.contains("providers.claude.preset: is only read by kind = \"openai\""),
        "{message}"
    );
    assert!(
        message.contains("providers.mistral.max_tokens_field: Mistral refuses"),
        "{message}"
    );
}
