//! `infra up --functions DIR`: Function resources (and the ConfigMaps and
//! Secrets they reference) as YAML files in a folder, reconciled by the same
//! reconciler as the operator, re-read on every change. The `kubectl apply`
//! workflow, without a cluster.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::crd::Function;
use super::desired::Failure;
use super::reconciler::{Reconciler, Sources};

/// How often the folder is scanned.
const SCAN_EVERY: Duration = Duration::from_secs(1);

type Key = (String, String);
type Data = BTreeMap<String, Vec<u8>>;

/// Everything found in the folder in one scan.
#[derive(Default)]
pub struct Scan {
    pub functions: BTreeMap<Key, Function>,
    pub sources: FolderSources,
    /// Files that could not be read or parsed, with why.
    pub problems: Vec<String>,
}

/// ConfigMaps and Secrets defined in the folder.
#[derive(Default, Clone)]
pub struct FolderSources {
    config_maps: HashMap<Key, Data>,
    secrets: HashMap<Key, Data>,
}

#[async_trait]
impl Sources for FolderSources {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<Data>, String> {
        Ok(self
            .config_maps
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Data>, String> {
        Ok(self.secrets.get(&(namespace.to_string(), name.to_string())).cloned())
    }
}

fn key_of(namespace: Option<String>, name: String) -> Key {
    (namespace.unwrap_or_else(|| "default".to_string()), name)
}

/// Adds the resources of one YAML file (several documents allowed) to `scan`.
pub fn parse_into(scan: &mut Scan, file: &str, text: &str) {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                scan.problems.push(format!("{file}: document {}: {e}", i + 1));
                continue;
            }
        };
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
        let at = format!("{file}: document {} ({kind})", i + 1);
        match (api_version, kind) {
            ("faas.infra.dev/v1alpha1", "Function") => match serde_yaml::from_value::<Function>(value) {
                Ok(f) => {
                    let key = key_of(f.namespace(), f.name_any());
                    if key.1.is_empty() {
                        scan.problems.push(format!("{at}: metadata.name is required"));
                    } else if scan.functions.insert(key.clone(), f).is_some() {
                        scan.problems
                            .push(format!("{at}: Function {}/{} is defined twice", key.0, key.1));
                    }
                }
                Err(e) => scan.problems.push(format!("{at}: {e}")),
            },
            ("v1", "ConfigMap") => match serde_yaml::from_value::<ConfigMap>(value) {
                Ok(cm) => {
                    let mut data: Data = cm
                        .data
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    data.extend(
                        cm.binary_data
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    scan.sources
                        .config_maps
                        .insert(key_of(cm.namespace(), cm.name_any()), data);
                }
                Err(e) => scan.problems.push(format!("{at}: {e}")),
            },
            ("v1", "Secret") => match serde_yaml::from_value::<Secret>(value) {
                Ok(s) => {
                    let mut data: Data = s
                        .data
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    data.extend(
                        s.string_data
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes())),
                    );
                    scan.sources.secrets.insert(key_of(s.namespace(), s.name_any()), data);
                }
                Err(e) => scan.problems.push(format!("{at}: {e}")),
            },
            // Other kinds (e.g. a Namespace) may share the folder.
            _ => {}
        }
    }
}

/// Reads every `*.yaml` / `*.yml` file of `dir` (not recursive).
pub fn scan(dir: &Path) -> Scan {
    let mut out = Scan::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml") && p.is_file())
            .collect(),
        Err(e) => {
            out.problems.push(format!("cannot read {}: {e}", dir.display()));
            return out;
        }
    };
    files.sort();
    for path in files {
        let name = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_into(&mut out, &name, &text),
            Err(e) => out.problems.push(format!("{name}: {e}")),
        }
    }
    out
}

/// What a function's deployment depends on: its spec and every ConfigMap
/// and Secret of its namespace (cheap, and covers every reference).
fn fingerprint(f: &Function, sources: &FolderSources, ns: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&f.spec).unwrap_or_default());
    for (kind, map) in [("cm", &sources.config_maps), ("secret", &sources.secrets)] {
        let mut keys: Vec<&Key> = map.keys().filter(|(n, _)| n == ns).collect();
        keys.sort();
        for k in keys {
            h.update(kind.as_bytes());
            h.update(k.1.as_bytes());
            for (file, data) in &map[k] {
                h.update(file.as_bytes());
                h.update((data.len() as u64).to_le_bytes());
                h.update(data);
            }
        }
    }
    hex::encode(h.finalize())
}

/// Follows `dir` until `shutdown`: applies new and changed Functions,
/// removes the ones whose file is gone (also those removed while stopped).
pub async fn watch(dir: PathBuf, reconciler: Reconciler, shutdown: CancellationToken) {
    tracing::info!(dir = %dir.display(), "following Function resources in a folder");
    // Deployed fingerprint per function; failures are retried each scan, but
    // logged only when they change.
    let mut applied: HashMap<Key, String> = HashMap::new();
    let mut last_error: HashMap<Key, String> = HashMap::new();
    let mut last_problems: Vec<String> = Vec::new();
    let mut first = true;
    loop {
        let found = scan(&dir);
        if found.problems != last_problems {
            for p in &found.problems {
                tracing::warn!(problem = p, "cannot use a file in the functions folder");
            }
            last_problems = found.problems.clone();
        }
        if first {
            // Functions of this folder deleted while the platform was down.
            for (ns, name) in reconciler.owned().await {
                if !found.functions.contains_key(&(ns.clone(), name.clone())) {
                    applied.insert((ns, name), String::new());
                }
            }
            first = false;
        }
        for (key, function) in &found.functions {
            let fp = fingerprint(function, &found.sources, &key.0);
            if applied.get(key) == Some(&fp) {
                continue;
            }
            let who = format!("{}/{}", key.0, key.1);
            match reconciler.apply(&key.0, &key.1, &function.spec, &found.sources).await {
                Ok(done) => {
                    tracing::info!(
                        function = who,
                        function_id = done.record.function_id,
                        uploaded = done.uploaded,
                        "Function ready"
                    );
                    applied.insert(key.clone(), fp);
                    last_error.remove(key);
                }
                Err(failure) => {
                    if last_error.get(key).map(String::as_str) != Some(failure.message()) {
                        tracing::warn!(
                            function = who,
                            reason = failure.reason(),
                            error = failure.message(),
                            "Function not ready"
                        );
                        last_error.insert(key.clone(), failure.message().to_string());
                    }
                    // An invalid file waits for its next change; the rest retry.
                    if matches!(failure, Failure::Invalid(_) | Failure::Conflict(_)) {
                        applied.insert(key.clone(), fp);
                    }
                }
            }
        }
        let gone: Vec<Key> = applied
            .keys()
            .filter(|k| !found.functions.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            match reconciler.cleanup(&key.0, &key.1).await {
                Ok(()) => {
                    tracing::info!(function = format!("{}/{}", key.0, key.1), "Function removed");
                    applied.remove(&key);
                }
                Err(f) => tracing::warn!(error = f.message(), "could not remove a Function; retrying"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_config_maps_and_secrets_are_read_from_yaml() {
        let mut scan = Scan::default();
        let text = r#"
apiVersion: faas.infra.dev/v1alpha1
kind: Function
metadata:
  name: hello
spec:
  runtime: python
  code:
    inline:
      main.py: |
        def handler(event, context):
            return 1
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: default}
stringData: {TOKEN: abc}
data: {OTHER: aGk=}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: code}
data: {main.py: "x = 1"}
---
apiVersion: faas.infra.dev/v1alpha1
kind: Function
metadata: {name: broken}
spec: {runtime: ruby}
"#;
        parse_into(&mut scan, "f.yaml", text);
        let f = &scan.functions[&("default".to_string(), "hello".to_string())];
        assert_eq!(f.spec.memory_mb, 128, "schema defaults apply");
        assert_eq!(f.spec.timeout_seconds, 30);
        let key = ("default".to_string(), "creds".to_string());
        assert_eq!(scan.sources.secrets[&key]["TOKEN"], b"abc");
        assert_eq!(scan.sources.secrets[&key]["OTHER"], b"hi");
        assert_eq!(
            scan.sources.config_maps[&("default".to_string(), "code".to_string())]["main.py"],
            b"x = 1"
        );
        assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
        assert!(scan.problems[0].contains("document 4"), "{:?}", scan.problems);
    }
}
