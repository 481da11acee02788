//! Rung 2: upstream providers. A [`Provider`] is one configured upstream API with its keys,
//! its [`surface`] (what differs between OpenAI, Anthropic, Bedrock and Vertex) and HTTP
//! client; [`attempt`] makes one call to one target; [`chain`] walks a route's tiers of
//! targets with weights, retries, backoff, key rotation and fallbacks; [`faults`] holds
//! the faults drills inject into a target's attempts.
//!
//! This module talks to providers and classifies what they answer. It never renders a
//! client response and never knows about the cache or canned rungs.

pub mod attempt;
pub mod backpressure;
pub mod breaker;
pub mod chain;
pub mod classify;
pub mod faults;
pub mod forward;
pub mod hedge;
pub mod keys;
pub mod quality;
pub mod resume;
pub mod surface;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Config, Env, ProviderConfig, ProviderKind, RouteConfig, split_target};
use crate::metrics::Metrics;
use backpressure::ConcurrencyGate;
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
    /// Static secrets (API keys, Bedrock API keys, Vertex tokens) with rotation; one
    /// placeholder for a provider whose surface signs or mints its own credentials.
    pub keys: KeyPool,
    /// Where requests go, how they are encoded, signed and read back.
    pub surface: Box<dyn surface::Surface>,
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
        let surface = surface::build(name, config, env, &client)?;
        Ok(Provider {
            surface,
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
    /// The model as the route names it (the label's part after `/`).
    pub model: String,
    /// The provider's own id for it (`models` in the provider's config), sent upstream.
    pub upstream_model: String,
    /// None when the provider is disabled (no keys in the environment).
    pub provider: Option<Arc<Provider>>,
    /// Shared by every route that names this target.
    pub breaker: Arc<Breaker>,
    /// Grades a sample of this target's answers, when its provider asks for it.
    pub quality: Option<Arc<QualityJudge>>,
    /// The fault a drill injected into this target's attempts, if any; shared like the
    /// breaker.
    pub faults: Arc<TargetFaults>,
    /// Its slots when its provider sets `max_concurrent`; shared like the breaker.
    pub gate: Option<Arc<ConcurrencyGate>>,
}

impl Target {
    /// The provider's name (the label's part before `/`).
    pub fn provider_name(&self) -> &str {
        split_target(&self.label).map_or(self.label.as_str(), |(provider, _)| provider)
    }
}

/// One target of a tier, with its share of the tier's traffic.
pub struct Member {
    pub target: Target,
    pub weight: u32,
    /// Requests this member answered on this route (shared with the routes drawn from
    /// it for one request).
    served: Arc<AtomicU64>,
}

impl Member {
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Targets at the same fallback depth, sharing its traffic by weight.
pub struct Tier {
    pub members: Vec<Member>,
}

/// One step of a request's walk: a target and its fallback depth (its tier's index).
#[derive(Clone, Copy)]
pub struct Step<'a> {
    pub target: &'a Target,
    pub depth: usize,
}

/// A route with its targets resolved to providers, and its failover policy.
pub struct Route {
    pub model: String,
    /// Primary tier first; the fallback depth of a target is its tier's index.
    pub tiers: Vec<Tier>,
    pub context_window_fallback: Option<Target>,
    /// Hedged requests, when the route sets `hedge_after`.
    pub hedge: Option<HedgePolicy>,
    /// The SSE comment interval for streaming clients while the ladder works.
    pub stream_keepalive: Option<std::time::Duration>,
    /// Continue a stream that broke after its first content on the next target.
    pub resume_streams: bool,
    /// This is one request's own chain (its `fallbacks`, its client's allowed
    /// providers), drawn from a configured route by `crate::routing`; its tag lists it.
    pub per_request: bool,
}

impl Route {
    fn is_glob(&self) -> bool {
        self.model.contains(['*', '?'])
    }

    /// Every target of every tier.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.tiers
            .iter()
            .flat_map(|tier| tier.members.iter().map(|member| &member.target))
    }

    /// The surface of the target labelled `label` (a tier member or the context-window
    /// fallback); None when it is not this route's or its provider is disabled.
    pub fn surface_of(&self, label: &str) -> Option<&dyn surface::Surface> {
        self.targets()
            .chain(self.context_window_fallback.as_ref())
            .find(|target| target.label == label)
            .and_then(|target| target.provider.as_ref())
            .map(|provider| provider.surface.as_ref())
    }

    /// One request's order of targets from tier `from` on, leaving out `exclude`: tier by
    /// tier, each tier's members in a random order drawn by weight (a member of weight 70
    /// goes first 70% of the time against one of 30). A member whose breaker is open is
    /// skipped when the walk reaches it, so the next by weight takes its share.
    pub fn plan(&self, from: usize, exclude: Option<&str>) -> Vec<Step<'_>> {
        let mut steps = Vec::new();
        for (depth, tier) in self.tiers.iter().enumerate().skip(from) {
            let mut drawn: Vec<(f64, &Target)> = tier
                .members
                .iter()
                .filter(|member| exclude != Some(member.target.label.as_str()))
                .map(|member| (weighted_draw(member.weight), &member.target))
                .collect();
            drawn.sort_by(|a, b| a.0.total_cmp(&b.0));
            steps.extend(drawn.into_iter().map(|(_, target)| Step { target, depth }));
        }
        steps
    }

    /// Counts an answer served by `label` toward its member's share.
    pub fn note_served(&self, label: &str) {
        if let Some(member) = self
            .tiers
            .iter()
            .flat_map(|tier| &tier.members)
            .find(|member| member.target.label == label)
        {
            member.served.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This route for one request: its first tier, then `fallbacks` (one tier each) in
    /// place of its other tiers when given, keeping only targets `allowed` lets through
    /// (a tier left empty keeps its place, so depths stay the route's). Members share
    /// their breakers, slots and served counts with this route; a target's quality judge
    /// is dropped when it is on a provider `allowed` does not list, since it would read
    /// the answer.
    pub fn narrowed(
        &self,
        fallbacks: Option<Vec<Target>>,
        allowed: &dyn Fn(&str) -> bool,
    ) -> Route {
        let keep = |target: &Target| -> Option<Target> {
            if !allowed(target.provider_name()) {
                return None;
            }
            let mut target = target.clone();
            if target
                .quality
                .as_ref()
                .is_some_and(|judge| !allowed(judge.judge_provider()))
            {
                target.quality = None;
            }
            Some(target)
        };
        let tier_of = |tier: &Tier| Tier {
            members: tier
                .members
                .iter()
                .filter_map(|member| {
                    Some(Member {
                        target: keep(&member.target)?,
                        weight: member.weight,
                        served: member.served.clone(),
                    })
                })
                .collect(),
        };
        let mut tiers: Vec<Tier> = self.tiers.iter().take(1).map(tier_of).collect();
        match fallbacks {
            Some(fallbacks) => tiers.extend(fallbacks.iter().map(|target| {
                Tier {
                    members: keep(target)
                        .into_iter()
                        .map(|target| Member {
                            target,
                            weight: 1,
                            served: Arc::new(AtomicU64::new(0)),
                        })
                        .collect(),
                }
            })),
            None => tiers.extend(self.tiers.iter().skip(1).map(tier_of)),
        }
        Route {
            model: self.model.clone(),
            tiers,
            context_window_fallback: self.context_window_fallback.as_ref().and_then(keep),
            hedge: self.hedge.clone(),
            stream_keepalive: self.stream_keepalive,
            resume_streams: self.resume_streams,
            per_request: true,
        }
    }

    /// The targets of each tier, primary first, as the tag shows a request's own chain.
    pub fn chain_labels(&self) -> Vec<Vec<String>> {
        self.tiers
            .iter()
            .map(|tier| {
                tier.members
                    .iter()
                    .map(|member| member.target.label.clone())
                    .collect()
            })
            .collect()
    }
}

/// A random key whose order among members is a weighted shuffle (Efraimidis and
/// Spirakis): the smallest of `-ln(u) / weight` wins with probability weight / total.
fn weighted_draw(weight: u32) -> f64 {
    let uniform = fastrand::f64().max(f64::MIN_POSITIVE);
    -uniform.ln() / f64::from(weight.max(1))
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
        let client_routes = config.clients.iter().flat_map(|client| &client.routes);
        for route in config.routes.iter().chain(client_routes) {
            for tier in &route.chain {
                labels.extend(tier.members().into_iter().map(|(label, _)| label));
            }
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
            let provider_config = config.providers.get(provider_name);
            let breaker_config = provider_config
                .map(|provider| provider.breaker)
                .unwrap_or_default();
            let upstream_model = provider_config
                .and_then(|provider| provider.models.get(model))
                .map_or(model, String::as_str);
            let target = Target {
                label: label.to_string(),
                model: model.to_string(),
                upstream_model: upstream_model.to_string(),
                provider: providers.get(provider_name).cloned(),
                breaker: Breaker::new(label, breaker_config, metrics),
                quality: None,
                faults: TargetFaults::new(label, metrics),
                gate: provider_config
                    .and_then(|provider| Some((provider.max_concurrent?, provider.queue_timeout)))
                    .map(|(max, wait)| ConcurrencyGate::new(label, max, wait, metrics)),
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
        let mut routes = Routes {
            routes: Vec::new(),
            targets,
        };
        routes.routes = routes.table(&config.routes);
        routes.zero_failover_series(metrics);
        routes
    }

    /// A table of routes (the global one, or a client's own) resolved against the
    /// targets: every target it names was built with the others.
    pub fn table(&self, routes: &[RouteConfig]) -> Vec<Arc<Route>> {
        let resolve = |label: &str| self.targets.get(label).cloned();
        routes
            .iter()
            .map(|route| {
                Arc::new(Route {
                    model: route.model.clone(),
                    tiers: route
                        .chain
                        .iter()
                        .map(|tier| Tier {
                            members: tier
                                .members()
                                .into_iter()
                                .filter_map(|(label, weight)| {
                                    Some(Member {
                                        target: resolve(label)?,
                                        weight,
                                        served: Arc::new(AtomicU64::new(0)),
                                    })
                                })
                                .collect(),
                        })
                        .collect(),
                    context_window_fallback: route
                        .context_window_fallback
                        .as_deref()
                        .and_then(resolve),
                    hedge: route.hedge_after.map(|after| HedgePolicy {
                        after,
                        budget: Arc::new(HedgeBudget::new(route.hedge_max_share)),
                    }),
                    stream_keepalive: route.stream_keepalive,
                    resume_streams: route.resume_streams,
                    per_request: false,
                })
            })
            .collect()
    }

    /// Hedge and resume series start at 0 for every route and target, so a dashboard's
    /// rate over them reads 0, not "no data", until the first hedge or resume.
    fn zero_failover_series(&self, metrics: &Metrics) {
        for route in &self.routes {
            for outcome in ["won", "lost", "skipped_budget"] {
                metrics.hedges.with_label_values(&[&route.model, outcome]);
            }
            for target in route.targets() {
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
        find_route(&self.routes, model)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|route| route.as_ref())
    }
}

/// The route of `table` for a model name: an exact name first, then the first matching
/// glob.
pub fn find_route<'t>(table: &'t [Arc<Route>], model: &str) -> Option<&'t Arc<Route>> {
    table
        .iter()
        .find(|route| !route.is_glob() && route.model == model)
        .or_else(|| {
            table
                .iter()
                .find(|route| route.is_glob() && glob_matches(&route.model, model))
        })
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
