//! Which chain a request walks: the caller's own route for the model (its `[[clients]]
//! routes`), else the global one; the request's `fallbacks` in place of the route's
//! tiers after the first; and only targets on the providers the caller may use, so a
//! fallback, a hedge or a resumed stream (all of which walk this chain) never leaves them.
//!
//! A request that changes nothing walks the configured route itself; one that does
//! walks a [`Route`] drawn for it (`Route::narrowed`), sharing the targets' breakers,
//! slots and counters. A fallback the caller may not use is refused with a 400 naming
//! it, before any rung. This module decides the chain; it never calls a provider.

use std::sync::Arc;

use crate::clients::Client;
use crate::error::RequestError;
use crate::providers::{Route, Routes, Target, find_route};

/// The chain for a request of `client` asking for `model`, with its own `fallbacks`.
pub fn request_route(
    routes: &Routes,
    client: &Client,
    model: &str,
    fallbacks: Option<&[String]>,
) -> Result<Arc<Route>, RequestError> {
    let Some(route) = find_route(&client.routes, model).or_else(|| routes.find(model)) else {
        return Err(RequestError::UnknownModel {
            model: model.to_string(),
            known: client
                .routes
                .iter()
                .map(|route| route.as_ref())
                .chain(routes.iter())
                .map(|route| route.model.clone())
                .collect(),
        });
    };
    if fallbacks.is_none() && client.allowed_providers.is_none() {
        return Ok(route.clone());
    }
    let fallbacks = fallbacks
        .map(|labels| {
            labels
                .iter()
                .map(|label| fallback_target(routes, client, label))
                .collect::<Result<Vec<Target>, RequestError>>()
        })
        .transpose()?;
    let allowed = |provider: &str| client.may_use(provider);
    Ok(Arc::new(route.narrowed(fallbacks, &allowed)))
}

/// A target a request names as a fallback: one the config knows, on a provider the
/// caller may use.
fn fallback_target(routes: &Routes, client: &Client, label: &str) -> Result<Target, RequestError> {
    let refused = |reason: String| RequestError::FallbackRefused {
        target: label.to_string(),
        reason,
    };
    let Some(target) = routes.targets().get(label) else {
        let known: Vec<&str> = routes
            .targets()
            .values()
            .filter(|target| client.may_use(target.provider_name()))
            .map(|target| target.label.as_str())
            .collect();
        return Err(refused(format!(
            "it is not a target of this gateway; name one of: {}",
            known.join(", ")
        )));
    };
    if !client.may_use(target.provider_name()) {
        return Err(refused(format!(
            "provider `{}` is not among this client key's allowed_providers",
            target.provider_name()
        )));
    }
    Ok(target.clone())
}
