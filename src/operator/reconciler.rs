//! The reconcile core shared by the Kubernetes controller and
//! `infra up --functions DIR`: resolve the resource's references, build the
//! code artifact, and register it through the one `FunctionService`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::crd::FunctionSpec;
use super::desired::{self, Applied, EnvSource, Failure};
use crate::backend;
use crate::function::package;
use crate::function::service::{CodeUpload, ServiceError};
use crate::function::FunctionService;

/// ConfigMaps and Secrets a resource may reference (the cluster's, or the
/// files beside it in `infra up --functions DIR`).
#[async_trait]
pub trait Sources: Send + Sync {
    /// The ConfigMap's data and binaryData; `Ok(None)` when it does not exist.
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String>;
    /// The Secret's (decoded) data; `Ok(None)` when it does not exist.
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String>;
}

#[derive(Clone)]
pub struct Reconciler {
    functions: Arc<FunctionService>,
}

impl Reconciler {
    pub fn new(functions: Arc<FunctionService>) -> Self {
        Reconciler { functions }
    }

    /// Brings the platform in line with the resource `namespace/name`.
    pub async fn apply(
        &self,
        namespace: &str,
        name: &str,
        spec: &FunctionSpec,
        sources: &dyn Sources,
    ) -> Result<Applied, Failure> {
        let plan = desired::check(spec).map_err(|e| Failure::Invalid(e.join("; ")))?;
        let mut env = BTreeMap::new();
        for (var, source) in plan {
            let value = match source {
                EnvSource::Value(v) => v,
                EnvSource::Secret { name: s, key } => {
                    let data = sources.secret(namespace, &s).await.map_err(Failure::Backend)?;
                    text_key(data, "Secret", &s, &key)?
                }
                EnvSource::ConfigMap { name: c, key } => {
                    let data = sources.config_map(namespace, &c).await.map_err(Failure::Backend)?;
                    text_key(data, "ConfigMap", &c, &key)?
                }
            };
            env.insert(var, value);
        }
        let code = self.code(namespace, spec, sources).await?;
        let draft = desired::settings_draft(name, spec, &env);
        let id = desired::function_id(namespace, name);
        let owner = desired::owner(namespace, name);
        match self.functions.apply_owned(&id, &owner, &draft, code).await {
            Ok((record, uploaded, changed)) => Ok(Applied {
                record,
                uploaded,
                changed,
            }),
            Err(e) => Err(classify(e)),
        }
    }

    /// Removes the function of `namespace/name` (record, artifacts and so
    /// its warm-pool entry); repeatable.
    pub async fn cleanup(&self, namespace: &str, name: &str) -> Result<(), Failure> {
        let id = desired::function_id(namespace, name);
        self.functions
            .remove_owned(&id, &desired::owner(namespace, name))
            .await
            .map_err(classify)
    }

    /// Resources that own a function now (`namespace`, `name`).
    pub async fn owned(&self) -> Vec<(String, String)> {
        match self.functions.list().await {
            Ok(records) => records
                .into_iter()
                .filter_map(|r| {
                    let (ns, name) = r.owner?.split_once('/').map(|(a, b)| (a.to_string(), b.to_string()))?;
                    Some((ns, name))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list functions");
                Vec::new()
            }
        }
    }

    async fn code(&self, namespace: &str, spec: &FunctionSpec, sources: &dyn Sources) -> Result<CodeUpload, Failure> {
        let invalid = |e: package::PackageError| Failure::Invalid(format!("code: {e}"));
        if let Some(files) = &spec.code.inline {
            let files = files.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
            return Ok(zip_upload(package::zip_files(&files).map_err(invalid)?));
        }
        if let Some(cm) = &spec.code.config_map {
            let files = sources
                .config_map(namespace, &cm.name)
                .await
                .map_err(Failure::Backend)?
                .ok_or_else(|| Failure::SourceMissing(format!("ConfigMap {namespace}/{} not found", cm.name)))?;
            return Ok(zip_upload(package::zip_files(&files).map_err(invalid)?));
        }
        if let Some(s3) = &spec.code.s3 {
            let data = match self.functions.artifacts().get(&s3.key).await {
                Ok(d) => d,
                Err(backend::Error::NotFound(_)) => {
                    return Err(Failure::SourceMissing(format!(
                        "S3 object {} not found in the artifact bucket",
                        s3.key
                    )))
                }
                Err(e) => return Err(Failure::Backend(e.to_string())),
            };
            let file_name = s3.key.rsplit('/').next().unwrap_or(&s3.key).to_string();
            return Ok(CodeUpload { file_name, data });
        }
        Err(Failure::Invalid(
            "code: set exactly one of inline, s3 or configMap".into(),
        ))
    }
}

fn zip_upload(bytes: Vec<u8>) -> CodeUpload {
    CodeUpload {
        file_name: "code.zip".to_string(),
        data: Bytes::from(bytes),
    }
}

fn text_key(data: Option<BTreeMap<String, Vec<u8>>>, kind: &str, name: &str, key: &str) -> Result<String, Failure> {
    let data = data.ok_or_else(|| Failure::SourceMissing(format!("{kind} {name} not found")))?;
    let value = data
        .get(key)
        .ok_or_else(|| Failure::SourceMissing(format!("{kind} {name} has no key {key}")))?;
    String::from_utf8(value.clone()).map_err(|_| Failure::Invalid(format!("{kind} {name} key {key} is not UTF-8 text")))
}

fn classify(e: ServiceError) -> Failure {
    match e {
        ServiceError::Invalid(v) => Failure::Invalid(v.to_string()),
        ServiceError::Package(p) => Failure::Invalid(format!("code: {p}")),
        ServiceError::Owned { .. } => Failure::Conflict(e.to_string()),
        ServiceError::NotFound(_) | ServiceError::Backend(_) => Failure::Backend(e.to_string()),
    }
}

/// Sources for resources that reference nothing (and tests).
pub struct NoSources;

#[async_trait]
impl Sources for NoSources {
    async fn config_map(&self, _: &str, _: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(None)
    }
    async fn secret(&self, _: &str, _: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(None)
    }
}
