//! The last 15 minutes of traffic, in memory, for the console (`/admin/traffic` and
//! `/admin/requests`): answered requests counted by rung and `served_by` in 10-second
//! buckets, and the facts of the last 200 requests (time, protocol, model, rung,
//! served_by, attempts, latency, request id), never their prompt or answer text.
//!
//! It is per replica and starts empty; Prometheus (`/metrics`) is the long-term record.
//! A request is *degraded* when it was not answered the normal way: by a fallback target
//! (depth > 0), a stale cache entry, a canned answer, or not at all.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

/// The width of one bucket.
pub const BUCKET_SECONDS: u64 = 10;
/// How far back the series goes.
pub const WINDOW_SECONDS: u64 = 15 * 60;
/// How many requests `/admin/requests` keeps.
pub const RECENT_REQUESTS: usize = 200;

/// One answered (or failed) request, as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Milliseconds since the Unix epoch when the answer's head was ready.
    pub time_unix_ms: u64,
    pub protocol: &'static str,
    pub model: String,
    /// `cache`, `provider`, `canned`, or `none` when nothing answered.
    pub rung: &'static str,
    pub served_by: String,
    pub fallback_depth: usize,
    pub attempts: usize,
    /// Time until the response head was ready (for streams: the first byte).
    pub latency_ms: f64,
    pub request_id: Option<String>,
    pub degraded: bool,
    /// The error kind when nothing answered (`all_targets_failed`, …).
    pub error: Option<&'static str>,
}

impl RequestRecord {
    /// Whether a request answered by `rung`/`served_by` at `fallback_depth` was degraded.
    pub fn is_degraded(rung: &str, served_by: &str, fallback_depth: usize) -> bool {
        match rung {
            "provider" => fallback_depth > 0,
            "cache" => served_by == "cache:stale",
            _ => true,
        }
    }
}

#[derive(Default)]
struct Bucket {
    /// Start of the bucket, in seconds since the Unix epoch (a multiple of the width).
    start: u64,
    counts: BTreeMap<(&'static str, String), Counts>,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    requests: u64,
    degraded: u64,
}

#[derive(Default)]
struct Series {
    buckets: VecDeque<Bucket>,
    recent: VecDeque<RequestRecord>,
}

#[derive(Default)]
pub struct Traffic {
    series: Mutex<Series>,
}

impl Traffic {
    pub fn record(&self, record: RequestRecord) {
        let start = record.time_unix_ms / 1000 / BUCKET_SECONDS * BUCKET_SECONDS;
        let mut series = self.lock();
        if series.buckets.back().is_none_or(|last| last.start < start) {
            series.buckets.push_back(Bucket {
                start,
                counts: BTreeMap::new(),
            });
        }
        let oldest_kept = start.saturating_sub(WINDOW_SECONDS);
        while series
            .buckets
            .front()
            .is_some_and(|first| first.start <= oldest_kept)
        {
            series.buckets.pop_front();
        }
        // A record a little older than the newest bucket (requests finish out of order)
        // joins its own bucket when it is still kept.
        if let Some(bucket) = series
            .buckets
            .iter_mut()
            .rev()
            .find(|bucket| bucket.start <= start)
        {
            let counts = bucket
                .counts
                .entry((record.rung, record.served_by.clone()))
                .or_default();
            counts.requests += 1;
            counts.degraded += u64::from(record.degraded);
        }
        if series.recent.len() == RECENT_REQUESTS {
            series.recent.pop_front();
        }
        series.recent.push_back(record);
    }

    /// `/admin/traffic`: every bucket of the window (empty ones too, oldest first), with
    /// totals for the window and for the last minute.
    pub fn series_json(&self) -> Value {
        let now = now_unix_ms() / 1000;
        let newest = now / BUCKET_SECONDS * BUCKET_SECONDS;
        let slots = WINDOW_SECONDS / BUCKET_SECONDS;
        let first = newest.saturating_sub((slots - 1) * BUCKET_SECONDS);
        let series = self.lock();
        let mut window = Totals::default();
        let mut last_minute = Totals::default();
        let buckets: Vec<Value> = (0..slots)
            .map(|slot| {
                let start = first + slot * BUCKET_SECONDS;
                let mut totals = Totals::default();
                if let Some(bucket) = series.buckets.iter().find(|bucket| bucket.start == start) {
                    for ((rung, served_by), counts) in &bucket.counts {
                        totals.add(rung, served_by, *counts);
                        window.add(rung, served_by, *counts);
                        if start + 60 > newest {
                            last_minute.add(rung, served_by, *counts);
                        }
                    }
                }
                let mut json = totals.to_json();
                json["start_unix"] = json!(start);
                json
            })
            .collect();
        json!({
            "bucket_seconds": BUCKET_SECONDS,
            "window_seconds": WINDOW_SECONDS,
            "buckets": buckets,
            "window": window.to_json(),
            "last_minute": last_minute.to_json(),
        })
    }

    /// `/admin/requests`: the last requests, newest first.
    pub fn recent_json(&self) -> Value {
        let series = self.lock();
        let recent: Vec<&RequestRecord> = series.recent.iter().rev().collect();
        json!({ "requests": recent })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        // Counting never panics midway, so a poisoned lock still holds whole numbers.
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Totals {
    requests: u64,
    degraded: u64,
    by_rung: BTreeMap<&'static str, u64>,
    by_served_by: BTreeMap<String, u64>,
}

impl Totals {
    fn add(&mut self, rung: &'static str, served_by: &str, counts: Counts) {
        self.requests += counts.requests;
        self.degraded += counts.degraded;
        *self.by_rung.entry(rung).or_default() += counts.requests;
        *self.by_served_by.entry(served_by.to_string()).or_default() += counts.requests;
    }

    fn to_json(&self) -> Value {
        let share = if self.requests == 0 {
            0.0
        } else {
            self.degraded as f64 / self.requests as f64
        };
        json!({
            "requests": self.requests,
            "degraded": self.degraded,
            "degraded_share": share,
            "by_rung": self.by_rung,
            "by_served_by": self.by_served_by,
        })
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rung: &'static str, served_by: &str, depth: usize) -> RequestRecord {
        RequestRecord {
            time_unix_ms: now_unix_ms(),
            protocol: "openai",
            model: "m".to_string(),
            rung,
            served_by: served_by.to_string(),
            fallback_depth: depth,
            attempts: 1,
            latency_ms: 1.0,
            request_id: None,
            degraded: RequestRecord::is_degraded(rung, served_by, depth),
            error: None,
        }
    }

    #[test]
    fn counts_by_rung_and_served_by_with_the_degraded_share() {
        let traffic = Traffic::default();
        traffic.record(record("provider", "provider:a/m", 0));
        traffic.record(record("provider", "provider:b/m", 1));
        traffic.record(record("cache", "cache:exact", 0));
        traffic.record(record("canned", "canned:sorry", 2));
        let series = traffic.series_json();
        let window = &series["window"];
        assert_eq!(window["requests"], 4);
        assert_eq!(window["degraded"], 2);
        assert_eq!(window["degraded_share"], 0.5);
        assert_eq!(window["by_rung"]["provider"], 2);
        assert_eq!(window["by_served_by"]["canned:sorry"], 1);
        assert_eq!(series["last_minute"]["requests"], 4);
        assert_eq!(series["buckets"].as_array().unwrap().len(), 90);
        assert_eq!(traffic.recent_json()["requests"][0]["rung"], "canned");
    }

    #[test]
    fn keeps_the_last_requests_only() {
        let traffic = Traffic::default();
        for _ in 0..RECENT_REQUESTS + 5 {
            traffic.record(record("cache", "cache:exact", 0));
        }
        let recent = traffic.recent_json();
        assert_eq!(
            recent["requests"].as_array().unwrap().len(),
            RECENT_REQUESTS
        );
    }
}
