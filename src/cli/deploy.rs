//! `infra fn deploy PATH`: from a source file, a folder (zipped here, in
//! memory) or a `Function` YAML (its inline code and settings) to one
//! upload of the public API. The YAML is read as `infra up --functions`
//! reads it, and its settings are the operator's, so a resource deployed
//! either way behaves alike.

use std::collections::BTreeMap;
use std::path::Path;

use super::client::Upload;
use super::error::CliError;
use crate::function::package;
use crate::function::settings::SETTING_FIELDS;
use crate::operator::desired::{self, EnvSource};
use crate::operator::folder::{self, Scan};
use crate::operator::Sources;

/// Settings given as flags; they win over the YAML's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub name: Option<String>,
    pub runtime: Option<String>,
    pub memory_mb: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub min_warm: Option<u32>,
    pub handler: Option<String>,
    pub description: Option<String>,
    pub env: Vec<(String, String)>,
    /// `--set name=value`, by the API's setting names.
    pub set: Vec<(String, String)>,
}

/// What to upload, and under which name (deploying a name that exists
/// updates that function).
#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub upload: Upload,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Fields may hold envVars values: only their names are shown.
        f.debug_struct("Upload")
            .field("file_name", &self.file_name)
            .field("bytes", &self.bytes.len())
            .field("fields", &self.fields.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

pub async fn plan(path: &Path, flags: &Overrides) -> Result<Plan, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let base_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".to_string());
    let (default_name, file_name, bytes, mut settings, mut env) = if meta.is_dir() {
        let files = read_folder(path)?;
        let mut settings = BTreeMap::new();
        if let Some(runtime) = folder_runtime(&files) {
            settings.insert("runtime".to_string(), runtime.to_string());
        }
        let zip =
            package::zip_files(&files).map_err(|e| CliError::Usage(format!("cannot zip {}: {e}", path.display())))?;
        (
            base_name.clone(),
            format!("{base_name}.zip"),
            zip,
            settings,
            BTreeMap::new(),
        )
    } else if is_yaml(path) {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let from_yaml = from_yaml(&path.display().to_string(), &text).await?;
        (
            from_yaml.0,
            "code.zip".to_string(),
            from_yaml.1,
            from_yaml.2,
            from_yaml.3,
        )
    } else {
        let bytes = std::fs::read(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        (base_name.clone(), base_name, bytes, BTreeMap::new(), BTreeMap::new())
    };
    let name = flags.name.clone().unwrap_or(default_name);
    settings.insert("name".into(), name.clone());
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            settings.insert(k.to_string(), v);
        }
    };
    put("runtime", flags.runtime.clone());
    put("memoryMb", flags.memory_mb.map(|m| m.to_string()));
    put("timeoutMs", flags.timeout_ms.map(|t| t.to_string()));
    put("minWarm", flags.min_warm.map(|m| m.to_string()));
    put("handler", flags.handler.clone());
    put("description", flags.description.clone());
    env.extend(flags.env.iter().cloned());
    if !env.is_empty() || settings.contains_key("envVars") {
        let json = serde_json::to_string(&env).map_err(|e| CliError::Usage(e.to_string()))?;
        settings.insert("envVars".into(), json);
    }
    for (k, v) in &flags.set {
        settings.insert(k.clone(), v.clone());
    }
    Ok(Plan {
        name,
        upload: Upload {
            file_name,
            bytes,
            fields: settings.into_iter().collect(),
        },
    })
}

/// Directories never shipped: version control and interpreter caches.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    ".venv",
    ".mypy_cache",
    ".pytest_cache",
];

/// Every file below `dir` by its relative path (`/`-separated).
pub fn read_folder(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, CliError> {
    let fail = |p: &Path, e: std::io::Error| CliError::Usage(format!("cannot read {}: {e}", p.display()));
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| fail(&d, e))? {
            let entry = entry.map_err(|e| fail(&d, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| fail(&path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                if !SKIPPED_DIRS.contains(&name.as_str()) {
                    stack.push(path);
                }
            } else if kind.is_file() && name != ".DS_Store" && !name.ends_with(".pyc") {
                let rel = path
                    .strip_prefix(dir)
                    .map_err(|_| CliError::Usage(format!("{} is outside {}", path.display(), dir.display())))?;
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.insert(rel, std::fs::read(&path).map_err(|e| fail(&path, e))?);
            }
            // Links are left out: the platform refuses them in archives.
        }
    }
    if files.is_empty() {
        return Err(CliError::Usage(format!("{} holds no files", dir.display())));
    }
    Ok(files)
}

/// The runtime a folder's entry module implies, when only one is there.
pub fn folder_runtime(files: &BTreeMap<String, Vec<u8>>) -> Option<&'static str> {
    let python = files.contains_key("main.py");
    let node = ["index.js", "index.mjs", "index.cjs"]
        .iter()
        .any(|f| files.contains_key(*f));
    match (python, node) {
        (true, false) => Some("python"),
        (false, true) => Some("nodejs"),
        _ => None,
    }
}

/// The one Function of a YAML file: name, zipped inline code, settings, env.
type FromYaml = (String, Vec<u8>, BTreeMap<String, String>, BTreeMap<String, String>);

pub async fn from_yaml(file: &str, text: &str) -> Result<FromYaml, CliError> {
    let mut scan = Scan::default();
    folder::parse_into(&mut scan, file, text);
    if let Some(problem) = scan.problems.first() {
        return Err(CliError::Usage(problem.clone()));
    }
    let mut functions = scan.functions.iter();
    let ((namespace, name), function) = match (functions.next(), functions.next()) {
        (Some(one), None) => one,
        (None, _) => return Err(CliError::Usage(format!("{file} holds no Function resource"))),
        (Some(_), Some(_)) => {
            let names: Vec<&str> = scan.functions.keys().map(|(_, n)| n.as_str()).collect();
            return Err(CliError::Usage(format!(
                "{file} holds {} Functions ({}); deploy one file per function",
                names.len(),
                names.join(", ")
            )));
        }
    };
    let spec = &function.spec;
    let invalid = |problems: Vec<String>| CliError::Usage(format!("{file}: {}", problems.join("; ")));
    let plan = desired::check(spec).map_err(invalid)?;
    // ConfigMaps and Secrets are looked up in the same file, as `infra up --functions` does.
    let sources = &scan.sources;
    let mut env = BTreeMap::new();
    for (var, source) in plan {
        let (kind, data, from, key) = match source {
            EnvSource::Value(v) => {
                env.insert(var, v);
                continue;
            }
            EnvSource::Secret { name: s, key } => ("Secret", sources.secret(namespace, &s).await, s, key),
            EnvSource::ConfigMap { name: c, key } => ("ConfigMap", sources.config_map(namespace, &c).await, c, key),
        };
        let value = data
            .ok()
            .flatten()
            .and_then(|d| d.get(&key).cloned())
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "{file}: env {var}: {kind} {namespace}/{from} with a text key {key} is not in the file"
                ))
            })?;
        env.insert(var, value);
    }
    let files = match (&spec.code.inline, &spec.code.config_map) {
        (Some(inline), _) => inline.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect(),
        (None, Some(cm)) => sources
            .config_map(namespace, &cm.name)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "{file}: code.configMap {namespace}/{} is not in the file",
                    cm.name
                ))
            })?,
        (None, None) => {
            return Err(CliError::Usage(format!(
                "{file}: code.s3 names an object of the platform's bucket, which the CLI cannot upload; \
                 use code.inline, or deploy the file or folder itself"
            )))
        }
    };
    let zip = package::zip_files(&files).map_err(|e| CliError::Usage(format!("{file}: code: {e}")))?;
    let draft = desired::settings_draft(name, spec, &BTreeMap::new());
    let mut settings = BTreeMap::new();
    for field in SETTING_FIELDS {
        if let Some(v) = field.value(&draft) {
            settings.insert(field.name.to_string(), v.clone());
        }
    }
    Ok((name.clone(), zip, settings, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
apiVersion: faas.infra.dev/v1alpha1
kind: Function
metadata: {name: hello}
spec:
  runtime: python
  memoryMb: 256
  timeoutSeconds: 10
  warmPool: {minWarm: 1}
  env:
    - {name: PLAIN, value: one}
    - name: GREETING
      valueFrom:
        configMapKeyRef: {name: hello-settings, key: greeting}
  code:
    inline:
      main.py: |
        def handler(event, context):
            return "hi"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: hello-settings}
data: {greeting: Hello}
"#;

    #[tokio::test]
    async fn a_function_yaml_becomes_an_upload() {
        let (name, zip, settings, env) = from_yaml("hello.yaml", HELLO).await.unwrap();
        assert_eq!(name, "hello");
        assert!(zip.starts_with(b"PK\x03\x04"));
        assert_eq!(settings["memoryMb"], "256");
        assert_eq!(settings["timeoutMs"], "10000");
        assert_eq!(settings["minWarm"], "1");
        assert_eq!(settings["runtime"], "python");
        assert_eq!(env["PLAIN"], "one");
        assert_eq!(env["GREETING"], "Hello");
    }

    #[tokio::test]
    async fn flags_win_over_the_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello.yaml");
        std::fs::write(&path, HELLO).unwrap();
        let flags = Overrides {
            memory_mb: Some(512),
            env: vec![("PLAIN".into(), "two".into())],
            set: vec![("maxRetries".into(), "0".into())],
            ..Overrides::default()
        };
        let plan = plan(&path, &flags).await.unwrap();
        let fields: BTreeMap<_, _> = plan.upload.fields.into_iter().collect();
        assert_eq!(plan.name, "hello");
        assert_eq!(fields["memoryMb"], "512");
        assert_eq!(fields["maxRetries"], "0");
        let env: BTreeMap<String, String> = serde_json::from_str(&fields["envVars"]).unwrap();
        assert_eq!(env["PLAIN"], "two");
        assert_eq!(env["GREETING"], "Hello");
    }

    #[tokio::test]
    async fn yaml_problems_are_usage_errors() {
        let missing = HELLO.split("---").next().unwrap();
        let err = from_yaml("f.yaml", missing).await.unwrap_err();
        assert_eq!(err.code(), 2);
        assert!(err.to_string().contains("ConfigMap default/hello-settings"), "{err}");
        let err = from_yaml("f.yaml", "kind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no Function"), "{err}");
        let s3 = "apiVersion: faas.infra.dev/v1alpha1\nkind: Function\nmetadata: {name: x}\n\
                  spec: {runtime: python, code: {s3: {key: a.zip}}}\n";
        let err = from_yaml("f.yaml", s3).await.unwrap_err();
        assert!(err.to_string().contains("code.s3"), "{err}");
    }

    #[tokio::test]
    async fn folders_are_zipped_without_caches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wordcount");
        std::fs::create_dir_all(root.join("lib/__pycache__")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("main.py"), "def handler(e, c): return 1\n").unwrap();
        std::fs::write(root.join("lib/util.py"), "X = 1\n").unwrap();
        std::fs::write(root.join("lib/__pycache__/util.pyc"), "x").unwrap();
        std::fs::write(root.join(".git/HEAD"), "x").unwrap();
        let files = read_folder(&root).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["lib/util.py", "main.py"]);
        assert_eq!(folder_runtime(&files), Some("python"));
        let plan = plan(&root, &Overrides::default()).await.unwrap();
        assert_eq!(plan.name, "wordcount");
        assert_eq!(plan.upload.file_name, "wordcount.zip");
        assert!(plan.upload.fields.contains(&("runtime".into(), "python".into())));
        assert!(!plan.upload.fields.iter().any(|(k, _)| k == "envVars"));
    }
}
