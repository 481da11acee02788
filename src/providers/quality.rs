//! The quality-aware breaker: a sample of a target's successful answers is graded by a
//! judge (another configured target, never on the same provider) and a rolling mean
//! below the threshold opens the target's breaker with reason `quality`.
//!
//! Judging never touches the request path: a sampled answer is handed to a spawned task
//! after the client already has it. Concurrency is bounded by a semaphore and spend by a
//! per-minute budget; a judgement that cannot start is skipped, never queued. The tasks
//! are not awaited on shutdown: each is bounded by the judge's own timeouts, and a lost
//! judgement only delays a quality trip.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use super::Target;
use super::attempt::{UpstreamAnswer, attempt};
use super::breaker::{Breaker, Reason};
use crate::metrics::Metrics;
use crate::protocol::{
    ChatRequest, ChatResponse, Message, OutputParams, Part, Role, StopReason, StreamEvent,
    last_user_text,
};

/// The judge's instructions. Fixed, so scores are comparable over time and targets.
pub const RUBRIC: &str = "You grade answers written by an AI assistant. Read the question and \
the answer, then reply with a single number between 0 and 1 and nothing else. 1 means a \
relevant, coherent, plausible answer to the question. 0 means garbage, gibberish, an answer \
to a different question, or an empty or cut-off reply.";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityConfig {
    /// The judging target, `provider/model`, on a different provider.
    pub judge: String,
    /// Share of successful answers that are judged.
    #[serde(default = "default_sample_rate")]
    pub sample_rate: f64,
    /// A rolling mean below this opens the breaker.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// How many recent scores the mean covers.
    #[serde(default = "default_window")]
    pub window: usize,
    /// No verdict before this many scores.
    #[serde(default = "default_min_scores")]
    pub min_scores: usize,
    /// Judgements running at once; more are skipped.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Judgements started per minute at most: the spend bound.
    #[serde(default = "default_max_per_minute")]
    pub max_per_minute: u32,
    /// How long a quality trip keeps the breaker open.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
}

fn default_sample_rate() -> f64 {
    0.05
}
fn default_threshold() -> f64 {
    0.5
}
fn default_window() -> usize {
    20
}
fn default_min_scores() -> usize {
    5
}
fn default_max_concurrent() -> usize {
    2
}
fn default_max_per_minute() -> u32 {
    30
}
fn default_cooldown() -> Duration {
    Duration::from_secs(300)
}

impl QualityConfig {
    /// Problems of this section other than the judge reference, each with its path.
    pub fn problems(&self, path: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.sample_rate) {
            problems.push(format!("{path}.sample_rate: must be between 0 and 1"));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            problems.push(format!("{path}.threshold: must be between 0 and 1"));
        }
        if self.window == 0 || self.min_scores == 0 || self.min_scores > self.window {
            problems.push(format!(
                "{path}.min_scores: must be at least 1 and at most window ({})",
                self.window
            ));
        }
        if self.max_concurrent == 0 || self.max_per_minute == 0 {
            problems.push(format!(
                "{path}: max_concurrent and max_per_minute must be at least 1; set sample_rate = 0 to stop judging"
            ));
        }
        if self.cooldown.is_zero() {
            problems.push(format!("{path}.cooldown: must be longer than 0"));
        }
        problems
    }
}

/// Largest answer text kept for the judge; a longer stream is judged on its start.
const MAX_SAMPLE_TEXT: usize = 16 * 1024;

/// What the judge needs of one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub system: Option<String>,
    pub question: String,
    pub answer: String,
    pub has_tool_calls: bool,
    pub stop_reason: Option<StopReason>,
}

impl Sample {
    /// A sample to fill as a stream passes by.
    pub fn from_request(request: &ChatRequest) -> Sample {
        Sample {
            system: request.system.clone(),
            question: last_user_text(&request.messages),
            answer: String::new(),
            has_tool_calls: false,
            stop_reason: None,
        }
    }

    pub fn from_response(request: &ChatRequest, response: &ChatResponse) -> Sample {
        let mut sample = Sample::from_request(request);
        sample.answer = response.text();
        sample
            .answer
            .truncate(floor_char_boundary(&sample.answer, MAX_SAMPLE_TEXT));
        sample.has_tool_calls = response.tool_calls().next().is_some();
        sample.stop_reason = Some(response.stop_reason);
        sample
    }

    /// Take in one stream event.
    pub fn observe(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::TextDelta(text) if self.answer.len() < MAX_SAMPLE_TEXT => {
                let room = MAX_SAMPLE_TEXT - self.answer.len();
                self.answer
                    .push_str(&text[..floor_char_boundary(text, room)]);
            }
            StreamEvent::ToolCallStart { .. } => self.has_tool_calls = true,
            StreamEvent::Finish { stop_reason } => self.stop_reason = Some(*stop_reason),
            _ => {}
        }
    }

    /// Whether a rubric for chat answers can fairly grade this one: tool calls, answers
    /// cut at the client's own `max_tokens`, and turns without a user question (a tool
    /// loop) would all read as "empty or cut off" and score 0 on a healthy provider.
    pub fn is_judgeable(&self) -> bool {
        !self.has_tool_calls
            && self.stop_reason != Some(StopReason::MaxTokens)
            && !self.question.trim().is_empty()
            && !self.answer.trim().is_empty()
    }
}

/// The largest index at most `limit` that falls on a character boundary of `text`.
fn floor_char_boundary(text: &str, limit: usize) -> usize {
    if limit >= text.len() {
        return text.len();
    }
    (0..=limit)
        .rev()
        .find(|&index| text.is_char_boundary(index))
        .unwrap_or(0)
}

/// Judges one target's answers.
pub struct QualityJudge {
    config: QualityConfig,
    judged: String,
    judge: Target,
    breaker: Arc<Breaker>,
    scores: Mutex<VecDeque<f64>>,
    running: Arc<Semaphore>,
    /// (minute since start, judgements started in it).
    budget: Mutex<(u64, u32)>,
    started: Instant,
    judgements: prometheus::IntCounterVec,
    score: prometheus::GaugeVec,
    /// Answers still to judge whatever the sample rate: set after a quality trip, so a
    /// target back from one is graded again at once rather than after ~min_scores/rate.
    probation: AtomicUsize,
    /// Quality trips so far; a judgement started before the latest one is discarded.
    trips: AtomicU64,
}

impl QualityJudge {
    /// The provider of the judge's target: it reads the answers it grades.
    pub fn judge_provider(&self) -> &str {
        self.judge.provider_name()
    }

    pub fn new(
        judged: &str,
        config: QualityConfig,
        judge: Target,
        breaker: Arc<Breaker>,
        metrics: &Metrics,
    ) -> Arc<QualityJudge> {
        Arc::new(QualityJudge {
            running: Arc::new(Semaphore::new(config.max_concurrent)),
            config,
            judged: judged.to_string(),
            judge,
            breaker,
            scores: Mutex::new(VecDeque::new()),
            budget: Mutex::new((0, 0)),
            started: Instant::now(),
            judgements: metrics.quality_judgements.clone(),
            score: metrics.quality_score.clone(),
            probation: AtomicUsize::new(0),
            trips: AtomicU64::new(0),
        })
    }

    /// The judging target's label.
    pub fn judge_label(&self) -> &str {
        &self.judge.label
    }

    fn count(&self, outcome: &str) {
        self.judgements
            .with_label_values(&[&self.judged, outcome])
            .inc();
    }

    fn take_budget(&self) -> bool {
        let minute = self.started.elapsed().as_secs() / 60;
        let Ok(mut budget) = self.budget.lock() else {
            return false;
        };
        if budget.0 != minute {
            *budget = (minute, 0);
        }
        if budget.1 >= self.config.max_per_minute {
            return false;
        }
        budget.1 += 1;
        true
    }

    /// Maybe hand this answer to the judge, in the background.
    pub fn consider(self: &Arc<Self>, sample: Sample) {
        if !sample.is_judgeable() {
            return;
        }
        let on_probation = self
            .probation
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if !on_probation
            && (self.config.sample_rate <= 0.0 || fastrand::f64() >= self.config.sample_rate)
        {
            return;
        }
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            self.count("skipped_busy");
            return;
        };
        if !self.take_budget() {
            self.count("skipped_budget");
            return;
        }
        let judge_request = judge_request(&self.judge.model, &sample);
        let trips_at_start = self.trips.load(Ordering::SeqCst);
        let judge = self.clone();
        tokio::spawn(async move {
            let score = judge.ask(&judge_request).await;
            drop(permit);
            if let Some(score) = score {
                judge.add_score(score, trips_at_start);
            }
        });
    }

    async fn ask(&self, request: &ChatRequest) -> Option<f64> {
        let Some(provider) = &self.judge.provider else {
            self.count("judge_failed");
            return None;
        };
        let Some(key) = provider.keys.pick(&self.judge.model, &[]) else {
            self.count("judge_failed");
            return None;
        };
        let deadline = tokio::time::Instant::now() + provider.config.timeouts.total;
        let first_content = super::attempt::FirstContent::default();
        match attempt(
            provider,
            &self.judge,
            key,
            request,
            deadline,
            &first_content,
            // The judge's request carries no trace context: no span id is sent.
            &mut super::attempt::AttemptNotes {
                span_id: String::new(),
                upstream_request_id: None,
            },
        )
        .await
        {
            Ok(UpstreamAnswer::Complete(answer)) => match parse_score(&answer.text()) {
                Some(score) => {
                    self.count("scored");
                    Some(score)
                }
                None => {
                    self.count("unparseable");
                    None
                }
            },
            Ok(UpstreamAnswer::Stream(_)) | Err(_) => {
                self.count("judge_failed");
                None
            }
        }
    }

    /// The rolling mean of recent scores, if there are any.
    pub fn mean(&self) -> Option<f64> {
        let scores = self.scores.lock().ok()?;
        (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
    }

    /// Add a score from a judgement started when `trips_at_start` trips had happened; a
    /// rolling mean under the threshold opens the breaker.
    pub fn add_score(&self, score: f64, trips_at_start: u64) {
        let Ok(mut scores) = self.scores.lock() else {
            return;
        };
        if self.trips.load(Ordering::SeqCst) != trips_at_start {
            // Judged before the latest trip: evidence about the old episode.
            return;
        }
        scores.push_back(score);
        while scores.len() > self.config.window {
            scores.pop_front();
        }
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        self.score.with_label_values(&[&self.judged]).set(mean);
        if scores.len() >= self.config.min_scores && mean < self.config.threshold {
            tracing::warn!(target = %self.judged, mean, threshold = self.config.threshold,
                "answers judged poor: opening the breaker");
            self.breaker
                .force_open(self.config.cooldown, Reason::Quality);
            // Fresh evidence is needed after the target comes back, and it is gathered
            // from the first answers, not a sample of them.
            scores.clear();
            self.trips.fetch_add(1, Ordering::SeqCst);
            self.probation
                .store(self.config.min_scores, Ordering::SeqCst);
        }
    }
}

fn judge_request(model: &str, sample: &Sample) -> ChatRequest {
    let mut prompt = String::new();
    if let Some(system) = sample
        .system
        .as_deref()
        .filter(|system| !system.trim().is_empty())
    {
        prompt.push_str(&format!("The assistant's instructions:\n{system}\n\n"));
    }
    prompt.push_str(&format!(
        "Question:\n{}\n\nAnswer:\n{}",
        sample.question, sample.answer
    ));
    ChatRequest {
        model: model.to_string(),
        system: Some(RUBRIC.to_string()),
        messages: vec![Message {
            role: Role::User,
            content: vec![Part::Text(prompt)],
        }],
        tools: Vec::new(),
        tool_choice: None,
        params: OutputParams {
            temperature: Some(0.0),
            max_tokens: Some(8),
            ..OutputParams::default()
        },
        stream: false,
        include_usage: false,
        trace_context: None,
        anthropic_beta: Vec::new(),
        passthrough: None,
        fallbacks: None,
        choices: 1,
    }
}

/// The judge's reply, when it is what the rubric asks for: one number from 0 to 1
/// (a trailing full stop allowed). Anything else is unparseable, not a guess.
pub fn parse_score(text: &str) -> Option<f64> {
    let trimmed = text.trim().trim_end_matches('.');
    let score: f64 = trimmed.parse().ok()?;
    (score.is_finite() && (0.0..=1.0).contains(&score)).then_some(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_number_from_0_to_1_is_a_score() {
        assert_eq!(parse_score("0.8"), Some(0.8));
        assert_eq!(parse_score(" 1\n"), Some(1.0));
        assert_eq!(parse_score("0.25."), Some(0.25));
        assert_eq!(parse_score("7"), None);
        assert_eq!(parse_score("Score: 0.9"), None);
        assert_eq!(parse_score("no idea"), None);
    }

    #[test]
    fn tool_calls_cut_answers_and_tool_loops_are_not_judged() {
        let mut sample = Sample {
            system: None,
            question: "capital of France?".into(),
            answer: "Paris".into(),
            has_tool_calls: false,
            stop_reason: Some(StopReason::EndTurn),
        };
        assert!(sample.is_judgeable());
        sample.stop_reason = Some(StopReason::MaxTokens);
        assert!(!sample.is_judgeable());
        sample.stop_reason = Some(StopReason::EndTurn);
        sample.has_tool_calls = true;
        assert!(!sample.is_judgeable());
        sample.has_tool_calls = false;
        sample.question = String::new();
        assert!(!sample.is_judgeable());
    }

    #[test]
    fn stream_samples_are_capped_on_a_character_boundary() {
        let mut sample = Sample {
            system: None,
            question: "q".into(),
            answer: String::new(),
            has_tool_calls: false,
            stop_reason: None,
        };
        for _ in 0..20_000 {
            sample.observe(&StreamEvent::TextDelta("é".into()));
        }
        assert!(sample.answer.len() <= MAX_SAMPLE_TEXT);
        assert!(sample.answer.chars().all(|c| c == 'é'));
    }
}
