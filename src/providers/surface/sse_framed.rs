//! Streams framed as server-sent events (OpenAI, Anthropic, Vertex): the SSE decoder
//! and the protocol's event parser as one [`StreamDecoder`].

use super::StreamDecoder;
use crate::protocol::sse::{SseDecoder, SseEvent};
use crate::protocol::{StreamEvent, StreamFailure, anthropic, openai};

/// A protocol's parser of SSE events into neutral events.
pub trait EventParser: Send {
    fn parse(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, StreamFailure>;
    fn is_complete(&self) -> bool;
    fn is_done(&self) -> bool;
}

impl EventParser for openai::StreamParser {
    fn parse(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, StreamFailure> {
        openai::StreamParser::parse(self, event)
    }
    fn is_complete(&self) -> bool {
        openai::StreamParser::is_complete(self)
    }
    fn is_done(&self) -> bool {
        openai::StreamParser::is_done(self)
    }
}

impl EventParser for anthropic::StreamParser {
    fn parse(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, StreamFailure> {
        anthropic::StreamParser::parse(self, event)
    }
    fn is_complete(&self) -> bool {
        anthropic::StreamParser::is_complete(self)
    }
    fn is_done(&self) -> bool {
        anthropic::StreamParser::is_done(self)
    }
}

/// SSE bytes in, neutral events out.
#[derive(Default)]
pub struct SseFramed<P> {
    decoder: SseDecoder,
    parser: P,
}

impl<P: EventParser> StreamDecoder for SseFramed<P> {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, StreamFailure> {
        let events = self.decoder.push(chunk);
        if self.decoder.is_oversized() {
            return Err(StreamFailure::new(
                "malformed",
                "a stream event is larger than airbag accepts",
            ));
        }
        let mut parsed = Vec::new();
        for event in events {
            parsed.extend(self.parser.parse(&event)?);
        }
        Ok(parsed)
    }

    fn is_complete(&self) -> bool {
        self.parser.is_complete()
    }

    fn is_done(&self) -> bool {
        self.parser.is_done()
    }
}
