//! The admin API over the canned folder: `GET|POST /admin/canned`,
//! `GET|PUT|DELETE /admin/canned/{id}` and `POST /admin/canned/_preview`, mounted by
//! `crate::admin` behind its token.
//!
//! Every write is validated before the disk is touched, then goes through
//! [`files::write_atomic`] into the same `<id>.toml` files git manages, and is followed by
//! a reload, so the next GET and the next request see it. ETags are hashes of the file
//! bytes; `If-Match` is checked against the file as it is on disk at the moment of the
//! write, so an edit made in the meantime (through the API or an editor) gives 412.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

use super::files::{self, file_name};
use super::{CannedSet, EntrySpec, Invalid, check_id, parse_file, quoted_field};
use crate::server::Gateway;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/admin/canned", get(list).post(create))
        // `_` cannot start an id, so this path never names an entry.
        .route("/admin/canned/_preview", post(preview))
        .route(
            "/admin/canned/{id}",
            get(read).put(replace).delete(delete_entry),
        )
}

fn error(status: StatusCode, field: Option<&str>, message: String) -> Response {
    let mut body = json!({"error": message});
    if let Some(field) = field {
        body["field"] = json!(field);
    }
    (status, axum::Json(body)).into_response()
}

fn invalid(problem: &Invalid) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        Some(&problem.field),
        problem.to_string(),
    )
}

/// Counts an admin edit by action (`create`, `update`, `delete`) and outcome.
fn count(gateway: &Gateway, action: &str, outcome: &str) {
    gateway
        .metrics
        .canned_edits
        .with_label_values(&[action, outcome])
        .inc();
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// Every serving entry with its ETag, and the files that are currently bad.
async fn list(State(gateway): State<Arc<Gateway>>) -> Response {
    let snapshot = gateway.canned.snapshot();
    let entries: Vec<Value> = snapshot
        .entries
        .iter()
        .map(|entry| {
            let mut value = entry.to_json();
            value["etag"] = json!(entry.etag);
            value
        })
        .collect();
    let problems: Vec<Value> = snapshot
        .problems
        .iter()
        .map(|(file, problem)| json!({"file": file, "problem": problem}))
        .collect();
    axum::Json(json!({
        "dir": gateway.canned.dir().display().to_string(),
        "entries": entries,
        "problems": problems,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewRequest {
    /// The model a client would ask for.
    model: String,
    /// The last user message.
    message: String,
}

/// Which entry would answer `message` to a client of `model` if every provider failed
/// now, and how it matched; nothing is served or counted.
async fn preview(State(gateway): State<Arc<Gateway>>, body: Bytes) -> Response {
    let usage = "send {\"model\": \"…\", \"message\": \"…\"}";
    let request: PreviewRequest = match crate::protocol::parse_json_body(&body) {
        Ok(request) => request,
        Err(problem) => {
            return error(
                StatusCode::BAD_REQUEST,
                Some(&problem.field),
                format!("`{}`: {}; {usage}", problem.field, problem.message),
            );
        }
    };
    let Some(route) = gateway.routes.find(&request.model) else {
        return error(
            StatusCode::BAD_REQUEST,
            Some("model"),
            format!("`model`: no route serves `{}`", request.model),
        );
    };
    let names = [request.model.as_str(), route.model.as_str()];
    let vector = match gateway.cache.as_ref().and_then(|cache| cache.embedder()) {
        Some(embedder) if !request.message.trim().is_empty() => {
            embedder.embed_one(&request.message).await.ok()
        }
        _ => None,
    };
    let found = gateway
        .canned
        .best(&names, &request.message, vector.as_deref());
    axum::Json(match found {
        Some(found) => json!({
            "entry": found.entry.id,
            "matched_by": if found.similarity.is_some() { "example" } else if found.entry.is_catch_all() { "catch_all" } else { "pattern" },
            "similarity": found.similarity,
            "text": found.entry.spec.text,
        }),
        None => json!({"entry": null}),
    })
    .into_response()
}

async fn read(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    if let Err(problem) = check_id(&id) {
        return invalid(&problem);
    }
    let snapshot = gateway.canned.snapshot();
    let problem = snapshot.problems.get(&file_name(&id));
    let Some(entry) = snapshot.get(&id) else {
        let message = match problem {
            Some(problem) => format!(
                "`{id}` does not serve: its file is invalid ({problem}); fix the file or PUT a new version"
            ),
            None => format!("there is no canned entry `{id}`; GET /admin/canned lists them"),
        };
        return error(StatusCode::NOT_FOUND, None, message);
    };
    let mut response = with_etag(axum::Json(entry.to_json()).into_response(), &entry.etag);
    // The entry keeps serving its last good version while its file is bad; say so
    // without adding a field a client would have to strip before a PUT.
    if let Some(value) = problem.and_then(|p| HeaderValue::from_str(&ascii(p)).ok()) {
        response
            .headers_mut()
            .insert("x-airbag-canned-problem", value);
    }
    response
}

fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                ' '
            }
        })
        .collect()
}

/// The id (if the body names one) and the entry's fields, each problem named by field.
fn parse_body(body: &[u8]) -> Result<(Option<String>, EntrySpec), Invalid> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|error| Invalid::new("body", format!("is not valid JSON: {error}")))?;
    let Value::Object(fields) = &mut value else {
        return Err(Invalid::new(
            "body",
            "must be a JSON object such as {\"id\": \"billing\", \"patterns\": [\"(?i)invoice\"], \"text\": \"…\"}",
        ));
    };
    let id = match fields.remove("id") {
        None => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => return Err(Invalid::new("id", "must be a string")),
    };
    let spec: EntrySpec = serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        let field = quoted_field(&message, "unknown field `")
            .or_else(|| quoted_field(&message, "missing field `"))
            .unwrap_or(path);
        Invalid::new(field, message)
    })?;
    spec.validate()?;
    Ok((id, spec))
}

/// `If-Match` and `If-None-Match: *` of a write.
struct Preconditions {
    if_match: Option<Vec<String>>,
    if_none_match_any: bool,
}

impl Preconditions {
    fn of(headers: &HeaderMap) -> Preconditions {
        let if_match = headers
            .get(header::IF_MATCH)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.split(',').map(|tag| tag.trim().to_string()).collect());
        let if_none_match_any = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim() == "*");
        Preconditions {
            if_match,
            if_none_match_any,
        }
    }

    /// Why the write must not happen (412), if it must not.
    fn refuse(&self, id: &str, current: Option<&[u8]>) -> Option<String> {
        if let Some(tags) = &self.if_match {
            let Some(bytes) = current else {
                return Some(format!(
                    "`{id}` does not exist, so If-Match cannot match; drop If-Match to create it"
                ));
            };
            let etag = files::etag_of(bytes);
            if !tags.iter().any(|tag| tag == "*" || *tag == etag) {
                return Some(format!(
                    "`{id}` changed since you read it: If-Match {} but the current ETag is {etag}; GET it again, reapply your change and retry",
                    tags.join(", ")
                ));
            }
        }
        if self.if_none_match_any && current.is_some() {
            return Some(format!(
                "`{id}` already exists (If-None-Match: *); GET it and PUT with If-Match to replace it"
            ));
        }
        None
    }
}

/// How a blocking write ended.
enum Written {
    Done { created: bool, etag: String },
    Refused(String),
    Exists,
    Failed(String),
}

/// Check preconditions against the file on disk, write it, reload: one step under the
/// write lock. Blocking.
fn write_blocking(
    set: &CannedSet,
    id: &str,
    bytes: &[u8],
    preconditions: &Preconditions,
    must_be_new: bool,
) -> Written {
    let _guard = set.write_guard();
    let name = file_name(id);
    let current = match files::read_current(set.dir(), &name) {
        Ok(current) => current,
        Err(error) => return Written::Failed(format!("cannot read {name}: {error}")),
    };
    if must_be_new && current.is_some() {
        return Written::Exists;
    }
    if let Some(reason) = preconditions.refuse(id, current.as_deref()) {
        return Written::Refused(reason);
    }
    if let Err(error) = files::write_atomic(set.dir(), &name, bytes) {
        return Written::Failed(format!(
            "cannot write {}: {error}; the old file is unchanged; check that airbag can write to canned.dir",
            set.dir().join(&name).display()
        ));
    }
    set.reload_blocking();
    Written::Done {
        created: current.is_none(),
        etag: files::etag_of(bytes),
    }
}

async fn create(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let (id, spec) = match parse_body(&body) {
        Ok((Some(id), spec)) => (id, spec),
        Ok((None, _)) => {
            count(&gateway, "create", "invalid");
            return invalid(&Invalid::new(
                "id",
                "is missing; name the entry (it becomes the file name <id>.toml)",
            ));
        }
        Err(problem) => {
            count(&gateway, "create", "invalid");
            return invalid(&problem);
        }
    };
    write(
        gateway,
        "create",
        id,
        spec,
        Preconditions::of(&headers),
        true,
    )
    .await
}

async fn replace(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spec = match parse_body(&body) {
        Ok((Some(named), _)) if named != id => {
            count(&gateway, "update", "invalid");
            return invalid(&Invalid::new(
                "id",
                format!(
                    "`{named}` differs from `{id}` in the path; ids are file names and are not renamed: POST a new entry and DELETE the old one"
                ),
            ));
        }
        Ok((_, spec)) => spec,
        Err(problem) => {
            count(&gateway, "update", "invalid");
            return invalid(&problem);
        }
    };
    write(
        gateway,
        "update",
        id,
        spec,
        Preconditions::of(&headers),
        false,
    )
    .await
}

async fn write(
    gateway: Arc<Gateway>,
    action: &'static str,
    id: String,
    spec: EntrySpec,
    preconditions: Preconditions,
    must_be_new: bool,
) -> Response {
    if let Err(problem) = check_id(&id) {
        count(&gateway, action, "invalid");
        return invalid(&problem);
    }
    // What goes to disk must read back as the same entry; checked before the disk is
    // touched, so a write can never leave a file the reload would skip.
    let file = match spec.to_file(&id) {
        Ok(file) => file,
        Err(problem) => {
            count(&gateway, action, "invalid");
            return invalid(&problem);
        }
    };
    if let Err(problem) = parse_file(file.as_bytes()) {
        count(&gateway, action, "invalid");
        return invalid(&problem);
    }
    let set = gateway.canned.clone();
    let task_id = id.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        write_blocking(&set, &task_id, file.as_bytes(), &preconditions, must_be_new)
    })
    .await
    .unwrap_or_else(|error| Written::Failed(format!("the write task failed: {error}")));
    match outcome {
        Written::Done { created, etag } => {
            count(&gateway, action, "ok");
            tracing::info!(id = %id, action, "canned entry written through the admin API");
            let mut value = serde_json::to_value(&spec).unwrap_or(Value::Null);
            value["id"] = json!(id);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut response = with_etag((status, axum::Json(value)).into_response(), &etag);
            if created && let Ok(location) = HeaderValue::from_str(&format!("/admin/canned/{id}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Written::Refused(reason) => {
            count(&gateway, action, "conflict");
            error(StatusCode::PRECONDITION_FAILED, None, reason)
        }
        Written::Exists => {
            count(&gateway, action, "exists");
            error(
                StatusCode::CONFLICT,
                Some("id"),
                format!(
                    "`{id}` already exists; PUT /admin/canned/{id} (with If-Match) to replace it"
                ),
            )
        }
        Written::Failed(reason) => {
            count(&gateway, action, "error");
            tracing::error!(id = %id, "canned: {reason}");
            error(StatusCode::INTERNAL_SERVER_ERROR, None, reason)
        }
    }
}

async fn delete_entry(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(problem) = check_id(&id) {
        count(&gateway, "delete", "invalid");
        return invalid(&problem);
    }
    let preconditions = Preconditions::of(&headers);
    let set = gateway.canned.clone();
    let task_id = id.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let _guard = set.write_guard();
        let name = file_name(&task_id);
        let current = match files::read_current(set.dir(), &name) {
            Ok(current) => current,
            Err(error) => {
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read {name}: {error}"),
                ));
            }
        };
        if let Some(reason) = preconditions.refuse(&task_id, current.as_deref()) {
            return Err((StatusCode::PRECONDITION_FAILED, reason));
        }
        if current.is_none() {
            return Err((
                StatusCode::NOT_FOUND,
                format!("there is no canned entry `{task_id}`; GET /admin/canned lists them"),
            ));
        }
        files::remove(set.dir(), &name).map_err(|error| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot remove {name}: {error}; check that airbag can write to canned.dir"),
            )
        })?;
        set.reload_blocking();
        Ok(())
    })
    .await
    .unwrap_or_else(|error| {
        Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the delete task failed: {error}"),
        ))
    });
    match outcome {
        Ok(()) => {
            count(&gateway, "delete", "ok");
            tracing::info!(id = %id, "canned entry deleted through the admin API");
            StatusCode::NO_CONTENT.into_response()
        }
        Err((status, reason)) => {
            let outcome = match status {
                StatusCode::PRECONDITION_FAILED => "conflict",
                StatusCode::NOT_FOUND => "not_found",
                _ => "error",
            };
            count(&gateway, "delete", outcome);
            error(status, None, reason)
        }
    }
}
