//! The mock's Bedrock and Vertex surfaces: their routes, how they check credentials and
//! how they frame answers and errors.
//!
//! - Bedrock: a SigV4-signed request is checked by signing it again with the secret the
//!   mock was given for its access key id (`x-amz-date` as the time); a Bedrock API key is
//!   a bearer key like any other. Streams are AWS event-stream frames, split at arbitrary
//!   byte boundaries; the `exception` and `bad_crc` faults put an exception frame or a
//!   broken CRC in them. Errors are `{"message"}` with `x-amzn-ErrorType`.
//! - Vertex: `POST /token` takes a JWT bearer grant signed with the service account's
//!   key (checked with its public half) and issues tokens that live
//!   `token_lifetime`; `rawPredict` / `streamRawPredict` accept only those. Errors are
//!   Google's `{"error": {"code", "message", "status"}}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures_util::stream;
use serde_json::{Value, json};

use super::{MockState, ReceivedRequest, serve};
use crate::protocol::sse::SseDecoder;
use crate::protocol::{Protocol, anthropic, openai};
use crate::providers::surface::bedrock::eventstream;
use crate::providers::surface::bedrock::sigv4::{self, AwsCredentials, Signable};
use crate::providers::surface::vertex::token::{SCOPE, ServiceAccount};

/// The API surface a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    OpenAi,
    Anthropic,
    Bedrock,
    Vertex,
}

impl Surface {
    /// The dialect of the request body and of the answer.
    pub fn protocol(self) -> Protocol {
        match self {
            Surface::OpenAi => Protocol::OpenAi,
            _ => Protocol::Anthropic,
        }
    }

    pub fn content_type(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Surface::Bedrock, true) => "application/vnd.amazon.eventstream",
            (_, true) => "text/event-stream",
            (_, false) => "application/json",
        }
    }

    /// An error as the surface words it; `error_type` is the OpenAI/Anthropic type.
    pub fn error_response(self, status: u16, message: &str, error_type: &str) -> Response {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self {
            Surface::OpenAi => (
                code,
                axum::Json(openai::render_error(message, error_type, error_type, None)),
            )
                .into_response(),
            Surface::Anthropic => (
                code,
                axum::Json(anthropic::render_error(message, error_type)),
            )
                .into_response(),
            Surface::Bedrock => aws_error(status, aws_exception(status), message),
            Surface::Vertex => google_error(status, message),
        }
    }

    /// 400 "the prompt is too long", as the surface says it.
    pub fn context_length_error(self) -> Response {
        match self {
            Surface::OpenAi => (
                StatusCode::BAD_REQUEST,
                axum::Json(openai::render_error(
                    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                    "invalid_request_error",
                    "context_length_exceeded",
                    Some("messages"),
                )),
            )
                .into_response(),
            Surface::Bedrock => aws_error(
                400,
                "ValidationException",
                "Input is too long for requested model.",
            ),
            Surface::Anthropic | Surface::Vertex => Surface::Anthropic.error_response(
                400,
                "prompt is too long: 250000 tokens > 200000 maximum",
                "invalid_request_error",
            ),
        }
    }
}

/// The exception AWS names for a status.
fn aws_exception(status: u16) -> &'static str {
    match status {
        429 => "ThrottlingException",
        400 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        503 | 529 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

fn aws_error(status: u16, exception: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, axum::Json(json!({ "message": message }))).into_response();
    let value = format!("{exception}:http://internal.amazon.com/coral/com.amazon.bedrock/");
    if let Ok(value) = header::HeaderValue::from_str(&value) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

fn google_error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 | 529 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let body = json!({"error": {"code": status, "message": message, "status": name}});
    (code, axum::Json(body)).into_response()
}

/// The credentials the mock's cloud surfaces accept.
#[derive(Clone)]
pub struct CloudAuth {
    /// Access key id → secret: SigV4 signatures are checked against these.
    pub aws: HashMap<String, String>,
    /// Assertions at `/token` must be signed by this account's key.
    pub service_account: Option<Arc<ServiceAccount>>,
    /// How long an issued token lives.
    pub token_lifetime: Duration,
}

impl std::fmt::Debug for CloudAuth {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.aws.keys().collect();
        write!(
            out,
            "CloudAuth(aws keys {keys:?}, service account {})",
            self.service_account
                .as_ref()
                .map_or("none", |account| account.client_email.as_str())
        )
    }
}

impl Default for CloudAuth {
    fn default() -> Self {
        CloudAuth {
            aws: HashMap::new(),
            service_account: None,
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// Tokens issued at `/token`, with their expiry.
#[derive(Default)]
pub struct IssuedTokens {
    exchanges: AtomicUsize,
    live: Mutex<HashMap<String, Instant>>,
}

impl IssuedTokens {
    pub fn exchanges(&self) -> usize {
        self.exchanges.load(Ordering::SeqCst)
    }

    pub fn revoke_all(&self) {
        if let Ok(mut live) = self.live.lock() {
            live.clear();
        }
    }

    fn issue(&self, lifetime: Duration) -> String {
        let number = self.exchanges.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("ya29.mock-{number}-{}", fastrand::u64(..));
        if let Ok(mut live) = self.live.lock() {
            live.insert(token.clone(), Instant::now() + lifetime);
        }
        token
    }

    fn is_live(&self, token: &str) -> bool {
        self.live
            .lock()
            .map(|live| live.get(token).is_some_and(|until| *until > Instant::now()))
            .unwrap_or(false)
    }
}

pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

pub fn bearer(headers: &HeaderMap) -> Option<String> {
    header(headers, "authorization")
        .and_then(|value| value.strip_prefix("Bearer ").map(str::to_string))
}

/// `POST /model/{model}/invoke` and `/invoke-with-response-stream`.
pub(super) async fn bedrock(
    State(state): State<Arc<MockState>>,
    Path((model, action)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let surface = Surface::Bedrock;
    let stream = match action.as_str() {
        "invoke" => false,
        "invoke-with-response-stream" => true,
        _ => return aws_error(404, "UnknownOperationException", "no such operation"),
    };
    let key = match header(&headers, "authorization") {
        Some(value) if value.starts_with("AWS4-HMAC-SHA256 ") => {
            match check_signature(&state.options.cloud, &value, &uri, &headers, &body) {
                Ok(access_key_id) => Some(access_key_id),
                Err((exception, message)) => return aws_error(403, exception, message),
            }
        }
        _ => bearer(&headers),
    };
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.record(ReceivedRequest {
        path: uri.path().to_string(),
        key: key.clone(),
        anthropic_version: raw["anthropic_version"].as_str().map(str::to_string),
        model: model.clone(),
        stream,
        body: raw.clone(),
        traceparent: header(&headers, "traceparent"),
        anthropic_beta: header(&headers, "anthropic-beta"),
    });
    match cloud_body(raw, &model, stream, "bedrock-2023-05-31") {
        Ok(body) => serve(state, surface, key, model, &body).await,
        Err(message) => aws_error(400, "ValidationException", &message),
    }
}

/// `POST …/publishers/anthropic/models/{model}:rawPredict` and `:streamRawPredict`.
pub(super) async fn vertex(
    State(state): State<Arc<MockState>>,
    Path((_project, _region, call)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let surface = Surface::Vertex;
    let Some((model, action)) = call.rsplit_once(':') else {
        return google_error(404, "no method in the URL");
    };
    let stream = match action {
        "rawPredict" => false,
        "streamRawPredict" => true,
        _ => return google_error(404, "unknown method"),
    };
    let key = bearer(&headers);
    if state.options.cloud.service_account.is_some()
        && !key
            .as_deref()
            .is_some_and(|token| state.tokens.is_live(token))
    {
        return google_error(401, "Request had invalid authentication credentials.");
    }
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.record(ReceivedRequest {
        path: uri.path().to_string(),
        key: key.clone(),
        anthropic_version: raw["anthropic_version"].as_str().map(str::to_string),
        model: model.to_string(),
        stream,
        body: raw.clone(),
        traceparent: header(&headers, "traceparent"),
        anthropic_beta: header(&headers, "anthropic-beta"),
    });
    if raw["stream"].as_bool().unwrap_or(false) != stream {
        return google_error(400, "`stream` in the body does not match the method");
    }
    // Tokens are checked above; static keys by the options' list, as on other surfaces.
    let key = key.filter(|_| state.options.cloud.service_account.is_none());
    match cloud_body(raw, model, stream, "vertex-2023-10-16") {
        Ok(body) => serve(state, surface, key, model.to_string(), &body).await,
        Err(message) => google_error(400, &message),
    }
}

/// A cloud surface's body as an Anthropic Messages body: the version checked and taken
/// out, the model (from the URL) and `stream` put in.
fn cloud_body(mut raw: Value, model: &str, stream: bool, version: &str) -> Result<Vec<u8>, String> {
    let Some(fields) = raw.as_object_mut() else {
        return Err("the body is not a JSON object".to_string());
    };
    if fields.contains_key("model") {
        return Err("extraneous key [model] is not permitted".to_string());
    }
    match fields.remove("anthropic_version") {
        Some(Value::String(sent)) if sent == version => {}
        Some(other) => return Err(format!("anthropic_version must be {version}, not {other}")),
        None => return Err(format!("anthropic_version is required ({version})")),
    }
    fields.insert("model".to_string(), Value::String(model.to_string()));
    fields.insert("stream".to_string(), Value::Bool(stream));
    Ok(raw.to_string().into_bytes())
}

/// Why a SigV4 signature is refused: AWS's exception name and message.
type SignatureRefusal = (&'static str, &'static str);

/// Checks a SigV4 `authorization` by signing the request again with the secret of its
/// access key id; the access key id when it matches, else why not.
fn check_signature(
    auth: &CloudAuth,
    authorization: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, SignatureRefusal> {
    let refused = |exception: &'static str, message: &'static str| Err((exception, message));
    let field = |name: &str| {
        authorization
            .split([' ', ','])
            .find_map(|part| part.trim().strip_prefix(name))
            .map(str::to_string)
    };
    let (Some(credential), Some(signed_headers)) = (field("Credential="), field("SignedHeaders="))
    else {
        return refused(
            "IncompleteSignatureException",
            "the authorization header is incomplete",
        );
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, _date, region, service, _terminator] = scope[..] else {
        return refused(
            "IncompleteSignatureException",
            "the credential scope is malformed",
        );
    };
    let Some(secret) = auth.aws.get(access_key_id) else {
        return refused(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    };
    let Some(time) = header(headers, "x-amz-date").and_then(|date| sigv4::parse_amz_date(&date))
    else {
        return refused("IncompleteSignatureException", "x-amz-date is missing");
    };
    let host = header(headers, "host").unwrap_or_default();
    let url = format!(
        "http://{host}{}",
        uri.path_and_query().map_or("/", |path| path.as_str())
    );
    // The signer adds these itself; every other signed header is signed as received.
    let added_by_signer = ["host", "x-amz-date", "x-amz-security-token"];
    let values: Vec<(String, String)> = signed_headers
        .split(';')
        .filter(|name| !added_by_signer.contains(name))
        .map(|name| (name.to_string(), header(headers, name).unwrap_or_default()))
        .collect();
    let credentials = AwsCredentials {
        access_key_id: access_key_id.to_string(),
        secret_access_key: secret.clone(),
        session_token: header(headers, "x-amz-security-token"),
    };
    let request = Signable {
        method: "POST",
        url: &url,
        headers: values
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect(),
        body,
    };
    let expected = sigv4::signature_headers(&request, &credentials, region, service, time)
        .ok()
        .and_then(|headers| {
            headers
                .into_iter()
                .find(|(name, _)| name == "authorization")
                .map(|(_, value)| value)
        });
    if expected.as_deref() == Some(authorization) {
        Ok(access_key_id.to_string())
    } else {
        refused(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )
    }
}

/// `POST /token`: a JWT bearer grant signed by the configured service account.
pub(super) async fn token(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let refuse = |message: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": message})),
        )
            .into_response()
    };
    let Some(account) = &state.options.cloud.service_account else {
        return refuse("this mock has no service account");
    };
    let form: HashMap<String, String> = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| {
            let decode = |text: &str| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8_lossy()
                    .to_string()
            };
            (decode(name), decode(value))
        })
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse("grant_type must be the JWT bearer grant");
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion");
    };
    if let Err(message) = check_assertion(account, assertion) {
        return refuse(&message);
    }
    let lifetime = state.options.cloud.token_lifetime;
    let token = state.tokens.issue(lifetime);
    axum::Json(json!({
        "access_token": token,
        "expires_in": lifetime.as_secs(),
        "token_type": "Bearer",
    }))
    .into_response()
}

fn check_assertion(account: &ServiceAccount, jwt: &str) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header_part, claims_part, signature_part] = parts[..] else {
        return Err("the assertion is not a JWT".to_string());
    };
    let decode = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| "the assertion is not base64url".to_string())
    };
    let signature = decode(signature_part)?;
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        account.public_key(),
    );
    public
        .verify(
            format!("{header_part}.{claims_part}").as_bytes(),
            &signature,
        )
        .map_err(|_| "the assertion's signature does not verify".to_string())?;
    let claims: Value = serde_json::from_slice(&decode(claims_part)?)
        .map_err(|_| "the assertion's claims are not JSON".to_string())?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if claims["iss"] != account.client_email.as_str() {
        return Err("the assertion is not from this service account".to_string());
    }
    if !claims["scope"]
        .as_str()
        .is_some_and(|scope| scope.split(' ').any(|one| one == SCOPE))
    {
        return Err("the assertion does not ask for the cloud-platform scope".to_string());
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return Err("the assertion has expired".to_string());
    }
    Ok(())
}

/// Anthropic SSE chunks re-framed as Bedrock `chunk` frames, one per event.
pub fn event_stream_frames(sse_chunks: &[Bytes]) -> Vec<Bytes> {
    let mut decoder = SseDecoder::default();
    sse_chunks
        .iter()
        .flat_map(|chunk| decoder.push(chunk))
        .map(|event| eventstream::chunk_frame(&event.data))
        .collect()
}

pub fn exception_frame(exception_type: &str) -> Bytes {
    eventstream::exception_frame(exception_type, "mock exception")
}

/// The frame with its message CRC (the last four bytes) broken.
pub fn corrupt_crc(frame: &Bytes) -> Bytes {
    let mut broken = frame.to_vec();
    if let Some(last) = broken.last_mut() {
        *last ^= 0xff;
    }
    Bytes::from(broken)
}

/// A 200 event stream whose bytes are not frames.
pub fn malformed_event_stream() -> Response {
    (
        [(header::CONTENT_TYPE, Surface::Bedrock.content_type(true))],
        Bytes::from_static(b"\x00\x00\x00\x10 this is not a frame"),
    )
        .into_response()
}

/// `bytes` sent as pieces of 1 to 40 bytes, each written on its own.
pub fn split_body(bytes: Vec<u8>) -> Body {
    let mut pieces = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let size = fastrand::usize(1..=40).min(rest.len());
        let (piece, tail) = rest.split_at(size);
        pieces.push(Bytes::copy_from_slice(piece));
        rest = tail;
    }
    let pieces = stream::unfold(pieces.into_iter(), |mut pieces| async move {
        let piece = pieces.next()?;
        tokio::task::yield_now().await;
        Some((Ok::<Bytes, std::io::Error>(piece), pieces))
    });
    Body::from_stream(pieces)
}
