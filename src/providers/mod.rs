//! Rung 2: upstream providers. A [`Provider`] is one configured upstream API with its keys
//! and HTTP client; [`attempt`] makes one call to one target; [`chain`] walks a route's
//! targets with retries, backoff, key rotation and fallbacks; [`faults`] holds the
//! faults drills inject into a target's attempts.
//!
//! This module talks to providers and classifies what they answer. It never renders a
//! client response and never knows about the cache or canned rungs.

pub mod attempt;
pub mod breaker;
pub mod chain;
pub mod classify;
pub mod faults;
pub mod hedge;
pub mod keys;
pub mod quality;
pub mod resume;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, Env, ProviderConfig, ProviderKind, split_target};
use crate::metrics::Metrics;
use breaker::Breaker;
use faults::TargetFaults;
use hedge::{HedgeBudget, HedgePolicy};
use quality::QualityJudge;

pub use attempt::{AttemptFailure, UpstreamAnswer};
pub use chain::{AttemptRecord, ChainOutcome};
pub use keys::KeyPool;

/// One configured upstream API.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub config: ProviderConfig,
    pub keys: KeyPool,
    /// The chat endpoint, parsed once: building it per attempt cost 4% of the gateway's
    /// time in the overhead benchmark.
    pub endpoint: reqwest::Url,
    client: reqwest::Client,
}

impl Provider {
    /// Builds the provider, or returns None (with the reason) when none of its keys are in
    /// the environment: such a provider is disabled and its targets are skipped.
    pub fn build(name: &str, config: &ProviderConfig, env: &Env) -> Result<Provider, String> {
        let keys = KeyPool::from_config(&config.keys, env).ok_or_else(|| {
            let names: Vec<&str> = config.keys.iter().map(|key| key.key.reference()).collect();
            format!(
                "provider `{name}` is disabled: none of its keys are set in the environment ({})",
                names.join(", ")
            )
        })?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect)
            .tcp_nodelay(true)
            // A redirect would carry `x-api-key` to another host and turn the POST into
            // a GET; a provider that redirects is misconfigured, and its 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|error| format!("provider `{name}`: cannot build its HTTP client: {error}"))?;
        let base = config.base_url.trim_end_matches('/');
        let path = match config.kind {
            ProviderKind::Openai => "chat/completions",
            ProviderKind::Anthropic => "messages",
        };
        let endpoint = reqwest::Url::parse(&format!("{base}/{path}")).map_err(|error| {
            format!(
                "provider `{name}`: base_url `{}` is not a URL: {error}",
                config.base_url
            )
        })?;
        Ok(Provider {
            endpoint,
            name: name.to_string(),
            kind: config.kind,
            config: config.clone(),
            keys,
            client,
        })
    }
}

/// A `provider/model` a route can send a request to.
#[derive(Clone)]
pub struct Target {
    /// `provider/model`, as written in the config; used in tags, metrics and errors.
    pub label: String,
    pub model: String,
    /// None when the provider is disabled (no keys in the environment).
    pub provider: Option<Arc<Provider>>,
    /// Shared by every route that names this target.
    pub breaker: Arc<Breaker>,
    /// Grades a sample of this target's answers, when its provider asks for it.
    pub quality: Option<Arc<QualityJudge>>,
    /// The fault a drill injected into this target's attempts, if any; shared like the
    /// breaker.
    pub faults: Arc<TargetFaults>,
}

/// A route with its targets resolved to providers, and its failover policy.
pub struct Route {
    pub model: String,
    pub chain: Vec<Target>,
    pub context_window_fallback: Option<Target>,
    /// Hedged requests, when the route sets `hedge_after`.
    pub hedge: Option<HedgePolicy>,
    /// The SSE comment interval for streaming clients while the ladder works.
    pub stream_keepalive: Option<std::time::Duration>,
    /// Continue a stream that broke after its first content on the next target.
    pub resume_streams: bool,
}

impl Route {
    fn is_glob(&self) -> bool {
        self.model.contains(['*', '?'])
    }
}

/// All routes, matched by the model name a client asks for, and every target they name.
pub struct Routes {
    /// Shared so a resumed stream can walk its route after the request's handler returned.
    routes: Vec<Arc<Route>>,
    targets: BTreeMap<String, Target>,
}

impl Routes {
    /// Resolve every route's targets against the providers that could be built, with one
    /// breaker per target. Config validation has already checked every reference.
    pub fn build(
        config: &Config,
        providers: &BTreeMap<String, Arc<Provider>>,
        metrics: &Metrics,
    ) -> Routes {
        let mut labels: Vec<&str> = Vec::new();
        for route in &config.routes {
            labels.extend(route.chain.iter().map(String::as_str));
            labels.extend(route.context_window_fallback.as_deref());
        }
        labels.extend(
            config
                .providers
                .values()
                .filter_map(|provider| provider.quality.as_ref())
                .map(|quality| quality.judge.as_str()),
        );
        let mut targets: BTreeMap<String, Target> = BTreeMap::new();
        for label in labels {
            if targets.contains_key(label) {
                continue;
            }
            let (provider_name, model) = split_target(label).unwrap_or((label, ""));
            let breaker_config = config
                .providers
                .get(provider_name)
                .map(|provider| provider.breaker)
                .unwrap_or_default();
            let target = Target {
                label: label.to_string(),
                model: model.to_string(),
                provider: providers.get(provider_name).cloned(),
                breaker: Breaker::new(label, breaker_config, metrics),
                quality: None,
                faults: TargetFaults::new(label, metrics),
            };
            targets.insert(label.to_string(), target);
        }
        // Judges are attached once every target exists, since a judge is a target too.
        let judges: Vec<(String, Arc<QualityJudge>)> = targets
            .values()
            .filter_map(|target| {
                let provider = target.provider.as_ref()?;
                let quality = provider.config.quality.clone()?;
                let judge = targets.get(&quality.judge)?.clone();
                let judge = QualityJudge::new(
                    &target.label,
                    quality,
                    judge,
                    target.breaker.clone(),
                    metrics,
                );
                Some((target.label.clone(), judge))
            })
            .collect();
        for (label, judge) in judges {
            if let Some(target) = targets.get_mut(&label) {
                target.quality = Some(judge);
            }
        }
        let resolve = |label: &str| targets.get(label).cloned();
        let routes = config
            .routes
            .iter()
            .map(|route| {
                Arc::new(Route {
                    model: route.model.clone(),
                    chain: route
                        .chain
                        .iter()
                        .filter_map(|label| resolve(label))
                        .collect(),
                    context_window_fallback: route
                        .context_window_fallback
                        .as_deref()
                        .and_then(resolve),
                    hedge: route.hedge_after.map(|after| HedgePolicy {
                        after,
                        budget: HedgeBudget::new(route.hedge_max_share),
                    }),
                    stream_keepalive: route.stream_keepalive,
                    resume_streams: route.resume_streams,
                })
            })
            .collect();
        let routes = Routes { routes, targets };
        routes.zero_failover_series(metrics);
        routes
    }

    /// Hedge and resume series start at 0 for every route and target, so a dashboard's
    /// rate over them reads 0, not "no data", until the first hedge or resume.
    fn zero_failover_series(&self, metrics: &Metrics) {
        for route in &self.routes {
            for outcome in ["won", "lost", "skipped_budget"] {
                metrics.hedges.with_label_values(&[&route.model, outcome]);
            }
            for target in &route.chain {
                for outcome in ["resumed", "failed"] {
                    metrics
                        .stream_resumes
                        .with_label_values(&[&target.label, outcome]);
                }
            }
        }
    }

    /// Every target any route or judge names, by label.
    pub fn targets(&self) -> &BTreeMap<String, Target> {
        &self.targets
    }

    /// The route for a model name: an exact name first, then the first matching glob.
    pub fn find(&self, model: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|route| !route.is_glob() && route.model == model)
            .or_else(|| {
                self.routes
                    .iter()
                    .find(|route| route.is_glob() && glob_matches(&route.model, model))
            })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|route| route.as_ref())
    }
}

/// `*` matches any run of characters, `?` any one character.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn globs_match_like_shell_patterns() {
        assert!(glob_matches("gpt-4*", "gpt-4o-mini"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("claude-?-x", "claude-3-x"));
        assert!(!glob_matches("gpt-4*", "gpt-3.5"));
        assert!(glob_matches("a*b*c", "a-b-b-c"));
        assert!(!glob_matches("a*b*c", "a-b-b-d"));
    }
}
