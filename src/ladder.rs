//! The ladder: the one place that knows the order of the rungs.
//!
//! A parsed request walks down the rungs and stops at the first that can answer:
//!
//! 1. cache — exact, then semantic ([`crate::cache::Cache::lookup`]);
//! 2. providers — the route's chain of targets ([`crate::providers::chain::walk`]);
//!    a stream that breaks mid-answer is continued by the next target when the route
//!    resumes streams ([`crate::providers::resume`]); when every target failed, a stale
//!    cache entry (stale-if-error);
//! 3. canned — the best pre-written answer for the route and the last user message
//!    ([`crate::canned`]); when none applies (no default), a 503 listing each attempt.
//!
//! A provider's complete answer is handed to the cache on the way out (a stream once it
//! ended normally); nothing else is ever stored.
//!
//! The ladder decides *which* rung serves and returns a [`Served`] with its tag; egress
//! (in `server`) renders it in the caller's protocol. It never touches HTTP types.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cache::{Cache, CacheControls, CacheHit, HitKind, Lookup, PendingEntry};
use crate::error::RequestError;
use crate::protocol::{
    ChatRequest, ChatResponse, EventStream, Part, StopReason, Usage, crossing, last_user_text,
    random_id, replay_as_stream,
};
use crate::providers::resume::{self, ResumePlan};
use crate::providers::surface::Surface;
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
    /// The verifier's alignment score of a semantic hit (`cache.semantic.verify`).
    pub verifier_score: Option<f32>,
    pub attempts: Vec<AttemptRecord>,
    /// The answering provider's own request id (`x-airbag-upstream-request-id`).
    pub upstream_request_id: Option<String>,
    /// The request's id (`x-request-id`), set by the server once the ladder answered.
    pub request_id: Option<String>,
    /// What of the client's body the answering target (of the other dialect) could not
    /// be given (`x-airbag-dropped-fields`); see `protocol::crossing`.
    pub dropped_fields: Vec<String>,
    /// The request's own chain (`x-airbag-chain`), tier by tier, when it was not the
    /// route's as configured: the request's `fallbacks` or its client's allowed
    /// providers changed it (`crate::routing`).
    pub chain: Option<Vec<Vec<String>>>,
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
        if let Some(score) = self.verifier_score {
            tag["verifier_score"] = json!(score);
        }
        if let Some(id) = &self.upstream_request_id {
            tag["upstream_request_id"] = json!(id);
        }
        if let Some(id) = &self.request_id {
            tag["request_id"] = json!(id);
        }
        if !self.dropped_fields.is_empty() {
            tag["dropped_fields"] = json!(self.dropped_fields);
        }
        if let Some(chain) = &self.chain {
            tag["chain"] = json!(chain);
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
        /// The protocol the body may go back in as it came (None: always translated).
        dialect: Option<crate::protocol::Protocol>,
    },
}

pub struct Served {
    pub answer: Answer,
    pub tag: RungTag,
}

impl Served {
    /// The answer with the request's id in its tag.
    pub fn with_request_id(mut self, id: String) -> Served {
        self.tag.request_id = Some(id);
        self
    }

    /// The answer naming `fields` of the client's body among those no target got.
    pub fn with_dropped_fields(mut self, fields: &[String]) -> Served {
        for field in fields {
            if !self.tag.dropped_fields.contains(field) {
                self.tag.dropped_fields.push(field.clone());
            }
        }
        self
    }
}

/// Walk the rungs for one request of `tenant` over `route`, the chain
/// `crate::routing::request_route` drew for it.
pub async fn answer(
    gateway: &Gateway,
    route: &Arc<Route>,
    request: &ChatRequest,
    tenant: &str,
    controls: &CacheControls,
) -> Result<Served, RequestError> {
    // Rung 1: cache.
    let Lookup {
        hit,
        stale,
        pending,
        question_vector,
    } = match &gateway.cache {
        Some(cache) => cache.lookup(request, &route.model, tenant, controls).await,
        None => Lookup::default(),
    };
    if let Some(hit) = hit {
        return Ok(cache_served(hit, request, false, Vec::new()));
    }

    // Rung 2: providers.
    // The request's budget for rung 2: no attempt starts, and no answer is committed,
    // after it. Later rungs still answer.
    let deadline = tokio::time::Instant::now() + gateway.request_timeout;
    let (outcome, pending) = walk_chain(gateway, route, request, deadline, pending).await;
    match outcome {
        ChainOutcome::Answered {
            answer,
            target,
            depth,
            attempts,
        } => {
            let answer = match answer {
                UpstreamAnswer::Stream(events) if route.resume_streams => {
                    UpstreamAnswer::Stream(resume::resumable(
                        events,
                        ResumePlan {
                            route: route.clone(),
                            request: request.clone(),
                            metrics: gateway.metrics.clone(),
                            target: target.clone(),
                            depth,
                            request_timeout: gateway.request_timeout,
                        },
                    ))
                }
                answer => answer,
            };
            let tag = provider_tag(route, request, &target, depth, attempts);
            let dialect = route
                .surface_of(&target)
                .map(|surface| surface.body_dialect());
            let pending = pending.map(|pending| pending.answered_in(dialect));
            let answer = match (answer, &gateway.cache, pending) {
                (UpstreamAnswer::Complete(response), Some(cache), Some(pending)) => {
                    cache.store_answer(pending, &response, depth > 0, &tag.served_by);
                    Answer::Complete(response)
                }
                (UpstreamAnswer::Stream(events), Some(cache), Some(pending)) => Answer::Stream(
                    cache.store_stream(pending, events, depth > 0, tag.served_by.clone()),
                ),
                (UpstreamAnswer::Complete(response), _, _) => Answer::Complete(response),
                (UpstreamAnswer::Stream(events), _, _) => Answer::Stream(events),
            };
            Ok(Served { answer, tag })
        }
        ChainOutcome::Refused {
            status,
            body,
            dialect,
            target,
            depth,
            attempts,
        } => Ok(Served {
            answer: Answer::Refused {
                status,
                body,
                dialect,
            },
            tag: provider_tag(route, request, &target, depth, attempts),
        }),
        // Stale-if-error: an expired answer beats no answer, but only now.
        ChainOutcome::Exhausted { attempts } => match stale {
            Some(stale) => {
                let mut served = cache_served(stale, request, true, attempts);
                served.tag.chain = walked_chain(route);
                Ok(served)
            }
            // Rung 3: canned. Every target failed or was skipped.
            None => canned_answer(gateway, route, request, question_vector, attempts).await,
        },
    }
}

/// A cache entry served in place of a provider: replayed as a stream when the client
/// asked for one. A `stale` entry comes with the attempts that failed before it.
fn cache_served(
    hit: CacheHit,
    request: &ChatRequest,
    stale: bool,
    attempts: Vec<AttemptRecord>,
) -> Served {
    let served_by = match (stale, hit.kind) {
        (true, _) => "cache:stale",
        (false, HitKind::Exact) => "cache:exact",
        (false, HitKind::Semantic) => "cache:semantic",
        (false, HitKind::Coalesced) => "cache:coalesced",
    };
    let response = hit.response();
    // What of this request the dialect that produced the answer could not be given, as
    // the answer's own response said.
    let dropped_fields = hit
        .entry
        .answer
        .dialect()
        .map(|dialect| crossing::dropped_fields(request, dialect))
        .unwrap_or_default();
    Served {
        answer: if request.stream {
            Answer::Stream(replay_as_stream(response))
        } else {
            Answer::Complete(response)
        },
        tag: RungTag {
            rung: Rung::Cache,
            served_by: served_by.to_string(),
            fallback_depth: 0,
            similarity: hit.similarity,
            verifier_score: hit.verifier_score,
            attempts,
            upstream_request_id: None,
            request_id: None,
            dropped_fields,
            chain: None,
        },
    }
}

/// The chain a tag shows: the route's tiers when they were drawn for this request.
fn walked_chain(route: &Route) -> Option<Vec<Vec<String>>> {
    route.per_request.then(|| route.chain_labels())
}

/// The best canned entry for the request, as a complete answer (or its replay as a
/// stream), tagged `canned:<id>` with the failed attempts; a 503 when none applies.
/// Canned answers are never cached.
async fn canned_answer(
    gateway: &Gateway,
    route: &Route,
    request: &ChatRequest,
    question_vector: Option<Vec<f32>>,
    attempts: Vec<AttemptRecord>,
) -> Result<Served, RequestError> {
    let names = [request.model.as_str(), route.model.as_str()];
    let text = last_user_text(&request.messages);
    // Examples are compared with the question's vector: the one the cache lookup made,
    // or one made now (requests the semantic cache skips, such as tool calls).
    let question_vector = match (question_vector, gateway.cache.as_ref()) {
        (Some(vector), _) => Some(vector),
        (None, Some(cache)) if !text.trim().is_empty() => match cache.embedder() {
            Some(embedder) => embedder.embed_one(&text).await.ok(),
            None => None,
        },
        _ => None,
    };
    let Some(found) = gateway
        .canned
        .best(&names, &text, question_vector.as_deref())
    else {
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
        logprobs: None,
        provider_fields: None,
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
            fallback_depth: route.tiers.len(),
            similarity: found.similarity,
            verifier_score: None,
            attempts,
            upstream_request_id: None,
            request_id: None,
            dropped_fields: Vec::new(),
            chain: walked_chain(route),
        },
    })
}

/// The `served_by` tag of an answer from `target`.
fn provider_served_by(target: &str) -> String {
    format!("provider:{target}")
}

fn provider_tag(
    route: &Route,
    request: &ChatRequest,
    target: &str,
    depth: usize,
    attempts: Vec<AttemptRecord>,
) -> RungTag {
    // The answering attempt is the last `ok` one of the target that answered.
    let upstream_request_id = attempts
        .iter()
        .rev()
        .find(|attempt| attempt.target == target && attempt.outcome == "ok")
        .and_then(|attempt| attempt.upstream_request_id.clone());
    RungTag {
        rung: Rung::Provider,
        served_by: provider_served_by(target),
        fallback_depth: depth,
        similarity: None,
        verifier_score: None,
        attempts,
        upstream_request_id,
        request_id: None,
        dropped_fields: route
            .surface_of(target)
            .map(|surface| dropped_fields(request, surface))
            .unwrap_or_default(),
        chain: walked_chain(route),
    }
}

/// What of the client's body `surface` did not get: what its dialect cannot be given,
/// then the fields its endpoint refuses (a preset's, `surface/openai.rs`).
fn dropped_fields(request: &ChatRequest, surface: &dyn Surface) -> Vec<String> {
    let mut dropped = crossing::dropped_fields(request, surface.body_dialect());
    for name in surface.refused_fields(request) {
        if !dropped.contains(&name) {
            dropped.push(name);
        }
    }
    dropped
}

/// Rung 2's walk over the chain. A request that leads a flight of identical requests
/// (`cache/coalesce.rs`) walks it in a task of its own, detached from its client: if the
/// client goes away while followers wait, the walk goes on and its answer is stored for
/// them (the leader's own response is dropped); without followers it is cancelled, as
/// every other request's walk is when its client goes away. The pending write comes
/// back with the outcome.
async fn walk_chain(
    gateway: &Gateway,
    route: &Arc<Route>,
    request: &ChatRequest,
    deadline: tokio::time::Instant,
    pending: Option<PendingEntry>,
) -> (ChainOutcome, Option<PendingEntry>) {
    let (cache, pending) = match (&gateway.cache, pending) {
        (Some(cache), Some(pending)) if pending.leads_flight() => (cache.clone(), pending),
        (_, pending) => {
            return (
                chain::walk(route, request, &gateway.metrics, deadline).await,
                pending,
            );
        }
    };
    let (route, request) = (route.clone(), request.clone());
    let metrics = gateway.metrics.clone();
    let (mut reply, walked) = tokio::sync::oneshot::channel();
    // Not awaited at shutdown: the walk ends by `server.request_timeout` and the
    // attempts' deadlines, and an answer stored after the cache stopped is dropped. It
    // logs in the request's span.
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let walk = chain::walk(&route, &request, &metrics, deadline);
            tokio::pin!(walk);
            let outcome = tokio::select! {
                outcome = &mut walk => outcome,
                () = reply.closed() => {
                    if !pending.has_followers() {
                        // Nobody waits: dropping the walk cancels the call, dropping the
                        // pending write abandons the flight.
                        return;
                    }
                    walk.await
                }
            };
            if let Err((outcome, Some(pending))) = reply.send((outcome, Some(pending))) {
                answer_followers(&cache, outcome, pending);
            }
        },
        span,
    ));
    match walked.await {
        Ok(walked) => walked,
        // The walk's task panicked: the flight is abandoned with it.
        Err(_) => (
            ChainOutcome::Exhausted {
                attempts: Vec::new(),
            },
            None,
        ),
    }
}

/// The walk of a flight whose leader's client went away: its answer is stored as the
/// leader would have stored it (a stream once it ended normally), and the followers get
/// it. A refusal or a failed chain stores nothing: dropping the pending write abandons
/// the flight, and the followers look again.
fn answer_followers(cache: &Arc<Cache>, outcome: ChainOutcome, pending: PendingEntry) {
    let ChainOutcome::Answered {
        answer,
        target,
        depth,
        ..
    } = outcome
    else {
        return;
    };
    let served_by = provider_served_by(&target);
    match answer {
        UpstreamAnswer::Complete(response) => {
            cache.store_answer(pending, &response, depth > 0, &served_by);
        }
        // A flight's stream is read to its end by a task of its own (`store_stream`):
        // dropping it here leaves that task storing it.
        UpstreamAnswer::Stream(events) => {
            drop(cache.store_stream(pending, events, depth > 0, served_by));
        }
    }
}
