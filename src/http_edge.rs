//! What every response of the proxy listener gets, whatever its route: a request id,
//! CORS for the browser origins the config allows, and a JSON 404 in the caller's
//! protocol for a path airbag does not serve.
//!
//! - **Request ids.** A client's `x-request-id` (visible ASCII, at most 128 characters)
//!   is kept, else one is made (`req_…`); it is echoed as `x-request-id` on every
//!   response, carried in the request's log span and in the `airbag` object.
//! - **CORS** (`server.cors`, off by default): a preflight from an allowed origin gets
//!   204 with the allowed methods and headers; an answer to an allowed origin names it in
//!   `access-control-allow-origin` (never `*` together with credentials) and exposes the
//!   `x-airbag-*` headers. Other origins get no CORS headers, and their preflight a 403.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::protocol::{Protocol, anthropic, openai, random_id};

/// The longest client request id kept; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The id of one request, put in the request's extensions by [`request_ids`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The client's `x-request-id` when it is a usable id, else a new one.
pub fn request_id(headers: &HeaderMap) -> RequestId {
    let given = headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id.bytes().all(|byte| byte.is_ascii_graphic())
        });
    RequestId(given.map_or_else(|| random_id("req_"), str::to_string))
}

/// Middleware: every request gets its [`RequestId`], every response its `x-request-id`.
pub async fn request_ids(mut request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// `[server.cors]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) a browser page may call airbag from; `"*"` for
    /// any (only without `allow_credentials`). Empty: CORS off.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Let the browser send cookies or HTTP auth (`access-control-allow-credentials`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_max_age() -> Duration {
    Duration::from_secs(600)
}

impl CorsConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (index, origin) in self.allowed_origins.iter().enumerate() {
            let path = format!("server.cors.allowed_origins[{index}]");
            if origin == "*" {
                if self.allow_credentials {
                    problems.push(format!(
                        "{path}: \"*\" cannot go with allow_credentials = true (browsers refuse it, and it would let any site act as the user); list the origins"
                    ));
                }
                continue;
            }
            let parsed = reqwest::Url::parse(origin);
            let is_origin = parsed.as_ref().is_ok_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.path() == "/"
                    && !origin.ends_with('/')
                    && url.query().is_none()
            });
            if !is_origin {
                problems.push(format!(
                    "{path}: `{origin}` is not an origin; write scheme://host[:port] with no path, e.g. \"https://app.example.com\""
                ));
            }
        }
        problems
    }

    fn allows(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }
}

/// The headers a browser may send: the SDKs' and airbag's own.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-api-key, anthropic-version, anthropic-beta, x-request-id, traceparent, tracestate, x-airbag-cache, x-airbag-cache-ttl, x-airbag-cache-namespace, x-airbag-cache-scope, x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout, anthropic-dangerous-direct-browser-access, openai-organization, openai-project";

/// The response headers a page may read.
const EXPOSED_HEADERS: &str = "x-request-id, x-airbag-rung, x-airbag-served-by, x-airbag-fallback-depth, x-airbag-attempts, x-airbag-error, x-airbag-upstream-request-id, x-airbag-dropped-fields, retry-after";

/// Middleware: answers preflights and marks answers to allowed origins.
pub async fn cors(State(config): State<Arc<CorsConfig>>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let Some(origin) = origin.filter(|_| !config.allowed_origins.is_empty()) else {
        return next.run(request).await;
    };
    let allowed = config.allows(&origin);
    let is_preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if is_preflight {
        if !allowed {
            let body = json!({"error": {
                "type": "cors_origin_not_allowed",
                "message": format!("origin {origin} is not in server.cors.allowed_origins"),
            }});
            return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        mark(response.headers_mut(), &config, &origin);
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        if let Ok(value) = HeaderValue::from_str(&config.max_age.as_secs().to_string()) {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, value);
        }
        return response;
    }
    let mut response = next.run(request).await;
    if allowed {
        mark(response.headers_mut(), &config, &origin);
        response.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
    response
}

/// `access-control-allow-origin` (the origin itself, so caches keep answers apart by
/// `vary: origin`) and, when configured, `-allow-credentials`.
fn mark(headers: &mut HeaderMap, config: &CorsConfig, origin: &str) {
    let any = config.allowed_origins.iter().any(|allowed| allowed == "*");
    let value = if any && !config.allow_credentials {
        HeaderValue::from_static("*")
    } else {
        match HeaderValue::from_str(origin) {
            Ok(value) => value,
            Err(_) => return,
        }
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if config.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// The protocol a request to an unknown path most likely speaks: Anthropic when it says
/// so by path or header, else OpenAI.
pub fn caller_protocol(path: &str, headers: &HeaderMap) -> Protocol {
    if path.starts_with("/v1/messages")
        || headers.contains_key("anthropic-version")
        || headers.contains_key("x-api-key")
    {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    }
}

/// A 404 in the caller's error shape, naming what is not there.
pub fn not_found(protocol: Protocol, message: &str) -> Response {
    let body = match protocol {
        Protocol::OpenAi => {
            openai::render_error(message, "invalid_request_error", "not_found", None)
        }
        Protocol::Anthropic => anthropic::render_error(message, "not_found_error"),
    };
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// The proxy's answer to a path it does not serve.
pub async fn unknown_path(method: Method, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let protocol = caller_protocol(uri.path(), &headers);
    not_found(
        protocol,
        &format!(
            "airbag does not serve {method} {}; it serves POST /v1/chat/completions, POST /v1/responses, POST /v1/messages, POST /v1/messages/count_tokens, POST /v1/embeddings, GET /v1/models and GET /v1/models/{{id}}",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_replaced() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-request-id", HeaderValue::from_str(value).unwrap());
            request_id(&headers).0
        };
        assert_eq!(with("abc-123"), "abc-123");
        assert!(with("has space").starts_with("req_"));
        assert!(with(&"x".repeat(129)).starts_with("req_"));
        assert!(request_id(&HeaderMap::new()).0.starts_with("req_"));
    }

    #[test]
    fn a_wildcard_with_credentials_and_paths_are_refused() {
        let config = CorsConfig {
            allowed_origins: vec![
                "*".to_string(),
                "https://app.example.com/".to_string(),
                "app.example.com".to_string(),
                "http://localhost:3000".to_string(),
            ],
            allow_credentials: true,
            max_age: default_max_age(),
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("allow_credentials"));
        assert!(problems[1].contains("allowed_origins[1]"));
    }
}
