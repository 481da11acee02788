//! Endpoints besides chat that are forwarded as they came: `POST /v1/messages/count_tokens`
//! (Anthropic's token count of a request; `anthropic` targets) and `POST /v1/embeddings`
//! (OpenAI's embeddings; `openai` targets). The body goes to the first target of the
//! route whose surface has the endpoint, with the model renamed to that provider's id;
//! its answer (a result or a 4xx) goes back as it came; a target that fails (5xx,
//! network, timeout, open breaker) is passed over for the next, so the route's fallbacks
//! hold here too. Nothing is cached.

use bytes::Bytes;
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::Route;
use super::surface::Surface;

/// An endpoint forwarded as it came.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    CountTokens,
    Embeddings,
}

impl Endpoint {
    fn url(self, surface: &dyn Surface) -> Option<reqwest::Url> {
        match self {
            Endpoint::CountTokens => surface.count_tokens_endpoint(),
            Endpoint::Embeddings => surface.embeddings_endpoint(),
        }
    }

    /// The provider kind that serves it, for the error of a route without one.
    pub fn served_by_kind(self) -> &'static str {
        match self {
            Endpoint::CountTokens => "anthropic",
            Endpoint::Embeddings => "openai",
        }
    }
}

/// How a forwarded request ended.
pub enum Forwarded {
    /// The provider's status and body, from `target`.
    Answered {
        status: u16,
        body: Bytes,
        target: String,
    },
    /// No target of the route has the endpoint.
    NoTarget,
    /// Every target that has it failed; each with why.
    Failed(Vec<(String, String)>),
}

/// Forward `body` (its `model` already resolved to `route`) to `endpoint`.
pub async fn forward(route: &Route, endpoint: Endpoint, body: &Value) -> Forwarded {
    let mut failures = Vec::new();
    let mut any = false;
    for target in route.targets() {
        let Some(provider) = &target.provider else {
            continue;
        };
        let Some(url) = endpoint.url(provider.surface.as_ref()) else {
            continue;
        };
        any = true;
        if target.breaker.is_open() {
            failures.push((target.label.clone(), "breaker_open".to_string()));
            continue;
        }
        let mut upstream_body = body.clone();
        upstream_body["model"] = Value::String(target.upstream_model.clone());
        let Ok(mut request) = provider
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(upstream_body.to_string())
            .build()
        else {
            failures.push((target.label.clone(), "config".to_string()));
            continue;
        };
        let key = provider
            .keys
            .pick(&target.model, &[])
            .and_then(|index| provider.keys.get(index))
            .and_then(|key| key.secret());
        if let Err(failure) = provider.surface.authorize(&mut request, key).await {
            failures.push((target.label.clone(), failure.outcome()));
            continue;
        }
        let deadline = Instant::now() + provider.config.timeouts.total;
        let sent = timeout_at(deadline, async {
            let response = provider.client.execute(request).await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        })
        .await;
        match sent {
            Ok(Ok((status, body))) if status < 500 => {
                return Forwarded::Answered {
                    status,
                    body,
                    target: target.label.clone(),
                };
            }
            Ok(Ok((status, _))) => {
                failures.push((target.label.clone(), format!("status_{status}")))
            }
            Ok(Err(_)) => failures.push((target.label.clone(), "network".to_string())),
            Err(_) => failures.push((target.label.clone(), "timeout_total".to_string())),
        }
    }
    if any {
        Forwarded::Failed(failures)
    } else {
        Forwarded::NoTarget
    }
}
