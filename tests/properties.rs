//! Property tests (fuzzing on stable Rust) of everything that reads bytes a client or a
//! provider controls: both request parsers, the SSE decoder, the canned file parser and
//! the cache headers. The properties: nothing panics, every refusal names a field, and
//! what is accepted holds the ranges the protocols promise.
//!
//! CI runs proptest's default of 256 cases per property (a few seconds). A long run sets
//! `PROPTEST_CASES`, e.g. `PROPTEST_CASES=200000 cargo test --test properties`.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use airbag::canned;
use airbag::error::RequestError;
use airbag::protocol::sse::{SseDecoder, SseEvent, encode};
use airbag::protocol::{ChatRequest, InvalidBody, anthropic, openai};
use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------
// Generators.

/// Field names both protocols use, at any depth, so random objects hit the parsers'
/// known paths rather than only unknown ones.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "seed",
    "stop",
    "stop_sequences",
    "stream",
    "stream_options",
    "include_usage",
    "response_format",
    "metadata",
    "user",
    "user_id",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "function",
    "name",
    "description",
    "parameters",
    "input_schema",
    "tool_calls",
    "tool_call_id",
    "arguments",
    "id",
    "input",
    "tool_use_id",
    "is_error",
    "image_url",
    "url",
    "source",
    "media_type",
    "data",
    "system",
    "thinking",
    "budget_tokens",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "chat",
            "user",
            "assistant",
            "system",
            "tool",
            "developer",
            "text",
            "function",
            "auto",
            "none",
            "required",
            "any",
            "image_url",
            "tool_use",
            "tool_result",
            "thinking",
            "base64",
            "data:image/png;base64,AAAA",
            "{}",
            "é",
            "\u{0}",
        ])
        .prop_map(str::to_string),
        prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..130).prop_map(Value::from),
        (-3.0f64..3.0).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |number| {
            serde_json::Number::from_f64(number).map(Value::Number)
        }),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => text(),
    ]
}

/// An object of known (and some unknown) top-level fields with random values.
fn request_like() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), json_value()), 0..8)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
}

/// A valid request with one top-level field set to a random value: the field it returns.
fn one_field_changed(base: Value) -> impl Strategy<Value = (String, Value)> {
    (prop::sample::select(KEYS), json_value()).prop_map(move |(field, value)| {
        let mut body = base.clone();
        body[field] = value;
        (field.to_string(), body)
    })
}

fn valid_openai() -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
}

fn valid_anthropic() -> Value {
    json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
}

// ---------------------------------------------------------------------------------------
// What every parse must hold.

fn refusal_names_a_field(error: &InvalidBody) -> Result<(), TestCaseError> {
    prop_assert!(!error.field.trim().is_empty(), "no field in {error:?}");
    prop_assert!(!error.message.trim().is_empty(), "no message in {error:?}");
    Ok(())
}

/// An accepted request holds the ranges its protocol allows.
fn accepted_is_in_range(request: &ChatRequest, max_temperature: f64) -> Result<(), TestCaseError> {
    let params = &request.params;
    if let Some(temperature) = params.temperature {
        prop_assert!((0.0..=max_temperature).contains(&temperature));
    }
    if let Some(top_p) = params.top_p {
        prop_assert!((0.0..=1.0).contains(&top_p));
    }
    prop_assert!(params.max_tokens != Some(0));
    prop_assert!(!request.model.trim().is_empty());
    prop_assert!(!request.messages.is_empty() || request.system.is_some());
    if let Some(format) = &params.response_format {
        prop_assert!(format.is_object());
    }
    for tool in &request.tools {
        prop_assert!(tool.parameters.is_object());
    }
    Ok(())
}

fn check_openai(body: &[u8]) -> Result<(), TestCaseError> {
    match openai::parse_request(body) {
        Ok(request) => accepted_is_in_range(&request, 2.0),
        Err(error) => refusal_names_a_field(&error),
    }
}

fn check_anthropic(body: &[u8]) -> Result<(), TestCaseError> {
    match anthropic::parse_request(body) {
        Ok(request) => accepted_is_in_range(&request, 1.0),
        Err(error) => refusal_names_a_field(&error),
    }
}

/// The pieces SSE streams are made of, and bytes that are not valid UTF-8.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            &b"data: "[..],
            b"data:",
            b"event: ",
            b"event:message_start",
            b": comment",
            b"\n",
            b"\r\n",
            b"\r",
            b"\n\n",
            b"{\"type\":\"x\"}",
            b"[DONE]",
            b"id: 1",
            b"retry: 10",
            "h\u{e9}llo".as_bytes(),
            b"\xff\xfe",
            b"\xc3",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn decode_in_chunks(bytes: &[u8], cuts: &[Index]) -> Vec<SseEvent> {
    let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
    positions.sort_unstable();
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    let mut from = 0;
    for position in positions {
        events.extend(decoder.push(&bytes[from..position]));
        from = position;
    }
    events.extend(decoder.push(&bytes[from..]));
    let _ = decoder.is_oversized();
    events
}

/// A canned file with each known key, one of them replaced by a random TOML value.
fn canned_file() -> impl Strategy<Value = (String, String)> {
    let keys = prop::sample::select(vec![
        "routes",
        "patterns",
        "examples",
        "example_similarity",
        "priority",
        "text",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|number| number.to_string()),
        (-2.0f64..2.0).prop_map(|number| format!("{number:?}")),
        any::<bool>().prop_map(|flag| flag.to_string()),
        text().prop_map(|text| toml_string(&text)),
        prop::collection::vec(text(), 0..3).prop_map(|items| {
            let items: Vec<String> = items.iter().map(|item| toml_string(item)).collect();
            format!("[{}]", items.join(", "))
        }),
        prop::collection::vec(any::<i32>(), 0..3).prop_map(|items| format!("{items:?}")),
        Just("{ a = 1 }".to_string()),
    ];
    (keys, value).prop_map(|(key, value)| {
        let mut lines = vec![
            ("routes", "[\"*\"]".to_string()),
            ("patterns", "[\"(?i)bill\"]".to_string()),
            ("examples", "[\"where is my invoice\"]".to_string()),
            ("example_similarity", "0.8".to_string()),
            ("priority", "3".to_string()),
            ("text", "\"Billing is down; try later.\"".to_string()),
        ];
        for line in &mut lines {
            if line.0 == key {
                line.1 = value.clone();
            }
        }
        let file: Vec<String> = lines
            .iter()
            .map(|(name, value)| format!("{name} = {value}"))
            .collect();
        (key.to_string(), file.join("\n"))
    })
}

/// A TOML basic string of `text` (a JSON string is one, escapes included).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "no-cache",
            "no-store",
            "no-cache, no-store",
            "NO-STORE",
            "max-age=0",
            "0",
            "300",
            "10m",
            "1h 5m",
            "7d",
            "999999999999999999999",
            "-1",
            "1.5s",
            "docs-v2",
            "a:b.c_d",
            "",
            " ",
            "namespace-of-sixty-five-characters-is-one-too-many-for-the-header",
        ])
        .prop_map(|text| text.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #[test]
    fn openai_parser_takes_any_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check_openai(&body)?;
    }

    #[test]
    fn openai_parser_takes_any_json_object(body in request_like()) {
        check_openai(body.to_string().as_bytes())?;
    }

    #[test]
    fn openai_refusals_name_the_field_that_changed((field, body) in one_field_changed(valid_openai())) {
        check_openai(body.to_string().as_bytes())?;
        if let Err(error) = openai::parse_request(body.to_string().as_bytes()) {
            prop_assert!(error.field.starts_with(&field), "changed `{field}`, refused `{}`: {}", error.field, error.message);
        }
    }

    #[test]
    fn anthropic_parser_takes_any_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check_anthropic(&body)?;
    }

    #[test]
    fn anthropic_parser_takes_any_json_object(body in request_like()) {
        check_anthropic(body.to_string().as_bytes())?;
    }

    #[test]
    fn anthropic_refusals_name_the_field_that_changed((field, body) in one_field_changed(valid_anthropic())) {
        check_anthropic(body.to_string().as_bytes())?;
        if let Err(error) = anthropic::parse_request(body.to_string().as_bytes()) {
            prop_assert!(error.field.starts_with(&field), "changed `{field}`, refused `{}`: {}", error.field, error.message);
        }
    }

    #[test]
    fn sse_decoding_does_not_depend_on_chunking(
        bytes in sse_bytes(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let whole = SseDecoder::default().push(&bytes);
        prop_assert_eq!(decode_in_chunks(&bytes, &cuts), whole);
    }

    #[test]
    fn sse_encoding_decodes_to_the_same_event(
        name in prop::option::of(prop::collection::vec(any::<char>(), 1..10).prop_map(String::from_iter)),
        data in prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
    ) {
        // Line breaks end an SSE field: a name never has one, and data keeps `\n` only.
        let name = name.map(|name| name.replace(['\n', '\r'], ""));
        let data = data.replace('\r', "");
        let encoded = encode(name.as_deref(), &data);
        let decoded = SseDecoder::default().push(&encoded);
        prop_assert_eq!(decoded, vec![SseEvent { event: name, data }]);
    }

    #[test]
    fn canned_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(error) = canned::parse_file(&bytes) {
            prop_assert!(!error.field.trim().is_empty(), "{error:?}");
        }
    }

    #[test]
    fn canned_refusals_name_the_key_that_changed((key, file) in canned_file()) {
        if let Err(error) = canned::parse_file(file.as_bytes()) {
            prop_assert!(error.field.starts_with(&key), "changed `{key}`, refused `{}`: {}\n{file}", error.field, error.message);
        }
    }

    #[test]
    fn cache_headers_are_read_or_refused_by_name(
        cache_control in prop::option::of(header_bytes()),
        ttl in prop::option::of(header_bytes()),
        namespace in prop::option::of(header_bytes()),
    ) {
        let max_ttl = Duration::from_secs(7 * 24 * 3600);
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("cache-control", cache_control),
            ("x-airbag-cache-ttl", ttl),
            ("x-airbag-cache-namespace", namespace),
        ] {
            // Bytes a header cannot carry never reach airbag: hyper refuses them first.
            if let Some(value) = value.and_then(|bytes| HeaderValue::from_bytes(&bytes).ok()) {
                headers.insert(name, value);
            }
        }
        match airbag::server::cache_controls(&headers, max_ttl) {
            Ok(controls) => {
                prop_assert!(controls.ttl.is_none_or(|ttl| ttl <= max_ttl));
                prop_assert!(controls.namespace.len() <= 64);
            }
            Err(RequestError::InvalidHeader { header, message }) => {
                prop_assert!(["x-airbag-cache-ttl", "x-airbag-cache-namespace"].contains(&header));
                prop_assert!(!message.is_empty());
            }
            Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
        }
    }
}
