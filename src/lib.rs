//! airbag: a drop-in HTTP front end for chat apps that keeps answering when LLM
//! providers fail.
//!
//! Modules in reading order:
//! - [`config`]: the config file, its validation, `env:NAME` secrets.
//! - [`server`]: starts both listeners; the proxy's ingress (auth, limits, parsing) and egress
//!   (rendering, rung tags, metrics).
//! - [`listener`]: accepting and driving connections with header and idle timeouts and a
//!   connection cap, for both listeners.
//! - [`health`]: `/readyz` (can any rung answer?) and `/healthz/upstreams` (are the
//!   providers up?) on the proxy listener.
//! - [`clients`]: client keys, their tenants and policies (own routes, allowed
//!   providers, cache use); [`limits`]: their requests and tokens per minute.
//! - [`routing`]: the chain a request walks: its client's route, its own fallbacks,
//!   its client's allowed providers.
//! - [`ladder`]: the one function that knows the order of the rungs.
//! - [`providers`]: rung 2, the chain of targets with retries, backoff, key rotation,
//!   timeouts, circuit breakers and the quality judge.
//! - [`canned`]: rung 3, pre-written answers kept in files, their reload and admin API.
//! - [`protocol`]: the neutral chat types and the OpenAI and Anthropic wire formats.
//! - [`error`]: request errors and their bodies in each protocol.
//! - [`admin`]: the admin listener: metrics, status, drills, canned answers, its OpenAPI
//!   document.
//! - [`metrics`]: Prometheus metrics.
//! - [`drill`]: `airbag drill`, an outage rehearsal against a running gateway.
//! - [`mock`]: the fake provider behind `airbag mock-provider`.

pub mod admin;
pub mod cache;
pub mod canned;
pub mod clients;
pub mod config;
pub mod drill;
pub mod error;
pub mod health;
pub mod http_edge;
pub mod ladder;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod mock;
pub mod protocol;
pub mod providers;
pub mod routing;
pub mod server;
pub mod telemetry;
pub mod tokens;
pub mod traffic;
