//! Validation of function settings. Pure: every problem is collected, so a
//! client sees all of them in one 400.

use std::collections::BTreeMap;

use crate::model::{FunctionRecord, FunctionStyle, RetryPolicy, Runtime, WarmPool};

pub const MEMORY_MB_MIN: u32 = 128;
pub const MEMORY_MB_MAX: u32 = 10240;
pub const TIMEOUT_MS_MIN: u64 = 100;
pub const TIMEOUT_MS_MAX: u64 = 900_000;
pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// AWS Lambda's limit on the total size of environment variables.
pub const ENV_VARS_MAX_BYTES: usize = 4096;
/// Most instances of one function a worker keeps warm.
pub const WARM_MAX: u32 = 100;
pub const KEEP_ALIVE_MAX_SECONDS: u64 = 86_400;
pub const MAX_RETRIES: u64 = 5;
pub const MAX_CONCURRENCY: u64 = 10_000;
pub const MAX_QUEUED: u64 = 1_000_000;
pub const RETRY_BACKOFF_MAX_SECONDS: u64 = 300;
pub const EVENT_AGE_MIN_SECONDS: u64 = 60;
pub const EVENT_AGE_MAX_SECONDS: u64 = 21_600;
const NAME_MAX: usize = 128;
const DESCRIPTION_MAX: usize = 1024;

/// Raw settings as they arrive (form fields, query, headers, JSON), all optional.
#[derive(Debug, Clone, Default)]
pub struct SettingsDraft {
    pub name: Option<String>,
    pub description: Option<String>,
    pub runtime: Option<String>,
    pub memory_mb: Option<String>,
    pub timeout_ms: Option<String>,
    pub handler: Option<String>,
    /// A JSON object of string values.
    pub env_vars: Option<String>,
    pub min_warm: Option<String>,
    pub max_warm: Option<String>,
    pub keep_alive_seconds: Option<String>,
    /// `true` lets the function use the network.
    pub network: Option<String>,
    pub max_retries: Option<String>,
    pub retry_backoff_seconds: Option<String>,
    pub retry_on_oom: Option<String>,
    pub max_event_age_seconds: Option<String>,
    pub max_concurrency: Option<String>,
    pub max_queued: Option<String>,
    /// `handler` or `program`.
    pub style: Option<String>,
}

/// What a setting's value is, for the API description (on the wire every
/// setting arrives as text first: form fields, query parameters, headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    Text {
        max_len: usize,
    },
    /// One of these words.
    Choice(&'static [&'static str]),
    Integer {
        min: u64,
        max: u64,
    },
    Boolean,
    /// A JSON object of strings (as text in a form).
    Object,
}

/// One setting a client can send: its name, the other names taken for it
/// (the original controller's), what it is, and where it goes in the draft.
/// This table is the one list of settings: the form and query parser, the
/// JSON parser of `PUT`, the API description and the draft's own helpers
/// all read it.
pub struct SettingField {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub kind: SettingKind,
    pub doc: &'static str,
    slot: fn(&mut SettingsDraft) -> &mut Option<String>,
    value: fn(&SettingsDraft) -> &Option<String>,
}

impl SettingField {
    pub fn slot<'a>(&self, draft: &'a mut SettingsDraft) -> &'a mut Option<String> {
        (self.slot)(draft)
    }

    pub fn value<'a>(&self, draft: &'a SettingsDraft) -> &'a Option<String> {
        (self.value)(draft)
    }

    fn takes(&self, key: &str) -> bool {
        self.name == key || self.aliases.contains(&key)
    }
}

macro_rules! setting {
    ($name:literal, [$($alias:literal),*], $kind:expr, $field:ident, $doc:literal) => {
        SettingField {
            name: $name,
            aliases: &[$($alias),*],
            kind: $kind,
            doc: $doc,
            slot: |d| &mut d.$field,
            value: |d| &d.$field,
        }
    };
}

pub const SETTING_FIELDS: &[SettingField] =
    &[
        setting!(
            "name",
            ["functionName"],
            SettingKind::Text { max_len: NAME_MAX },
            name,
            "Display name (default: the file's name)."
        ),
        setting!(
            "description",
            [],
            SettingKind::Text {
                max_len: DESCRIPTION_MAX
            },
            description,
            "Free text."
        ),
        setting!(
            "runtime",
            [],
            SettingKind::Choice(&["python", "nodejs"]),
            runtime,
            "`python` or `nodejs` (default: from the file's extension, else python)."
        ),
        setting!(
            "memoryMb",
            ["memory_mb", "memory"],
            SettingKind::Integer {
                min: MEMORY_MB_MIN as u64,
                max: MEMORY_MB_MAX as u64
            },
            memory_mb,
            "Memory limit in MB (default 128; `memory` is the original dashboard's name)."
        ),
        setting!(
            "timeoutMs",
            ["timeout_ms"],
            SettingKind::Integer {
                min: TIMEOUT_MS_MIN,
                max: TIMEOUT_MS_MAX
            },
            timeout_ms,
            "Longest a run may take, in ms (default 30000)."
        ),
        setting!(
            "handler",
            [],
            SettingKind::Text { max_len: 256 },
            handler,
            "`module.function`, default `main.handler` (Python) or `index.handler` (Node.js)."
        ),
        setting!("envVars", ["env_vars", "env"], SettingKind::Object, env_vars,
        "Environment variables, a JSON object of strings, e.g. `{\"GREETING\":\"hi\"}` (values are never shown back)."),
        setting!(
            "minWarm",
            [],
            SettingKind::Integer {
                min: 0,
                max: WARM_MAX as u64
            },
            min_warm,
            "Instances each worker keeps initialized."
        ),
        setting!(
            "maxWarm",
            [],
            SettingKind::Integer {
                min: 1,
                max: WARM_MAX as u64
            },
            max_warm,
            "Most idle instances per worker."
        ),
        setting!(
            "keepAliveSeconds",
            [],
            SettingKind::Integer {
                min: 1,
                max: KEEP_ALIVE_MAX_SECONDS
            },
            keep_alive_seconds,
            "Idle time before an instance beyond minWarm stops."
        ),
        setting!(
            "network",
            [],
            SettingKind::Boolean,
            network,
            "`true` lets the function use the network (default: none in the sandbox)."
        ),
        setting!(
            "maxRetries",
            [],
            SettingKind::Integer {
                min: 0,
                max: MAX_RETRIES
            },
            max_retries,
            "Retries of a failed asynchronous run (default 2)."
        ),
        setting!(
            "retryBackoffSeconds",
            [],
            SettingKind::Integer {
                min: 0,
                max: RETRY_BACKOFF_MAX_SECONDS
            },
            retry_backoff_seconds,
            "Seconds before the first retry, doubled for each further one (default 1)."
        ),
        setting!(
            "retryOnOom",
            [],
            SettingKind::Boolean,
            retry_on_oom,
            "`true` retries runs that ran out of memory too (default false)."
        ),
        setting!(
            "maxEventAgeSeconds",
            [],
            SettingKind::Integer {
                min: EVENT_AGE_MIN_SECONDS,
                max: EVENT_AGE_MAX_SECONDS
            },
            max_event_age_seconds,
            "An asynchronous job waiting longer than this is dead-lettered unrun (default 21600)."
        ),
        setting!(
            "maxConcurrency",
            [],
            SettingKind::Integer {
                min: 1,
                max: MAX_CONCURRENCY
            },
            max_concurrency,
            "Most runs at once across all workers (default: unbounded; empty clears)."
        ),
        setting!(
            "maxQueued",
            [],
            SettingKind::Integer {
                min: 1,
                max: MAX_QUEUED
            },
            max_queued,
            "Most accepted, unfinished jobs; beyond it /run answers 429 (default: unbounded; empty clears)."
        ),
        setting!(
            "style",
            [],
            SettingKind::Choice(&["handler", "program"]),
            style,
            "`handler` (a function called in warm instances) or `program` (the original platform's: a script started per run, reading PAYLOAD or PAYLOAD_FILE, printing its output, writing files to OUTPUT_DIR). Default at upload: detected from the code (a program only when it defines no handler and reads PAYLOAD / sdk.get_input), else handler."
        ),
    ];

impl SettingsDraft {
    /// The setting a form field, query parameter or JSON member names, if any.
    pub fn field(key: &str) -> Option<&'static SettingField> {
        SETTING_FIELDS.iter().find(|f| f.takes(key))
    }

    /// Fills fields missing here from `other` (lower precedence).
    pub fn or(mut self, mut other: SettingsDraft) -> SettingsDraft {
        for f in SETTING_FIELDS {
            if f.slot(&mut self).is_none() {
                *f.slot(&mut self) = f.slot(&mut other).take();
            }
        }
        self
    }

    /// The same draft with blank values taken as not given.
    pub fn without_empty(mut self) -> SettingsDraft {
        for f in SETTING_FIELDS {
            let slot = f.slot(&mut self);
            if slot.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *slot = None;
            }
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        SETTING_FIELDS.iter().all(|f| f.value(self).is_none())
    }
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSettings {
    pub name: String,
    pub description: String,
    pub runtime: Runtime,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub handler: Handler,
    pub env_vars: BTreeMap<String, String>,
    pub warm_pool: WarmPool,
    pub network: bool,
    pub retry: RetryPolicy,
    pub max_concurrency: Option<u32>,
    pub max_queued: Option<u32>,
    pub style: FunctionStyle,
}

impl FunctionSettings {
    /// The settings a stored record currently has (the base for an update).
    pub fn of_record(r: &FunctionRecord) -> Result<FunctionSettings, ValidationErrors> {
        Ok(FunctionSettings {
            name: r.name.clone(),
            description: r.description.clone(),
            runtime: r.runtime,
            memory_mb: r.memory_mb,
            timeout_ms: r.timeout_ms,
            handler: Handler::parse(&r.handler).map_err(|e| ValidationErrors(vec![e]))?,
            env_vars: r.env_vars.clone(),
            warm_pool: r.warm_pool,
            network: r.network,
            retry: r.retry,
            max_concurrency: r.max_concurrency,
            max_queued: r.max_queued,
            style: r.style,
        })
    }
}

/// `module.function`: the module to import and the callable in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub module: String,
    pub function: String,
}

impl Handler {
    pub fn parse(s: &str) -> Result<Handler, String> {
        let s = s.trim();
        let Some((module, function)) = s.rsplit_once('.') else {
            return Err(format!(
                "handler {s:?} must look like module.function (e.g. main.handler)"
            ));
        };
        let ident = |p: &str| {
            let mut chars = p.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if module.split('.').all(ident) && ident(function) && s.len() <= 256 {
            Ok(Handler {
                module: module.to_string(),
                function: function.to_string(),
            })
        } else {
            Err(format!(
                "handler {s:?} must be dotted identifiers, like main.handler or index.handler"
            ))
        }
    }

    /// The files, one of which must exist in the archive for the module to
    /// load; the first is the name a single uploaded file is stored under.
    pub fn module_files(&self, runtime: Runtime) -> Vec<String> {
        let path = self.module.replace('.', "/");
        match runtime {
            Runtime::Python => vec![format!("{path}.py"), format!("{path}/__init__.py")],
            Runtime::Nodejs => vec![
                format!("{path}.js"),
                format!("{path}.mjs"),
                format!("{path}.cjs"),
                format!("{path}/index.js"),
            ],
        }
    }

    /// The module file a single uploaded source file is stored as.
    pub fn single_file_name(&self, file_name: &str, runtime: Runtime) -> String {
        let path = self.module.replace('.', "/");
        let lower = file_name.to_ascii_lowercase();
        match runtime {
            Runtime::Python => format!("{path}.py"),
            // Keep the module system the author chose (.mjs is ESM, .cjs CommonJS).
            Runtime::Nodejs if lower.ends_with(".mjs") => format!("{path}.mjs"),
            Runtime::Nodejs if lower.ends_with(".cjs") => format!("{path}.cjs"),
            Runtime::Nodejs => format!("{path}.js"),
        }
    }
}

impl std::fmt::Display for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.module, self.function)
    }
}

/// Every problem found, in field order.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ValidationErrors(pub Vec<String>);

/// Validates `draft` on top of `base` (the current settings on update, or the
/// defaults on create).
pub fn validate(
    draft: &SettingsDraft,
    base: Option<&FunctionSettings>,
    default_name: &str,
) -> Result<FunctionSettings, ValidationErrors> {
    let mut errors = Vec::new();
    let supported = Runtime::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");

    let name = match draft.name.as_deref().map(str::trim) {
        Some("") => {
            errors.push("name must not be empty".to_string());
            String::new()
        }
        Some(n) if n.chars().count() > NAME_MAX || n.chars().any(char::is_control) => {
            errors.push(format!("name must be at most {NAME_MAX} printable characters"));
            String::new()
        }
        Some(n) => n.to_string(),
        None => base.map(|b| b.name.clone()).unwrap_or_else(|| default_name.to_string()),
    };
    let description = match draft.description.as_deref() {
        Some(d) if d.chars().count() > DESCRIPTION_MAX => {
            errors.push(format!("description must be at most {DESCRIPTION_MAX} characters"));
            String::new()
        }
        Some(d) => d.trim().to_string(),
        None => base.map(|b| b.description.clone()).unwrap_or_default(),
    };
    let runtime = match draft.runtime.as_deref() {
        Some(r) => Runtime::parse(r).unwrap_or_else(|| {
            errors.push(format!("runtime {r:?} is not supported (supported: {supported})"));
            Runtime::Python
        }),
        None => base.map(|b| b.runtime).unwrap_or(Runtime::Python),
    };
    let memory_mb = match draft.memory_mb.as_deref().map(str::trim) {
        Some(m) => match m.parse::<u32>() {
            Ok(v) if (MEMORY_MB_MIN..=MEMORY_MB_MAX).contains(&v) => v,
            _ => {
                errors.push(format!(
                    "memoryMb must be an integer from {MEMORY_MB_MIN} to {MEMORY_MB_MAX}, got {m:?}"
                ));
                DEFAULT_MEMORY_MB
            }
        },
        None => base.map(|b| b.memory_mb).unwrap_or(DEFAULT_MEMORY_MB),
    };
    let timeout_ms = match draft.timeout_ms.as_deref().map(str::trim) {
        Some(t) => match t.parse::<u64>() {
            Ok(v) if (TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&v) => v,
            _ => {
                errors.push(format!(
                    "timeoutMs must be an integer from {TIMEOUT_MS_MIN} to {TIMEOUT_MS_MAX}, got {t:?}"
                ));
                DEFAULT_TIMEOUT_MS
            }
        },
        None => base.map(|b| b.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS),
    };
    let handler = match draft.handler.as_deref() {
        Some(h) => Handler::parse(h).unwrap_or_else(|e| {
            errors.push(e);
            default_handler(runtime)
        }),
        None => match base {
            // A runtime change without a handler moves to the new runtime's default.
            Some(b) if b.runtime == runtime => b.handler.clone(),
            _ => default_handler(runtime),
        },
    };
    let env_vars = match draft.env_vars.as_deref() {
        Some(raw) => parse_env_vars(raw).unwrap_or_else(|e| {
            errors.extend(e);
            BTreeMap::new()
        }),
        None => base.map(|b| b.env_vars.clone()).unwrap_or_default(),
    };

    let base_pool = base.map(|b| b.warm_pool).unwrap_or_default();
    let mut count = |field: &str, raw: Option<&str>, min: u64, max: u64| -> Option<Option<u64>> {
        // "" clears an optional setting back to the worker's default.
        match raw.map(str::trim) {
            None => None,
            Some("") => Some(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Some(Some(n)),
                _ => {
                    errors.push(format!("{field} must be an integer from {min} to {max}, got {v:?}"));
                    Some(None)
                }
            },
        }
    };
    let max_concurrency = count("maxConcurrency", draft.max_concurrency.as_deref(), 1, MAX_CONCURRENCY)
        .map(|v| v.map(|n| n as u32))
        .unwrap_or(base.and_then(|b| b.max_concurrency));
    let max_queued = count("maxQueued", draft.max_queued.as_deref(), 1, MAX_QUEUED)
        .map(|v| v.map(|n| n as u32))
        .unwrap_or(base.and_then(|b| b.max_queued));
    let warm_max = u64::from(WARM_MAX);
    let min_warm = count("minWarm", draft.min_warm.as_deref(), 0, warm_max)
        .map(|v| v.unwrap_or(0) as u32)
        .unwrap_or(base_pool.min_warm);
    let max_warm = count("maxWarm", draft.max_warm.as_deref(), 1, warm_max)
        .map(|v| v.map(|n| n as u32))
        .unwrap_or(base_pool.max_warm);
    let keep_alive_seconds = count(
        "keepAliveSeconds",
        draft.keep_alive_seconds.as_deref(),
        1,
        KEEP_ALIVE_MAX_SECONDS,
    )
    .unwrap_or(base_pool.keep_alive_seconds);
    if let Some(max) = max_warm {
        if min_warm > max {
            errors.push(format!("minWarm ({min_warm}) must not exceed maxWarm ({max})"));
        }
    }
    let warm_pool = WarmPool {
        min_warm,
        max_warm,
        keep_alive_seconds,
    };
    let mut flag = |field: &str, raw: Option<&str>, base: bool| match raw.map(|v| v.trim().to_ascii_lowercase()) {
        None => base,
        Some(v) if v == "true" || v == "1" => true,
        Some(v) if v == "false" || v == "0" || v.is_empty() => false,
        Some(v) => {
            errors.push(format!("{field} must be true or false, got {v:?}"));
            false
        }
    };
    let network = flag("network", draft.network.as_deref(), base.is_some_and(|b| b.network));
    let base_retry = base.map(|b| b.retry).unwrap_or_default();
    let retry_on_oom = flag("retryOnOom", draft.retry_on_oom.as_deref(), base_retry.retry_on_oom);
    let defaults = RetryPolicy::default();
    let mut count = |field: &str, raw: Option<&str>, min: u64, max: u64, base: u64, default: u64| -> u64 {
        // "" goes back to the default.
        match raw.map(str::trim) {
            None => base,
            Some("") => default,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    errors.push(format!("{field} must be an integer from {min} to {max}, got {v:?}"));
                    default
                }
            },
        }
    };
    let retry = RetryPolicy {
        max_retries: count(
            "maxRetries",
            draft.max_retries.as_deref(),
            0,
            MAX_RETRIES,
            u64::from(base_retry.max_retries),
            u64::from(defaults.max_retries),
        ) as u32,
        backoff_seconds: count(
            "retryBackoffSeconds",
            draft.retry_backoff_seconds.as_deref(),
            0,
            RETRY_BACKOFF_MAX_SECONDS,
            u64::from(base_retry.backoff_seconds),
            u64::from(defaults.backoff_seconds),
        ) as u32,
        retry_on_oom,
        max_event_age_seconds: count(
            "maxEventAgeSeconds",
            draft.max_event_age_seconds.as_deref(),
            EVENT_AGE_MIN_SECONDS,
            EVENT_AGE_MAX_SECONDS,
            base_retry.max_event_age_seconds,
            defaults.max_event_age_seconds,
        ),
    };

    let style = match draft.style.as_deref() {
        Some(raw) => FunctionStyle::parse(raw).unwrap_or_else(|| {
            errors.push(format!("style must be handler or program, got {raw:?}"));
            FunctionStyle::Handler
        }),
        None => base.map(|b| b.style).unwrap_or_default(),
    };

    if errors.is_empty() {
        Ok(FunctionSettings {
            name,
            description,
            runtime,
            memory_mb,
            timeout_ms,
            handler,
            env_vars,
            warm_pool,
            network,
            retry,
            max_concurrency,
            max_queued,
            style,
        })
    } else {
        Err(ValidationErrors(errors))
    }
}

fn default_handler(runtime: Runtime) -> Handler {
    let (module, function) = runtime.default_handler().split_once('.').unwrap_or(("main", "handler"));
    Handler {
        module: module.into(),
        function: function.into(),
    }
}

/// Environment names a function may not set: the dynamic loader's (glibc
/// acts on them before any code runs, in every process that inherits them)
/// and the interpreters' start-up options. A function's variables are only
/// ever applied inside its sandbox, by the bootstrap, so none of these can
/// reach the worker or the launcher; they are refused anyway because they
/// would change how the runtime's own process or the tools it starts load
/// code, which is the platform's part, not the function's.
pub fn reserved_env_name(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
        "NODE_OPTIONS",
        "NODE_PATH",
        "NODE_REPL_EXTERNAL_MODULE",
        "PYTHONHOME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONINSPECT",
        "PYTHONBREAKPOINT",
    ];
    let upper = name.to_ascii_uppercase();
    upper.starts_with("LD_") || upper.starts_with("MALLOC_") || EXACT.contains(&upper.as_str())
}

/// Parses a JSON object of string values into validated environment variables.
pub fn parse_env_vars(raw: &str) -> Result<BTreeMap<String, String>, Vec<String>> {
    if raw.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| vec![format!("envVars must be a JSON object: {e}")])?;
    let serde_json::Value::Object(map) = value else {
        return Err(vec!["envVars must be a JSON object of strings".to_string()]);
    };
    let mut errors = Vec::new();
    let mut out = BTreeMap::new();
    let mut total = 0;
    for (k, v) in map {
        let valid_key = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            errors.push(format!("envVars key {k:?} must match [A-Za-z_][A-Za-z0-9_]*"));
            continue;
        }
        if reserved_env_name(&k) {
            errors.push(format!(
                "envVars key {k} is reserved: names the dynamic loader (LD_*, GLIBC_TUNABLES, ...) or the runtimes (NODE_OPTIONS, PYTHONPATH, ...) act on cannot be set by a function"
            ));
            continue;
        }
        let serde_json::Value::String(v) = v else {
            errors.push(format!("envVars value of {k} must be a string"));
            continue;
        };
        if v.contains('\0') {
            errors.push(format!("envVars value of {k} must not contain NUL"));
            continue;
        }
        total += k.len() + v.len();
        out.insert(k, v);
    }
    if total > ENV_VARS_MAX_BYTES {
        errors.push(format!(
            "envVars must total at most {ENV_VARS_MAX_BYTES} bytes, got {total}"
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_one_row_in_the_table() {
        let mut names = std::collections::HashSet::new();
        let mut draft = SettingsDraft::default();
        for f in SETTING_FIELDS {
            assert!(names.insert(f.name), "{} twice", f.name);
            for a in f.aliases {
                assert!(names.insert(*a), "{a} twice");
            }
            assert!(f.slot(&mut draft).is_none(), "{} shares a slot", f.name);
            *f.slot(&mut draft) = Some(f.name.to_string());
            assert_eq!(
                f.value(&draft).as_deref(),
                Some(f.name),
                "{}: read and write differ",
                f.name
            );
        }
        // Every field of the draft was reached through the table.
        assert!(!format!("{draft:?}").contains("None"), "{draft:?}");
        assert_eq!(SettingsDraft::field("memory").map(|f| f.name), Some("memoryMb"));
        assert!(SettingsDraft::field("colour").is_none());
        let merged = SettingsDraft::default().or(draft.clone());
        assert_eq!(format!("{merged:?}"), format!("{draft:?}"));
        assert!(SettingsDraft::default().is_empty() && !merged.is_empty());
    }

    fn draft() -> SettingsDraft {
        SettingsDraft::default()
    }

    #[test]
    fn defaults_apply_on_create() {
        let s = validate(&draft(), None, "main.py").unwrap();
        assert_eq!(s.name, "main.py");
        assert_eq!(s.runtime, Runtime::Python);
        assert_eq!(s.memory_mb, DEFAULT_MEMORY_MB);
        assert_eq!(s.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(s.handler.to_string(), "main.handler");
    }

    #[test]
    fn memory_bounds_are_inclusive() {
        for (m, ok) in [
            ("128", true),
            ("10240", true),
            ("127", false),
            ("10241", false),
            ("abc", false),
            ("12.5", false),
            ("-1", false),
        ] {
            let d = SettingsDraft {
                memory_mb: Some(m.into()),
                ..draft()
            };
            assert_eq!(validate(&d, None, "f").is_ok(), ok, "memoryMb {m}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let d = SettingsDraft {
            runtime: Some("ruby".into()),
            memory_mb: Some("64".into()),
            timeout_ms: Some("0".into()),
            handler: Some("nodot".into()),
            env_vars: Some(r#"{"1BAD": "x", "GOOD": 3}"#.into()),
            name: Some("  ".into()),
            ..draft()
        };
        let e = validate(&d, None, "f").unwrap_err();
        assert_eq!(e.0.len(), 7, "{e:?}");
        assert!(e
            .to_string()
            .contains("runtime \"ruby\" is not supported (supported: python, nodejs)"));
        assert!(e.to_string().contains("memoryMb must be an integer from 128 to 10240"));
    }

    #[test]
    fn update_keeps_unspecified_fields() {
        let base = validate(
            &SettingsDraft {
                memory_mb: Some("512".into()),
                ..draft()
            },
            None,
            "f",
        )
        .unwrap();
        let s = validate(
            &SettingsDraft {
                description: Some("new".into()),
                ..draft()
            },
            Some(&base),
            "ignored",
        )
        .unwrap();
        assert_eq!(s.memory_mb, 512);
        assert_eq!(s.description, "new");
        assert_eq!(s.name, "f");
    }

    #[test]
    fn warm_pool_settings() {
        let d = SettingsDraft {
            min_warm: Some("2".into()),
            max_warm: Some("4".into()),
            keep_alive_seconds: Some("60".into()),
            ..draft()
        };
        let s = validate(&d, None, "f").unwrap();
        assert_eq!(
            s.warm_pool,
            WarmPool {
                min_warm: 2,
                max_warm: Some(4),
                keep_alive_seconds: Some(60)
            }
        );
        // Unchanged on an update that does not mention it; "" clears.
        let kept = validate(&draft(), Some(&s), "f").unwrap();
        assert_eq!(kept.warm_pool, s.warm_pool);
        let cleared = validate(
            &SettingsDraft {
                max_warm: Some("".into()),
                ..draft()
            },
            Some(&s),
            "f",
        )
        .unwrap();
        assert_eq!(cleared.warm_pool.max_warm, None);
        let bad = SettingsDraft {
            min_warm: Some("5".into()),
            max_warm: Some("2".into()),
            keep_alive_seconds: Some("0".into()),
            ..draft()
        };
        let e = validate(&bad, None, "f").unwrap_err();
        assert_eq!(e.0.len(), 2, "{e:?}");
        assert!(e.to_string().contains("minWarm (5) must not exceed maxWarm (2)"));
    }

    #[test]
    fn node_functions_default_to_index_handler() {
        let d = SettingsDraft {
            runtime: Some("nodejs".into()),
            ..draft()
        };
        let s = validate(&d, None, "f").unwrap();
        assert_eq!(s.handler.to_string(), "index.handler");
    }

    #[test]
    fn handlers() {
        assert_eq!(
            Handler::parse("pkg.mod.run").unwrap().module_files(Runtime::Python)[0],
            "pkg/mod.py"
        );
        assert_eq!(
            Handler::parse("index.handler").unwrap().module_files(Runtime::Nodejs)[1],
            "index.mjs"
        );
        for bad in [
            "",
            "main",
            "main.",
            ".handler",
            "ma-in.handler",
            "main.1x",
            "../x.handler",
        ] {
            assert!(Handler::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loader_and_interpreter_names_are_reserved() {
        for name in [
            "LD_PRELOAD",
            "ld_preload",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "GLIBC_TUNABLES",
            "NODE_OPTIONS",
            "PYTHONPATH",
            "MALLOC_CHECK_",
        ] {
            let err = parse_env_vars(&format!(r#"{{"{name}": "x"}}"#)).unwrap_err();
            assert!(err[0].contains("reserved"), "{name}: {err:?}");
        }
        assert!(parse_env_vars(r#"{"DB_PASSWORD":"x","OLD_PRELOAD":"y","PYTHONUNBUFFERED":"1"}"#).is_ok());
    }

    #[test]
    fn env_vars_limits() {
        assert!(parse_env_vars("[1]").is_err());
        assert!(parse_env_vars("not json").is_err());
        assert_eq!(parse_env_vars(r#"{"A_1":"x"}"#).unwrap()["A_1"], "x");
        let big = format!(r#"{{"A":"{}"}}"#, "x".repeat(5000));
        assert!(parse_env_vars(&big).is_err());
    }
}
