//! `POST /v1/messages/count_tokens`: Anthropic's token count of a request, forwarded to
//! the first target of the route whose surface counts tokens (`anthropic` today), with
//! the model renamed to that provider's id. Its answer (a count or a 4xx) goes back as
//! it came; a target that fails (5xx, timeout, open breaker) is passed over for the next.

use bytes::Bytes;
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::Route;

/// How a count ended.
pub enum Counted {
    /// The provider's status and body, from `target`.
    Answered {
        status: u16,
        body: Bytes,
        target: String,
    },
    /// No target of the route can count tokens.
    NoTarget,
    /// Every target that could count failed; each with why.
    Failed(Vec<(String, String)>),
}

/// Forward `body` (a Messages request, `model` already resolved to `route`).
pub async fn count_tokens(route: &Route, body: &Value) -> Counted {
    let mut failures = Vec::new();
    let mut any = false;
    for target in route.targets() {
        let Some(provider) = &target.provider else {
            continue;
        };
        let Some(url) = provider.surface.count_tokens_endpoint() else {
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
                return Counted::Answered {
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
        Counted::Failed(failures)
    } else {
        Counted::NoTarget
    }
}
