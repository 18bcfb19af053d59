//! From a `Function` resource to what the platform should hold, and from the
//! outcome to the resource's status. Pure: no I/O, unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use super::crd::{ArtifactStatus, Condition, EnvVar, FunctionSpec, FunctionStatus};
use crate::function::settings::{Handler, SettingsDraft};
use crate::model::{FunctionRecord, Runtime};

/// Condition types, in the order they are reported.
pub const READY: &str = "Ready";
pub const ARTIFACT_READY: &str = "ArtifactReady";
pub const REGISTERED: &str = "Registered";
pub const WARM_POOL_READY: &str = "WarmPoolReady";

/// The platform id of the function a resource owns: stable for a
/// namespace/name, so re-applying (or re-creating) maps to the same function.
pub fn function_id(namespace: &str, name: &str) -> String {
    let ns = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"https://faas.infra.dev/functions");
    uuid::Uuid::new_v5(&ns, format!("{namespace}/{name}").as_bytes()).to_string()
}

/// The owner recorded on the function (`namespace/name`).
pub fn owner(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Where a value comes from, once the spec is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    Value(String),
    Secret { name: String, key: String },
    ConfigMap { name: String, key: String },
}

/// Problems the schema cannot express; all of them, in spec order.
pub fn check(spec: &FunctionSpec) -> Result<Vec<(String, EnvSource)>, Vec<String>> {
    let mut errors = Vec::new();
    let code = &spec.code;
    let sources = [code.inline.is_some(), code.s3.is_some(), code.config_map.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        errors.push("code: set exactly one of inline, s3 or configMap".to_string());
    }
    if let Some(files) = &code.inline {
        if files.is_empty() {
            errors.push("code.inline: no files".to_string());
        }
        for path in files.keys() {
            if crate::function::package::safe_entry_path(path).is_err() {
                errors.push(format!("code.inline: file name {path:?} is not a safe relative path"));
            }
        }
    }
    if let Some(h) = &spec.handler {
        if let Err(e) = Handler::parse(h) {
            errors.push(e);
        }
    }
    let mut seen = BTreeSet::new();
    let mut env = Vec::new();
    for (i, var) in spec.env.iter().enumerate() {
        if !seen.insert(var.name.clone()) {
            errors.push(format!("env[{i}]: {} is set twice", var.name));
        }
        match env_source(var) {
            Ok(source) => env.push((var.name.clone(), source)),
            Err(e) => errors.push(format!("env[{i}] ({}): {e}", var.name)),
        }
    }
    if errors.is_empty() {
        Ok(env)
    } else {
        Err(errors)
    }
}

fn env_source(var: &EnvVar) -> Result<EnvSource, &'static str> {
    match (&var.value, &var.value_from) {
        (Some(v), None) => Ok(EnvSource::Value(v.clone())),
        (None, Some(from)) => match (&from.secret_key_ref, &from.config_map_key_ref) {
            (Some(r), None) => Ok(EnvSource::Secret {
                name: r.name.clone(),
                key: r.key.clone(),
            }),
            (None, Some(r)) => Ok(EnvSource::ConfigMap {
                name: r.name.clone(),
                key: r.key.clone(),
            }),
            _ => Err("valueFrom needs exactly one of secretKeyRef or configMapKeyRef"),
        },
        _ => Err("set exactly one of value or valueFrom"),
    }
}

/// A kind of object a Function may read besides itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referenced {
    ConfigMap,
    Secret,
}

/// Whether `spec` reads the ConfigMap or Secret `name` (its code, or an
/// env value), so a change to that object must reconcile it.
pub fn reads(spec: &FunctionSpec, kind: Referenced, name: &str) -> bool {
    let code = kind == Referenced::ConfigMap && spec.code.config_map.as_ref().is_some_and(|c| c.name == name);
    code || spec.env.iter().filter_map(|v| v.value_from.as_ref()).any(|from| {
        let key_ref = match kind {
            Referenced::ConfigMap => from.config_map_key_ref.as_ref(),
            Referenced::Secret => from.secret_key_ref.as_ref(),
        };
        key_ref.is_some_and(|r| r.name == name)
    })
}

/// The reverse index: of `functions` (namespace, name, spec), those in
/// `namespace` that read the ConfigMap or Secret `name`.
pub fn readers<'a>(
    functions: impl IntoIterator<Item = (&'a str, &'a str, &'a FunctionSpec)>,
    kind: Referenced,
    namespace: &str,
    name: &str,
) -> Vec<(String, String)> {
    functions
        .into_iter()
        .filter(|(ns, _, spec)| *ns == namespace && reads(spec, kind, name))
        .map(|(ns, n, _)| (ns.to_string(), n.to_string()))
        .collect()
}

/// The complete settings the function must have (every field set, so a
/// field removed from the resource goes back to its default).
pub fn settings_draft(name: &str, spec: &FunctionSpec, env: &BTreeMap<String, String>) -> SettingsDraft {
    let runtime = Runtime::from(spec.runtime);
    let pool = spec.warm_pool.unwrap_or_default();
    let retry = spec.retry.unwrap_or_default();
    let opt = |v: Option<u64>| Some(v.map(|n| n.to_string()).unwrap_or_default());
    SettingsDraft {
        name: Some(name.to_string()),
        description: Some(spec.description.clone().unwrap_or_default()),
        runtime: Some(runtime.as_str().to_string()),
        memory_mb: Some(spec.memory_mb.to_string()),
        timeout_ms: Some((u64::from(spec.timeout_seconds) * 1000).to_string()),
        handler: Some(
            spec.handler
                .clone()
                .unwrap_or_else(|| runtime.default_handler().to_string()),
        ),
        env_vars: Some(serde_json::to_string(env).unwrap_or_else(|_| "{}".into())),
        min_warm: Some(pool.min_warm.to_string()),
        max_warm: opt(pool.max_warm.map(u64::from)),
        keep_alive_seconds: opt(pool.keep_alive_seconds),
        network: Some(spec.network.to_string()),
        max_retries: opt(retry.max_retries.map(u64::from)),
        retry_backoff_seconds: opt(retry.backoff_seconds.map(u64::from)),
        retry_on_oom: Some(retry.retry_on_oom.to_string()),
        max_event_age_seconds: opt(retry.max_event_age_seconds),
        max_concurrency: opt(spec.max_concurrency.map(u64::from)),
        max_queued: opt(spec.max_queued.map(u64::from)),
        // Absent: the service detects it from the code.
        style: spec
            .style
            .map(|s| crate::model::FunctionStyle::from(s).as_str().to_string()),
    }
}

/// Why a reconcile did not reach the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The resource cannot be deployed as written; retrying will not help.
    Invalid(String),
    /// A referenced ConfigMap, Secret or S3 object is missing (it may appear).
    SourceMissing(String),
    /// Storage is unreachable; retried with backoff.
    Backend(String),
    /// The function id belongs to another owner.
    Conflict(String),
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Invalid(_) => "InvalidSpec",
            Failure::SourceMissing(_) => "SourceNotFound",
            Failure::Backend(_) => "BackendUnavailable",
            Failure::Conflict(_) => "Conflict",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Invalid(m) | Failure::SourceMissing(m) | Failure::Backend(m) | Failure::Conflict(m) => m,
        }
    }
}

/// What a successful reconcile did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub record: FunctionRecord,
    /// The code changed and a new artifact was stored.
    pub uploaded: bool,
    /// The record was written (false when it already matched).
    pub changed: bool,
}

/// The status after a reconcile: conditions keep their transition time
/// while their status stays the same, so an unchanged outcome yields an
/// identical status (and no write, and no new watch event).
pub fn status_for(
    generation: Option<i64>,
    previous: Option<&FunctionStatus>,
    outcome: &Result<Applied, Failure>,
    now: &str,
) -> FunctionStatus {
    let prev = previous.cloned().unwrap_or_default();
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let last = prev
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: last,
            observed_generation: generation,
        }
    };
    match outcome {
        Ok(applied) => {
            let r = &applied.record;
            let warm = if r.warm_pool.min_warm > 0 {
                cond(
                    WARM_POOL_READY,
                    true,
                    "SpecPublished",
                    format!(
                        "workers keep {} instance(s) of {} MB initialized",
                        r.warm_pool.min_warm, r.memory_mb
                    ),
                )
            } else {
                cond(
                    WARM_POOL_READY,
                    true,
                    "NotRequested",
                    "minWarm is 0: instances start on demand (stem cells)".into(),
                )
            };
            // A resync that changed nothing keeps the reason of the last
            // change, so it yields the same status (no write, no new event).
            let kept = prev
                .conditions
                .iter()
                .find(|c| c.type_ == ARTIFACT_READY && c.status == "True")
                .map(|c| c.reason.as_str());
            let artifact_reason = match (applied.uploaded, applied.changed, kept) {
                (true, _, _) => "Uploaded",
                (false, false, Some(reason)) => reason,
                _ => "Unchanged",
            };
            FunctionStatus {
                conditions: vec![
                    cond(
                        READY,
                        true,
                        "Reconciled",
                        format!("runnable as function {}", r.function_id),
                    ),
                    cond(
                        ARTIFACT_READY,
                        true,
                        artifact_reason,
                        format!("{} ({} bytes)", r.s3_key, r.size_bytes),
                    ),
                    cond(REGISTERED, true, "Registered", format!("function {}", r.function_id)),
                    warm,
                ],
                observed_generation: generation,
                function_id: Some(r.function_id.clone()),
                artifact: Some(ArtifactStatus {
                    key: r.s3_key.clone(),
                    sha256: r.sha256.clone(),
                    size: r.size_bytes,
                }),
            }
        }
        Err(failure) => {
            // The last good version (if any) keeps serving; say so.
            let mut message = failure.message().to_string();
            if prev.function_id.is_some() {
                message.push_str("; the last reconciled version stays deployed");
            }
            let mut conditions = vec![cond(READY, false, failure.reason(), message)];
            conditions.extend(prev.conditions.iter().filter(|c| c.type_ != READY).cloned());
            FunctionStatus {
                conditions,
                observed_generation: generation,
                ..prev
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{EnvVarSource, FunctionCode, FunctionRuntime, KeyRef, WarmPoolSpec};

    fn spec() -> FunctionSpec {
        FunctionSpec {
            runtime: FunctionRuntime::Python,
            handler: None,
            memory_mb: 256,
            timeout_seconds: 5,
            code: FunctionCode {
                inline: Some([("main.py".to_string(), "def handler(e, c): return 1\n".to_string())].into()),
                ..FunctionCode::default()
            },
            env: vec![],
            warm_pool: None,
            description: None,
            network: false,
            style: Default::default(),
            retry: None,
            max_concurrency: None,
            max_queued: None,
        }
    }

    fn record() -> FunctionRecord {
        let mut r = crate::backend::conformance::sample_function("f1");
        r.warm_pool = Default::default();
        r
    }

    #[test]
    fn ids_are_stable_per_namespace_and_name() {
        assert_eq!(function_id("default", "hello"), function_id("default", "hello"));
        assert_ne!(function_id("default", "hello"), function_id("other", "hello"));
        assert_ne!(function_id("default", "hello"), function_id("default", "hello2"));
    }

    #[test]
    fn every_problem_is_reported() {
        let mut s = spec();
        s.code.s3 = Some(crate::operator::crd::S3Code { key: "k.zip".into() });
        s.handler = Some("nodot".into());
        s.env = vec![
            EnvVar {
                name: "A".into(),
                value: Some("1".into()),
                value_from: None,
            },
            EnvVar {
                name: "A".into(),
                value: None,
                value_from: None,
            },
            EnvVar {
                name: "B".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(KeyRef {
                        name: "s".into(),
                        key: "k".into(),
                    }),
                    config_map_key_ref: Some(KeyRef {
                        name: "c".into(),
                        key: "k".into(),
                    }),
                }),
            },
        ];
        let errors = check(&s).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].contains("exactly one of inline, s3 or configMap"));
    }

    #[test]
    fn inline_paths_must_be_safe() {
        let mut s = spec();
        s.code.inline = Some([("../evil.py".to_string(), String::new())].into());
        assert!(check(&s).unwrap_err()[0].contains("../evil.py"));
    }

    #[test]
    fn the_draft_sets_every_field() {
        let mut s = spec();
        s.runtime = FunctionRuntime::Nodejs;
        s.warm_pool = Some(WarmPoolSpec {
            min_warm: 2,
            max_warm: None,
            keep_alive_seconds: Some(60),
        });
        let env = [("K".to_string(), "v".to_string())].into();
        let d = settings_draft("hello", &s, &env);
        assert_eq!(d.handler.as_deref(), Some("index.handler"));
        assert_eq!(d.timeout_ms.as_deref(), Some("5000"));
        assert_eq!(d.max_warm.as_deref(), Some(""), "absent clears");
        assert_eq!(d.keep_alive_seconds.as_deref(), Some("60"));
        assert_eq!(d.env_vars.as_deref(), Some(r#"{"K":"v"}"#));
        assert_eq!(d.description.as_deref(), Some(""));
        let settings = crate::function::settings::validate(&d, None, "x").unwrap();
        assert_eq!(settings.warm_pool.min_warm, 2);
        assert_eq!(
            settings.retry,
            crate::model::RetryPolicy::default(),
            "no retry block: defaults"
        );

        s.retry = Some(crate::operator::crd::RetrySpec {
            max_retries: Some(0),
            backoff_seconds: None,
            retry_on_oom: true,
            max_event_age_seconds: Some(120),
        });
        let d = settings_draft("hello", &s, &env);
        let base = crate::function::settings::validate(
            &SettingsDraft {
                retry_backoff_seconds: Some("9".into()),
                ..SettingsDraft::default()
            },
            None,
            "x",
        )
        .unwrap();
        let settings = crate::function::settings::validate(&d, Some(&base), "x").unwrap();
        assert_eq!(
            settings.retry,
            crate::model::RetryPolicy {
                max_retries: 0,
                backoff_seconds: 1,
                retry_on_oom: true,
                max_event_age_seconds: 120,
            },
            "a field left out of the resource goes back to its default"
        );
    }

    #[test]
    fn unchanged_outcomes_give_identical_status() {
        let ok: Result<Applied, Failure> = Ok(Applied {
            record: record(),
            uploaded: true,
            changed: true,
        });
        let first = status_for(Some(1), None, &ok, "2026-01-01T00:00:00Z");
        assert!(first.conditions.iter().all(|c| c.status == "True"));
        assert_eq!(first.conditions[1].reason, "Uploaded");
        let resync: Result<Applied, Failure> = Ok(Applied {
            record: record(),
            uploaded: false,
            changed: false,
        });
        let again = status_for(Some(1), Some(&first), &resync, "2026-01-02T00:00:00Z");
        assert_eq!(
            again, first,
            "a resync that changed nothing gives the same status (times kept)"
        );

        let failed: Result<Applied, Failure> = Err(Failure::Invalid("memoryMb too small".into()));
        let bad = status_for(Some(2), Some(&first), &failed, "2026-01-03T00:00:00Z");
        let ready = &bad.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
        assert!(ready.message.contains("last reconciled version stays deployed"));
        assert_eq!(ready.last_transition_time, "2026-01-03T00:00:00Z");
        assert_eq!(
            bad.function_id, first.function_id,
            "the deployed version is still reported"
        );
        assert_eq!(bad.observed_generation, Some(2));
    }

    #[test]
    fn the_reverse_index_finds_the_functions_a_change_touches() {
        let from_yaml = |y: &str| serde_yaml::from_str::<FunctionSpec>(y).unwrap();
        let by_cm = from_yaml("runtime: python\ncode:\n  configMap:\n    name: code-a\n");
        let by_env = from_yaml(
            "runtime: python\ncode:\n  inline:\n    main.py: x\nenv:\n- name: A\n  valueFrom:\n    configMapKeyRef: {name: settings, key: a}\n- name: B\n  valueFrom:\n    secretKeyRef: {name: creds, key: b}\n",
        );
        let plain = from_yaml("runtime: python\ncode:\n  inline:\n    main.py: x\nenv:\n- name: C\n  value: creds\n");
        let all = [
            ("ns1", "by-cm", &by_cm),
            ("ns1", "by-env", &by_env),
            ("ns2", "by-env", &by_env),
            ("ns1", "plain", &plain),
        ];
        let find = |kind, ns, name| readers(all.iter().map(|(a, b, c)| (*a, *b, *c)), kind, ns, name);
        assert_eq!(
            find(Referenced::ConfigMap, "ns1", "code-a"),
            [("ns1".to_string(), "by-cm".to_string())]
        );
        assert_eq!(
            find(Referenced::ConfigMap, "ns1", "settings"),
            [("ns1".to_string(), "by-env".to_string())]
        );
        assert_eq!(
            find(Referenced::Secret, "ns2", "creds"),
            [("ns2".to_string(), "by-env".to_string())]
        );
        // Same name, other kind or namespace, or a literal value: untouched.
        assert!(find(Referenced::Secret, "ns1", "code-a").is_empty());
        assert!(find(Referenced::ConfigMap, "ns1", "creds").is_empty());
        assert!(find(Referenced::ConfigMap, "ns3", "settings").is_empty());
    }
}
