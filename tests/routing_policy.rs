#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Routing policy per request and per client key, as a client sees it: a request's own
//! `fallbacks`, a refused fallback, a client's own routes and allowed providers (kept
//! inside them while its primary is down), its cache mode, its limits (429 with
//! `retry-after` and `x-ratelimit-*`), and a saturated target spilling to the next.

mod common;

use airbag::mock::{Fault, FaultRule, MockOptions};
use common::{TestGateway, anthropic_chat, mock, mock_with, openai_chat, provider, route};
use serde_json::{Value, json};

/// Three OpenAI-kind providers `a`, `b`, `c` on their own mocks (`a` always 503 when
/// `a_down`), the route `chat` = a/m then b/m, and `extra` config.
async fn three_providers(
    a_down: bool,
    extra: &str,
) -> (
    TestGateway,
    airbag::mock::MockProvider,
    airbag::mock::MockProvider,
    airbag::mock::MockProvider,
) {
    let a_rules = if a_down {
        vec![FaultRule::always(Fault::status(503))]
    } else {
        Vec::new()
    };
    let a = mock_with("a", MockOptions::default(), a_rules).await;
    let b = mock("b").await;
    let c = mock("c").await;
    let config = format!(
        "{}{}{}{}{}{extra}",
        provider("a", "openai", &a, "retries = 0"),
        provider("b", "openai", &b, ""),
        provider("c", "openai", &c, ""),
        route("chat", &["a/m", "b/m"]),
        // c/m is a target the config knows (a route names it), so requests may name it.
        route("other", &["c/m"]),
    );
    let keys = [("KEY_FREE", "free-key"), ("KEY_EU", "eu-key")];
    (TestGateway::start(&config, &keys).await, a, b, c)
}

/// An OpenAI chat request sent with the client key `key`.
async fn openai_as(gateway: &TestGateway, key: &str, body: Value) -> common::Reply {
    let bearer = format!("Bearer {key}");
    gateway
        .post("/v1/chat/completions", body, &[("authorization", &bearer)])
        .await
}

/// An Anthropic chat request sent with `header` besides `anthropic-version`.
async fn anthropic_with(gateway: &TestGateway, body: Value, header: (&str, &str)) -> common::Reply {
    gateway
        .post(
            "/v1/messages",
            body,
            &[("anthropic-version", "2023-06-01"), header],
        )
        .await
}

/// The reply to `ask` once the cache answers it (the write lands in the background), or
/// the last reply after a second of asking.
async fn asked_until_cached<F, R>(ask: F) -> common::Reply
where
    F: Fn() -> R,
    R: std::future::Future<Output = common::Reply>,
{
    let mut reply = ask().await;
    for _ in 0..50 {
        if reply.rung() == "cache" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        reply = ask().await;
    }
    reply
}

#[tokio::test]
async fn a_request_s_fallbacks_replace_the_route_s_tiers_after_the_first() {
    let (gateway, a, b, c) = three_providers(true, "").await;
    let mut body = openai_chat("chat", "which way");
    body["fallbacks"] = json!(["c/m"]);
    let reply = gateway.openai(body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:c/m");
    assert_eq!(reply.depth(), "1");
    assert_eq!(
        reply.attempts(),
        json!([{"target": "a/m", "outcome": "status_503"}, {"target": "c/m", "outcome": "ok"}])
    );
    assert_eq!(reply.header("x-airbag-chain"), "a/m, c/m");
    assert_eq!(reply.json()["airbag"]["chain"], json!([["a/m"], ["c/m"]]));
    assert_eq!(a.request_count(), 1);
    assert_eq!(
        b.request_count(),
        0,
        "the route's own fallback is not walked"
    );
    // airbag's field never reaches a provider, even in the same-protocol passthrough.
    let sent = &c.requests()[0].body;
    assert!(sent.get("fallbacks").is_none(), "{sent}");
    assert_eq!(sent["messages"][0]["content"], "which way");

    // Without fallbacks the route walks as configured, and its tag lists no chain.
    let reply = gateway.openai(openai_chat("chat", "which way")).await;
    assert_eq!(reply.served_by(), "provider:b/m");
    assert_eq!(reply.header("x-airbag-chain"), "");
    assert!(reply.json()["airbag"].get("chain").is_none());
}

#[tokio::test]
async fn anthropic_clients_name_fallbacks_in_the_body_or_the_header() {
    let (gateway, _a, b, c) = three_providers(true, "").await;
    let mut body = anthropic_chat("chat", "hello there");
    body["fallbacks"] = json!(["c/m"]);
    let reply = gateway.anthropic(body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:c/m");
    assert_eq!(reply.json()["type"], "message");

    let reply = anthropic_with(
        &gateway,
        anthropic_chat("chat", "hello there"),
        ("x-airbag-fallbacks", "c/m"),
    )
    .await;
    assert_eq!(reply.served_by(), "provider:c/m");
    assert_eq!(b.request_count(), 0);
    assert_eq!(c.request_count(), 2);
    assert!(
        c.requests()
            .iter()
            .all(|sent| sent.body.get("fallbacks").is_none())
    );

    // Both at once: one would be lost silently, so neither is taken.
    let mut body = anthropic_chat("chat", "hello there");
    body["fallbacks"] = json!(["c/m"]);
    let reply = anthropic_with(&gateway, body, ("x-airbag-fallbacks", "b/m")).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("x-airbag-fallbacks"), "{}", reply.text);
}

/// Two client keys: `free` may use every provider, `eu` only `a` and `c`.
const CLIENTS: &str = r#"
[[clients]]
key = "env:KEY_FREE"
tenant = "free"

[[clients]]
key = "env:KEY_EU"
tenant = "eu"
allowed_providers = ["a", "c"]
"#;

#[tokio::test]
async fn a_fallback_outside_the_client_s_providers_is_a_400_naming_it() {
    let (gateway, a, b, c) = three_providers(false, CLIENTS).await;
    let mut body = openai_chat("chat", "go around");
    body["fallbacks"] = json!(["c/m", "b/m"]);
    let reply = openai_as(&gateway, "eu-key", body.clone()).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    let error = &reply.json()["error"];
    assert_eq!(error["param"], "fallbacks");
    assert_eq!(error["code"], "fallback_refused");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("`b/m`"), "{message}");
    assert!(message.contains("allowed_providers"), "{message}");

    // In Anthropic's shape for an Anthropic client; an unknown target is refused too.
    let mut body = anthropic_chat("chat", "go around");
    body["fallbacks"] = json!(["nowhere/m"]);
    let reply = anthropic_with(&gateway, body, ("x-api-key", "free-key")).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`nowhere/m`"),
        "{}",
        reply.text
    );
    assert_eq!(a.request_count() + b.request_count() + c.request_count(), 0);

    // The same fallbacks are fine for a client that may use every provider.
    let mut body = openai_chat("chat", "go around");
    body["fallbacks"] = json!(["c/m", "b/m"]);
    let reply = openai_as(&gateway, "free-key", body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:a/m");
}

#[tokio::test]
async fn a_client_stays_inside_its_allowed_providers_while_its_primary_is_down() {
    let a = mock_with(
        "a",
        MockOptions::default(),
        vec![FaultRule::always(Fault::status(503))],
    )
    .await;
    let b = mock("b").await;
    let c = mock("c").await;
    // The route fails over to b first, then c; the eu client may only use a and c.
    let config = format!(
        "{}{}{}{}{CLIENTS}",
        provider("a", "openai", &a, "retries = 0"),
        provider("b", "openai", &b, ""),
        provider("c", "openai", &c, ""),
        route("chat", &["a/m", "b/m", "c/m"]),
    );
    let keys = [("KEY_FREE", "free-key"), ("KEY_EU", "eu-key")];
    let gateway = TestGateway::start(&config, &keys).await;

    let eu = openai_as(&gateway, "eu-key", openai_chat("chat", "stay home")).await;
    assert_eq!(eu.status, 200, "{}", eu.text);
    assert_eq!(eu.served_by(), "provider:c/m");
    assert_eq!(eu.depth(), "2", "depths stay the route's");
    assert_eq!(
        eu.attempts(),
        json!([{"target": "a/m", "outcome": "status_503"}, {"target": "c/m", "outcome": "ok"}])
    );
    assert_eq!(eu.json()["airbag"]["chain"], json!([["a/m"], [], ["c/m"]]));
    assert_eq!(
        b.request_count(),
        0,
        "b is not among the eu client's providers"
    );

    // A client without the limit fails over to b as the route says.
    let free = openai_as(&gateway, "free-key", openai_chat("chat", "anywhere")).await;
    assert_eq!(free.served_by(), "provider:b/m");
    assert_eq!(b.request_count(), 1);
}

#[tokio::test]
async fn a_client_s_own_routes_come_before_the_global_table() {
    let extra = r#"
[[clients]]
key = "env:KEY_FREE"
tenant = "free"

[[clients]]
key = "env:KEY_EU"
tenant = "eu"
allowed_providers = ["c"]
[[clients.routes]]
model = "chat"
chain = ["c/m"]
"#;
    let (gateway, a, b, c) = three_providers(false, extra).await;
    let eu = openai_as(&gateway, "eu-key", openai_chat("chat", "mine")).await;
    assert_eq!(eu.status, 200, "{}", eu.text);
    assert_eq!(eu.served_by(), "provider:c/m");
    assert_eq!(eu.depth(), "0");
    // A model it does not route itself falls back to the global table (narrowed to c).
    let other = openai_as(&gateway, "eu-key", openai_chat("other", "theirs")).await;
    assert_eq!(other.served_by(), "provider:c/m");
    let free = openai_as(&gateway, "free-key", openai_chat("chat", "global")).await;
    assert_eq!(free.served_by(), "provider:a/m");
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (1, 0, 2)
    );
}

/// `GET /v1/models` lists a client's own routes (first) for its key only, and
/// `GET /v1/models/{id}` finds them for it.
#[tokio::test]
async fn a_client_s_own_routes_are_listed_for_its_key_only() {
    let extra = r#"
[[clients]]
key = "env:KEY_FREE"
tenant = "free"

[[clients]]
key = "env:KEY_EU"
tenant = "eu"
[[clients.routes]]
model = "eu-only"
chain = ["c/m"]
"#;
    let (gateway, _a, _b, _c) = three_providers(false, extra).await;
    let listed = |key: &'static str| {
        let gateway = &gateway;
        async move {
            let bearer = format!("Bearer {key}");
            let reply = gateway
                .get("/v1/models", &[("authorization", &bearer)])
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            reply.json()["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|model| model["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let eu = listed("eu-key").await;
    assert_eq!(eu[0], "eu-only", "{eu:?}");
    assert!(eu.contains(&"chat".to_string()), "{eu:?}");
    assert!(!listed("free-key").await.contains(&"eu-only".to_string()));
    let one = |key: &'static str| {
        let gateway = &gateway;
        async move {
            let bearer = format!("Bearer {key}");
            gateway
                .get("/v1/models/eu-only", &[("authorization", &bearer)])
                .await
                .status
        }
    };
    assert_eq!(one("eu-key").await, 200);
    assert_eq!(one("free-key").await, 404);
}

#[test]
fn check_config_refuses_a_client_route_on_a_provider_it_may_not_use() {
    let message = common::config_error(
        r#"
[providers.a]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[providers.b]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"

[[clients]]
key = "env:KEY_EU"
tenant = "eu"
allowed_providers = ["a", "ghost"]
requests_per_minute = 0
[[clients.routes]]
model = "chat"
chain = ["a/m", "b/m"]
"#,
    );
    assert!(
        message.contains(
            "clients[0].routes[0].chain[1]: `b/m` is on provider `b`, which clients[0].allowed_providers does not list"
        ),
        "{message}"
    );
    assert!(
        message.contains("clients[0].allowed_providers[1]: provider `ghost` is not defined"),
        "{message}"
    );
    assert!(
        message.contains("clients[0].requests_per_minute: must be at least 1"),
        "{message}"
    );
}

#[tokio::test]
async fn a_client_with_the_cache_off_always_reaches_the_provider() {
    let store = tempfile::tempdir().unwrap();
    let a = mock("a").await;
    let config = format!(
        "{}{}{}{}",
        provider("a", "openai", &a, ""),
        route("chat", &["a/m"]),
        common::cache_section(store.path(), "", "enabled = false"),
        r#"
[[clients]]
key = "env:KEY_ON"
tenant = "t"

[[clients]]
key = "env:KEY_OFF"
tenant = "t"
cache = "off"
"#,
    );
    let gateway =
        TestGateway::start(&config, &[("KEY_ON", "on-key"), ("KEY_OFF", "off-key")]).await;
    let ask = |key: &'static str| openai_as(&gateway, key, openai_chat("chat", "same question"));
    // The caching client stores the answer, and finds it again.
    assert_eq!(ask("on-key").await.rung(), "provider");
    let cached = asked_until_cached(|| ask("on-key")).await;
    assert_eq!(cached.served_by(), "cache:exact");
    let before = a.request_count();
    // Same tenant, same question: the client with the cache off still asks the provider.
    let off = ask("off-key").await;
    assert_eq!(off.rung(), "provider", "{}", off.text);
    assert_eq!(a.request_count(), before + 1);
}

#[tokio::test]
async fn fallbacks_are_not_part_of_the_cache_key() {
    let store = tempfile::tempdir().unwrap();
    let a = mock("a").await;
    let c = mock("c").await;
    let config = format!(
        "{}{}{}{}{}",
        provider("a", "openai", &a, ""),
        provider("c", "openai", &c, ""),
        route("chat", &["a/m"]),
        route("other", &["c/m"]),
        common::cache_section(store.path(), "", "enabled = false"),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let mut with_fallbacks = openai_chat("chat", "cache me");
    with_fallbacks["fallbacks"] = json!(["c/m"]);
    assert_eq!(gateway.openai(with_fallbacks).await.rung(), "provider");
    let again = asked_until_cached(|| gateway.openai(openai_chat("chat", "cache me"))).await;
    assert_eq!(again.served_by(), "cache:exact");
}

/// A gateway whose client key `KEY` (value `limited-key`) has `limits` (TOML lines).
async fn limited(limits: &str) -> (TestGateway, airbag::mock::MockProvider) {
    let a = mock("a").await;
    let config = format!(
        "{}{}[[clients]]\nkey = \"env:KEY\"\ntenant = \"metered\"\n{limits}\n",
        provider("a", "openai", &a, ""),
        route("chat", &["a/m"]),
    );
    (
        TestGateway::start(&config, &[("KEY", "limited-key")]).await,
        a,
    )
}

#[tokio::test]
async fn past_its_requests_per_minute_a_client_key_gets_a_429_with_retry_after() {
    let (gateway, a) = limited("requests_per_minute = 2").await;
    let ask = || openai_as(&gateway, "limited-key", openai_chat("chat", "again"));
    let first = ask().await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit-requests"), "2");
    assert_eq!(first.header("x-ratelimit-remaining-requests"), "1");
    assert!(!first.header("x-ratelimit-reset-requests").is_empty());
    assert_eq!(ask().await.status, 200);
    let refused = ask().await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    let retry_after: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), "0");
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    assert_eq!(refused.json()["error"]["code"], "rate_limited");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests_per_minute"),
        "{}",
        refused.text
    );
    assert_eq!(
        a.request_count(),
        2,
        "a refused request never reaches a provider"
    );

    // Anthropic clients get Anthropic's shape.
    let refused = anthropic_with(
        &gateway,
        anthropic_chat("chat", "again"),
        ("x-api-key", "limited-key"),
    )
    .await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    assert!(!refused.header("retry-after").is_empty());
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(
            "airbag_client_rate_limited_total{limit=\"requests_per_minute\",tenant=\"metered\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn tokens_of_streamed_and_complete_answers_count_against_tokens_per_minute() {
    // The mock's answer to a four-word question costs 4 input and 7 output tokens.
    let (gateway, _a) = limited("tokens_per_minute = 15").await;
    let question = || openai_chat("chat", "count these four words");
    let mut streamed = question();
    streamed["stream"] = json!(true);
    let first = openai_as(&gateway, "limited-key", streamed).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-ratelimit-limit-tokens"), "15");
    // 11 of 15 spent: one more request is let in, and spends past the budget.
    let second = openai_as(&gateway, "limited-key", question()).await;
    assert_eq!(second.status, 200, "{}", second.text);
    let remaining: u64 = second
        .header("x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(remaining <= 4, "{remaining}");
    let refused = openai_as(&gateway, "limited-key", question()).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert!(
        refused.text.contains("tokens_per_minute"),
        "{}",
        refused.text
    );
    assert!(!refused.header("retry-after").is_empty());
}

#[tokio::test]
async fn a_saturated_target_spills_to_the_next_tier_after_its_queue_timeout() {
    // a serves one request at a time; the first it gets takes a while.
    let a = mock_with(
        "a",
        MockOptions::default(),
        vec![FaultRule::times(1, Fault::Delay { ms: 5_000 })],
    )
    .await;
    let b = mock("b").await;
    let config = format!(
        "{}{}{}",
        provider(
            "a",
            "openai",
            &a,
            "max_concurrent = 1\nqueue_timeout = \"50ms\"\n\
             timeouts = { connect = \"1s\", first_byte = \"30s\", idle = \"30s\", total = \"60s\" }"
        ),
        provider("b", "openai", &b, ""),
        route("chat", &["a/m", "b/m"]),
    );
    let gateway = std::sync::Arc::new(TestGateway::start(&config, &[]).await);
    let slow = {
        let gateway = gateway.clone();
        tokio::spawn(async move { gateway.openai(openai_chat("chat", "slow one")).await })
    };
    while a.request_count() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let spilled = gateway.openai(openai_chat("chat", "next one")).await;
    assert_eq!(spilled.status, 200, "{}", spilled.text);
    assert_eq!(spilled.served_by(), "provider:b/m");
    assert_eq!(
        spilled.attempts(),
        json!([{"target": "a/m", "outcome": "saturated"}, {"target": "b/m", "outcome": "ok"}])
    );
    // The second request never reached a: it was answering one request at a time.
    assert_eq!(a.request_count(), 1);
    assert_eq!(a.peak_concurrency(), 1);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_target_spills_total{target=\"a/m\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_upstream_attempts_total{outcome=\"saturated\",target=\"a/m\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_target_queue_depth{target=\"a/m\"} 0"),
        "{metrics}"
    );
    slow.abort();
}

#[tokio::test]
async fn a_waiting_request_takes_the_slot_freed_within_its_queue_timeout() {
    let a = mock("a").await;
    let b = mock("b").await;
    let config = format!(
        "{}{}{}",
        provider(
            "a",
            "openai",
            &a,
            "max_concurrent = 1\nqueue_timeout = \"30s\""
        ),
        provider("b", "openai", &b, ""),
        route("chat", &["a/m", "b/m"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let asks = (0..4).map(|n| gateway.openai(openai_chat("chat", &format!("one of four {n}"))));
    let replies: Vec<_> = futures_util::future::join_all(asks).await;
    for reply in &replies {
        assert_eq!(reply.served_by(), "provider:a/m", "{}", reply.text);
    }
    assert_eq!(a.request_count(), 4);
    assert_eq!(a.peak_concurrency(), 1, "one at a time, the others waited");
    assert_eq!(b.request_count(), 0);
    let _: Value = replies[0].json();
}
