//! Token and cost accounting of served answers, from the usage each answer reports:
//! a provider's answer counts for its target (`airbag_tokens_total`, and
//! `airbag_cost_usd_total` when `[prices]` prices the target); a cache hit counts what
//! it did not send to a provider (`airbag_cache_saved_tokens_total`, and
//! `airbag_cache_saved_usd_total` at the price of the route's primary target). Canned
//! answers and refusals count nothing.

use crate::config::Price;
use crate::ladder::{Rung, RungTag};
use crate::metrics::Metrics;
use crate::protocol::Usage;
use crate::server::Gateway;

/// Where a served answer's usage is counted.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenAccount {
    Provider {
        target: String,
        price: Option<Price>,
    },
    CacheSaved {
        price: Option<Price>,
    },
    Nothing,
}

impl TokenAccount {
    /// The account of an answer tagged `tag` to a request for `model`.
    pub fn of(gateway: &Gateway, tag: &RungTag, model: &str) -> TokenAccount {
        match tag.rung {
            Rung::Provider => {
                let Some(target) = tag.served_by.strip_prefix("provider:") else {
                    return TokenAccount::Nothing;
                };
                TokenAccount::Provider {
                    target: target.to_string(),
                    price: gateway.prices.get(target).copied(),
                }
            }
            Rung::Cache => {
                let primary = gateway
                    .routes
                    .find(model)
                    .and_then(|route| route.targets().next().map(|target| target.label.clone()));
                TokenAccount::CacheSaved {
                    price: primary.and_then(|label| gateway.prices.get(&label).copied()),
                }
            }
            Rung::Canned => TokenAccount::Nothing,
        }
    }

    pub fn count(&self, metrics: &Metrics, usage: &Usage) {
        match self {
            TokenAccount::Provider { target, price } => {
                let kinds = [
                    ("input", usage.input_tokens),
                    ("output", usage.output_tokens),
                    ("cached", usage.cached_input_tokens),
                ];
                for (kind, tokens) in kinds {
                    metrics
                        .tokens
                        .with_label_values(&[target.as_str(), kind])
                        .inc_by(tokens);
                }
                if let Some(price) = price {
                    metrics
                        .cost_usd
                        .with_label_values(&[target.as_str()])
                        .inc_by(price.cost(usage));
                }
            }
            TokenAccount::CacheSaved { price } => {
                for (kind, tokens) in [
                    ("input", usage.input_tokens),
                    ("output", usage.output_tokens),
                ] {
                    metrics
                        .cache_saved_tokens
                        .with_label_values(&[kind])
                        .inc_by(tokens);
                }
                if let Some(price) = price {
                    // What the provider would have charged: none of the input was in
                    // its prompt cache.
                    let uncached = Usage {
                        cached_input_tokens: 0,
                        ..*usage
                    };
                    metrics.cache_saved_usd.inc_by(price.cost(&uncached));
                }
            }
            TokenAccount::Nothing => {}
        }
    }
}
