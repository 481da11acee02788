//! The callers: each client key (`[[clients]]`) with its tenant and its policy: its own
//! routes, the providers its requests may reach, how it uses the cache, and its limits.
//!
//! Keys are looked up by their blake3 hash, so the lookup's timing says nothing about the
//! keys themselves. With no client keys configured the gateway is open and every caller
//! is one client of the tenant `default`, with no policy. This module says who is calling
//! and what they may do; `crate::routing` applies it to a request's chain.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::config::{ClientCacheMode, ClientConfig, Config, Env};
use crate::error::RequestError;
use crate::limits::ClientLimits;
use crate::providers::{Route, Routes};

/// The tenant of every caller when no client keys are configured.
pub const OPEN_TENANT: &str = "default";

/// One client key's tenant and policy.
pub struct Client {
    /// Whose cache entries this client reads and writes.
    pub tenant: String,
    /// Its own routes, looked up before the global table.
    pub routes: Vec<Arc<Route>>,
    /// The providers its requests may reach; None: every provider.
    pub allowed_providers: Option<BTreeSet<String>>,
    pub cache: ClientCacheMode,
    pub limits: Arc<ClientLimits>,
}

impl Client {
    fn open() -> Client {
        Client {
            tenant: OPEN_TENANT.to_string(),
            routes: Vec::new(),
            allowed_providers: None,
            cache: ClientCacheMode::On,
            limits: Arc::new(ClientLimits::new(OPEN_TENANT, None, None)),
        }
    }

    fn from_config(config: &ClientConfig, routes: &Routes) -> Client {
        Client {
            tenant: config.tenant.clone(),
            routes: routes.table(&config.routes),
            allowed_providers: config
                .allowed_providers
                .as_ref()
                .map(|names| names.iter().cloned().collect()),
            cache: config.cache,
            limits: Arc::new(ClientLimits::new(
                &config.tenant,
                config.requests_per_minute,
                config.tokens_per_minute,
            )),
        }
    }

    /// Whether this client's requests may reach `provider`.
    pub fn may_use(&self, provider: &str) -> bool {
        self.allowed_providers
            .as_ref()
            .is_none_or(|allowed| allowed.contains(provider))
    }
}

/// Every client key, by the hash of its secret.
pub struct Clients {
    by_key: HashMap<[u8; 32], Arc<Client>>,
    /// The one client of an open gateway (no keys configured).
    open: Option<Arc<Client>>,
}

impl Clients {
    /// The clients of the config whose keys are in the environment (validation already
    /// refused a listed key whose variable is unset).
    pub fn build(config: &Config, env: &Env, routes: &Routes) -> Clients {
        let by_key = config
            .clients
            .iter()
            .filter_map(|client| {
                let key = client.key.resolve(env)?;
                Some((
                    *blake3::hash(key.as_bytes()).as_bytes(),
                    Arc::new(Client::from_config(client, routes)),
                ))
            })
            .collect();
        Clients {
            by_key,
            open: config.clients.is_empty().then(|| Arc::new(Client::open())),
        }
    }

    /// The caller, from `Authorization: Bearer` or `x-api-key`.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Arc<Client>, RequestError> {
        if let Some(open) = &self.open {
            return Ok(open.clone());
        }
        let bearer = bearer_token(headers);
        let api_key = headers
            .get("x-api-key")
            .and_then(|value| value.to_str().ok());
        let key = bearer.or(api_key).ok_or(RequestError::Unauthorized)?;
        self.by_key
            .get(blake3::hash(key.trim().as_bytes()).as_bytes())
            .cloned()
            .ok_or(RequestError::Unauthorized)
    }
}

/// The credentials of `Authorization: Bearer …`. The scheme is case-insensitive (RFC
/// 9110 §11.1), so `bearer` and `BEARER` are read too; surrounding whitespace is not part
/// of the token.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}
