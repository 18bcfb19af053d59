//! The `Function` custom resource (`functions.faas.infra.dev/v1alpha1`).
//! The CRD is generated from these types (`infra crd`, `crds/function.yaml`).

use std::collections::BTreeMap;

use kube::core::crd::CustomResourceExt;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Runtime;

/// A function: its code, runtime, limits, environment and warm pool.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "faas.infra.dev",
    version = "v1alpha1",
    kind = "Function",
    plural = "functions",
    shortname = "fn",
    namespaced,
    status = "FunctionStatus",
    printcolumn = r#"{"name":"Runtime","type":"string","jsonPath":".spec.runtime"}"#,
    printcolumn = r#"{"name":"Memory","type":"integer","jsonPath":".spec.memoryMb"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"FunctionId","type":"string","jsonPath":".status.functionId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// Language runtime of the handler.
    pub runtime: FunctionRuntime,
    /// `module.function`; default `main.handler` (python) or `index.handler` (nodejs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 256))]
    pub handler: Option<String>,
    /// Memory limit of one instance, in MB.
    #[serde(default = "default_memory_mb")]
    #[schemars(range(min = 128, max = 10240))]
    pub memory_mb: u32,
    /// Longest one invocation may run.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 900))]
    pub timeout_seconds: u32,
    /// Where the code comes from: exactly one of `inline`, `s3` or `configMap`.
    pub code: FunctionCode,
    /// Environment variables of the function (and only these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Instances workers keep initialized for this function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPoolSpec>,
    /// Free text shown in `GET /functions` and the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Let the function use the network (sandboxed functions have none by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// Retries and dead-lettering of asynchronous runs that fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Most runs of this function at once across all workers (default: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrency: Option<u32>,
    /// Most accepted, unfinished jobs; beyond it `/run` answers 429 (default: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_queued: Option<u32>,
    /// `handler` (warm instances) or `program` (the original platform's
    /// scripts, a process per run). Absent: detected from the code, as at upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<FunctionStyleSpec>,
}

/// How the function runs.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FunctionStyleSpec {
    Handler,
    Program,
}

impl From<FunctionStyleSpec> for crate::model::FunctionStyle {
    fn from(s: FunctionStyleSpec) -> crate::model::FunctionStyle {
        match s {
            FunctionStyleSpec::Handler => crate::model::FunctionStyle::Handler,
            FunctionStyleSpec::Program => crate::model::FunctionStyle::Program,
        }
    }
}

/// What happens to an asynchronous run that fails (synchronous runs are never retried).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Runs after the first one when it ends FAILED, TIMEOUT or CRASHED (default 2).
    /// A job out of retries is kept among the dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5))]
    pub max_retries: Option<u32>,
    /// Seconds before the first retry, doubled for each further one (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300))]
    pub backoff_seconds: Option<u32>,
    /// Retry runs that ran out of memory too (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_on_oom: bool,
    /// A job waiting longer than this is dead-lettered without running (default 21600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 21600))]
    pub max_event_age_seconds: Option<u64>,
}

fn default_memory_mb() -> u32 {
    crate::function::settings::DEFAULT_MEMORY_MB
}

fn default_timeout_seconds() -> u32 {
    30
}

/// A language runtime.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FunctionRuntime {
    Python,
    Nodejs,
}

impl From<FunctionRuntime> for Runtime {
    fn from(r: FunctionRuntime) -> Runtime {
        match r {
            FunctionRuntime::Python => Runtime::Python,
            FunctionRuntime::Nodejs => Runtime::Nodejs,
        }
    }
}

/// The function's code.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.inline), has(self.s3), has(self.configMap)].filter(x, x).size() == 1").message("set exactly one of inline, s3 or configMap"))]
pub struct FunctionCode {
    /// Source files by path, e.g. `main.py: |` followed by the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<BTreeMap<String, String>>,
    /// An object in the platform's artifact bucket: a `.zip`, or one source file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Code>,
    /// A ConfigMap in the same namespace; each key is a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapCode>,
}

/// Code stored as an object in the platform's artifact bucket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct S3Code {
    /// Object key in the bucket (`BUCKET_NAME`).
    #[schemars(length(min = 1, max = 1024))]
    pub key: String,
}

/// Code held in a ConfigMap (each key is a file).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ConfigMapCode {
    /// Name of the ConfigMap, in the Function's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An environment variable: a value, or a key of a Secret or ConfigMap.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name (`[A-Za-z_][A-Za-z0-9_]*`; loader and runtime names such as `LD_PRELOAD` are refused).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// A literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Or the value of a key of a Secret or ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Where a variable's value comes from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    /// A key of a Secret (its value never reaches status, events or logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

/// A key of a Secret or ConfigMap in the Function's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct KeyRef {
    /// Name of the Secret or ConfigMap.
    pub name: String,
    /// The key whose value is used.
    pub key: String,
}

/// Pre-started instances of the function on every worker.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmPoolSpec {
    /// Instances each worker keeps initialized, so the first request is warm.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub min_warm: u32,
    /// Most idle instances per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_warm: Option<u32>,
    /// Idle time before an instance beyond minWarm stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub keep_alive_seconds: Option<u64>,
}

/// What the operator made of the resource.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// Ready, ArtifactReady, Registered and WarmPoolReady.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The platform's id of the function (for `/run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_id: Option<String>,
    /// The deployed code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStatus>,
}

/// The content-addressed artifact the platform runs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ArtifactStatus {
    /// Object key in the artifact store (`functions/{id}/{sha256}.zip`).
    pub key: String,
    /// SHA-256 of the artifact (hex).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A status condition (the shape of Kubernetes' metav1.Condition).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, ArtifactReady, Registered or WarmPoolReady.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// A CamelCase word saying why (e.g. Deployed, InvalidSpec, SourceMissing).
    pub reason: String,
    /// What happened, for people.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time the status last changed.
    pub last_transition_time: String,
    /// The generation of the spec the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CRD as applied: generated from the types, with schemars' unsigned
/// integer formats (`uint32`, `uint64`, which the API server does not know
/// and warns about) mapped to the OpenAPI ones (`int32`, `int64`; the
/// `minimum: 0` beside them keeps the range).
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    fn known_formats(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(f)) = map.get_mut("format") {
                    match f.as_str() {
                        "uint8" | "uint16" | "uint32" => *f = "int32".into(),
                        "uint" | "uint64" => *f = "int64".into(),
                        _ => {}
                    }
                }
                map.values_mut().for_each(known_formats);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(known_formats),
            _ => {}
        }
    }
    let crd = Function::crd();
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    known_formats(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// The CRD as YAML (what `infra crd` prints and `crds/function.yaml` holds).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}
