//! Rung 2: upstream providers. A [`Provider`] is one configured upstream API with its keys
//! and HTTP client; [`attempt`] makes one call to one target; [`chain`] walks a route's
//! targets with retries, backoff, key rotation and fallbacks.
//!
//! This module talks to providers and classifies what they answer. It never renders a
//! client response and never knows about the cache or canned rungs.

pub mod attempt;
pub mod chain;
pub mod keys;

use std::sync::Arc;

use crate::config::{Env, ProviderConfig, ProviderKind, RouteConfig, split_target};

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
}

/// A route with its targets resolved to providers.
pub struct Route {
    pub model: String,
    pub chain: Vec<Target>,
    pub context_window_fallback: Option<Target>,
}

impl Route {
    fn is_glob(&self) -> bool {
        self.model.contains(['*', '?'])
    }
}

/// All routes, matched by the model name a client asks for.
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// Resolve every route's targets against the providers that could be built.
    /// Config validation has already checked that every named provider exists.
    pub fn build(
        configs: &[RouteConfig],
        providers: &std::collections::BTreeMap<String, Arc<Provider>>,
    ) -> Routes {
        let resolve = |target: &str| {
            let (provider, model) = split_target(target).unwrap_or((target, ""));
            Target {
                label: target.to_string(),
                model: model.to_string(),
                provider: providers.get(provider).cloned(),
            }
        };
        Routes {
            routes: configs
                .iter()
                .map(|route| Route {
                    model: route.model.clone(),
                    chain: route.chain.iter().map(|target| resolve(target)).collect(),
                    context_window_fallback: route.context_window_fallback.as_deref().map(resolve),
                })
                .collect(),
        }
    }

    /// The route for a model name: an exact name first, then the first matching glob.
    pub fn find(&self, model: &str) -> Option<&Route> {
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
        self.routes.iter()
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
