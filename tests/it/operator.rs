//! The operator's reconciler against kube-rs's `tower_test` mock API server:
//! every request it makes is checked (method, path, body) and answered as
//! the API server would. Backends are the embedded ones, with a counting
//! (or failing) artifact store wrapped around them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response};
use infra_controller::backend::embedded::{Db, EmbeddedRegistry, LocalArtifactStore};
use infra_controller::backend::{self, ArtifactStore, FunctionRegistry};
use infra_controller::function::FunctionService;
use infra_controller::operator::controller::{reconcile, Context, FINALIZER};
use infra_controller::operator::crd::{FunctionCode, FunctionRuntime, WarmPoolSpec};
use infra_controller::operator::desired::function_id;
use infra_controller::operator::{Function, FunctionSpec, FunctionStatus, Reconciler};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, Resource};
use serde_json::{json, Value};

/// An artifact store that counts writes and can be switched off.
struct Counting {
    inner: Arc<dyn ArtifactStore>,
    puts: AtomicUsize,
    down: AtomicBool,
}

impl Counting {
    fn check(&self) -> backend::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(backend::Error::unavailable(
                "artifact store",
                std::io::Error::other("down"),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl ArtifactStore for Counting {
    async fn put(&self, key: &str, data: Bytes) -> backend::Result<()> {
        self.check()?;
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &str) -> backend::Result<Bytes> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn delete(&self, key: &str) -> backend::Result<()> {
        self.check()?;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> backend::Result<Vec<String>> {
        self.check()?;
        self.inner.list(prefix).await
    }
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn ping(&self) -> backend::Result<()> {
        self.check()
    }
}

struct Harness {
    ctx: Arc<Context>,
    server: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    artifacts: Arc<Counting>,
    registry: Arc<dyn FunctionRegistry>,
    /// The last status the reconciler wrote.
    last_status: Option<FunctionStatus>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let artifacts = Arc::new(Counting {
            inner: Arc::new(LocalArtifactStore::open(dir.path().join("artifacts")).unwrap()),
            puts: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        let registry: Arc<dyn FunctionRegistry> = Arc::new(EmbeddedRegistry::new(db));
        let functions = Arc::new(FunctionService::new(artifacts.clone(), registry.clone(), None));
        let (service, server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let metrics = Arc::new(infra_controller::metrics::Metrics::new().unwrap());
        Harness {
            ctx: Arc::new(Context::new(client, Reconciler::new(functions), metrics)),
            server,
            artifacts,
            registry,
            last_status: None,
            _dir: dir,
        }
    }

    /// Runs one reconcile while answering the API calls with `expect`.
    async fn reconcile(&mut self, f: &Function, expect: Vec<Expect>) -> Action {
        let run = tokio::spawn(reconcile(Arc::new(f.clone()), self.ctx.clone()));
        for e in expect {
            let (request, respond) = tokio::time::timeout(Duration::from_secs(5), self.server.next_request())
                .await
                .unwrap_or_else(|_| panic!("the reconciler did not make the expected call {e:?}"))
                .expect("a request");
            let method = request.method().clone();
            let uri = request.uri().to_string();
            let body: Value = {
                let bytes = request.into_body().collect_bytes().await.unwrap();
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            if let Expect::Status(..) = e {
                self.last_status = serde_json::from_value(body["status"].clone()).ok();
            }
            let reply = e.check(&method, &uri, body);
            respond.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        let action = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("reconcile finished")
            .expect("no panic")
            .expect("reconcile ok");
        // Nothing more was asked of the API server.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), self.server.next_request())
                .await
                .is_err(),
            "unexpected extra API call"
        );
        action
    }
}

const BASE: &str = "/apis/faas.infra.dev/v1alpha1/namespaces/default/functions";

/// One expected API call, checked and answered.
#[derive(Debug)]
enum Expect {
    /// JSON patch adding the finalizer; answered with `Function`.
    AddFinalizer(Box<Function>),
    /// Status by server-side apply; the check runs on the status sent.
    Status(Box<Function>, fn(&FunctionStatus)),
    /// An event with this type and reason.
    Event(&'static str, &'static str),
    /// JSON patch removing the finalizer.
    RemoveFinalizer(Box<Function>),
}

impl Expect {
    fn check(self, method: &Method, uri: &str, body: Value) -> Value {
        match self {
            Expect::AddFinalizer(f) => {
                assert_eq!(
                    (method, uri),
                    (&Method::PATCH, format!("{BASE}/{}?", name(&f)).as_str())
                );
                assert!(body.to_string().contains(FINALIZER), "{body}");
                json!(with_finalizer(*f))
            }
            Expect::Status(f, check) => {
                assert_eq!(method, Method::PATCH);
                assert_eq!(
                    uri,
                    format!("{BASE}/{}/status?&force=true&fieldManager=infra-operator", name(&f))
                );
                assert_eq!(body["apiVersion"], "faas.infra.dev/v1alpha1");
                let status: FunctionStatus = serde_json::from_value(body["status"].clone()).expect("a status");
                check(&status);
                let mut f = *f;
                f.status = Some(status);
                json!(f)
            }
            Expect::Event(type_, reason) => {
                // A repeat of the same event updates its series instead.
                let events = "/apis/events.k8s.io/v1/namespaces/default/events";
                assert!(
                    (method == Method::POST && uri == format!("{events}?"))
                        || (method == Method::PATCH && uri.starts_with(&format!("{events}/"))),
                    "{method} {uri}"
                );
                assert_eq!(
                    (body["type"].as_str(), body["reason"].as_str()),
                    (Some(type_), Some(reason)),
                    "{body}"
                );
                assert_eq!(body["regarding"]["kind"], "Function");
                body
            }
            Expect::RemoveFinalizer(f) => {
                assert_eq!(
                    (method, uri),
                    (&Method::PATCH, format!("{BASE}/{}?", name(&f)).as_str())
                );
                assert!(body.to_string().contains("remove"), "{body}");
                let mut f = *f;
                f.meta_mut().finalizers = None;
                json!(f)
            }
        }
    }
}

fn name(f: &Function) -> String {
    f.meta().name.clone().unwrap()
}

fn function(name: &str, source: &str) -> Function {
    let mut f = Function::new(
        name,
        FunctionSpec {
            runtime: FunctionRuntime::Python,
            handler: None,
            memory_mb: 128,
            timeout_seconds: 5,
            code: FunctionCode {
                inline: Some([("main.py".to_string(), source.to_string())].into()),
                ..FunctionCode::default()
            },
            env: vec![],
            warm_pool: Some(WarmPoolSpec {
                min_warm: 1,
                ..WarmPoolSpec::default()
            }),
            description: Some("hello".into()),
            network: false,
            retry: None,
            max_concurrency: None,
            max_queued: None,
            style: None,
        },
    );
    f.meta_mut().namespace = Some("default".into());
    f.meta_mut().generation = Some(1);
    f.meta_mut().uid = Some(uuid::Uuid::new_v4().to_string());
    f
}

fn with_finalizer(mut f: Function) -> Function {
    f.meta_mut().finalizers = Some(vec![FINALIZER.to_string()]);
    f
}

fn ready(status: &FunctionStatus) -> (&str, &str) {
    let c = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
    (c.status.as_str(), c.reason.as_str())
}

fn condition<'a>(status: &'a FunctionStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).expect(type_);
    (c.status.as_str(), c.reason.as_str())
}

const V1: &str = "def handler(event, context):\n    return 'v1'\n";
const V2: &str = "def handler(event, context):\n    return 'v2'\n";

/// Runs create to Ready; returns the function as the API server now has it.
async fn create(h: &mut Harness, f: &Function) -> Function {
    let action = h.reconcile(f, vec![Expect::AddFinalizer(Box::new(f.clone()))]).await;
    assert_eq!(action, Action::await_change(), "adding the finalizer ends this round");
    let finalized = with_finalizer(f.clone());
    let action = h
        .reconcile(
            &finalized,
            vec![
                Expect::Status(Box::new(finalized.clone()), |s| {
                    assert_eq!(ready(s), ("True", "Reconciled"), "{s:?}");
                    assert_eq!(condition(s, "ArtifactReady"), ("True", "Uploaded"));
                    assert_eq!(condition(s, "Registered"), ("True", "Registered"));
                    assert_eq!(condition(s, "WarmPoolReady"), ("True", "SpecPublished"));
                    assert_eq!(s.observed_generation, Some(1));
                    assert_eq!(s.function_id.as_deref(), Some(function_id("default", "hello").as_str()));
                    let a = s.artifact.as_ref().unwrap();
                    assert!(
                        a.key.ends_with(&format!("{}.zip", a.sha256)),
                        "content-addressed: {a:?}"
                    );
                }),
                Expect::Event("Normal", "Deployed"),
            ],
        )
        .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    // What the API server holds now: finalizer and status.
    let mut now = finalized;
    now.status = h.last_status.clone();
    now
}

#[tokio::test]
async fn create_adds_the_finalizer_then_writes_artifact_record_and_status() {
    let mut h = Harness::new();
    let f = function("hello", V1);
    let now = create(&mut h, &f).await;
    let id = function_id("default", "hello");
    let record = h.registry.get(&id).await.unwrap();
    assert_eq!(record.owner.as_deref(), Some("default/hello"));
    assert_eq!(record.warm_pool.min_warm, 1);
    assert_eq!(record.description, "hello");
    assert_eq!(h.artifacts.puts.load(Ordering::SeqCst), 1);
    assert!(h.artifacts.get(&record.s3_key).await.is_ok());
    // Reconciling the same thing again writes nothing: no status patch, no
    // event, no upload (so its own status writes cannot start a loop).
    let action = h.reconcile(&now, vec![]).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    assert_eq!(h.artifacts.puts.load(Ordering::SeqCst), 1);
    let metrics = h.ctx.metrics.render();
    assert!(
        metrics.contains(r#"infra_reconciles_total{outcome="reconciled"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_settings_change_with_the_same_code_uploads_nothing() {
    let mut h = Harness::new();
    let mut f = create(&mut h, &function("hello", V1)).await;
    let before = h.registry.get(&function_id("default", "hello")).await.unwrap();
    f.spec.memory_mb = 256;
    f.meta_mut().generation = Some(2);
    h.reconcile(
        &f,
        vec![
            Expect::Status(Box::new(f.clone()), |s| {
                assert_eq!(ready(s), ("True", "Reconciled"));
                assert_eq!(condition(s, "ArtifactReady"), ("True", "Unchanged"));
                assert_eq!(s.observed_generation, Some(2));
            }),
            Expect::Event("Normal", "Deployed"),
        ],
    )
    .await;
    assert_eq!(
        h.artifacts.puts.load(Ordering::SeqCst),
        1,
        "unchanged code is not uploaded again"
    );
    let after = h.registry.get(&function_id("default", "hello")).await.unwrap();
    assert_eq!((after.memory_mb, after.s3_key.clone()), (256, before.s3_key));
}

#[tokio::test]
async fn changed_code_is_uploaded_and_the_old_artifact_removed() {
    let mut h = Harness::new();
    let mut f = create(&mut h, &function("hello", V1)).await;
    let old = h.registry.get(&function_id("default", "hello")).await.unwrap();
    f.spec.code.inline = Some([("main.py".to_string(), V2.to_string())].into());
    f.meta_mut().generation = Some(2);
    h.reconcile(
        &f,
        vec![
            Expect::Status(Box::new(f.clone()), |s| {
                assert_eq!(condition(s, "ArtifactReady"), ("True", "Uploaded"));
            }),
            Expect::Event("Normal", "Deployed"),
        ],
    )
    .await;
    let new = h.registry.get(&function_id("default", "hello")).await.unwrap();
    assert_ne!(new.sha256, old.sha256);
    assert_eq!(h.artifacts.puts.load(Ordering::SeqCst), 2);
    assert!(
        h.artifacts.get(&old.s3_key).await.is_err(),
        "the replaced artifact is gone"
    );
}

#[tokio::test]
async fn an_invalid_spec_sets_a_false_condition_and_is_not_retried() {
    let mut h = Harness::new();
    let mut f = with_finalizer(function("broken", V1));
    f.spec.handler = Some("not-a-handler".into());
    f.spec.code.inline = Some([("../escape.py".to_string(), V1.to_string())].into());
    let action = h
        .reconcile(
            &f,
            vec![
                Expect::Status(Box::new(f.clone()), |s| {
                    assert_eq!(ready(s), ("False", "InvalidSpec"));
                    let msg = &s.conditions[0].message;
                    assert!(msg.contains("../escape.py") && msg.contains("not-a-handler"), "{msg}");
                    assert_eq!(s.function_id, None, "nothing was deployed");
                }),
                Expect::Event("Warning", "InvalidSpec"),
            ],
        )
        .await;
    assert_eq!(
        action,
        Action::await_change(),
        "no retry storm: wait for the next change"
    );
    assert!(h.registry.list().await.unwrap().is_empty());
    assert_eq!(h.artifacts.puts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn deletion_cleans_up_then_removes_the_finalizer() {
    let mut h = Harness::new();
    let mut f = create(&mut h, &function("hello", V1)).await;
    let id = function_id("default", "hello");
    f.meta_mut().deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    h.reconcile(
        &f,
        vec![
            Expect::Event("Normal", "Deleted"),
            Expect::RemoveFinalizer(Box::new(f.clone())),
        ],
    )
    .await;
    assert!(h.registry.get(&id).await.is_err(), "record removed");
    assert!(h.artifacts.list(&format!("functions/{id}/")).await.unwrap().is_empty());
    // Idempotent: a repeated cleanup (e.g. after a crash) succeeds too.
    h.reconcile(
        &f,
        vec![
            Expect::Event("Normal", "Deleted"),
            Expect::RemoveFinalizer(Box::new(f.clone())),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_backend_outage_requeues_with_backoff_and_says_so() {
    let mut h = Harness::new();
    h.artifacts.down.store(true, Ordering::SeqCst);
    let f = with_finalizer(function("hello", V1));
    let action = h
        .reconcile(
            &f,
            vec![
                Expect::Status(Box::new(f.clone()), |s| {
                    assert_eq!(ready(s), ("False", "BackendUnavailable"));
                }),
                Expect::Event("Warning", "BackendUnavailable"),
            ],
        )
        .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    // The same failure again: same status (no write, no event), longer wait.
    let mut again = f.clone();
    again.status = h.last_status.clone();
    let seen = h.reconcile(&again, vec![]).await;
    assert_eq!(seen, Action::requeue(Duration::from_secs(10)));
    // Back up: Ready.
    h.artifacts.down.store(false, Ordering::SeqCst);
    h.reconcile(
        &f,
        vec![
            Expect::Status(Box::new(f.clone()), |s| assert_eq!(ready(s), ("True", "Reconciled"))),
            Expect::Event("Normal", "Deployed"),
        ],
    )
    .await;
}

/// Answers the next API call: checks its method and path, returns its body.
async fn answer(
    server: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
    method: Method,
    path: &str,
    status: u16,
    reply: Value,
) -> Value {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), server.next_request())
        .await
        .expect("an API call")
        .expect("a request");
    assert_eq!(request.method(), method);
    assert!(request.uri().path() == path, "expected {path}, got {}", request.uri());
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    respond.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

fn lease(holder: &str, renewed_ago: i64, version: &str) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now();
    let renewed = now - k8s_openapi::jiff::SignedDuration::from_secs(renewed_ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "infra-operator", "namespace": "infra", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": "2026-01-01T00:00:00.000000Z",
                 "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                 "leaseTransitions": 3}
    })
}

#[tokio::test]
async fn leader_election_takes_keeps_and_respects_the_lease() {
    use infra_controller::operator::leader::LeaseLock;
    let (service, mut server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let lock = LeaseLock::new(
        Client::new(service, "default"),
        "infra",
        "infra-operator",
        "me",
        Duration::from_secs(15),
    );
    let path = "/apis/coordination.k8s.io/v1/namespaces/infra/leases";
    let one = format!("{path}/infra-operator");
    let attempt = || {
        let l = lock.clone();
        tokio::spawn(async move { l.try_acquire().await.unwrap() })
    };

    // No lease yet: this replica creates it and leads.
    let t = attempt();
    answer(&mut server, Method::GET, &one, 404, status(404, "NotFound")).await;
    let created = answer(&mut server, Method::POST, path, 201, lease("me", 0, "1")).await;
    assert_eq!(created["spec"]["holderIdentity"], "me");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    assert!(t.await.unwrap());

    // Another replica holds a fresh lease: wait, write nothing.
    let t = attempt();
    answer(&mut server, Method::GET, &one, 200, lease("other", 2, "2")).await;
    assert!(!t.await.unwrap());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), server.next_request())
            .await
            .is_err(),
        "no write while another replica leads"
    );

    // Its lease expired: taken over, guarded by the resourceVersion read.
    let t = attempt();
    answer(&mut server, Method::GET, &one, 200, lease("other", 60, "3")).await;
    let taken = answer(&mut server, Method::PUT, &one, 200, lease("me", 0, "4")).await;
    assert_eq!(taken["spec"]["holderIdentity"], "me");
    assert_eq!(taken["metadata"]["resourceVersion"], "3");
    assert_eq!(taken["spec"]["leaseTransitions"], 4);
    assert!(t.await.unwrap());

    // Two replicas race for an expired lease: the one that loses gets 409.
    let t = attempt();
    answer(&mut server, Method::GET, &one, 200, lease("other", 60, "5")).await;
    answer(&mut server, Method::PUT, &one, 409, status(409, "Conflict")).await;
    assert!(!t.await.unwrap());

    // Its own lease: renewed, acquire time and transitions kept.
    let t = attempt();
    answer(&mut server, Method::GET, &one, 200, lease("me", 5, "6")).await;
    let renewed = answer(&mut server, Method::PUT, &one, 200, lease("me", 0, "7")).await;
    assert_eq!(renewed["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
    assert_eq!(renewed["spec"]["leaseTransitions"], 3);
    assert!(t.await.unwrap());
}
