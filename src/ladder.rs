//! The ladder: the one place that knows the order of the rungs.
//!
//! A parsed request walks down the rungs and stops at the first that can answer:
//!
//! 1. cache (exact, then semantic) — not built yet; see ARCHITECTURE.md;
//! 2. providers — the route's chain of targets ([`crate::providers::chain::walk`]);
//! 3. canned — the best pre-written answer for the route and the last user message
//!    ([`crate::canned`]); when none applies (no default), a 503 listing each attempt.
//!
//! The ladder decides *which* rung serves and returns a [`Served`] with its tag; egress
//! (in `server`) renders it in the caller's protocol. It never touches HTTP types.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::ProviderKind;
use crate::error::RequestError;
use crate::protocol::{
    ChatRequest, ChatResponse, EventStream, Part, StopReason, Usage, last_user_text, random_id,
    replay_as_stream,
};
use crate::providers::{AttemptRecord, ChainOutcome, Route, UpstreamAnswer, chain};
use crate::server::Gateway;

/// Which rung served a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rung {
    Cache,
    Provider,
    Canned,
}

impl Rung {
    pub fn label(self) -> &'static str {
        match self {
            Rung::Cache => "cache",
            Rung::Provider => "provider",
            Rung::Canned => "canned",
        }
    }
}

/// How a response was served: the `x-airbag-*` headers and the body's `airbag` object.
#[derive(Debug, Clone, PartialEq)]
pub struct RungTag {
    pub rung: Rung,
    /// `cache:exact`, `cache:semantic`, `cache:stale`, `provider:<target>`, `canned:<id>`.
    pub served_by: String,
    /// 0 for the route's primary target, 1.. for fallbacks.
    pub fallback_depth: usize,
    pub similarity: Option<f32>,
    pub attempts: Vec<AttemptRecord>,
}

impl RungTag {
    pub fn to_json(&self) -> Value {
        let mut tag = json!({
            "rung": self.rung,
            "served_by": self.served_by,
            "fallback_depth": self.fallback_depth,
            "attempts": self.attempts,
        });
        if let Some(similarity) = self.similarity {
            tag["similarity"] = json!(similarity);
        }
        tag
    }
}

pub enum Answer {
    Complete(ChatResponse),
    Stream(EventStream),
    /// The provider refused the request as the client's fault (400/404/422…); its status
    /// and body go back to the client.
    Refused {
        status: u16,
        body: Bytes,
        kind: ProviderKind,
    },
}

pub struct Served {
    pub answer: Answer,
    pub tag: RungTag,
}

/// Walk the rungs for one request.
pub async fn answer(gateway: &Gateway, request: &ChatRequest) -> Result<Served, RequestError> {
    let Some(route) = gateway.routes.find(&request.model) else {
        return Err(RequestError::UnknownModel {
            model: request.model.clone(),
            known: gateway
                .routes
                .iter()
                .map(|route| route.model.clone())
                .collect(),
        });
    };

    // Rung 2: providers.
    // The request's budget for rung 2: no attempt starts, and no answer is committed,
    // after it. Later rungs still answer.
    let deadline = tokio::time::Instant::now() + gateway.request_timeout;
    match chain::walk(route, request, &gateway.metrics, deadline).await {
        ChainOutcome::Answered {
            answer,
            target,
            depth,
            attempts,
        } => Ok(Served {
            answer: match answer {
                UpstreamAnswer::Complete(response) => Answer::Complete(response),
                UpstreamAnswer::Stream(events) => Answer::Stream(events),
            },
            tag: provider_tag(&target, depth, attempts),
        }),
        ChainOutcome::Refused {
            status,
            body,
            kind,
            target,
            depth,
            attempts,
        } => Ok(Served {
            answer: Answer::Refused { status, body, kind },
            tag: provider_tag(&target, depth, attempts),
        }),
        // Rung 3: canned. Every target failed or was skipped.
        ChainOutcome::Exhausted { attempts } => canned_answer(gateway, route, request, attempts),
    }
}

/// The best canned entry for the request, as a complete answer (or its replay as a
/// stream), tagged `canned:<id>` with the failed attempts; a 503 when none applies.
/// Canned answers are never cached.
fn canned_answer(
    gateway: &Gateway,
    route: &Route,
    request: &ChatRequest,
    attempts: Vec<AttemptRecord>,
) -> Result<Served, RequestError> {
    let names = [request.model.as_str(), route.model.as_str()];
    let text = last_user_text(&request.messages);
    // The cache's embedder will supply the last user message's vector; until then only
    // patterns and catch-alls match.
    let query_vector = None;
    let Some(found) = gateway.canned.best(&names, &text, query_vector) else {
        return Err(RequestError::AllTargetsFailed {
            route: route.model.clone(),
            attempts,
        });
    };
    let id = found.entry.id.as_str();
    gateway.metrics.canned_served.with_label_values(&[id]).inc();
    let response = ChatResponse {
        id: random_id("canned-"),
        model: request.model.clone(),
        content: vec![Part::Text(found.entry.spec.text.clone())],
        stop_reason: StopReason::EndTurn,
        usage: Usage::default(),
    };
    Ok(Served {
        answer: if request.stream {
            Answer::Stream(replay_as_stream(response))
        } else {
            Answer::Complete(response)
        },
        tag: RungTag {
            rung: Rung::Canned,
            served_by: format!("canned:{id}"),
            // Past every target of the chain, like the context-window fallback.
            fallback_depth: route.chain.len(),
            similarity: found.similarity,
            attempts,
        },
    })
}

fn provider_tag(target: &str, depth: usize, attempts: Vec<AttemptRecord>) -> RungTag {
    RungTag {
        rung: Rung::Provider,
        served_by: format!("provider:{target}"),
        fallback_depth: depth,
        similarity: None,
        attempts,
    }
}
