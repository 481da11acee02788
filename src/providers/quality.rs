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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use super::Target;
use super::attempt::{UpstreamAnswer, attempt};
use super::breaker::{Breaker, Reason};
use crate::metrics::Metrics;
use crate::protocol::{
    ChatRequest, ChatResponse, Message, OutputParams, Part, Role, last_user_text,
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
}

impl QualityJudge {
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
    pub fn consider(self: &Arc<Self>, request: &ChatRequest, response: &ChatResponse) {
        if self.config.sample_rate <= 0.0 || fastrand::f64() >= self.config.sample_rate {
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
        let judge_request = judge_request(&self.judge.model, request, response);
        let judge = self.clone();
        tokio::spawn(async move {
            let score = judge.ask(&judge_request).await;
            drop(permit);
            if let Some(score) = score {
                judge.add_score(score);
            }
        });
    }

    async fn ask(&self, request: &ChatRequest) -> Option<f64> {
        let Some(provider) = &self.judge.provider else {
            self.count("judge_failed");
            return None;
        };
        let Some(key) = provider.keys.pick(&[]) else {
            self.count("judge_failed");
            return None;
        };
        let deadline = tokio::time::Instant::now() + provider.config.timeouts.total;
        match attempt(provider, &self.judge, key, request, deadline).await {
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

    /// Add a score; a rolling mean under the threshold opens the breaker.
    pub fn add_score(&self, score: f64) {
        let Ok(mut scores) = self.scores.lock() else {
            return;
        };
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
            // Fresh evidence is needed after the target comes back.
            scores.clear();
        }
    }
}

fn judge_request(model: &str, request: &ChatRequest, response: &ChatResponse) -> ChatRequest {
    let question = last_user_text(&request.messages);
    let answer = response.text();
    ChatRequest {
        model: model.to_string(),
        system: Some(RUBRIC.to_string()),
        messages: vec![Message {
            role: Role::User,
            content: vec![Part::Text(format!(
                "Question:\n{question}\n\nAnswer:\n{answer}\n\nScore (0 to 1):"
            ))],
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
    }
}

/// The first number in the judge's reply, clamped to 0..1.
pub fn parse_score(text: &str) -> Option<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|word| word.trim_matches('.'))
        .filter(|word| !word.is_empty())
        .find_map(|word| word.parse::<f64>().ok())
        .filter(|score| score.is_finite())
        .map(|score| score.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::parse_score;

    #[test]
    fn scores_are_read_from_chatty_replies() {
        assert_eq!(parse_score("0.8"), Some(0.8));
        assert_eq!(parse_score("Score: 0.25."), Some(0.25));
        assert_eq!(parse_score("1"), Some(1.0));
        assert_eq!(parse_score("7"), Some(1.0));
        assert_eq!(parse_score("no idea"), None);
    }
}
