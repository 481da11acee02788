//! Who may talk to the admin listener. Four checks run before any admin handler, in
//! this order, each refusal naming what to change:
//!
//! 1. **Host** (DNS rebinding): the `Host` header must be an IP address, `localhost`, or
//!    a name in `admin.allowed_hosts`. A page whose own name resolves to 127.0.0.1 sends
//!    its own name, and is refused.
//! 2. **Origin** (cross-site requests): a browser's `Origin` must be the listener's own
//!    (`http://` or `https://` plus the `Host` sent); `Sec-Fetch-Site: cross-site` and
//!    `same-site` are refused too, so another local app's page cannot read or write.
//! 3. **Content type** (CSRF by form or `text/plain` POST): writes (`POST`, `PUT`,
//!    `PATCH`) must say `content-type: application/json`, which no page can send to
//!    another origin without a preflight, and the listener answers no preflight.
//! 4. **Token**: `Authorization: Bearer TOKEN` when `admin.token` is set, compared in
//!    constant time. The console's page and assets skip only this check: they hold no
//!    data, and the page asks for the token itself.

use axum::http::{HeaderMap, Method, StatusCode, header};

/// Why a request was refused before its handler ran.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Host(String),
    Origin(String),
    CrossSiteFetch(String),
    ContentType(Option<String>),
    Token,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Host(_) | Refusal::Origin(_) | Refusal::CrossSiteFetch(_) => {
                StatusCode::FORBIDDEN
            }
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Token => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::Host(host) => format!(
                "`Host: {host}` is not a name of the admin listener; use its IP address or localhost, or add the name to admin.allowed_hosts"
            ),
            Refusal::Origin(origin) => format!(
                "`Origin: {origin}` is another site; the admin listener answers only pages it served itself (open the console at this listener's own address)"
            ),
            Refusal::CrossSiteFetch(site) => format!(
                "`Sec-Fetch-Site: {site}`: the admin listener answers only pages it served itself"
            ),
            Refusal::ContentType(None) => {
                "admin writes must send `content-type: application/json`".to_string()
            }
            Refusal::ContentType(Some(sent)) => format!(
                "`content-type: {sent}` is not accepted; admin writes must send `content-type: application/json`"
            ),
            Refusal::Token => "send the admin token as `Authorization: Bearer TOKEN`".to_string(),
        }
    }
}

/// The listener's side of the checks, from `[admin]`.
pub struct AdminPolicy {
    /// `admin.token`, when set.
    pub token: Option<String>,
    /// `admin.allowed_hosts`, lower-cased: names besides IP addresses and `localhost`;
    /// `*` lets any name through (config validation requires a token with it).
    pub allowed_hosts: Vec<String>,
}

impl AdminPolicy {
    /// Checks 1–3 (everything but the token).
    pub fn check_browser_safety(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        if let Some(host) = &host
            && !self.host_allowed(host)
        {
            return Err(Refusal::Host(host.clone()));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            if !same_origin(&origin, host.as_deref()) {
                return Err(Refusal::Origin(origin));
            }
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            let site = String::from_utf8_lossy(site.as_bytes()).into_owned();
            if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
                return Err(Refusal::CrossSiteFetch(site));
            }
        }
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
            if !content_type.as_deref().is_some_and(is_json) {
                return Err(Refusal::ContentType(content_type));
            }
        }
        Ok(())
    }

    /// Check 4.
    pub fn check_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let presented = crate::server::bearer_token(headers).unwrap_or_default();
        if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::Token)
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || self.allowed_hosts.contains(&name)
            || self.allowed_hosts.iter().any(|allowed| allowed == "*")
    }
}

/// The name in a `Host` value, without its port: `[::1]:8081` → `::1`,
/// `admin.internal:8081` → `admin.internal`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(bracketed) = host.strip_prefix('[') {
        // `[::1]` or `[::1]:8081`; an unclosed bracket is no name at all.
        return bracketed
            .split_once(']')
            .map_or("", |(address, _port)| address);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => name,
        _ => host,
    }
}

/// An `Origin` is the listener's own when it names the scheme and the exact `Host` the
/// request was sent to (`null` never is).
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host.trim()))
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Compares without stopping at the first difference, so timing says nothing about how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let length_differs = a.len() != b.len();
    let mut difference = 0u8;
    for (index, &byte) in b.iter().enumerate() {
        difference |= byte ^ a.get(index).copied().unwrap_or(0);
    }
    !length_differs && difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AdminPolicy {
        AdminPolicy {
            token: Some("s3cret".to_string()),
            allowed_hosts: vec!["admin.internal".to_string()],
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn tokens_compare_by_value() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret!", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }

    #[test]
    fn hosts_are_ip_addresses_localhost_or_listed_names() {
        let policy = policy();
        for host in [
            "127.0.0.1:8081",
            "[::1]:8081",
            "10.1.2.3",
            "LOCALHOST:8081",
            "admin.internal:8081",
        ] {
            assert!(policy.host_allowed(host), "{host}");
        }
        for host in ["evil.example:8081", "localhost.evil.example", "[::1"] {
            assert!(!policy.host_allowed(host), "{host}");
        }
        let any = AdminPolicy {
            allowed_hosts: vec!["*".to_string()],
            ..policy
        };
        assert!(any.host_allowed("airbag-admin.monitoring.svc:8081"));
    }

    #[test]
    fn origins_must_be_the_listener_itself() {
        assert!(same_origin("http://127.0.0.1:8081", Some("127.0.0.1:8081")));
        assert!(same_origin(
            "https://admin.internal",
            Some("admin.internal")
        ));
        assert!(!same_origin(
            "http://127.0.0.1:3000",
            Some("127.0.0.1:8081")
        ));
        assert!(!same_origin("null", Some("127.0.0.1:8081")));
        assert!(!same_origin("http://127.0.0.1:8081", None));
    }

    #[test]
    fn writes_must_be_json() {
        let policy = policy();
        let json = headers(&[("content-type", "application/json; charset=utf-8")]);
        assert_eq!(policy.check_browser_safety(&Method::POST, &json), Ok(()));
        let text = headers(&[("content-type", "text/plain")]);
        assert_eq!(
            policy.check_browser_safety(&Method::POST, &text),
            Err(Refusal::ContentType(Some("text/plain".to_string())))
        );
        assert_eq!(
            policy.check_browser_safety(&Method::PUT, &HeaderMap::new()),
            Err(Refusal::ContentType(None))
        );
        assert_eq!(
            policy.check_browser_safety(&Method::GET, &HeaderMap::new()),
            Ok(())
        );
    }
}
