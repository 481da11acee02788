//! The ladder: the one place that knows the order of the rungs.
//!
//! A parsed request walks down the rungs and stops at the first that can answer:
//!
//! 1. cache (exact, then semantic) — not built yet; see ARCHITECTURE.md;
//! 2. providers — the route's chain of targets ([`crate::providers::chain::walk`]);
//! 3. canned — not built yet; until it is, a request every target failed gets a 503
//!    listing each attempt.
//!
//! The ladder decides *which* rung serves and returns a [`Served`] with its tag; egress
//! (in `server`) renders it in the caller's protocol. It never touches HTTP types.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::ProviderKind;
use crate::error::RequestError;
use crate::protocol::{ChatRequest, ChatResponse, EventStream};
use crate::providers::{AttemptRecord, ChainOutcome, UpstreamAnswer, chain};
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
        ChainOutcome::Exhausted { attempts } => Err(RequestError::AllTargetsFailed {
            route: route.model.clone(),
            attempts,
        }),
    }
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
