//! The shared store: a Qdrant server (or cluster) through qdrant-client's gRPC API, so
//! several airbag replicas share one cache. Same payload schema and filters as the
//! embedded store. Every call has a deadline: a slow store is a miss, not a slow request.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vectors_config::Config as VectorsConfigKind;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, PointId, PointStruct,
    PointsIdsList, QueryPointsBuilder, Range, ScrollPointsBuilder, UpsertPointsBuilder,
    VectorParamsBuilder,
};

use super::{
    BOOL_FIELD, EXPIRY_FIELD, KEYWORD_FIELDS, Purge, SemanticQuery, StoreError, StoredPoint,
    VectorStore,
};
use crate::cache::config::CollectionLayout;
use crate::cache::entry::StoredEntry;

pub struct QdrantStore {
    client: Qdrant,
    collection: String,
    timeout: Duration,
}

/// A start-up problem with the Qdrant server; it names the url and collection.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use Qdrant collection `{collection}` at {url}: {message}; check cache.store.url, cache.store.api_key and that the server is up"
)]
pub struct ConnectError {
    pub url: String,
    pub collection: String,
    pub message: String,
}

impl QdrantStore {
    /// Connect, and create the collection with the right vector size and payload indexes
    /// when it does not exist. An existing collection with another size is refused. A
    /// failed set-up is tried again, `SETUP_ATTEMPTS` times in all: a server that is
    /// restarting drops connections for a moment.
    pub async fn connect(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        layout: CollectionLayout,
        dimensions: usize,
        timeout: Duration,
    ) -> Result<QdrantStore, ConnectError> {
        let mut attempt = 1;
        loop {
            let connected = QdrantStore::connect_once(
                url,
                api_key.clone(),
                collection,
                layout,
                dimensions,
                timeout,
            )
            .await;
            match connected {
                Err(error) if attempt < SETUP_ATTEMPTS => {
                    tracing::warn!(
                        "cache: {error}; trying again (attempt {attempt} of {SETUP_ATTEMPTS})"
                    );
                    tokio::time::sleep(SETUP_RETRY_PAUSE).await;
                    attempt += 1;
                }
                connected => return connected,
            }
        }
    }

    async fn connect_once(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        layout: CollectionLayout,
        dimensions: usize,
        timeout: Duration,
    ) -> Result<QdrantStore, ConnectError> {
        let fail = |message: String| ConnectError {
            url: url.to_string(),
            collection: collection.to_string(),
            message,
        };
        // The client's own check prints a warning to stdout for any server two minor
        // versions away, even ones airbag is tested with; the version is checked below.
        // Its own deadline is the set-up's (creating a collection and its indexes can
        // take seconds on a busy server); every later call is bounded by `timeout`.
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .timeout(timeout.max(SETUP_TIMEOUT))
            .connect_timeout(timeout)
            .skip_compatibility_check()
            .build()
            .map_err(|error| fail(error.to_string()))?;
        let server = client
            .health_check()
            .await
            .map_err(|error| fail(error.to_string()))?;
        log_server_version(&server.version);
        let exists = client
            .collection_exists(collection)
            .await
            .map_err(|error| fail(error.to_string()))?;
        if !exists {
            let mut create = CreateCollectionBuilder::new(collection).vectors_config(
                VectorParamsBuilder::new(dimensions as u64, Distance::Cosine),
            );
            if let Some(shards) = layout.shard_number {
                create = create.shard_number(shards);
            }
            if let Some(copies) = layout.replication_factor {
                create = create.replication_factor(copies);
            }
            let created = client.create_collection(create).await;
            if let Err(error) = created {
                // Replicas started together race to create it: the losers use the
                // winner's (its size is checked below like any existing collection's).
                let made_by_another = client.collection_exists(collection).await;
                if !matches!(made_by_another, Ok(true)) {
                    return Err(fail(error.to_string()));
                }
            }
        }
        let info = client
            .collection_info(collection)
            .await
            .map_err(|error| fail(error.to_string()))?;
        let size = info
            .result
            .and_then(|info| info.config)
            .and_then(|config| config.params)
            .and_then(|params| params.vectors_config)
            .and_then(|vectors| vectors.config)
            .and_then(|kind| match kind {
                VectorsConfigKind::Params(params) => Some(params.size),
                VectorsConfigKind::ParamsMap(_) => None,
            });
        if size != Some(dimensions as u64) {
            return Err(fail(format!(
                "it holds vectors of size {size:?}, not {dimensions} (one unnamed vector); use another collection name"
            )));
        }
        let indexes = KEYWORD_FIELDS
            .iter()
            .map(|field| (*field, FieldType::Keyword))
            .chain([
                (BOOL_FIELD, FieldType::Bool),
                (EXPIRY_FIELD, FieldType::Integer),
            ]);
        for (field, kind) in indexes {
            // Creating an index that exists is accepted by Qdrant (no-op).
            client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(collection, field, kind).wait(true),
                )
                .await
                .map_err(|error| fail(format!("cannot index payload field {field}: {error}")))?;
        }
        Ok(QdrantStore {
            client,
            collection: collection.to_string(),
            timeout,
        })
    }

    /// Bound a call by the store's deadline.
    fn bounded<'a, T: Send + 'a>(
        &'a self,
        call: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let timeout = self.timeout;
        async move {
            tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| StoreError::Timeout(timeout))?
        }
        .boxed()
    }
}

/// The deadline of each set-up call at start (health, collection and index creation):
/// `cache.store.timeout` when it is longer. A request-path deadline of a few hundred
/// milliseconds should not fail a start on a server that takes a second to create a
/// collection.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Set-up tries at start before airbag gives up, and the pause between two.
const SETUP_ATTEMPTS: u32 = 5;
const SETUP_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The Qdrant server versions airbag's shared-store tests run against.
const TESTED_SERVERS: &str = "1.18 to 1.20";

/// Say which server this is; warn when it is not a version airbag was tested with.
fn log_server_version(version: &str) {
    let minor = version
        .strip_prefix("1.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|minor| minor.parse::<u32>().ok());
    if minor.is_some_and(|minor| (18..=20).contains(&minor)) {
        tracing::info!("cache: Qdrant server {version}");
    } else {
        tracing::warn!(
            "cache: Qdrant server {version} is not a version airbag was tested with ({TESTED_SERVERS}); requests may still work"
        );
    }
}

fn numeric_id(id: &PointId) -> Option<u64> {
    match id.point_id_options {
        Some(PointIdOptions::Num(id)) => Some(id),
        _ => None,
    }
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn entry_of(
    payload: std::collections::HashMap<String, qdrant_client::qdrant::Value>,
) -> Result<StoredEntry, StoreError> {
    qdrant_client::Payload::from(payload)
        .deserialize()
        .map_err(|error| StoreError::Corrupt(error.to_string()))
}

impl VectorStore for QdrantStore {
    fn kind(&self) -> &'static str {
        "qdrant"
    }

    fn upsert(&self, points: Vec<StoredPoint>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.bounded(async move {
            let mut structs = Vec::with_capacity(points.len());
            for point in points {
                let payload = serde_json::to_value(&point.entry).map_err(backend)?;
                let payload = qdrant_client::Payload::try_from(payload).map_err(backend)?;
                structs.push(PointStruct::new(point.id, point.vector, payload));
            }
            self.client
                .upsert_points(UpsertPointsBuilder::new(&self.collection, structs))
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn get(&self, id: u64) -> BoxFuture<'_, Result<Option<StoredEntry>, StoreError>> {
        self.bounded(async move {
            let response = self
                .client
                .get_points(
                    GetPointsBuilder::new(&self.collection, vec![PointId::from(id)])
                        .with_payload(true),
                )
                .await
                .map_err(backend)?;
            response
                .result
                .into_iter()
                .next()
                .map(|point| entry_of(point.payload))
                .transpose()
        })
    }

    fn search(
        &self,
        query: SemanticQuery,
    ) -> BoxFuture<'_, Result<Vec<(f32, StoredEntry)>, StoreError>> {
        self.bounded(async move {
            let filter = Filter::must([
                Condition::matches("tenant", query.tenant.clone()),
                Condition::matches("context", query.context.clone()),
                Condition::matches(BOOL_FIELD, true),
                Condition::range(
                    EXPIRY_FIELD,
                    Range {
                        gt: Some(query.now as f64),
                        ..Default::default()
                    },
                ),
            ]);
            let response = self
                .client
                .query(
                    QueryPointsBuilder::new(&self.collection)
                        .query(query.vector)
                        .filter(filter)
                        .limit(query.limit as u64)
                        .score_threshold(query.threshold)
                        .with_payload(true),
                )
                .await
                .map_err(backend)?;
            response
                .result
                .into_iter()
                .map(|point| Ok((point.score, entry_of(point.payload)?)))
                .collect()
        })
    }

    fn purge(&self, purge: Purge) -> BoxFuture<'_, Result<(), StoreError>> {
        self.bounded(async move {
            let conditions: Vec<Condition> = purge
                .fields()
                .into_iter()
                .map(|(field, value)| Condition::matches(field, value.to_string()))
                .collect();
            self.client
                .delete_points(
                    DeletePointsBuilder::new(&self.collection)
                        .points(Filter::must(conditions))
                        .wait(true),
                )
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn delete(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.bounded(async move {
            let ids: Vec<PointId> = ids.into_iter().map(PointId::from).collect();
            self.client
                .delete_points(
                    DeletePointsBuilder::new(&self.collection)
                        .points(PointsIdsList { ids })
                        .wait(true),
                )
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn scan(
        &self,
        offset: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<super::ScanPage, StoreError>> {
        self.bounded(async move {
            let mut request = ScrollPointsBuilder::new(&self.collection)
                .limit(u32::try_from(limit).unwrap_or(u32::MAX))
                .with_payload(true)
                .with_vectors(false);
            if let Some(offset) = offset {
                request = request.offset(PointId::from(offset));
            }
            let response = self.client.scroll(request).await.map_err(backend)?;
            let mut page = Vec::with_capacity(response.result.len());
            for point in response.result {
                let Some(id) = point.id.as_ref().and_then(numeric_id) else {
                    continue;
                };
                page.push((id, entry_of(point.payload)?));
            }
            Ok((
                page,
                response.next_page_offset.as_ref().and_then(numeric_id),
            ))
        })
    }

    fn delete_expired(&self, now: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.bounded(async move {
            let filter = Filter::must([Condition::range(
                EXPIRY_FIELD,
                Range {
                    lte: Some(now as f64),
                    ..Default::default()
                },
            )]);
            self.client
                .delete_points(DeletePointsBuilder::new(&self.collection).points(filter))
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.bounded(async move {
            let response = self
                .client
                .count(CountPointsBuilder::new(&self.collection).exact(true))
                .await
                .map_err(backend)?;
            Ok(response.result.map(|result| result.count).unwrap_or(0))
        })
    }

    /// The server builds its own indexes.
    fn maintain(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    /// Writes are durable once the server acknowledged them.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }
}
