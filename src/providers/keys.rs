//! A provider's API keys: weighted choice, and resting a key that was rate-limited or
//! rejected so other requests rotate away from it.
//!
//! Key values never leave this module except into the request header; everything else
//! sees the key's `env:NAME` reference.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Env, KeyConfig};

pub struct ApiKey {
    /// The value sent upstream; empty for a provider that takes no key.
    secret: String,
    /// `env:NAME`, safe to show.
    pub reference: String,
    weight: u32,
    /// Until when the key is left out of rotation (after a 429, a 401/402 or a quota error).
    resting_until: Mutex<Option<Instant>>,
    /// Models this key may not use for a while (a 403 for one model), each with the end
    /// of its rest: the key keeps serving every other model.
    resting_models: Mutex<Vec<(String, Instant)>>,
}

impl ApiKey {
    /// The value for the auth header, or None when the provider takes no key.
    pub fn secret(&self) -> Option<&str> {
        (!self.secret.is_empty()).then_some(self.secret.as_str())
    }

    fn is_available(&self, now: Instant) -> bool {
        match self.resting_until.lock() {
            Ok(until) => until.is_none_or(|until| until <= now),
            // A poisoned lock only means another thread panicked mid-update; treating the
            // key as available is the safe side for serving traffic.
            Err(_) => true,
        }
    }

    fn is_available_for(&self, model: &str, now: Instant) -> bool {
        self.is_available(now)
            && match self.resting_models.lock() {
                Ok(models) => !models
                    .iter()
                    .any(|(resting, until)| resting == model && *until > now),
                Err(_) => true,
            }
    }
}

pub struct KeyPool {
    keys: Vec<ApiKey>,
}

impl KeyPool {
    /// The keys whose variables are set. None when keys are configured but none is set.
    /// No keys configured at all gives one empty key: the provider takes none.
    pub fn from_config(configs: &[KeyConfig], env: &Env) -> Option<KeyPool> {
        if configs.is_empty() {
            return Some(KeyPool {
                keys: vec![ApiKey {
                    secret: String::new(),
                    reference: "none".to_string(),
                    weight: 1,
                    resting_until: Mutex::new(None),
                    resting_models: Mutex::new(Vec::new()),
                }],
            });
        }
        let keys: Vec<ApiKey> = configs
            .iter()
            .filter_map(|config| {
                let secret = config.key.resolve(env)?;
                Some(ApiKey {
                    secret,
                    reference: config.key.reference().to_string(),
                    weight: config.weight.max(1),
                    resting_until: Mutex::new(None),
                    resting_models: Mutex::new(Vec::new()),
                })
            })
            .collect();
        (!keys.is_empty()).then_some(KeyPool { keys })
    }

    pub fn get(&self, index: usize) -> Option<&ApiKey> {
        self.keys.get(index)
    }

    /// A key chosen at random by weight among those not resting and not in `exclude`.
    pub fn pick(&self, model: &str, exclude: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let candidates: Vec<(usize, u32)> = self
            .keys
            .iter()
            .enumerate()
            .filter(|(index, key)| !exclude.contains(index) && key.is_available_for(model, now))
            .map(|(index, key)| (index, key.weight))
            .collect();
        let total: u32 = candidates.iter().map(|(_, weight)| weight).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = fastrand::u32(0..total);
        for (index, weight) in candidates {
            if ticket < weight {
                return Some(index);
            }
            ticket -= weight;
        }
        None
    }

    /// Leave a key out of rotation for a while.
    pub fn rest(&self, index: usize, duration: Duration) {
        let Some(key) = self.keys.get(index) else {
            return;
        };
        if let Ok(mut until) = key.resting_until.lock() {
            let now = Instant::now();
            // A duration too large to add (a hostile retry-after) rests the key a day.
            let candidate = now
                .checked_add(duration)
                .unwrap_or(now + Duration::from_secs(86_400));
            *until = Some(until.map_or(candidate, |current| current.max(candidate)));
        }
    }

    /// Each key as the status page shows it: its `env:NAME` reference, never its value.
    /// Take key `index` out of rotation for `model` only, for `duration`.
    pub fn rest_for_model(&self, index: usize, model: &str, duration: Duration) {
        let Some(key) = self.keys.get(index) else {
            return;
        };
        let Ok(mut models) = key.resting_models.lock() else {
            return;
        };
        let now = Instant::now();
        let until = now
            .checked_add(duration)
            .unwrap_or(now + Duration::from_secs(86_400));
        // Expired rests go first, so the list stays as short as the models resting now.
        models.retain(|(resting, until)| resting != model && *until > now);
        models.push((model.to_string(), until));
    }

    pub fn status(&self) -> Vec<serde_json::Value> {
        let now = Instant::now();
        self.keys
            .iter()
            .map(|key| {
                serde_json::json!({"key": key.reference, "weight": key.weight,
                    "resting": !key.is_available(now)})
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn pool(names: &[(&str, u32)]) -> KeyPool {
        KeyPool {
            keys: names
                .iter()
                .map(|(name, weight)| ApiKey {
                    secret: name.to_string(),
                    reference: format!("env:{name}"),
                    weight: *weight,
                    resting_until: Mutex::new(None),
                    resting_models: Mutex::new(Vec::new()),
                })
                .collect(),
        }
    }

    #[test]
    fn picks_follow_weights_and_skip_resting_keys() {
        let pool = pool(&[("a", 3), ("b", 1)]);
        let picks: Vec<usize> = (0..4000).filter_map(|_| pool.pick("m", &[])).collect();
        let a_share = picks.iter().filter(|&&i| i == 0).count() as f64 / picks.len() as f64;
        assert!((0.7..0.8).contains(&a_share), "a share {a_share}");
        pool.rest(0, Duration::from_secs(60));
        assert!((0..100).all(|_| pool.pick("m", &[]) == Some(1)));
        assert_eq!(pool.pick("m", &[1]), None);
        assert_eq!(pool.status()[0]["resting"], true);
        assert_eq!(pool.status()[1]["resting"], false);
    }

    #[test]
    fn a_key_rested_for_one_model_serves_the_others() {
        let pool = pool(&[("a", 1)]);
        pool.rest_for_model(0, "big", Duration::from_secs(60));
        assert_eq!(pool.pick("big", &[]), None);
        assert_eq!(pool.pick("small", &[]), Some(0));
        assert_eq!(pool.status()[0]["resting"], false);
    }

    #[test]
    fn keys_missing_from_the_environment_are_dropped() {
        let configs = vec![KeyConfig {
            key: Secret::new("env:AIRBAG_TEST_SURELY_UNSET_KEY"),
            weight: 1,
        }];
        assert!(KeyPool::from_config(&configs, &Env::default()).is_none());
        let env = Env::from_pairs([("AIRBAG_TEST_SURELY_UNSET_KEY", "sk-1")]);
        assert_eq!(KeyPool::from_config(&configs, &env).unwrap().keys.len(), 1);
        let open = KeyPool::from_config(&[], &env).unwrap();
        assert_eq!(open.keys.len(), 1);
        assert_eq!(open.get(0).unwrap().secret(), None);
    }
}
