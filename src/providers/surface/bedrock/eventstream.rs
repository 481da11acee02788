//! Bedrock's streamed answers: AWS event-stream, binary frames with a CRC each (decoded
//! by `aws-smithy-eventstream`), whose `chunk` events carry one base64 Anthropic stream
//! event each. An `exception` frame inside the 200 (throttling, a model error) is a
//! failure of the stream: before the first content the chain fails over, after it the
//! client gets the protocol's error event.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

use crate::protocol::sse::SseEvent;
use crate::protocol::{StreamEvent, StreamFailure, anthropic};
use crate::providers::surface::StreamDecoder;

/// The largest frame accepted; Bedrock's chunks are a few KiB.
const MAX_FRAME_BYTES: usize = 8 << 20;

/// The failure label of a throttling exception inside a stream; the error table treats
/// it as a rate limit.
pub const STREAM_THROTTLED: &str = "stream_throttled";

/// Event-stream bytes in, neutral events out.
#[derive(Default)]
pub struct EventStreamDecoder {
    buffer: BytesMut,
    frames: MessageFrameDecoder,
    parser: anthropic::StreamParser,
}

impl StreamDecoder for EventStreamDecoder {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, StreamFailure> {
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() > MAX_FRAME_BYTES {
            return Err(StreamFailure::new(
                "malformed",
                "an event-stream frame is larger than airbag accepts",
            ));
        }
        let mut events = Vec::new();
        loop {
            match self.frames.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Complete(message)) => events.extend(self.read(&message)?),
                Ok(DecodedFrame::Incomplete) => return Ok(events),
                Err(error) => {
                    return Err(StreamFailure::new(
                        "malformed",
                        format!("a broken event-stream frame: {error}"),
                    ));
                }
            }
        }
    }

    fn is_complete(&self) -> bool {
        self.parser.is_complete()
    }

    fn is_done(&self) -> bool {
        self.parser.is_done()
    }
}

impl EventStreamDecoder {
    fn read(&mut self, message: &Message) -> Result<Vec<StreamEvent>, StreamFailure> {
        match header(message, ":message-type").as_deref() {
            Some("event") => {
                if header(message, ":event-type").as_deref() != Some("chunk") {
                    return Ok(Vec::new());
                }
                let data = chunk_event(message.payload())?;
                self.parser.parse(&SseEvent { event: None, data })
            }
            Some("exception") => {
                let exception = header(message, ":exception-type").unwrap_or_default();
                let payload: Value = serde_json::from_slice(message.payload()).unwrap_or_default();
                let said = payload["message"].as_str().unwrap_or("no message");
                let kind = if exception == "throttlingException" {
                    STREAM_THROTTLED
                } else {
                    "stream_exception"
                };
                Err(StreamFailure::new(kind, format!("{exception}: {said}")))
            }
            _ => {
                let code = header(message, ":error-code").unwrap_or_default();
                let said = header(message, ":error-message").unwrap_or_default();
                Err(StreamFailure::new(
                    "stream_exception",
                    format!("event-stream error {code}: {said}"),
                ))
            }
        }
    }
}

fn header(message: &Message, name: &str) -> Option<String> {
    message
        .headers()
        .iter()
        .find(|header| header.name().as_str() == name)
        .and_then(|header| header.value().as_string().ok())
        .map(|value| value.as_str().to_string())
}

/// The Anthropic event inside a `chunk` frame's `{"bytes": "<base64>"}`.
fn chunk_event(payload: &[u8]) -> Result<String, StreamFailure> {
    let malformed = |what: String| StreamFailure::new("malformed", what);
    let wrapper: Value = serde_json::from_slice(payload)
        .map_err(|error| malformed(format!("a chunk frame is not JSON: {error}")))?;
    let encoded = wrapper["bytes"]
        .as_str()
        .ok_or_else(|| malformed("a chunk frame has no `bytes`".to_string()))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|error| malformed(format!("a chunk frame's bytes are not base64: {error}")))?;
    String::from_utf8(decoded)
        .map_err(|_| malformed("a chunk frame's event is not UTF-8".to_string()))
}

/// One frame as bytes.
fn encode(message: &Message) -> Bytes {
    let mut buffer = Vec::new();
    // Writing to a Vec fails only for frames past the format's size limits.
    if write_message_to(message, &mut buffer).is_err() {
        buffer.clear();
    }
    Bytes::from(buffer)
}

/// A `chunk` frame carrying one Anthropic stream event (JSON text), as Bedrock sends it.
pub fn chunk_frame(anthropic_event: &str) -> Bytes {
    let payload = json!({
        "bytes": base64::engine::general_purpose::STANDARD.encode(anthropic_event),
    });
    encode(&Message::new_from_parts(
        vec![
            Header::new(":message-type", HeaderValue::String("event".into())),
            Header::new(":event-type", HeaderValue::String("chunk".into())),
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
        ],
        payload.to_string(),
    ))
}

/// An `exception` frame (`throttlingException`, `modelStreamErrorException`…).
pub fn exception_frame(exception_type: &str, message: &str) -> Bytes {
    encode(&Message::new_from_parts(
        vec![
            Header::new(":message-type", HeaderValue::String("exception".into())),
            Header::new(
                ":exception-type",
                HeaderValue::String(exception_type.to_string().into()),
            ),
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
        ],
        json!({ "message": message }).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_frames() -> Vec<Bytes> {
        [
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":3,"output_tokens":0}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
            r#"{"type":"message_stop"}"#,
        ]
        .iter()
        .map(|event| chunk_frame(event))
        .collect()
    }

    fn text_of(events: &[StreamEvent]) -> String {
        events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::TextDelta(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn frames_split_at_every_byte_decode_to_the_same_answer() {
        let bytes: Vec<u8> = answer_frames().concat();
        for split in [1, 2, 3, 7, 13, 64, bytes.len()] {
            let mut decoder = EventStreamDecoder::default();
            let mut events = Vec::new();
            for piece in bytes.chunks(split) {
                events.extend(decoder.push(piece).unwrap());
            }
            assert_eq!(text_of(&events), "Hello there", "split every {split} bytes");
            assert!(decoder.is_complete() && decoder.is_done(), "split {split}");
        }
    }

    #[test]
    fn an_exception_frame_is_a_failure_named_by_its_type() {
        let mut decoder = EventStreamDecoder::default();
        let frames = answer_frames();
        assert!(!decoder.push(&frames[0]).unwrap().is_empty());
        let throttled = decoder
            .push(&exception_frame("throttlingException", "Too many requests"))
            .unwrap_err();
        assert_eq!(throttled.kind, STREAM_THROTTLED);
        assert!(throttled.message.contains("Too many requests"));
        let mut decoder = EventStreamDecoder::default();
        let failed = decoder
            .push(&exception_frame("modelStreamErrorException", "boom"))
            .unwrap_err();
        assert_eq!(failed.kind, "stream_exception");
        assert!(failed.message.contains("modelStreamErrorException"));
    }

    #[test]
    fn a_bad_crc_is_a_malformed_stream() {
        let mut frame = answer_frames()[0].to_vec();
        let last = frame.len() - 1;
        frame[last] ^= 0xff;
        let failure = EventStreamDecoder::default().push(&frame).unwrap_err();
        assert_eq!(failure.kind, "malformed");
        let mut frame = answer_frames()[0].to_vec();
        frame[20] ^= 0xff;
        let failure = EventStreamDecoder::default().push(&frame).unwrap_err();
        assert_eq!(failure.kind, "malformed", "{}", failure.message);
    }
}
