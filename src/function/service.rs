//! The one registration path: validate → package → store artifact → write
//! record → drop the replaced artifact → announce the change. Also the
//! record cache of job admission (`cache`) and aggregated invocation counters.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;

use super::cache::RecordCache;
use super::package::{self, Artifact, PackageError};
use super::settings::{self, FunctionSettings, SettingsDraft, ValidationErrors};
use crate::backend::{self, ArtifactStore, ChangeFeed, FunctionChange, FunctionRegistry};
use crate::model::{FunctionRecord, Runtime, UsageDelta};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid function settings: {0}")]
    Invalid(#[from] ValidationErrors),
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("function {0} not found")]
    NotFound(String),
    #[error("function {id} is owned by the Function resource {owner}; change the resource instead")]
    Owned { id: String, owner: String },
    #[error("storage failed: {0}")]
    Backend(#[source] backend::Error),
}

impl From<backend::Error> for ServiceError {
    fn from(e: backend::Error) -> Self {
        ServiceError::Backend(e)
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// New code for a function.
pub struct CodeUpload {
    pub file_name: String,
    pub data: Bytes,
}

/// Packages an upload off the async threads (checking a large archive
/// inflates all of it).
async fn package_off_thread(code: &CodeUpload, settings: &FunctionSettings) -> Result<Artifact> {
    let (name, data) = (code.file_name.clone(), code.data.clone());
    let (handler, runtime) = (settings.handler.clone(), settings.runtime);
    let packaged = tokio::task::spawn_blocking(move || package::package(&name, data, &handler, runtime))
        .await
        .map_err(|e| PackageError::BadZip(format!("packaging interrupted: {e}")))?;
    Ok(packaged?)
}

/// The style of a function whose settings do not name one: detected from
/// the handler module's source (`style::detect`, conservative).
fn detected_style(draft: &SettingsDraft, settings: &mut FunctionSettings, artifact: &Artifact) {
    if draft.style.is_some() {
        return;
    }
    if let Some(source) = super::style::module_source(&artifact.bytes, &settings.handler, settings.runtime) {
        settings.style = super::style::detect(settings.runtime, &settings.handler, &source);
    }
}

pub struct FunctionService {
    artifacts: Arc<dyn ArtifactStore>,
    registry: Arc<dyn FunctionRegistry>,
    cache: Arc<RecordCache>,
    /// Where changes are announced to (and heard from) other processes.
    feed: Option<Arc<dyn ChangeFeed>>,
    usage: super::usage::UsageTally,
    /// Signalled after every change (in-process workers follow at once).
    changes: Arc<tokio::sync::Notify>,
}

impl FunctionService {
    /// Without a feed, records are cached only briefly (`cache::FRESH_FALLBACK`)
    /// and changes made here are not announced.
    pub fn new(
        artifacts: Arc<dyn ArtifactStore>,
        registry: Arc<dyn FunctionRegistry>,
        feed: Option<Arc<dyn ChangeFeed>>,
    ) -> Self {
        let service = FunctionService {
            artifacts,
            cache: Arc::new(RecordCache::new(registry.clone())),
            registry,
            feed,
            usage: Default::default(),
            changes: Arc::new(tokio::sync::Notify::new()),
        };
        service.follow_changes();
        service
    }

    /// Forgets records changed elsewhere as soon as the feed says so (ends
    /// with the feed).
    fn follow_changes(&self) {
        let Some(feed) = &self.feed else { return };
        let mut heard = feed.subscribe();
        let cache = Arc::downgrade(&self.cache);
        let changes = self.changes.clone();
        tokio::spawn(async move {
            loop {
                let change = heard.recv().await;
                let Some(cache) = cache.upgrade() else { return };
                match change {
                    Ok(FunctionChange::Changed(id)) => cache.invalidate(&id),
                    Ok(FunctionChange::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        cache.clear()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                // A stored permit: the follower sees the change even if it is busy now.
                changes.notify_one();
            }
        });
    }

    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changes.clone()
    }

    pub fn artifacts(&self) -> &Arc<dyn ArtifactStore> {
        &self.artifacts
    }

    pub fn registry(&self) -> &Arc<dyn FunctionRegistry> {
        &self.registry
    }

    /// Registers a new function under a fresh id.
    pub async fn create(
        &self,
        draft: &SettingsDraft,
        code: CodeUpload,
        owner: Option<String>,
    ) -> Result<FunctionRecord> {
        // A lone source file says its runtime when the caller does not.
        let inferred;
        let draft = match (&draft.runtime, Runtime::of_file(&code.file_name)) {
            (None, Some(runtime)) => {
                inferred = SettingsDraft {
                    runtime: Some(runtime.as_str().to_string()),
                    ..draft.clone()
                };
                &inferred
            }
            _ => draft,
        };
        let mut settings = settings::validate(draft, None, &code.file_name)?;
        let artifact = package_off_thread(&code, &settings).await?;
        detected_style(draft, &mut settings, &artifact);
        let id = uuid::Uuid::new_v4().to_string();
        self.store(&id, settings, artifact, &code.file_name, None, owner).await
    }

    /// Makes function `id`, owned by the resource `owner`, exactly `draft`
    /// with `code` (the reconciler's path): creates it, updates it, or leaves
    /// it alone when nothing differs. Returns the record, whether new code was
    /// stored, and whether the record was written.
    pub async fn apply_owned(
        &self,
        id: &str,
        owner: &str,
        draft: &SettingsDraft,
        code: CodeUpload,
    ) -> Result<(FunctionRecord, bool, bool)> {
        let current = match self.registry.get(id).await {
            Ok(r) => Some(r),
            Err(backend::Error::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(c) = &current {
            check_owner(c, Some(owner))?;
        }
        let base = current.as_ref().map(FunctionSettings::of_record).transpose()?;
        let mut settings = settings::validate(draft, base.as_ref(), &code.file_name)?;
        let artifact = package_off_thread(&code, &settings).await?;
        // The resource is the whole truth: without a style it is detected
        // from its code each time, never kept from an earlier version.
        if draft.style.is_none() {
            settings.style = Default::default();
        }
        detected_style(draft, &mut settings, &artifact);
        if let (Some(c), Some(b)) = (&current, &base) {
            if *b == settings && c.sha256 == artifact.sha256 && c.owner.as_deref() == Some(owner) {
                return Ok((c.clone(), false, false));
            }
        }
        let uploaded = current.as_ref().map(|c| c.sha256.as_str()) != Some(artifact.sha256.as_str());
        let record = self
            .store(
                id,
                settings,
                artifact,
                &code.file_name,
                current,
                Some(owner.to_string()),
            )
            .await?;
        Ok((record, uploaded, true))
    }

    /// Deletes an owned function (record and artifacts); Ok when it is
    /// already gone, so cleanup can be repeated.
    pub async fn remove_owned(&self, id: &str, owner: &str) -> Result<()> {
        match self.delete(id, Some(owner)).await {
            // `delete` removed the artifacts too.
            Ok(()) => return Ok(()),
            Err(ServiceError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // Artifacts left by an interrupted earlier cleanup.
        for key in self.artifacts.list(&format!("functions/{id}/")).await? {
            self.artifacts.delete(&key).await?;
        }
        Ok(())
    }

    /// Changes settings and/or code. `caller_owner` is the resource making the
    /// change (None for HTTP): only the owner may change an owned function.
    pub async fn update(
        &self,
        id: &str,
        draft: &SettingsDraft,
        code: Option<CodeUpload>,
        caller_owner: Option<&str>,
    ) -> Result<FunctionRecord> {
        let current = self.fetch(id).await?;
        check_owner(&current, caller_owner)?;
        let base = FunctionSettings::of_record(&current)?;
        let settings = settings::validate(draft, Some(&base), &current.name)?;
        let (artifact, original_name) = match code {
            Some(code) => (package_off_thread(&code, &settings).await?, code.file_name),
            None => {
                // Settings only: the stored code must still hold the (maybe new) handler.
                let bytes = self.artifacts.get(&current.s3_key).await?;
                if settings.handler != base.handler || settings.runtime != base.runtime {
                    let (zip, handler, runtime) = (bytes.clone(), settings.handler.clone(), settings.runtime);
                    tokio::task::spawn_blocking(move || package::check_zip(&zip, &handler, runtime))
                        .await
                        .map_err(|e| PackageError::BadZip(format!("check interrupted: {e}")))??;
                }
                (
                    Artifact {
                        sha256: current.sha256.clone(),
                        bytes,
                    },
                    current.original_name.clone(),
                )
            }
        };
        let owner = current.owner.clone();
        self.store(id, settings, artifact, &original_name, Some(current), owner)
            .await
    }

    async fn store(
        &self,
        id: &str,
        settings: FunctionSettings,
        artifact: Artifact,
        original_name: &str,
        previous: Option<FunctionRecord>,
        owner: Option<String>,
    ) -> Result<FunctionRecord> {
        let key = artifact.key(id);
        // Content-addressed: unchanged code is already stored under this key.
        if previous.as_ref().map(|p| p.s3_key.as_str()) != Some(key.as_str()) {
            self.artifacts.put(&key, artifact.bytes.clone()).await?;
        }
        let now = Utc::now();
        let record = FunctionRecord {
            function_id: id.to_string(),
            name: settings.name,
            description: settings.description,
            s3_key: key.clone(),
            sha256: artifact.sha256.clone(),
            size_bytes: artifact.size(),
            original_name: original_name.to_string(),
            runtime: settings.runtime,
            memory_mb: settings.memory_mb,
            timeout_ms: settings.timeout_ms,
            handler: settings.handler.to_string(),
            env_vars: settings.env_vars,
            uploaded_at: previous.as_ref().map(|p| p.uploaded_at).unwrap_or(now),
            updated_at: previous.as_ref().map(|_| now),
            invocations: previous.as_ref().map(|p| p.invocations).unwrap_or(0),
            finished_runs: previous.as_ref().map(|p| p.finished_runs).unwrap_or(0),
            total_duration: previous.as_ref().map(|p| p.total_duration).unwrap_or(0.0),
            handler_invocations: previous.as_ref().map(|p| p.handler_invocations).unwrap_or(0),
            total_handler_duration: previous.as_ref().map(|p| p.total_handler_duration).unwrap_or(0.0),
            warm_pool: settings.warm_pool,
            network: settings.network,
            style: settings.style,
            owner,
            retry: settings.retry,
            max_concurrency: settings.max_concurrency,
            max_queued: settings.max_queued,
        };
        self.registry.put(&record).await?;
        self.changed(id).await;
        if let Some(prev) = previous {
            if prev.s3_key != key {
                if let Err(e) = self.artifacts.delete(&prev.s3_key).await {
                    // The record already points at the new code; a leftover file is only litter.
                    tracing::warn!(function_id = id, key = prev.s3_key, error = %e, "could not delete replaced artifact");
                }
            }
        }
        Ok(record)
    }

    /// Deletes the record, then every artifact of the function. Idempotent
    /// over the artifacts; `NotFound` when the record is already gone.
    pub async fn delete(&self, id: &str, caller_owner: Option<&str>) -> Result<()> {
        let current = self.fetch(id).await?;
        check_owner(&current, caller_owner)?;
        self.registry.delete(id).await.map_err(not_found(id))?;
        self.changed(id).await;
        for key in self.artifacts.list(&format!("functions/{id}/")).await? {
            self.artifacts.delete(&key).await?;
        }
        Ok(())
    }

    /// The record as the request path needs it: from memory, never waiting
    /// on a refresh (see `cache`). Counts may lag; `fetch` has them.
    pub async fn get(&self, id: &str) -> Result<Arc<FunctionRecord>> {
        let live = self.feed.as_ref().is_some_and(|f| f.is_live());
        self.cache
            .get(id, live)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))
    }

    /// The record straight from the registry, with counts not yet flushed.
    pub async fn fetch(&self, id: &str) -> Result<FunctionRecord> {
        let mut record = self.registry.get(id).await.map_err(not_found(id))?;
        self.usage.pending(id).apply_to(&mut record);
        Ok(record)
    }

    pub async fn list(&self) -> Result<Vec<FunctionRecord>> {
        let mut records = self.registry.list().await?;
        for r in &mut records {
            self.usage.pending(&r.function_id).apply_to(r);
        }
        Ok(records)
    }

    /// Forgets the cached record here, tells other processes, and wakes the
    /// in-process follower.
    async fn changed(&self, id: &str) {
        self.cache.invalidate(id);
        if let Some(feed) = &self.feed {
            if let Err(e) = feed.publish(id).await {
                // Their caches fall back to the short expiry while the feed is down.
                tracing::warn!(function_id = id, error = %e, "could not announce a function change");
            }
        }
        // A stored permit: the follower sees the change even if it is busy now.
        self.changes.notify_one();
    }

    /// Counts an invocation in memory; `flush_invocations` writes the sums, so
    /// admission does not pay a registry write per request.
    pub fn record_invocation(&self, id: &str) {
        self.usage.add(
            id,
            &UsageDelta {
                invocations: 1,
                ..UsageDelta::default()
            },
        );
    }

    /// Writes aggregated counts to the registry.
    pub async fn flush_invocations(&self) {
        self.usage.flush(self.registry.as_ref()).await;
    }
}

fn check_owner(record: &FunctionRecord, caller: Option<&str>) -> Result<()> {
    match (&record.owner, caller) {
        (Some(owner), c) if c != Some(owner.as_str()) => Err(ServiceError::Owned {
            id: record.function_id.clone(),
            owner: owner.clone(),
        }),
        _ => Ok(()),
    }
}

fn not_found(id: &str) -> impl FnOnce(backend::Error) -> ServiceError + '_ {
    move |e| match e {
        backend::Error::NotFound(_) => ServiceError::NotFound(id.to_string()),
        other => ServiceError::Backend(other),
    }
}
