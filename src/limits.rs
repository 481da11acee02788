//! Limits per client key: requests per minute and tokens per minute (input plus output,
//! counted from the usage of the answers providers gave), each a token bucket that
//! refills its minute's budget evenly.
//!
//! A request over a limit is refused with 429, `retry-after` and the protocol's error
//! shape before its body is read; every answer to a limited key carries
//! `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` as OpenAI
//! sends them. Tokens are known only once an answer is complete, so a request is let in
//! while the token budget is not spent and its usage is charged afterwards (the budget
//! may go below zero; the next requests wait for it to refill).
//!
//! The counters live in this process's memory: each replica counts on its own, so N
//! replicas behind a load balancer let a key through up to N times its limit. Nothing
//! here decides routing or answers; it counts and says no.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::RequestError;
use crate::ladder::{Answer, Rung, Served};
use crate::protocol::{EventStream, StreamEvent, Usage};

/// Which limit of a client key refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    RequestsPerMinute,
    TokensPerMinute,
}

impl Limit {
    /// The `[[clients]]` key, also the metric label.
    pub fn key(self) -> &'static str {
        match self {
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::TokensPerMinute => "tokens_per_minute",
        }
    }

    /// The suffix of the `x-ratelimit-*` headers.
    fn header_suffix(self) -> &'static str {
        match self {
            Limit::RequestsPerMinute => "requests",
            Limit::TokensPerMinute => "tokens",
        }
    }
}

/// A budget per minute, refilled continuously.
struct Bucket {
    limit: Limit,
    per_minute: f64,
    /// The budget left and when it was last refilled.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(limit: Limit, per_minute: u64) -> Bucket {
        let per_minute = per_minute as f64;
        Bucket {
            limit,
            per_minute,
            state: Mutex::new((per_minute, Instant::now())),
        }
    }

    fn per_second(&self) -> f64 {
        self.per_minute / 60.0
    }

    /// Refill for the time since the last look, then apply `change` to the level.
    fn with_level<T>(&self, now: Instant, change: impl FnOnce(&mut f64) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (level, at) = &mut *state;
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *level = (*level + elapsed * self.per_second()).min(self.per_minute);
        *at = now;
        change(level)
    }

    /// How long until the level reaches `wanted`.
    fn wait_for(&self, level: f64, wanted: f64) -> Duration {
        Duration::from_secs_f64(((wanted - level).max(0.0)) / self.per_second())
    }

    /// The `x-ratelimit-*` headers of this bucket at `level`.
    fn headers(&self, level: f64) -> [(String, String); 3] {
        let suffix = self.limit.header_suffix();
        [
            (
                format!("x-ratelimit-limit-{suffix}"),
                format!("{}", self.per_minute as u64),
            ),
            (
                format!("x-ratelimit-remaining-{suffix}"),
                format!("{}", level.max(0.0).floor() as u64),
            ),
            (
                format!("x-ratelimit-reset-{suffix}"),
                reset_text(self.wait_for(level, self.per_minute)),
            ),
        ]
    }
}

/// A duration as OpenAI writes its resets: `250ms`, `12s`, `1m30s`.
fn reset_text(wait: Duration) -> String {
    if wait < Duration::from_secs(1) {
        return format!("{}ms", wait.as_millis());
    }
    let seconds = wait.as_secs_f64().ceil() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        _ => format!("{}m{}s", seconds / 60, seconds % 60),
    }
}

/// The limits of one client key; none set means no limits and no headers.
pub struct ClientLimits {
    tenant: String,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// The `x-ratelimit-*` headers of an admitted request.
pub type RateLimitHeaders = Vec<(String, String)>;

impl ClientLimits {
    pub fn new(
        tenant: &str,
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u64>,
    ) -> ClientLimits {
        ClientLimits {
            tenant: tenant.to_string(),
            requests: requests_per_minute
                .map(|per_minute| Bucket::new(Limit::RequestsPerMinute, u64::from(per_minute))),
            tokens: tokens_per_minute
                .map(|per_minute| Bucket::new(Limit::TokensPerMinute, per_minute)),
        }
    }

    pub fn is_limited(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }

    /// Let one request in, taking it from the requests budget, or refuse it with the
    /// limit that is spent and when to retry. The headers describe both budgets after it.
    pub fn admit(&self) -> Result<RateLimitHeaders, RequestError> {
        let now = Instant::now();
        let mut headers = Vec::new();
        // Tokens first: a request the token budget refuses takes no request from the other.
        if let Some(tokens) = &self.tokens {
            let level = tokens.with_level(now, |level| *level);
            if level < 1.0 {
                return Err(self.refusal(tokens, level, 1.0));
            }
            headers.extend(tokens.headers(level));
        }
        if let Some(requests) = &self.requests {
            let taken = requests.with_level(now, |level| {
                if *level < 1.0 {
                    return Err(*level);
                }
                *level -= 1.0;
                Ok(*level)
            });
            match taken {
                Ok(level) => headers.extend(requests.headers(level)),
                Err(level) => return Err(self.refusal(requests, level, 1.0)),
            }
        }
        Ok(headers)
    }

    fn refusal(&self, bucket: &Bucket, level: f64, wanted: f64) -> RequestError {
        RequestError::RateLimited {
            tenant: self.tenant.clone(),
            limit: bucket.limit,
            per_minute: bucket.per_minute as u64,
            retry_after: bucket.wait_for(level, wanted),
            headers: bucket.headers(level).to_vec(),
        }
    }

    /// Charge an answer's tokens (input plus output) to the token budget.
    pub fn charge(&self, usage: &Usage) {
        if let Some(tokens) = &self.tokens {
            let spent = (usage.input_tokens + usage.output_tokens) as f64;
            tokens.with_level(Instant::now(), |level| *level -= spent);
        }
    }
}

/// A served answer whose provider tokens are charged to `limits`: a complete answer at
/// once, a stream by the last usage it carried when it ends or is dropped. Cache hits and
/// canned answers cost no provider tokens and are not charged.
pub fn metered(served: Served, limits: std::sync::Arc<ClientLimits>) -> Served {
    if limits.tokens.is_none() || served.tag.rung != Rung::Provider {
        return served;
    }
    let Served { answer, tag } = served;
    let answer = match answer {
        Answer::Complete(response) => {
            limits.charge(&response.usage);
            Answer::Complete(response)
        }
        Answer::Stream(events) => Answer::Stream(Box::pin(MeteredStream {
            events,
            limits,
            usage: Usage::default(),
        })),
        refused @ Answer::Refused { .. } => refused,
    };
    Served { answer, tag }
}

/// A stream that charges its last usage when it is dropped (ended, failed or abandoned).
struct MeteredStream {
    events: EventStream,
    limits: std::sync::Arc<ClientLimits>,
    usage: Usage,
}

impl futures_util::Stream for MeteredStream {
    type Item = <EventStream as futures_util::Stream>::Item;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = this.events.as_mut().poll_next(context);
        if let std::task::Poll::Ready(Some(Ok(StreamEvent::Usage(usage)))) = &polled {
            this.usage = *usage;
        }
        polled
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        self.limits.charge(&self.usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_past_the_minute_budget_are_refused_with_the_wait() {
        let limits = ClientLimits::new("t", Some(2), None);
        let first = limits.admit().unwrap();
        assert!(first.contains(&(
            "x-ratelimit-remaining-requests".to_string(),
            "1".to_string()
        )));
        limits.admit().unwrap();
        let Err(RequestError::RateLimited {
            limit, retry_after, ..
        }) = limits.admit()
        else {
            panic!("the third request of a 2/minute key is refused");
        };
        assert_eq!(limit, Limit::RequestsPerMinute);
        // One request refills every 30s.
        assert!(retry_after > Duration::from_secs(25) && retry_after <= Duration::from_secs(30));
    }

    #[test]
    fn tokens_are_charged_after_the_answer_and_refuse_the_next_request() {
        let limits = ClientLimits::new("t", None, Some(100));
        limits.admit().unwrap();
        limits.charge(&Usage {
            input_tokens: 80,
            output_tokens: 40,
            cached_input_tokens: 0,
        });
        let Err(RequestError::RateLimited { limit, .. }) = limits.admit() else {
            panic!("a spent token budget refuses");
        };
        assert_eq!(limit, Limit::TokensPerMinute);
    }

    #[test]
    fn resets_read_like_openai_s() {
        assert_eq!(reset_text(Duration::from_millis(250)), "250ms");
        assert_eq!(reset_text(Duration::from_millis(1200)), "2s");
        assert_eq!(reset_text(Duration::from_secs(90)), "1m30s");
    }
}
