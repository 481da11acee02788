//! The lookup policy of rung 1: exact key, then the flight of an identical request in
//! the air, then the semantic search whose candidates the guard and the verifier judge;
//! user scope and the language gate decide what a request may read and write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::entry::StoredEntry;
use super::key::{self, CacheKeys, Scope};
use super::reading::TokenVectors;
use super::store::{self, SemanticQuery, VectorStore};
use super::verifier::VerifyError;
use super::{
    COALESCE_WAIT, Cache, CacheControls, CacheHit, CacheScope, FLIGHTS_FOLLOWED, HitKind, Lookup,
    PendingEntry, ReadingInFlight, SEMANTIC_CANDIDATES, VERIFY_DEADLINE, coalesce, guard, language,
};
use crate::protocol::{ChatRequest, unix_now};

impl Cache {
    /// Look the request up: exact first, then semantic. Also prepares its write.
    /// `route` is the configured route the request resolved to (its semantic threshold).
    pub async fn lookup(
        &self,
        request: &ChatRequest,
        route: &str,
        tenant: &str,
        controls: &CacheControls,
    ) -> Lookup {
        let generation = self.purges.load(Ordering::SeqCst);
        let route_scope = self.route_policies.get(route).and_then(|p| p.scope);
        let user = match controls.scope.or(route_scope) {
            Some(CacheScope::User) => match &controls.end_user {
                Some(user) => Some(user.clone()),
                // The route scopes entries to users, and this request names none: it
                // neither reads nor writes entries others could share. (The header
                // without a user is refused before the ladder.)
                None => {
                    self.count("scope", "no_user");
                    return Lookup::default();
                }
            },
            Some(CacheScope::Tenant) | None => None,
        };
        let scope = Scope {
            tenant: tenant.to_string(),
            namespace: controls.namespace.clone(),
            user,
        };
        let keys = key::keys(&scope, request);
        let question = key::question(request);
        let mut semantic = controls.semantic && self.semantic_eligible(request, &question);
        if semantic && !self.config.semantic.multilingual && !language::looks_english(&question) {
            // The model reads English: other languages get exact hits only.
            self.count("semantic", "language");
            semantic = false;
        }
        let mut lookup = Lookup::default();
        let now = unix_now();
        if controls.lookup {
            match self.exact(&keys, &scope).await {
                Ok(Some(entry)) if now < entry.fresh_until => {
                    self.count("exact", "hit");
                    self.usage.hit(keys.point_id());
                    lookup.hit = Some(CacheHit {
                        entry,
                        kind: HitKind::Exact,
                        similarity: None,
                        verifier_score: None,
                    });
                    return lookup;
                }
                Ok(Some(entry)) => {
                    self.count("exact", "stale");
                    lookup.stale = Some(CacheHit {
                        entry,
                        kind: HitKind::Exact,
                        similarity: None,
                        verifier_score: None,
                    });
                }
                Ok(None) => self.count("exact", "miss"),
                Err(error) => {
                    self.count("exact", "error");
                    tracing::warn!("cache exact lookup failed: {error}");
                }
            }
        }
        // An identical request in flight: wait for its answer rather than ask again.
        let mut flight = None;
        if controls.lookup && self.config.coalesce {
            for _ in 0..FLIGHTS_FOLLOWED {
                match self.flights.join(keys.exact, controls.store) {
                    Some(coalesce::Joined::Follower(follower)) => {
                        match tokio::time::timeout(COALESCE_WAIT, follower.answer()).await {
                            Ok(Some(entry)) => {
                                self.count("coalesced", "hit");
                                lookup.hit = Some(CacheHit {
                                    entry,
                                    kind: HitKind::Coalesced,
                                    similarity: None,
                                    verifier_score: None,
                                });
                                return lookup;
                            }
                            // The leader gave up: look again, maybe as the next leader.
                            Ok(None) => self.count("coalesced", "abandoned"),
                            Err(_) => {
                                self.count("coalesced", "late");
                                break;
                            }
                        }
                    }
                    Some(coalesce::Joined::Leader(leader)) => {
                        flight = Some(Arc::new(leader));
                        break;
                    }
                    None => break,
                }
            }
        }
        // The vector serves the semantic lookup and the entry written later; a request
        // that wants neither is not embedded.
        let mut reading = None;
        let mut reading_in_flight = None;
        let empty_partition = semantic && controls.lookup && self.partition_is_empty(&keys);
        if empty_partition {
            // Nothing to find: the request goes on at once, and the question is embedded
            // beside its provider call for the entry its answer makes, when the model is
            // free. With questions waiting, lookups that can hit come first: the writer
            // embeds this one later, when the model is idle.
            self.count("semantic", "empty_context");
            if let (true, Some(embedder)) = (controls.store, &self.embedder) {
                reading_in_flight = ReadingInFlight::start(embedder, question.clone());
            }
        } else if semantic
            && (controls.lookup || controls.store)
            && let Some(embedder) = &self.embedder
        {
            match embedder
                .read_within(
                    &question,
                    self.config.semantic.embedding_wait,
                    self.config.semantic.embedding_deadline,
                )
                .await
            {
                Ok(read) => reading = Some(read),
                Err(skip) => {
                    self.metrics
                        .cache_semantic_skipped
                        .with_label_values(&[skip.label()])
                        .inc();
                    tracing::debug!("cache: semantic lookup skipped: {skip}");
                }
            }
        }
        let (vector, tokens) = match reading {
            Some(reading) => (Some(reading.vector), Some(reading.tokens)),
            None => (None, None),
        };
        if controls.lookup {
            match (&vector, &tokens) {
                (Some(vector), Some(tokens)) => {
                    let threshold = self
                        .route_policies
                        .get(route)
                        .and_then(|policy| policy.semantic_threshold)
                        .unwrap_or(self.config.semantic.threshold);
                    let (hit, stale) = self
                        .semantic(&keys, &scope, &question, vector.clone(), tokens, threshold)
                        .await;
                    if hit.is_some() {
                        lookup.hit = hit;
                        return lookup;
                    }
                    if lookup.stale.is_none() {
                        lookup.stale = stale;
                    }
                }
                _ if empty_partition => {}
                _ => self.count("semantic", "skipped"),
            }
        }
        lookup.question_vector = vector.clone();
        if controls.store {
            lookup.pending = Some(PendingEntry {
                keys,
                scope,
                route: request.model.clone(),
                question,
                // Not embedded now (a busy model): the writer embeds it later.
                semantic,
                vector,
                ttl: controls.ttl,
                generation,
                flight,
                tokens,
                answered_in: None,
                reading_in_flight,
            });
        }
        lookup
    }

    /// Whether the request's context partition surely holds no semantic entry. Only a
    /// store this process alone writes answers: a shared one gets entries from other
    /// replicas this one learns of only at its next maintenance run.
    fn partition_is_empty(&self, keys: &CacheKeys) -> bool {
        self.store.sole_writer() && self.usage.partition_is_empty(&keys.context)
    }

    fn semantic_eligible(&self, request: &ChatRequest, question: &str) -> bool {
        let semantic = &self.config.semantic;
        // A long message is mostly its pasted material: "<document> summarise it" and
        // "<document> translate it" embed alike. Only short questions are compared.
        self.embedder.is_some()
            && !question.trim().is_empty()
            && question.chars().count() <= semantic.max_question_chars
            && (request.tools.is_empty() || !semantic.skip_tools)
            && request
                .params
                .temperature
                .is_none_or(|temperature| temperature <= semantic.max_temperature)
    }

    async fn exact(
        &self,
        keys: &CacheKeys,
        scope: &Scope,
    ) -> Result<Option<Arc<StoredEntry>>, store::StoreError> {
        if let Some(entry) = self.memory.get(&keys.exact) {
            return Ok((entry.stale_until > unix_now()).then_some(entry));
        }
        let generation = self.purges.load(Ordering::SeqCst);
        let started = Instant::now();
        let stored = self.store.get(keys.point_id()).await;
        self.observe_store("get", started);
        let Some(entry) = stored? else {
            return Ok(None);
        };
        // The point id is a prefix of the key: serve only a full match, of this tenant.
        if entry.key != keys.exact_hex() || entry.tenant != scope.tenant {
            return Ok(None);
        }
        if entry.stale_until <= unix_now() {
            return Ok(None);
        }
        let entry = Arc::new(entry);
        // Not if a purge ran while the store was read: it may have deleted this entry.
        if self.purges.load(Ordering::SeqCst) == generation {
            self.memory.insert(keys.exact, entry.clone());
        }
        Ok(Some(entry))
    }

    /// The best fresh and the best stale entry among the nearest stored questions.
    async fn semantic(
        &self,
        keys: &CacheKeys,
        scope: &Scope,
        question: &str,
        vector: Vec<f32>,
        tokens: &TokenVectors,
        threshold: f32,
    ) -> (Option<CacheHit>, Option<CacheHit>) {
        let now = unix_now();
        let started = Instant::now();
        let found = self
            .store
            .search(SemanticQuery {
                tenant: scope.tenant.clone(),
                context: keys.context_hex(),
                vector,
                threshold,
                limit: SEMANTIC_CANDIDATES,
                now,
            })
            .await;
        self.observe_store("search", started);
        let candidates = match found {
            Ok(candidates) => candidates,
            Err(error) => {
                self.count("semantic", "error");
                tracing::warn!("cache semantic lookup failed: {error}");
                return (None, None);
            }
        };
        let mut guarded = false;
        let mut proposed = Vec::with_capacity(candidates.len());
        for (similarity, entry) in candidates {
            // The store filtered on these already; checked again because serving another
            // tenant's answer is the one mistake a cache must never make.
            if entry.tenant != scope.tenant || entry.context != keys.context_hex() {
                continue;
            }
            if self.config.semantic.guard && !guard::compatible(question, &entry.question) {
                guarded = true;
                continue;
            }
            proposed.push((similarity, entry));
        }
        let scores = self.verify(tokens, &proposed).await;
        let mut rejected = false;
        let mut stale = None;
        for ((similarity, entry), verifier_score) in proposed.into_iter().zip(scores) {
            if verifier_score.is_some_and(|score| score < self.config.semantic.verifier_threshold) {
                rejected = true;
                continue;
            }
            let hit = CacheHit {
                entry: Arc::new(entry),
                kind: HitKind::Semantic,
                similarity: Some(similarity),
                verifier_score,
            };
            if now < hit.entry.fresh_until {
                self.count("semantic", "hit");
                if let Some(id) = key::point_id_of_hex(&hit.entry.key) {
                    self.usage.hit(id);
                }
                self.metrics.cache_similarity.observe(f64::from(similarity));
                return (Some(hit), stale);
            }
            if stale.is_none() {
                stale = Some(hit);
            }
        }
        let result = match (&stale, rejected, guarded) {
            (Some(_), _, _) => "stale",
            (None, true, _) => "rejected",
            (None, false, true) => "guarded",
            (None, false, false) => "miss",
        };
        self.count("semantic", result);
        (None, stale)
    }

    /// The verifier's score of each proposed candidate, in order: `None` for each when
    /// verification is off. When the verifier fails or is late, every candidate scores
    /// 0: a miss, never an unverified hit.
    async fn verify(
        &self,
        question: &TokenVectors,
        proposed: &[(f32, StoredEntry)],
    ) -> Vec<Option<f32>> {
        let Some(verifier) = &self.verifier else {
            return vec![None; proposed.len()];
        };
        if proposed.is_empty() {
            return Vec::new();
        }
        let candidates: Vec<&str> = proposed.iter().map(|(_, e)| e.question.as_str()).collect();
        let started = Instant::now();
        let verified =
            tokio::time::timeout(VERIFY_DEADLINE, verifier.verify(question, &candidates)).await;
        self.metrics
            .cache_verifier_seconds
            .observe(started.elapsed().as_secs_f64());
        let alignments = match verified {
            Ok(Ok(verified)) => {
                for (source, count) in [
                    ("memory", verified.from_memory),
                    ("model", verified.from_model),
                ] {
                    self.metrics
                        .cache_verifier_readings
                        .with_label_values(&[source])
                        .inc_by(count as u64);
                }
                verified.alignments
            }
            Ok(Err(error)) => {
                let outcome = match error {
                    VerifyError::Saturated => "saturated",
                    VerifyError::Failed(_) => "failed",
                };
                self.count_verified(outcome, proposed.len());
                tracing::warn!("cache: {error}; the semantic candidates are not served");
                return vec![Some(0.0); proposed.len()];
            }
            Err(_) => {
                self.count_verified("late", proposed.len());
                tracing::warn!(
                    "cache: verification took longer than {VERIFY_DEADLINE:?}; the semantic candidates are not served"
                );
                return vec![Some(0.0); proposed.len()];
            }
        };
        let threshold = self.config.semantic.verifier_threshold;
        alignments
            .into_iter()
            .zip(&candidates)
            .map(|(alignment, candidate)| {
                if alignment.score >= threshold {
                    self.count_verified("verified", 1);
                } else {
                    self.count_verified("rejected", 1);
                    tracing::debug!(
                        candidate,
                        score = alignment.score,
                        weakest = alignment.weakest.as_deref().unwrap_or(""),
                        "cache: the verifier refused a semantic candidate"
                    );
                }
                Some(alignment.score)
            })
            .collect()
    }

    fn count_verified(&self, outcome: &str, candidates: usize) {
        self.metrics
            .cache_verifier
            .with_label_values(&[outcome])
            .inc_by(candidates as u64);
    }
}
