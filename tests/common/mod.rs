//! The behaviour-test harness: the real gateway on `127.0.0.1:0` in front of real mock
//! providers on their own random ports, driven over HTTP like a client would.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

pub mod cloud;
pub mod process;
pub mod qdrant;
pub mod webdriver;

use std::path::Path;

use airbag::config::{Config, Env};
use airbag::mock::{FaultRule, MockOptions, MockProvider};
use airbag::protocol::sse::SseDecoder;
use airbag::server::{self, RunningGateway};
use reqwest::header::HeaderMap;
use serde_json::Value;

pub struct TestGateway {
    pub running: RunningGateway,
    pub client: reqwest::Client,
    /// The empty canned folder given to a config without a `[canned]` section, so
    /// requests every target failed still get their 503. Removed when the test ends.
    pub canned_dir: Option<tempfile::TempDir>,
}

/// A temporary canned folder holding `files` (name, content).
pub fn canned_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary canned folder");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("canned file written");
    }
    dir
}

/// A `[canned]` section over `dir`, polled every 50ms so reload tests are quick.
pub fn canned_section(dir: &Path) -> String {
    format!(
        "[canned]\ndir = {:?}\nreload_interval = \"50ms\"\n",
        dir.to_string_lossy()
    )
}

/// A provider section for a mock, with test-sized timeouts and backoff and its breaker
/// off. `extra` adds or overrides keys (TOML lines).
pub fn provider(name: &str, kind: &str, mock: &MockProvider, extra: &str) -> String {
    let mut section = format!(
        "[providers.{name}]\nkind = \"{kind}\"\nbase_url = \"{}\"\n",
        mock.base_url()
    );
    let has = |key: &str| extra.lines().any(|line| line.trim_start().starts_with(key));
    if !has("retries") {
        section.push_str("retries = 2\n");
    }
    if !has("backoff") {
        section.push_str("backoff = { initial = \"1ms\", max = \"5ms\" }\n");
    }
    // Breakers are tested on purpose in tests/breakers.rs; elsewhere a run of failures
    // must not change what the next request of the same test sees.
    if !has("breaker") {
        section.push_str("breaker = { enabled = false }\n");
    }
    if !has("timeouts") {
        section.push_str(
            "timeouts = { connect = \"1s\", first_byte = \"2s\", idle = \"1s\", total = \"10s\" }\n",
        );
    }
    section.push_str(extra);
    section.push('\n');
    section
}

pub fn route(model: &str, chain: &[&str]) -> String {
    let chain: Vec<String> = chain.iter().map(|target| format!("\"{target}\"")).collect();
    format!(
        "[[routes]]\nmodel = \"{model}\"\nchain = [{}]\n",
        chain.join(", ")
    )
}

pub async fn mock(name: &str) -> MockProvider {
    mock_with(name, MockOptions::default(), Vec::new()).await
}

pub async fn mock_with(name: &str, options: MockOptions, rules: Vec<FaultRule>) -> MockProvider {
    let options = MockOptions {
        name: name.to_string(),
        ..options
    };
    MockProvider::start(
        "127.0.0.1:0".parse().expect("loopback address"),
        options,
        rules,
    )
    .await
    .expect("mock provider starts")
}

/// A `[cache]` section with its store in `store` and the model `make model` fetched.
/// `cache` adds keys to `[cache]`, `semantic` to `[cache.semantic]`.
pub fn cache_section(store: &Path, cache: &str, semantic: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        "[cache]\nmaintenance_interval = \"200ms\"\n{cache}\n\
         [cache.semantic]\nmodel_dir = \"{root}/.cache/model/all-minilm-l6-v2\"\n\
         onnxruntime = \"{root}/.cache/model/onnxruntime/libonnxruntime.so\"\n{semantic}\n\
         [cache.store]\npath = \"{}\"\n",
        store.display()
    )
}

/// The config with both listeners on free loopback ports: a `[server]` or `[admin]`
/// section the test wrote keeps its other keys. Without a `[cache]` section the cache is
/// off, so tests of other rungs see every request reach the providers.
fn with_loopback_listeners(config: &str) -> String {
    let mut text = config.to_string();
    for section in ["[server]\n", "[admin]\n"] {
        let with_listen = format!("{section}listen = \"127.0.0.1:0\"\n");
        text = if text.contains(section) {
            text.replacen(section, &with_listen, 1)
        } else {
            format!("{with_listen}{text}")
        };
    }
    if !text.contains("[cache]") {
        text.push_str("\n[cache]\nenabled = false\n");
    }
    text
}

impl TestGateway {
    /// Start a gateway from config text (listeners are put on free loopback ports) with
    /// `env` as its whole environment.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> TestGateway {
        let mut text = with_loopback_listeners(config);
        let mut empty_canned = None;
        if !text.contains("[canned]") {
            let dir = canned_dir(&[]);
            text.push_str(&canned_section(dir.path()));
            empty_canned = Some(dir);
        }
        let env = Env::from_pairs(env.iter().copied());
        let config = Config::from_toml(&text, Path::new("test.toml"), &env)
            .unwrap_or_else(|error| panic!("test config is valid: {error}\n{text}"));
        let mut gateway = TestGateway::start_config(&config, &env).await;
        gateway.canned_dir = empty_canned;
        gateway
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::read(request.send().await.expect("gateway answers")).await
    }

    /// GET on the admin listener, with a bearer token when given.
    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.get(self.admin_url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Reply::read(request.send().await.expect("admin answers")).await
    }

    /// A request on the admin listener with a bearer token, extra headers and a JSON body.
    pub async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.admin_url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        Reply::read(request.send().await.expect("admin answers")).await
    }

    pub async fn start_config(config: &Config, env: &Env) -> TestGateway {
        let running = server::start(config, env).await.expect("gateway starts");
        TestGateway {
            running,
            client: reqwest::Client::new(),
            canned_dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.proxy_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    pub async fn openai(&self, body: Value) -> Reply {
        self.post("/v1/chat/completions", body, &[]).await
    }

    pub async fn anthropic(&self, body: Value) -> Reply {
        self.post("/v1/messages", body, &[("anthropic-version", "2023-06-01")])
            .await
    }

    pub async fn post(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::read(request.send().await.expect("gateway answers")).await
    }

    /// POST `body` to `path` until the answer is an exact cache hit (the store is written in
    /// the background), up to 5 s; returns that hit.
    pub async fn repeat_until_cached(&self, path: &str, body: &Value) -> Reply {
        for _ in 0..50 {
            let repeat = self.post(path, body.clone(), &[]).await;
            if repeat.served_by() == "cache:exact" {
                return repeat;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{body} was never served from the cache");
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("metrics text")
    }
}

/// The value of one series (`name{labels}` as rendered) in a Prometheus text page.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// What a client got back.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            text,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|error| panic!("body is JSON ({error}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    /// The body's `airbag.attempts` without the providers' request ids (random per
    /// response), so a test can compare them whole.
    pub fn attempts(&self) -> Value {
        let mut attempts = self.json()["airbag"]["attempts"].clone();
        if let Some(list) = attempts.as_array_mut() {
            for attempt in list {
                if let Some(fields) = attempt.as_object_mut() {
                    fields.remove("upstream_request_id");
                }
            }
        }
        attempts
    }

    pub fn served_by(&self) -> &str {
        self.header("x-airbag-served-by")
    }

    pub fn rung(&self) -> &str {
        self.header("x-airbag-rung")
    }

    pub fn depth(&self) -> &str {
        self.header("x-airbag-fallback-depth")
    }

    /// The SSE events of a streamed body: (event name, data).
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        SseDecoder::default()
            .push(self.text.as_bytes())
            .into_iter()
            .map(|event| (event.event, event.data))
            .collect()
    }

    /// The text a streamed OpenAI body carried.
    pub fn openai_stream_text(&self) -> String {
        self.events()
            .iter()
            .filter(|(_, data)| data != "[DONE]")
            .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
            .filter_map(|chunk| {
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    /// The text a streamed Anthropic body carried.
    pub fn anthropic_stream_text(&self) -> String {
        self.events()
            .iter()
            .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
            .filter(|event| event["type"] == "content_block_delta")
            .filter_map(|event| event["delta"]["text"].as_str().map(str::to_string))
            .collect()
    }
}

pub fn openai_chat(model: &str, text: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

pub fn anthropic_chat(model: &str, text: &str) -> Value {
    serde_json::json!({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": text}]})
}

/// The start-up error a config text gives, with an empty environment.
pub fn config_error(text: &str) -> String {
    match Config::from_toml(text, Path::new("airbag.toml"), &Env::default()) {
        Ok(_) => panic!("the config was accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}
