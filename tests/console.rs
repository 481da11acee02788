//! The operator's console in a real headless Chromium (`make browser` installs Debian's
//! `chromium` and `chromium-driver`): log in with the admin token, watch the rung counts
//! move after traffic, open a drill and see the breaker open and traffic go degraded,
//! edit a canned entry and see it served, lose an `If-Match` race and recover, purge the
//! cache. Screenshots of each step go to `target/tmp/console-screenshots/`.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::webdriver::{Browser, chromedriver};
use common::{
    TestGateway, cache_section, canned_dir, canned_section, mock, openai_chat, provider, route,
};
use reqwest::Method;
use serde_json::json;

const TOKEN: &str = "console-s3cret";

const SORRY: &str = "routes = [\"*\"]\ntext = \"The assistant is unavailable right now.\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_an_outage_from_the_console() {
    let Some(driver) = chromedriver() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is not installed; `make browser` installs chromium and chromium-driver"
        );
        eprintln!("skipped: chromedriver is not installed (`make browser`)");
        return;
    };
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    let canned = canned_dir(&[("sorry.toml", SORRY)]);
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "[admin]\ntoken = \"env:ADMIN_TOKEN\"\n{}{}{}{}{}\n\
         [prices.\"primary/big\"]\ninput_per_million = 3.0\noutput_per_million = 15.0\n",
        provider("primary", "openai", &primary, ""),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["primary/big", "fallback/small"]),
        canned_section(canned.path()),
        cache_section(store.path(), "", "enabled = false"),
    );
    let gateway = TestGateway::start(&config, &[("ADMIN_TOKEN", TOKEN)]).await;
    let browser = Browser::start(&driver).await;

    // Log in: a wrong token is refused on the page, the right one opens the console.
    browser.open(&gateway.admin_url("/")).await;
    browser.wait_visible("the login form", "#login").await;
    browser.screenshot("01-login").await;
    browser.type_into("#token", "wrong").await;
    browser.click("#login-form button").await;
    browser
        .wait_until(
            "a refused token",
            "return document.querySelector('#login-error').textContent.includes('refused');",
        )
        .await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#login-form button").await;
    browser.wait_visible("the console", "#console").await;

    // Traffic: the rung counts move, nothing is degraded, the request list has ids but
    // never the prompt.
    let mut request_ids = Vec::new();
    for n in 0..5 {
        let reply = gateway
            .openai(openai_chat("chat", &format!("question {n}")))
            .await;
        assert_eq!(reply.served_by(), "provider:primary/big", "{}", reply.text);
        request_ids.push(reply.header("x-request-id").to_string());
    }
    browser
        .wait_until(
            "5 requests",
            "return document.querySelector('#requests-minute').textContent === '5';",
        )
        .await;
    assert_eq!(browser.text("#degraded-minute").await, "0%");
    let listed = browser.text("#requests tbody").await;
    assert!(listed.contains(&request_ids[0]), "{listed}");
    assert!(
        !listed.contains("question 0"),
        "prompt text is never listed: {listed}"
    );
    assert!(browser.text("#tokens tbody").await.contains("primary/big"));
    browser.screenshot("02-traffic").await;

    // A drill from its button opens the breaker; traffic fails over and shows degraded.
    browser
        .click("#targets button[data-target=\"primary/big\"]")
        .await;
    browser
        .wait_until(
            "the drilled breaker open",
            "const row = document.querySelector('#targets tr[data-target=\"primary/big\"]'); \
             return row !== null && row.querySelector('.state').textContent === 'open';",
        )
        .await;
    let reply = gateway
        .openai(openai_chat("chat", "during the drill"))
        .await;
    assert_eq!(
        reply.served_by(),
        "provider:fallback/small",
        "{}",
        reply.text
    );
    browser
        .wait_until(
            "the degraded share over 0",
            "return document.querySelector('#degraded-minute').parentElement.classList.contains('alarm');",
        )
        .await;
    browser.screenshot("03-drill").await;

    // Edit the canned entry in the page; with every target drilled it is what's served.
    browser
        .click("#canned tr[data-entry=\"sorry\"] button")
        .await;
    browser.wait_visible("the editor", "#canned-editor").await;
    browser
        .type_into("#field-text", "We are fixing it; back soon.")
        .await;
    browser.click("#editor-save").await;
    browser
        .wait_until(
            "the edited entry",
            "return document.querySelector('#canned tbody').textContent.includes('We are fixing it; back soon.');",
        )
        .await;
    let drill = gateway
        .admin_send(
            Method::POST,
            "/admin/drills",
            Some(TOKEN),
            &[],
            Some(json!({"target": "fallback/small", "duration": "60s"})),
        )
        .await;
    assert_eq!(drill.status, 200, "{}", drill.text);
    let reply = gateway.openai(openai_chat("chat", "anyone there?")).await;
    assert_eq!(reply.served_by(), "canned:sorry", "{}", reply.text);
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "We are fixing it; back soon."
    );
    browser.screenshot("04-canned-edit").await;

    // Lose an If-Match race: the entry changes behind the open editor.
    browser
        .click("#canned tr[data-entry=\"sorry\"] button")
        .await;
    browser.wait_visible("the editor", "#canned-editor").await;
    let current = gateway.admin_get("/admin/canned/sorry", Some(TOKEN)).await;
    let etag = current.header("etag").to_string();
    let elsewhere = gateway
        .admin_send(
            Method::PUT,
            "/admin/canned/sorry",
            Some(TOKEN),
            &[("if-match", &etag)],
            Some(json!({"routes": ["*"], "text": "Changed by a colleague."})),
        )
        .await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.text);
    browser.type_into("#field-text", "My late edit.").await;
    browser.click("#editor-save").await;
    browser
        .wait_visible("the conflict", "#editor-conflict")
        .await;
    browser.screenshot("05-conflict").await;
    browser.click("#editor-reload").await;
    browser
        .wait_until(
            "the reloaded entry",
            "return document.querySelector('#field-text').value === 'Changed by a colleague.';",
        )
        .await;
    browser
        .type_into("#field-text", "Back in a few minutes.")
        .await;
    browser.click("#editor-save").await;
    browser
        .wait_until(
            "the saved entry",
            "return document.querySelector('#canned-editor').classList.contains('hidden') && \
             document.querySelector('#canned tbody').textContent.includes('Back in a few minutes.');",
        )
        .await;

    // A field error shows at its field.
    browser.click("#canned-new").await;
    browser.type_into("#field-id", "Not An Id").await;
    browser.type_into("#field-text", "text").await;
    browser.click("#editor-save").await;
    browser
        .wait_until(
            "the id's error at its field",
            "return document.querySelector('.field-error[data-field=\"id\"]').textContent.includes('not a valid id');",
        )
        .await;
    browser.click("#editor-cancel").await;

    // Purge the cache from the page: a repeat that hit before goes to a provider after.
    for target in ["primary/big", "fallback/small"] {
        let ended = gateway
            .admin_send(
                Method::DELETE,
                &format!("/admin/drills/{target}"),
                Some(TOKEN),
                &[],
                None,
            )
            .await;
        assert_eq!(ended.status, 200, "{}", ended.text);
    }
    gateway
        .repeat_until_cached("/v1/chat/completions", &openai_chat("chat", "question 0"))
        .await;
    browser.type_into("#purge-tenant", "default").await;
    browser.click("#purge-form button").await;
    browser.accept_dialog().await;
    browser
        .wait_until(
            "the purge",
            "return document.querySelector('#purge-result').textContent.startsWith('Purged');",
        )
        .await;
    let after = gateway.openai(openai_chat("chat", "question 0")).await;
    assert_eq!(after.served_by(), "provider:primary/big", "{}", after.text);
    browser
        .wait_until(
            "the cache's saved tokens",
            "return /saved [1-9]/.test(document.querySelector('#cache-saved').textContent);",
        )
        .await;
    browser.screenshot("06-purge").await;
    eprintln!("screenshots in {}", browser.screenshots.display());
}
