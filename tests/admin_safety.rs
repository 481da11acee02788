//! The admin listener against the attacks a browser makes possible (CSRF and DNS
//! rebinding), as a page the operator happens to visit would try them: a foreign `Host`,
//! a cross-site `Origin` or `Sec-Fetch-Site`, a `text/plain` or form POST. Each refusal
//! names what to change, and the refused write changed nothing.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use airbag::mock::MockProvider;
use common::{Reply, TestGateway, canned_dir, canned_section, mock, provider, route};
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN: &str = "admin-s3cret";

/// A gateway with an admin listener; `admin` adds keys to `[admin]`. The mock and the
/// canned folder live as long as the test holds them.
async fn gateway(admin: &str) -> (TestGateway, tempfile::TempDir, MockProvider) {
    let upstream = mock("upstream").await;
    let dir = canned_dir(&[]);
    let config = format!(
        "[admin]\n{admin}\n{}{}{}",
        provider("upstream", "openai", &upstream, ""),
        route("chat", &["upstream/m"]),
        canned_section(dir.path()),
    );
    let gateway = TestGateway::start(&config, &[("ADMIN_TOKEN", TOKEN)]).await;
    (gateway, dir, upstream)
}

/// A raw admin request: `headers` as given (reqwest adds `Host` unless one is given).
async fn send(
    gateway: &TestGateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut request = gateway.client.request(method, gateway.admin_url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    Reply::read(request.send().await.unwrap()).await
}

fn breaker_state(status: &Value) -> &str {
    status["targets"][0]["breaker"]["state"].as_str().unwrap()
}

const DRILL: &str = r#"{"target": "upstream/m", "duration": "60s"}"#;

#[tokio::test]
async fn a_foreign_host_is_refused_and_its_names_are_configurable() {
    let (gateway, _dir, _upstream) = gateway("allowed_hosts = [\"Admin.Internal\"]").await;
    // A rebinding page sends its own name as Host, on every path (the console too).
    for path in ["/admin/status", "/", "/metrics"] {
        let reply = send(
            &gateway,
            Method::GET,
            path,
            &[("host", "evil.example:8081")],
            None,
        )
        .await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.text);
        assert!(reply.text.contains("admin.allowed_hosts"), "{}", reply.text);
    }
    let reply = send(
        &gateway,
        Method::POST,
        "/admin/drills",
        &[
            ("host", "evil.example"),
            ("content-type", "application/json"),
        ],
        Some(DRILL),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let status = gateway.admin_get("/admin/status", None).await.json();
    assert_eq!(breaker_state(&status), "closed");

    // IP addresses, localhost and the configured name (any case) are the listener's.
    let port = gateway.running.admin_addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("admin.internal:{port}"),
        "[::1]".to_string(),
    ] {
        let reply = send(
            &gateway,
            Method::GET,
            "/admin/status",
            &[("host", &host)],
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.text);
    }
}

#[tokio::test]
async fn a_cross_site_page_cannot_write_without_a_token() {
    // The default listener: loopback, no token. Only the browser checks stand between a
    // page and the breakers.
    let (gateway, _dir, _upstream) = gateway("").await;
    let own_origin = format!("http://{}", gateway.running.admin_addr);
    // What the page tries, its headers, the status it gets, a word the refusal names.
    type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let attempts: [Attempt; 5] = [
        // A `fetch(…, {mode: "no-cors"})` with a text body: no preflight is needed.
        (
            "text/plain POST",
            vec![("content-type", "text/plain")],
            415,
            "application/json",
        ),
        // A plain HTML form.
        (
            "form POST",
            vec![("content-type", "application/x-www-form-urlencoded")],
            415,
            "application/json",
        ),
        (
            "POST without a content type",
            vec![],
            415,
            "application/json",
        ),
        (
            "cross-site Origin",
            vec![
                ("origin", "https://evil.example"),
                ("content-type", "application/json"),
            ],
            403,
            "Origin",
        ),
        (
            "Sec-Fetch-Site: cross-site",
            vec![
                ("sec-fetch-site", "cross-site"),
                ("content-type", "application/json"),
            ],
            403,
            "Sec-Fetch-Site",
        ),
    ];
    for (what, headers, status, named) in attempts {
        let reply = send(
            &gateway,
            Method::POST,
            "/admin/drills",
            &headers,
            Some(DRILL),
        )
        .await;
        assert_eq!(reply.status, status, "{what}: {}", reply.text);
        assert!(reply.text.contains(named), "{what}: {}", reply.text);
    }
    // Another local app's page (same host, other port) is another origin.
    let reply = send(
        &gateway,
        Method::GET,
        "/admin/status",
        &[("origin", "http://127.0.0.1:3000")],
        None,
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let reply = send(
        &gateway,
        Method::POST,
        "/admin/canned",
        &[("origin", "null"), ("content-type", "application/json")],
        Some(r#"{"id": "planted", "text": "pwned"}"#),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);

    // Nothing changed.
    let status = gateway.admin_get("/admin/status", None).await.json();
    assert_eq!(breaker_state(&status), "closed");
    let canned = gateway.admin_get("/admin/canned", None).await.json();
    assert_eq!(canned["entries"], json!([]));

    // The console's own page, same origin and JSON, may write.
    let reply = send(
        &gateway,
        Method::POST,
        "/admin/drills",
        &[
            ("origin", own_origin.as_str()),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json; charset=utf-8"),
        ],
        Some(DRILL),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let status = gateway.admin_get("/admin/status", None).await.json();
    assert_eq!(breaker_state(&status), "open");
}

#[tokio::test]
async fn the_console_page_needs_no_token_but_its_data_does() {
    let (gateway, _dir, _upstream) = gateway("token = \"env:ADMIN_TOKEN\"").await;
    let page = send(&gateway, Method::GET, "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page.text.contains("/console.js"));
    assert!(
        page.header("content-security-policy")
            .contains("default-src 'self'")
    );
    assert_eq!(page.header("x-frame-options"), "DENY");
    for asset in ["/console.js", "/console.css"] {
        assert_eq!(
            send(&gateway, Method::GET, asset, &[], None).await.status,
            200
        );
    }
    for path in ["/admin/traffic", "/admin/requests", "/admin/tokens"] {
        assert_eq!(gateway.admin_get(path, None).await.status, 401, "{path}");
        assert_eq!(
            gateway.admin_get(path, Some("wrong")).await.status,
            401,
            "{path}"
        );
        assert_eq!(
            gateway.admin_get(path, Some(TOKEN)).await.status,
            200,
            "{path}"
        );
    }
    // The scheme is case-insensitive, the token is not.
    let reply = send(
        &gateway,
        Method::GET,
        "/admin/status",
        &[("authorization", &format!("bearer {TOKEN}"))],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = send(
        &gateway,
        Method::GET,
        "/admin/status",
        &[("authorization", &format!("Bearer {}", TOKEN.to_uppercase()))],
        None,
    )
    .await;
    assert_eq!(reply.status, 401);
}
