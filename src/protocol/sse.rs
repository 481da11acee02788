//! Server-sent events: decoding an upstream byte stream into events, and encoding ours.
//!
//! Only the parts of the SSE format that LLM APIs use: `event:` and `data:` lines,
//! comments, CRLF or LF line ends. Chunk boundaries may fall anywhere, even inside a
//! UTF-8 character, so bytes are buffered until a whole line is there.

use bytes::Bytes;

/// One dispatched event: the `event:` name (if any) and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Turns a byte stream into [`SseEvent`]s, whatever the chunking.
#[derive(Debug, Default)]
pub struct SseDecoder {
    pending_line: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

/// The largest event (line or joined data) accepted; LLM stream events are a few KiB.
const MAX_EVENT_BYTES: usize = 8 << 20;

impl SseDecoder {
    /// True when an event under construction has grown past what any LLM API sends: the
    /// stream is not SSE, or is broken, and should be abandoned.
    pub fn is_oversized(&self) -> bool {
        let data: usize = self.data.iter().map(String::len).sum();
        self.pending_line.len() + data > MAX_EVENT_BYTES
    }

    /// Feed a chunk; returns every event completed by it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in chunk {
            if byte != b'\n' {
                self.pending_line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.pending_line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.take_line(&String::from_utf8_lossy(&line)) {
                events.push(event);
            }
        }
        events
    }

    fn take_line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data.is_empty() && self.event.is_none() {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            return Some(SseEvent {
                event: self.event.take(),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {}
        }
        None
    }
}

/// Encode one event for a client.
pub fn encode(event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(name) = event {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// An SSE comment line: every client ignores it, so it keeps a connection alive or
/// leaves a note for a person reading the stream. Line breaks in `text` become spaces.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", text.replace(['\n', '\r'], " ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_crlf_are_decoded() {
        let mut decoder = SseDecoder::default();
        let mut events = decoder.push(b"event: message_start\r\ndata: {\"a\"");
        assert!(events.is_empty());
        events.extend(decoder.push(b":1}\r\n\r\n: comment\n\ndata: [DONE]\n"));
        events.extend(decoder.push(b"\n"));
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                }
            ]
        );
    }

    #[test]
    fn multibyte_characters_split_between_chunks_survive() {
        let mut decoder = SseDecoder::default();
        let text = "data: héllo\n\n".as_bytes();
        let mut events = decoder.push(&text[..8]);
        events.extend(decoder.push(&text[8..]));
        assert_eq!(events[0].data, "héllo");
    }

    #[test]
    fn encode_writes_event_and_data_lines() {
        assert_eq!(
            encode(Some("ping"), "{}"),
            Bytes::from("event: ping\ndata: {}\n\n")
        );
        assert_eq!(encode(None, "a\nb"), Bytes::from("data: a\ndata: b\n\n"));
    }
}
