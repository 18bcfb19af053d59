//! The committed CRD matches the Rust types, its schema is structural, and
//! every plain manifest and example resource is a valid Kubernetes object.

use std::path::{Path, PathBuf};

use infra_controller::operator::crd::crd_yaml;
use infra_controller::operator::desired;
use infra_controller::operator::Function;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {dir}");
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect()
}

/// Parses `doc` as `T` and checks nothing was dropped: an unknown (e.g.
/// misspelled) field would not survive the round trip.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, at: &str) -> T {
    let parsed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        strip_nulls(doc.clone()),
        strip_nulls(back),
        "{at}: fields lost in the round trip"
    );
    parsed
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

#[test]
fn the_committed_crd_matches_the_rust_types() {
    let generated = crd_yaml().unwrap();
    for file in ["crds/function.yaml", "charts/infra-controller/crds/function.yaml"] {
        let committed = std::fs::read_to_string(root().join(file)).unwrap();
        assert!(
            committed == generated,
            "{file} is out of date: run `cargo run -- crd > {file}`"
        );
    }
}

/// Kubernetes' rules for a structural schema (the ones our generator could break).
fn structural(at: &str, s: &JSONSchemaProps, problems: &mut Vec<String>) {
    let free = s.x_kubernetes_preserve_unknown_fields == Some(true) || s.x_kubernetes_int_or_string == Some(true);
    if s.type_.as_deref().unwrap_or_default().is_empty() && !free {
        problems.push(format!("{at}: no type"));
    }
    if s.ref_path.is_some() {
        problems.push(format!("{at}: $ref is not allowed"));
    }
    for (name, list) in [("anyOf", &s.any_of), ("oneOf", &s.one_of), ("allOf", &s.all_of)] {
        if list.is_some() {
            problems.push(format!("{at}: {name} is not allowed here"));
        }
    }
    if s.properties.is_some() && s.additional_properties.is_some() {
        problems.push(format!("{at}: properties and additionalProperties together"));
    }
    for (name, p) in s.properties.iter().flatten() {
        structural(&format!("{at}.{name}"), p, problems);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &s.items {
        structural(&format!("{at}[]"), items, problems);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(a)) =
        &s.additional_properties
    {
        structural(&format!("{at}{{}}"), a, problems);
    }
}

#[test]
fn crds_are_valid_with_structural_schemas() {
    for file in yaml_files("crds") {
        for doc in documents(&file) {
            let crd: CustomResourceDefinition = typed(&doc, &file.display().to_string());
            assert_eq!(crd.metadata.name.as_deref(), Some("functions.faas.infra.dev"));
            assert_eq!(crd.spec.names.short_names, Some(vec!["fn".to_string()]));
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            assert!(version.subresources.as_ref().unwrap().status.is_some());
            let columns: Vec<_> = version
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(columns, ["Runtime", "Memory", "Ready", "FunctionId", "Age"]);
            let schema = version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
            let mut problems = Vec::new();
            structural("", schema, &mut problems);
            assert!(problems.is_empty(), "not structural: {problems:?}");
            let spec = &schema.properties.as_ref().unwrap()["spec"];
            let props = spec.properties.as_ref().unwrap();
            assert_eq!(props["memoryMb"].minimum, Some(128.0));
            assert_eq!(props["memoryMb"].maximum, Some(10240.0));
            assert_eq!(props["timeoutSeconds"].maximum, Some(900.0));
            let runtimes: Vec<String> = props["runtime"]
                .enum_
                .iter()
                .flatten()
                .map(|v| v.0.as_str().unwrap().to_string())
                .collect();
            assert_eq!(runtimes, ["python", "nodejs"]);
        }
    }
}

#[test]
fn plain_manifests_and_examples_are_valid_objects() {
    let mut kinds = Vec::new();
    let mut files = yaml_files("manifests");
    files.extend(yaml_files("examples/functions"));
    for file in files {
        for (i, doc) in documents(&file).into_iter().enumerate() {
            let at = format!("{} document {}", file.display(), i + 1);
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "Namespace" => drop(typed::<Namespace>(&doc, &at)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(&doc, &at)),
                "ClusterRole" => {
                    let role: ClusterRole = typed(&doc, &at);
                    // Least privilege: secrets are read (and watched, for
                    // metadata only), never written.
                    for rule in role.rules.iter().flatten() {
                        if rule.resources.iter().flatten().any(|r| r == "secrets") {
                            assert_eq!(rule.verbs, ["get", "list", "watch"], "{at}");
                        }
                    }
                }
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&doc, &at)),
                "Role" => {
                    let role: Role = typed(&doc, &at);
                    let rules = role.rules.unwrap_or_default();
                    assert!(
                        rules
                            .iter()
                            .all(|r| r.resources.iter().flatten().all(|x| x == "leases")),
                        "{at}"
                    );
                }
                "RoleBinding" => drop(typed::<RoleBinding>(&doc, &at)),
                "ConfigMap" => drop(typed::<ConfigMap>(&doc, &at)),
                "Secret" => drop(typed::<Secret>(&doc, &at)),
                "Service" => drop(typed::<Service>(&doc, &at)),
                "Deployment" => {
                    let d: Deployment = typed(&doc, &at);
                    let spec = d.spec;
                    let containers = spec.template.spec.unwrap().containers;
                    let args: Vec<_> = containers.iter().map(|c| c.args.clone().unwrap()[0].clone()).collect();
                    assert_eq!(args, ["operator", "api"], "{at}");
                    // Several replicas need the Lease's namespace for leader election.
                    let env = containers[0].env.clone().unwrap_or_default();
                    assert!(env.iter().any(|e| e.name == "POD_NAMESPACE"), "{at}");
                }
                "Function" => {
                    let f: Function = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
                    desired::check(&f.spec).unwrap_or_else(|e| panic!("{at}: {e:?}"));
                }
                other => panic!("{at}: unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    for needed in ["Deployment", "ClusterRole", "Service", "Function"] {
        assert!(kinds.iter().any(|k| k == needed), "no {needed} in {kinds:?}");
    }
}

/// Walks a schema: every property explained (`kubectl explain` shows it), and
/// only formats the API server knows (others make `kubectl apply` warn).
fn explained(at: &str, s: &JSONSchemaProps, problems: &mut Vec<String>) {
    const KNOWN: &[&str] = &[
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
        "password",
        "uri",
        "uuid",
        "email",
    ];
    if let Some(f) = &s.format {
        if !KNOWN.contains(&f.as_str()) {
            problems.push(format!("{at}: unknown format {f}"));
        }
    }
    for (name, prop) in s.properties.iter().flatten() {
        let path = format!("{at}.{name}");
        if prop.description.as_deref().unwrap_or_default().trim().is_empty() {
            problems.push(format!("{path}: no description"));
        }
        explained(&path, prop, problems);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(
        items,
    )) = &s.items
    {
        explained(&format!("{at}[]"), items, problems);
    }
}

#[test]
fn the_crd_explains_every_field_with_known_formats() {
    let crd = infra_controller::operator::crd::crd();
    let mut problems = Vec::new();
    for version in &crd.spec.versions {
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        for part in ["spec", "status"] {
            let props = schema.properties.as_ref().unwrap();
            explained(part, &props[part], &mut problems);
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
