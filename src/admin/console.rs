//! The operator's console: one page served at `/` of the admin listener, its script and
//! style compiled into the binary (`src/admin/console/`), nothing fetched from elsewhere.
//! The page holds no data: it asks for the admin token once (kept in the tab's
//! `sessionStorage`) and reads the JSON endpoints of this listener with it.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::server::Gateway;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", PAGE)))
        .route(
            "/console.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/console.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page runs only its own script and style, and may only be framed by
            // itself (no clickjacking of the drill buttons).
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
