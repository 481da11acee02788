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
    /// The start of a line whose end has not arrived yet (its buffer is kept between
    /// lines, so a stream costs no allocation per line).
    pending_line: Vec<u8>,
    event: Option<String>,
    /// The event's `data:` lines so far, joined with `\n`.
    data: Option<String>,
}

/// The largest event (line or joined data) accepted; LLM stream events are a few KiB.
const MAX_EVENT_BYTES: usize = 8 << 20;

impl SseDecoder {
    /// True when an event under construction has grown past what any LLM API sends: the
    /// stream is not SSE, or is broken, and should be abandoned.
    pub fn is_oversized(&self) -> bool {
        let data = self.data.as_ref().map_or(0, String::len);
        self.pending_line.len() + data > MAX_EVENT_BYTES
    }

    /// Feed a chunk; returns every event completed by it. Whole lines in the chunk are
    /// read where they are; only a line cut by the chunk's end is copied.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            let (line, after) = rest.split_at(end);
            rest = &after[1..];
            let event = if self.pending_line.is_empty() {
                self.take_line(line)
            } else {
                let mut joined = std::mem::take(&mut self.pending_line);
                joined.extend_from_slice(line);
                let event = self.take_line(&joined);
                joined.clear();
                self.pending_line = joined;
                event
            };
            events.extend(event);
        }
        self.pending_line.extend_from_slice(rest);
        events
    }

    fn take_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.data.is_none() && self.event.is_none() {
                return None;
            }
            return Some(SseEvent {
                event: self.event.take(),
                data: self.data.take().unwrap_or_default(),
            });
        }
        if line.starts_with(b":") {
            return None;
        }
        let (field, value) = match line.iter().position(|&byte| byte == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
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
