//! The Kubernetes side: a kube `Controller` over `Function` resources with a
//! finalizer, status written by server-side apply, events, and backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalized};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::crd::Function;
use super::desired::{self, Failure};
use super::leader::LeaseLock;
use super::reconciler::{Reconciler, Sources};
use crate::metrics::Metrics;

/// Finalizer the operator puts on every Function it manages.
pub const FINALIZER: &str = "faas.infra.dev/cleanup";
/// Field manager of the status writes (server-side apply).
pub const MANAGER: &str = "infra-operator";
/// A reconciled function is checked again this often (drift, deleted artifacts).
const RESYNC: Duration = Duration::from_secs(600);
/// A missing ConfigMap, Secret or S3 object is looked for again after this.
const SOURCE_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),
    #[error("cleanup failed: {0}")]
    Cleanup(String),
    #[error("the Function has no namespace")]
    NoNamespace,
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<OperatorError>>),
    #[error("lost the leader lease to another replica")]
    LostLeadership,
    #[error("the Function CRD is not installed or not readable (run `infra crd | kubectl apply -f -`): {0}")]
    CrdMissing(#[source] kube::Error),
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub reconciler: Reconciler,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, reconciler: Reconciler, metrics: Arc<Metrics>) -> Context {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            reconciler,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// 5 s, 10 s, 20 s ... up to 5 minutes.
    fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(5u64.saturating_mul(1 << (*n - 1).min(6))).min(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// ConfigMaps and Secrets from the cluster.
pub struct KubeSources {
    client: Client,
}

#[async_trait]
impl Sources for KubeSources {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(cm)) => {
                let mut out: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                out.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                Ok(Some(out))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("cannot read ConfigMap {namespace}/{name}: {e}")),
        }
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect(),
            )),
            Ok(None) => Ok(None),
            // Never echo secret contents; the error names the object only.
            Err(e) => Err(format!("cannot read Secret {namespace}/{name}: {e}")),
        }
    }
}

/// One reconcile of one Function (the controller's entry point).
pub async fn reconcile(function: Arc<Function>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let namespace = function.namespace().ok_or(OperatorError::NoNamespace)?;
    let api: Api<Function> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, function, |event| async {
        match event {
            Finalized::Apply(f) => apply(&f, &api, &ctx).await,
            Finalized::Cleanup(f) => cleanup(&f, &ctx).await,
        }
    })
    .await
    .map_err(|e| OperatorError::Finalizer(Box::new(e)))
}

async fn apply(function: &Function, api: &Api<Function>, ctx: &Context) -> Result<Action, OperatorError> {
    let namespace = function.namespace().ok_or(OperatorError::NoNamespace)?;
    let name = function.name_any();
    let key = format!("{namespace}/{name}");
    let sources = KubeSources {
        client: ctx.client.clone(),
    };
    let timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&["apply"])
        .start_timer();
    let outcome = ctx.reconciler.apply(&namespace, &name, &function.spec, &sources).await;
    timer.observe_duration();
    let label = match &outcome {
        Ok(_) => "reconciled",
        Err(f) => f.reason(),
    };
    ctx.metrics.reconciles.with_label_values(&[label]).inc();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = desired::status_for(function.metadata.generation, function.status.as_ref(), &outcome, &now);
    // Only a changed status is written: an unchanged one would still cost a
    // call, and a write that changes nothing must not wake the controller.
    let changed = function.status.as_ref() != Some(&status);
    if changed {
        let patch = serde_json::json!({
            "apiVersion": "faas.infra.dev/v1alpha1",
            "kind": "Function",
            "status": status,
        });
        api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(OperatorError::Kube)?;
    }
    let action = match &outcome {
        Ok(_) => {
            ctx.succeeded(&key);
            Action::requeue(RESYNC)
        }
        // Retrying an invalid spec cannot help: wait for the next change.
        Err(Failure::Invalid(_)) | Err(Failure::Conflict(_)) => Action::await_change(),
        Err(Failure::SourceMissing(_)) => Action::requeue(SOURCE_RETRY),
        Err(Failure::Backend(_)) => Action::requeue(ctx.backoff(&key)),
    };
    match &outcome {
        Ok(applied) => tracing::info!(
            function = key,
            function_id = applied.record.function_id,
            uploaded = applied.uploaded,
            "Function reconciled"
        ),
        Err(f) => tracing::warn!(
            function = key,
            reason = f.reason(),
            error = f.message(),
            "Function not reconciled"
        ),
    }
    if changed {
        let event = match &outcome {
            Ok(applied) => Event {
                type_: EventType::Normal,
                reason: "Deployed".into(),
                note: Some(format!(
                    "function {} runs {} ({})",
                    applied.record.function_id,
                    applied.record.s3_key,
                    if applied.uploaded { "new code" } else { "code unchanged" }
                )),
                action: "Reconcile".into(),
                secondary: None,
            },
            Err(f) => Event {
                type_: EventType::Warning,
                reason: f.reason().into(),
                note: Some(truncate(f.message(), 1000)),
                action: "Reconcile".into(),
                secondary: None,
            },
        };
        publish(ctx, function, &event).await;
    }
    Ok(action)
}

async fn cleanup(function: &Function, ctx: &Context) -> Result<Action, OperatorError> {
    let namespace = function.namespace().ok_or(OperatorError::NoNamespace)?;
    let name = function.name_any();
    // On failure the finalizer stays and the error policy retries.
    let timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&["cleanup"])
        .start_timer();
    let cleaned = ctx.reconciler.cleanup(&namespace, &name).await;
    timer.observe_duration();
    cleaned.map_err(|f| OperatorError::Cleanup(f.message().to_string()))?;
    ctx.metrics.reconciles.with_label_values(&["deleted"]).inc();
    ctx.succeeded(&format!("{namespace}/{name}"));
    tracing::info!(function = format!("{namespace}/{name}"), "Function removed");
    let event = Event {
        type_: EventType::Normal,
        reason: "Deleted".into(),
        note: Some(format!(
            "function {} removed (record, artifacts, warm pool)",
            desired::function_id(&namespace, &name)
        )),
        action: "Cleanup".into(),
        secondary: None,
    };
    publish(ctx, function, &event).await;
    Ok(Action::await_change())
}

/// Events are best effort: a lost event must not fail the reconcile.
async fn publish(ctx: &Context, function: &Function, event: &Event) {
    // The recorder folds events with the same reason about an equal object
    // reference into one series that keeps the FIRST note for minutes: a
    // code change would then show the old artifact. The reference names the
    // resourceVersion the event is about, so each change gets its own event
    // (we publish only when the status changed, so nothing floods).
    let mut regarding = function.object_ref(&());
    regarding.resource_version = function.resource_version();
    if let Err(e) = ctx.recorder.publish(event, &regarding).await {
        tracing::warn!(error = %e, reason = event.reason, "could not publish an event");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Kubernetes API failures (not reconcile outcomes) are retried with backoff.
pub fn error_policy(function: Arc<Function>, error: &OperatorError, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    let key = format!("{}/{}", function.namespace().unwrap_or_default(), function.name_any());
    let wait = ctx.backoff(&key);
    tracing::warn!(function = key, error = %error, retry_in_s = wait.as_secs(), "reconcile failed");
    Action::requeue(wait)
}

/// Runs the controller until `shutdown`.
/// Runs the controller until `shutdown`; with a `lease`, only while this
/// replica holds it (it waits for it first, and stops if it is lost).
pub async fn run(
    client: Client,
    reconciler: Reconciler,
    metrics: Arc<Metrics>,
    lease: Option<LeaseLock>,
    shutdown: CancellationToken,
) -> Result<(), OperatorError> {
    let functions: Api<Function> = Api::all(client.clone());
    // Fail fast with a clear message when the CRD is missing.
    functions
        .list(&ListParams::default().limit(1))
        .await
        .map_err(OperatorError::CrdMissing)?;
    let ctx = Arc::new(Context::new(client, reconciler, metrics));
    let Some(lock) = lease else {
        control(functions, ctx, shutdown).await;
        return Ok(());
    };
    loop {
        match lock.try_acquire().await {
            Ok(true) => break,
            Ok(false) => tracing::debug!("another replica leads; waiting"),
            Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(lock.renew_every()) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    tracing::info!(identity = lock.identity(), "leading: reconciling Functions");
    let leading = shutdown.child_token();
    let renewer = tokio::spawn(keep_lease(lock.clone(), leading.clone()));
    control(functions, ctx, leading.clone()).await;
    leading.cancel();
    let kept = renewer.await.unwrap_or(false);
    if kept {
        lock.release().await;
        Ok(())
    } else {
        // Exit, and let the restarted process queue up for the lease again.
        Err(OperatorError::LostLeadership)
    }
}

/// Renews the lease until `leading` is cancelled (true) or the lease is lost
/// or cannot be renewed within its duration (false; `leading` is cancelled).
async fn keep_lease(lock: LeaseLock, leading: CancellationToken) -> bool {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lock.renew_every()) => {}
            _ = leading.cancelled() => return true,
        }
        match lock.try_acquire().await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!("another replica took the leader lease; stopping");
                leading.cancel();
                return false;
            }
            Err(e) if renewed.elapsed() > lock.renew_every() * 3 => {
                tracing::error!(error = %e, "could not renew the leader lease in time; stopping");
                leading.cancel();
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the leader lease; retrying"),
        }
    }
}

/// What of a Function calls for a reconcile: its generation (the spec), its
/// finalizers (the finalizer helper adds ours, then expects to be called
/// again) and whether it is being deleted.
fn spec_or_lifecycle(f: &Function) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    f.metadata.generation.hash(&mut h);
    f.metadata.finalizers.hash(&mut h);
    f.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Maps a changed ConfigMap or Secret (metadata) to the Functions that read it.
fn readers_of<K>(
    store: kube::runtime::reflector::Store<Function>,
    kind: desired::Referenced,
) -> impl Fn(PartialObjectMeta<K>) -> Vec<ObjectRef<Function>> {
    move |object| {
        let (Some(namespace), Some(name)) = (object.metadata.namespace.as_deref(), object.metadata.name.as_deref())
        else {
            return Vec::new();
        };
        let functions = store.state();
        let found = desired::readers(
            functions
                .iter()
                .filter_map(|f| Some((f.metadata.namespace.as_deref()?, f.metadata.name.as_deref()?, &f.spec))),
            kind,
            namespace,
            name,
        );
        found
            .into_iter()
            .map(|(ns, n)| ObjectRef::<Function>::new(&n).within(&ns))
            .collect()
    }
}

async fn control(functions: Api<Function>, ctx: Arc<Context>, shutdown: CancellationToken) {
    // Only changes of the spec (generation), the finalizers or deletion call
    // for a reconcile: the operator's own status writes do not (the resync
    // and the requeues still run).
    let (reader, writer) = kube::runtime::reflector::store();
    let changes = watcher(functions, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default());
    let controller = Controller::for_stream(changes, reader);
    // ConfigMaps and Secrets a Function reads reconcile it when they appear
    // or change. Metadata only: no Secret value reaches the operator this way.
    let store = controller.store();
    let config_maps = watcher(
        Api::<PartialObjectMeta<ConfigMap>>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .touched_objects();
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .touched_objects();
    controller
        .watches_stream(config_maps, readers_of(store.clone(), desired::Referenced::ConfigMap))
        .watches_stream(secrets, readers_of(store, desired::Referenced::Secret))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile round ended with an error");
            }
        })
        .await;
}
