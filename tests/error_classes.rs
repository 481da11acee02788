//! The error classes of README "Errors and failover" as a client sees them: a retired or
//! unknown model moves on, a 403 rests only the (key, model) pair, an out-of-quota 429
//! rests the key like a 402, a content-policy refusal comes back to the client, and a
//! route whose every target lost its model still reaches the canned rung.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use airbag::mock::{Fault, FaultRule, MockProvider};
use common::{TestGateway, canned_dir, canned_section, mock, openai_chat, provider, route};
use serde_json::{Value, json};

/// `chat` → `primary/big`, `fallback/small`; `other` → `primary/other`. The primary has
/// the keys `primary_keys` names (env PRIMARY_KEY_1, _2).
async fn gateway(primary_keys: usize) -> (TestGateway, MockProvider, MockProvider) {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    let keys: Vec<String> = (1..=primary_keys)
        .map(|index| format!("{{ key = \"env:PRIMARY_KEY_{index}\" }}"))
        .collect();
    let config = format!(
        "{}{}{}{}",
        provider(
            "primary",
            "openai",
            &primary,
            &format!("keys = [{}]", keys.join(", "))
        ),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["primary/big", "fallback/small"]),
        route("other", &["primary/other"]),
    );
    let env = [("PRIMARY_KEY_1", "sk-one"), ("PRIMARY_KEY_2", "sk-two")];
    let gateway = TestGateway::start(&config, &env).await;
    (gateway, primary, fallback)
}

fn status_with(status: u16, body: Value) -> Fault {
    Fault::Status {
        status,
        retry_after: None,
        body: Some(body),
    }
}

fn outcomes(reply: &common::Reply) -> Vec<String> {
    reply.json()["airbag"]["attempts"]
        .as_array()
        .expect("attempts list")
        .iter()
        .map(|attempt| {
            format!(
                "{} {}",
                attempt["target"].as_str().unwrap(),
                attempt["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn a_model_not_found_moves_on_without_resting_the_key() {
    let retired = [
        (
            404,
            json!({"error": {"message": "The model `big` does not exist", "type": "invalid_request_error", "code": "model_not_found"}}),
        ),
        (
            400,
            json!({"error": {"message": "The model `big` has been deprecated, see the docs", "type": "invalid_request_error", "code": null}}),
        ),
        (
            404,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "model: big"}}),
        ),
    ];
    for (status, body) in retired {
        let (gateway, primary, fallback) = gateway(1).await;
        primary.set_faults(vec![FaultRule::always(status_with(status, body.clone()))]);
        let reply = gateway.openai(openai_chat("chat", "hi")).await;
        assert_eq!(reply.status, 200, "{body}: {}", reply.text);
        assert_eq!(reply.served_by(), "provider:fallback/small", "{body}");
        assert_eq!(
            outcomes(&reply),
            [
                format!("primary/big status_{status}"),
                "fallback/small ok".to_string()
            ],
            "{body}: no retry"
        );
        // The key was not rested: the next request tries the primary again with it.
        let again = gateway.openai(openai_chat("chat", "hi again")).await;
        assert_eq!(again.served_by(), "provider:fallback/small");
        assert_eq!(primary.request_count(), 2, "{body}");
        assert_eq!(primary.requests()[1].key.as_deref(), Some("sk-one"));
        assert_eq!(fallback.request_count(), 2);
    }
}

#[tokio::test]
async fn a_403_for_one_model_rests_the_key_for_that_model_only() {
    let (gateway, primary, fallback) = gateway(1).await;
    primary.set_faults(vec![FaultRule {
        model: Some("big".to_string()),
        ..FaultRule::always(Fault::status(403))
    }]);
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(
        outcomes(&reply),
        [
            "primary/big status_403",
            "primary/big no_key_available",
            "fallback/small ok"
        ]
    );
    // The same key still serves another model.
    let other = gateway.openai(openai_chat("other", "hi")).await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(other.served_by(), "provider:primary/other");
    // And the (key, big) pair rests: the next request for big skips the call.
    let again = gateway.openai(openai_chat("chat", "hi again")).await;
    assert_eq!(again.served_by(), "provider:fallback/small");
    assert_eq!(
        outcomes(&again),
        ["primary/big no_key_available", "fallback/small ok"]
    );
    assert_eq!(
        primary.request_count(),
        2,
        "one 403, one answer for `other`"
    );
    assert_eq!(fallback.request_count(), 2);
}

#[tokio::test]
async fn an_out_of_quota_429_rests_the_key_like_a_402() {
    let (gateway, primary, fallback) = gateway(2).await;
    let quota = json!({"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "code": "insufficient_quota"}});
    primary.set_faults(vec![
        FaultRule::always(status_with(429, quota)).for_key("sk-one"),
    ]);
    for round in 0..6 {
        let reply = gateway
            .openai(openai_chat("chat", &format!("hi {round}")))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.served_by(), "provider:primary/big");
    }
    let keys: Vec<Option<String>> = primary.requests().into_iter().map(|r| r.key).collect();
    let refused = keys
        .iter()
        .filter(|key| key.as_deref() == Some("sk-one"))
        .count();
    assert!(
        refused <= 1,
        "the out-of-quota key rests after its first 429: {keys:?}"
    );
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn a_content_policy_refusal_is_returned_and_never_routed_around() {
    let (gateway, primary, fallback) = gateway(1).await;
    let refusal = json!({"error": {"message": "Your request was rejected as a result of our safety system.", "type": "invalid_request_error", "code": "content_policy_violation", "param": null}});
    primary.set_faults(vec![FaultRule::always(status_with(400, refusal.clone()))]);
    let reply = gateway.openai(openai_chat("chat", "something bad")).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json(), refusal);
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(primary.request_count(), 1);
    assert_eq!(
        fallback.request_count(),
        0,
        "a refusal is never routed around"
    );
}

#[tokio::test]
async fn a_route_whose_models_are_all_gone_still_gets_the_canned_answer() {
    let gone = mock("gone").await;
    gone.set_faults(vec![FaultRule::always(Fault::status(404))]);
    let dir = canned_dir(&[(
        "default.toml",
        "priority = -1000\ntext = \"We are on it.\"\n",
    )]);
    let config = format!(
        "{}{}{}",
        provider("gone", "openai", &gone, ""),
        route("chat", &["gone/a", "gone/b"]),
        canned_section(dir.path()),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.rung(), "canned");
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "We are on it."
    );
    assert_eq!(gone.request_count(), 2, "each target once, no retries");
}
