//! The canned answers' admin API and hot reload against the real gateway: every CRUD
//! path behind the token, validation errors that name the field, ETag / If-Match
//! conflicts, writes that land in the same files (and failed ones that leave them
//! alone), edits made on disk picked up without a restart, a bad file skipped while its
//! last good version serves, and the OpenAPI document.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airbag::mock::{Fault, FaultRule, MockProvider};
use common::{Reply, TestGateway, canned_dir, canned_section, mock, provider, route};
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN: &str = "admin-s3cret";

/// Route `chat` → a provider that is down, a canned folder holding `files`, and an admin
/// token. Returns the folder's path too.
async fn gateway(files: &[(&str, &str)]) -> (TestGateway, MockProvider, PathBuf) {
    let down = mock("down").await;
    down.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let dir = canned_dir(files);
    let path = dir.path().to_path_buf();
    let config = format!(
        "[admin]\ntoken = \"env:ADMIN_TOKEN\"\n{}{}{}",
        provider("down", "openai", &down, "retries = 0"),
        route("chat", &["down/big"]),
        canned_section(dir.path()),
    );
    let mut gateway = TestGateway::start(&config, &[("ADMIN_TOKEN", TOKEN)]).await;
    gateway.canned_dir = Some(dir);
    (gateway, down, path)
}

async fn send(
    gateway: &TestGateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    gateway
        .admin_send(method, path, Some(TOKEN), headers, body)
        .await
}

/// The text a chat request gets back with the provider down.
async fn served_text(gateway: &TestGateway, question: &str) -> (String, String) {
    let reply = gateway
        .openai(json!({"model": "chat", "messages": [{"role": "user", "content": question}]}))
        .await;
    let text = reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (reply.served_by().to_string(), text)
}

/// Wait until the served text for `question` is `expected` (the folder is polled
/// every 50ms in these tests).
async fn wait_for_text(gateway: &TestGateway, question: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = served_text(gateway, question).await;
        if text == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still serving {text:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn entry(text: &str) -> Value {
    json!({"patterns": ["(?i)invoice"], "priority": 5, "text": text})
}

#[tokio::test]
async fn every_canned_path_refuses_a_missing_or_wrong_token() {
    let (gateway, _down, dir) = gateway(&[("busy.toml", "text = \"busy\"\n")]).await;
    let before = read(&dir, "busy.toml");
    let paths = [
        (Method::GET, "/admin/canned"),
        (Method::POST, "/admin/canned"),
        (Method::GET, "/admin/canned/busy"),
        (Method::PUT, "/admin/canned/busy"),
        (Method::DELETE, "/admin/canned/busy"),
        (Method::GET, "/admin/openapi.json"),
    ];
    for (method, path) in paths {
        for token in [None, Some("wrong-token")] {
            let body = Some(json!({"id": "busy", "text": "hijacked"}));
            let reply = gateway
                .admin_send(method.clone(), path, token, &[], body)
                .await;
            assert_eq!(reply.status, 401, "{method} {path} with {token:?}");
            assert!(reply.text.contains("Bearer"), "{}", reply.text);
        }
    }
    assert_eq!(read(&dir, "busy.toml"), before, "nothing was written");
    assert!(!dir.join("hijacked.toml").exists());
}

#[tokio::test]
async fn entries_are_created_read_replaced_and_deleted_in_the_same_files() {
    let (gateway, _down, dir) = gateway(&[("default.toml", "text = \"default\"\n")]).await;

    // POST creates the file, and the entry serves at once.
    let reply = send(
        &gateway,
        Method::POST,
        "/admin/canned",
        &[],
        Some(json!({"id": "billing", "patterns": ["(?i)invoice"], "text": "billing v1"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.header("location"), "/admin/canned/billing");
    let etag_v1 = reply.header("etag").to_string();
    assert!(etag_v1.starts_with('"'), "{etag_v1}");
    assert_eq!(reply.json()["text"], "billing v1");
    let file = read(&dir, "billing.toml");
    assert!(
        file.contains("billing v1") && file.contains("(?i)invoice"),
        "{file}"
    );
    assert_eq!(
        served_text(&gateway, "my invoice").await,
        ("canned:billing".to_string(), "billing v1".to_string())
    );

    // POST of an existing id is a conflict; the file stays.
    let reply = send(
        &gateway,
        Method::POST,
        "/admin/canned",
        &[],
        Some(json!({"id": "billing", "text": "other"})),
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert_eq!(read(&dir, "billing.toml"), file);

    // GET one and GET all carry the same ETag; the list names the folder.
    let reply = send(&gateway, Method::GET, "/admin/canned/billing", &[], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("etag"), etag_v1);
    let got = reply.json();
    assert_eq!(got["id"], "billing");
    assert_eq!(got["routes"], json!(["*"]));
    assert_eq!(got["example_similarity"], 0.8);
    let list = send(&gateway, Method::GET, "/admin/canned", &[], None)
        .await
        .json();
    let ids: Vec<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["billing", "default"]);
    assert_eq!(list["entries"][0]["etag"], etag_v1.as_str());

    // PUT with If-Match replaces it; what GET returned can be sent back as is.
    let mut changed = got.clone();
    changed["text"] = json!("billing v2");
    let reply = send(
        &gateway,
        Method::PUT,
        "/admin/canned/billing",
        &[("if-match", &etag_v1)],
        Some(changed),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let etag_v2 = reply.header("etag").to_string();
    assert_ne!(etag_v2, etag_v1);
    assert!(read(&dir, "billing.toml").contains("billing v2"));
    assert_eq!(served_text(&gateway, "my invoice").await.1, "billing v2");

    // PUT of a new id creates it.
    let reply = send(
        &gateway,
        Method::PUT,
        "/admin/canned/refunds",
        &[],
        Some(json!({"patterns": ["refund"], "text": "refunds"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(dir.join("refunds.toml").exists());

    // DELETE with If-Match removes the file; the default serves again.
    let reply = send(
        &gateway,
        Method::DELETE,
        "/admin/canned/billing",
        &[("if-match", &etag_v2)],
        None,
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert!(!dir.join("billing.toml").exists());
    assert_eq!(
        served_text(&gateway, "my invoice").await,
        ("canned:default".to_string(), "default".to_string())
    );
    let reply = send(&gateway, Method::GET, "/admin/canned/billing", &[], None).await;
    assert_eq!(reply.status, 404);
    let reply = send(&gateway, Method::DELETE, "/admin/canned/billing", &[], None).await;
    assert_eq!(reply.status, 404);

    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|item| item.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["default.toml", "refunds.toml"]);

    let metrics = gateway.admin_get("/metrics", Some(TOKEN)).await.text;
    for line in [
        "airbag_canned_edits_total{action=\"create\",outcome=\"ok\"} 1",
        "airbag_canned_edits_total{action=\"create\",outcome=\"exists\"} 1",
        "airbag_canned_edits_total{action=\"update\",outcome=\"ok\"} 2",
        "airbag_canned_edits_total{action=\"delete\",outcome=\"ok\"} 1",
        "airbag_canned_edits_total{action=\"delete\",outcome=\"not_found\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn invalid_entries_are_refused_naming_the_field_and_leave_the_file_alone() {
    let original = "patterns = ['(?i)invoice']\ntext = \"billing\"\n";
    let (gateway, _down, dir) = gateway(&[("billing.toml", original)]).await;
    let cases = [
        (
            json!({"patterns": ["ok", "(unclosed"], "text": "x"}),
            "patterns[1]",
            "regex",
        ),
        (
            json!({"text": "x", "priorty": 3}),
            "priorty",
            "unknown field",
        ),
        (json!({"text": "   "}), "text", "empty"),
        (json!({"priority": 3}), "text", "missing"),
        (
            json!({"text": "x", "priority": "high"}),
            "priority",
            "invalid type",
        ),
        (json!({"text": "x", "routes": []}), "routes", "empty"),
        (json!({"id": "renamed", "text": "x"}), "id", "differs"),
    ];
    for (body, field, words) in cases {
        let reply = send(
            &gateway,
            Method::PUT,
            "/admin/canned/billing",
            &[],
            Some(body.clone()),
        )
        .await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        let answer = reply.json();
        assert_eq!(answer["field"], field, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains(field) && message.contains(words),
            "{message}"
        );
        assert_eq!(
            read(&dir, "billing.toml"),
            original,
            "a refused write touches nothing"
        );
    }
    for (body, field) in [
        (json!({"text": "x"}), "id"),
        (json!({"id": "Bad Id", "text": "x"}), "id"),
        (json!({"id": "../escape", "text": "x"}), "id"),
    ] {
        let reply = send(&gateway, Method::POST, "/admin/canned", &[], Some(body)).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.json()["field"], field);
    }
    let reply = send(&gateway, Method::GET, "/admin/canned/Bad%20Id", &[], None).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["field"], "id");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|item| item.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["billing.toml"]);
    assert_eq!(served_text(&gateway, "invoice").await.1, "billing");
    let metrics = gateway.admin_get("/metrics", Some(TOKEN)).await.text;
    assert!(
        metrics.contains("airbag_canned_edits_total{action=\"update\",outcome=\"invalid\"} 7"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stale_if_match_gets_412_and_the_newer_version_stays() {
    let (gateway, _down, dir) = gateway(&[("billing.toml", "text = \"v1\"\n")]).await;
    let etag_v1 = send(&gateway, Method::GET, "/admin/canned/billing", &[], None)
        .await
        .header("etag")
        .to_string();

    // Two editors read v1; the first write wins, the second gets 412.
    let first = send(
        &gateway,
        Method::PUT,
        "/admin/canned/billing",
        &[("if-match", &etag_v1)],
        Some(entry("first editor")),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let second = send(
        &gateway,
        Method::PUT,
        "/admin/canned/billing",
        &[("if-match", &etag_v1)],
        Some(entry("second editor")),
    )
    .await;
    assert_eq!(second.status, 412, "{}", second.text);
    assert!(
        second.text.contains("changed since you read it"),
        "{}",
        second.text
    );
    assert!(read(&dir, "billing.toml").contains("first editor"));
    let delete = send(
        &gateway,
        Method::DELETE,
        "/admin/canned/billing",
        &[("if-match", &etag_v1)],
        None,
    )
    .await;
    assert_eq!(delete.status, 412);
    assert!(dir.join("billing.toml").exists());

    // An edit made on disk also invalidates the ETag, even before the reload saw it.
    let etag_v2 = first.header("etag").to_string();
    std::fs::write(dir.join("billing.toml"), "text = \"edited in git\"\n").unwrap();
    let reply = send(
        &gateway,
        Method::PUT,
        "/admin/canned/billing",
        &[("if-match", &etag_v2)],
        Some(entry("api")),
    )
    .await;
    assert_eq!(reply.status, 412, "{}", reply.text);
    assert_eq!(read(&dir, "billing.toml"), "text = \"edited in git\"\n");

    // If-None-Match: * only creates; If-Match on a missing entry cannot match.
    let reply = send(
        &gateway,
        Method::PUT,
        "/admin/canned/billing",
        &[("if-none-match", "*")],
        Some(entry("x")),
    )
    .await;
    assert_eq!(reply.status, 412);
    let reply = send(
        &gateway,
        Method::PUT,
        "/admin/canned/missing",
        &[("if-match", &etag_v2)],
        Some(entry("x")),
    )
    .await;
    assert_eq!(reply.status, 412);
    assert!(!dir.join("missing.toml").exists());
    let metrics = gateway.admin_get("/metrics", Some(TOKEN)).await.text;
    assert!(
        metrics.contains("airbag_canned_edits_total{action=\"update\",outcome=\"conflict\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_write_that_fails_on_disk_is_a_500_naming_the_file() {
    // `blocked.toml` is a folder: neither readable nor replaceable as a file, whoever
    // runs the test (a read-only folder would not stop root).
    let (gateway, _down, dir) = gateway(&[("default.toml", "text = \"default\"\n")]).await;
    std::fs::create_dir(dir.join("blocked.toml")).unwrap();
    std::fs::write(dir.join("blocked.toml").join("keep"), "old").unwrap();
    let reply = send(
        &gateway,
        Method::PUT,
        "/admin/canned/blocked",
        &[],
        Some(entry("new")),
    )
    .await;
    assert_eq!(reply.status, 500, "{}", reply.text);
    assert!(reply.text.contains("blocked.toml"), "{}", reply.text);
    assert_eq!(read(&dir.join("blocked.toml"), "keep"), "old");
    assert_eq!(served_text(&gateway, "invoice").await.1, "default");
}

/// Write a file as an editor that saves atomically does: the reload never reads half of
/// it (a plain `fs::write` truncates first, and a poll in between sees an empty file).
fn write_whole(path: &std::path::Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

#[tokio::test]
async fn edits_on_disk_are_picked_up_and_a_bad_file_keeps_its_last_good_version_serving() {
    let (gateway, _down, dir) = gateway(&[("default.toml", "text = \"default\"\n")]).await;
    let question = "where is my invoice";
    assert_eq!(served_text(&gateway, question).await.1, "default");

    // A new file appears: it serves without a restart.
    write_whole(
        &dir.join("billing.toml"),
        "patterns = ['invoice']\ntext = \"billing v1\"\n",
    );
    wait_for_text(&gateway, question, "billing v1").await;

    // The file is edited.
    write_whole(
        &dir.join("billing.toml"),
        "patterns = ['invoice']\ntext = \"billing v2\"\n",
    );
    wait_for_text(&gateway, question, "billing v2").await;

    // A bad version: reported, skipped, and v2 keeps serving.
    write_whole(
        &dir.join("billing.toml"),
        "patterns = ['invoice', '(']\ntext = \"billing v3\"\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let problems = loop {
        let status = gateway.admin_get("/admin/status", Some(TOKEN)).await.json();
        let problems = status["canned"]["problems"].clone();
        if problems.as_array().is_some_and(|list| !list.is_empty()) {
            break problems;
        }
        assert!(Instant::now() < deadline, "the bad file was not reported");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(problems[0]["file"], "billing.toml");
    assert_eq!(problems[0]["serving_last_good"], true);
    let problem = problems[0]["problem"].as_str().unwrap();
    assert!(
        problem.contains("patterns[1]") && problem.contains("regex"),
        "{problem}"
    );
    assert_eq!(served_text(&gateway, question).await.1, "billing v2");
    let reply = send(&gateway, Method::GET, "/admin/canned/billing", &[], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["text"], "billing v2");
    assert!(
        reply
            .header("x-airbag-canned-problem")
            .contains("patterns[1]")
    );
    let list = send(&gateway, Method::GET, "/admin/canned", &[], None)
        .await
        .json();
    assert_eq!(list["problems"][0]["file"], "billing.toml");

    // Fixed: the new version serves and the problem is gone.
    write_whole(
        &dir.join("billing.toml"),
        "patterns = ['invoice']\ntext = \"billing v4\"\n",
    );
    wait_for_text(&gateway, question, "billing v4").await;
    let status = gateway.admin_get("/admin/status", Some(TOKEN)).await.json();
    assert_eq!(status["canned"]["problems"], json!([]));
    assert_eq!(status["canned"]["examples"]["matched"], false);

    // Removed on disk: it stops serving.
    std::fs::remove_file(dir.join("billing.toml")).unwrap();
    wait_for_text(&gateway, question, "default").await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_admin_route() {
    let (gateway, _down, _dir) = gateway(&[]).await;
    let reply = gateway.admin_get("/admin/openapi.json", Some(TOKEN)).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").starts_with("application/json"));
    let document = reply.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let mut operations: Vec<String> = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_some() {
                operations.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /admin/canned/{id}",
            "DELETE /admin/drills/{target}",
            "DELETE /admin/faults/{target}",
            "GET /",
            "GET /admin/cache",
            "GET /admin/canned",
            "GET /admin/canned/{id}",
            "GET /admin/faults",
            "GET /admin/openapi.json",
            "GET /admin/requests",
            "GET /admin/status",
            "GET /admin/tokens",
            "GET /admin/traffic",
            "GET /metrics",
            "POST /admin/cache/purge",
            "POST /admin/canned",
            "POST /admin/canned/_preview",
            "POST /admin/drills",
            "POST /admin/faults",
            "PUT /admin/canned/{id}",
        ]
    );
    // Every documented GET without parameters is served.
    for path in [
        "/metrics",
        "/admin/status",
        "/admin/cache",
        "/admin/canned",
        "/admin/faults",
        "/admin/openapi.json",
        "/admin/traffic",
        "/admin/requests",
        "/admin/tokens",
        "/",
    ] {
        let reply = gateway.admin_get(path, Some(TOKEN)).await;
        assert_eq!(reply.status, 200, "{path}");
    }
}

#[test]
fn the_admin_listener_refuses_to_listen_beyond_loopback_without_a_token() {
    let message = common::config_error("[admin]\nlisten = \"0.0.0.0:8081\"\n");
    assert!(message.contains("admin.listen"), "{message}");
    assert!(message.contains("admin.token"), "{message}");
}

#[tokio::test]
async fn a_missing_canned_folder_stops_the_start_up() {
    let config = airbag::config::Config::from_toml(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[canned]\ndir = \"/nonexistent/canned\"\n",
        Path::new("airbag.toml"),
        &airbag::config::Env::default(),
    )
    .unwrap();
    let Err(error) = airbag::server::start(&config, &airbag::config::Env::default()).await else {
        panic!("the gateway started without its canned folder");
    };
    let message = error.to_string();
    assert!(
        message.contains("canned.dir") && message.contains("/nonexistent/canned"),
        "{message}"
    );
}
