//! The Ollama-compatible AI node (`AI_NODE_URL`): the model list for the API,
//! and the relay that lets functions call models through their worker
//! (`/api/generate`, `/api/chat`) without network access of their own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::metrics::Metrics;

const TAGS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/run` trusts a fetched model list.
const MODELS_CACHE_TTL: Duration = Duration::from_secs(10);
/// Largest reply read from the node.
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// When the model list was last fetched, and what it was (None: the node did not answer).
type ModelsSeen = (Instant, Option<Vec<String>>);

#[derive(Clone)]
pub struct AiClient {
    base: Option<reqwest::Url>,
    http: reqwest::Client,
    default_model: String,
    cache: Arc<Mutex<Option<ModelsSeen>>>,
    /// Runs admitted per model, since this process started.
    runs: Arc<Mutex<HashMap<String, u64>>>,
}

/// One model as the node lists it (Ollama `/api/tags`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// The model's name on the node (what a run's `modelId` names).
    #[serde(default)]
    pub id: String,
    /// The node's name; in the fallback entry `<default> (Default)`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "modified_at")]
    pub modified_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub details: Option<Value>,
    /// `available` (listed by the node) or `fallback` (the default model,
    /// shown when the node did not answer).
    #[serde(default)]
    pub status: String,
    /// Runs admitted with this model by this API process.
    #[serde(default)]
    pub invocations: u64,
}

#[derive(Deserialize)]
struct Tags {
    #[serde(default)]
    models: Vec<ModelInfo>,
}

/// `GET /models`: the node's models, or a clearly marked fallback (the
/// original's shape: `models` and, on fallback, `warning`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelsResponse {
    pub models: Vec<ModelInfo>,
    /// Present when the node did not answer and the list is the fallback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// True when the list came from the AI node.
    pub available: bool,
    /// `ai-node` or `fallback`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub default_model: String,
}

/// The original's text for the fallback list.
const FALLBACK_WARNING: &str = "Could not fetch dynamic model list from AI Node. showing default.";

/// Why an AI call failed, in words a function author can act on.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    #[error("the AI node is not configured (AI_NODE_URL is not set)")]
    NotConfigured,
    #[error("the AI node is unreachable: {0}")]
    Unreachable(String),
    #[error("the AI node answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the AI node sent an unreadable reply: {0}")]
    BadReply(String),
    #[error("the AI call did not finish before the function's deadline")]
    Timeout,
    #[error("this invocation made its maximum of {0} AI calls")]
    TooManyCalls(u32),
    #[error("invalid AI request: {0}")]
    Invalid(String),
}

/// reqwest errors embed the URL, which may carry credentials; keep only the kind.
fn kind_of(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() {
        "invalid response body"
    } else {
        "request failed"
    }
    .to_string()
}

/// What came back from one generate or chat call.
#[derive(Debug, Clone)]
pub struct AiReply {
    pub model: String,
    pub text: String,
    pub prompt_eval_count: u64,
    pub eval_count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AiKind {
    Generate,
    Chat,
}

impl AiClient {
    pub fn new(base: Option<reqwest::Url>, default_model: String) -> Self {
        // Building a client only fails when TLS backends cannot initialise; we use none.
        let http = reqwest::Client::builder().build().unwrap_or_default();
        AiClient {
            base,
            http,
            default_model,
            cache: Arc::new(Mutex::new(None)),
            runs: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub fn is_configured(&self) -> bool {
        self.base.is_some()
    }

    /// Counts a run admitted with `model` (reported by `/models`).
    pub fn count_run(&self, model: &str) {
        if let Ok(mut runs) = self.runs.lock() {
            *runs.entry(model.to_string()).or_default() += 1;
        }
    }

    async fn tags(&self) -> Result<Vec<ModelInfo>, AiError> {
        let base = self.base.as_ref().ok_or(AiError::NotConfigured)?;
        let url = base.join("api/tags").map_err(|e| AiError::Invalid(e.to_string()))?;
        let resp = self
            .http
            .get(url)
            .timeout(TAGS_TIMEOUT)
            .send()
            .await
            .map_err(|e| AiError::Unreachable(kind_of(&e)))?;
        if !resp.status().is_success() {
            return Err(AiError::Status {
                status: resp.status().as_u16(),
                message: "listing models".into(),
            });
        }
        let tags: Tags = resp.json().await.map_err(|e| AiError::BadReply(kind_of(&e)))?;
        Ok(tags.models)
    }

    /// The node's model names, from a short cache; `None` when the node is
    /// not configured or not reachable (then nothing can be checked).
    pub async fn known_models(&self) -> Option<Vec<String>> {
        self.base.as_ref()?;
        if let Some((at, names)) = self.cache.lock().ok().and_then(|c| c.clone()) {
            if at.elapsed() < MODELS_CACHE_TTL {
                return names;
            }
        }
        // A node that does not answer is remembered too, so runs do not each wait for it.
        let names = self
            .tags()
            .await
            .ok()
            .map(|models| models.into_iter().map(|m| m.name).collect::<Vec<_>>());
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((Instant::now(), names.clone()));
        }
        names
    }

    pub async fn models(&self) -> ModelsResponse {
        let runs = self.runs.lock().map(|r| r.clone()).unwrap_or_default();
        let count = |mut m: ModelInfo| {
            m.invocations = runs.get(&m.id).copied().unwrap_or(0);
            m
        };
        match self.tags().await {
            Ok(models) => ModelsResponse {
                available: true,
                source: "ai-node",
                reason: None,
                warning: None,
                default_model: self.default_model.clone(),
                models: models
                    .into_iter()
                    .map(|m| ModelInfo {
                        id: m.name.clone(),
                        status: "available".into(),
                        ..m
                    })
                    .map(count)
                    .collect(),
            },
            Err(e) => ModelsResponse {
                available: false,
                source: "fallback",
                reason: Some(e.to_string()),
                warning: Some(FALLBACK_WARNING.into()),
                default_model: self.default_model.clone(),
                models: vec![count(ModelInfo {
                    id: self.default_model.clone(),
                    name: format!("{} (Default)", self.default_model),
                    size: None,
                    modified_at: None,
                    details: Some(json!({})),
                    status: "fallback".into(),
                    invocations: 0,
                })],
            },
        }
    }

    /// One `/api/generate` or `/api/chat` call. Streamed (NDJSON) and single
    /// JSON replies are both accepted and reduced to the text and token counts.
    pub async fn call(
        &self,
        kind: AiKind,
        model: &str,
        input: Value,
        options: Value,
        timeout: Duration,
    ) -> Result<AiReply, AiError> {
        let base = self.base.as_ref().ok_or(AiError::NotConfigured)?;
        let (path, input_key) = match kind {
            AiKind::Generate => ("api/generate", "prompt"),
            AiKind::Chat => ("api/chat", "messages"),
        };
        let url = base.join(path).map_err(|e| AiError::Invalid(e.to_string()))?;
        let mut options = match options {
            Value::Object(m) => m,
            Value::Null => Default::default(),
            _ => return Err(AiError::Invalid("options must be keyword arguments".into())),
        };
        let stream = options.remove("stream").and_then(|v| v.as_bool()).unwrap_or(false);
        let mut body = json!({ "model": model, input_key: input, "stream": stream });
        // Ollama takes these at the top level; everything else is a model option.
        for key in ["system", "format", "template", "keep_alive", "raw", "images", "tools"] {
            if let Some(v) = options.remove(key) {
                body[key] = v;
            }
        }
        if !options.is_empty() {
            body["options"] = Value::Object(options);
        }
        let send = async {
            let resp = self
                .http
                .post(url)
                .json(&body)
                .send()
                .await
                .map_err(|e| AiError::Unreachable(kind_of(&e)))?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| AiError::BadReply(kind_of(&e)))?;
            if bytes.len() > MAX_REPLY_BYTES {
                return Err(AiError::BadReply(format!("reply over {MAX_REPLY_BYTES} bytes")));
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if !status.is_success() {
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| text.chars().take(200).collect());
                return Err(AiError::Status {
                    status: status.as_u16(),
                    message,
                });
            }
            parse_reply(kind, model, &text)
        };
        tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| AiError::Timeout)?
    }
}

/// Reduces a single JSON reply or an NDJSON stream to text and counts.
fn parse_reply(kind: AiKind, model: &str, body: &str) -> Result<AiReply, AiError> {
    let mut reply = AiReply {
        model: model.to_string(),
        text: String::new(),
        prompt_eval_count: 0,
        eval_count: 0,
    };
    let mut done = false;
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| AiError::BadReply(e.to_string()))?;
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            return Err(AiError::Status {
                status: 200,
                message: err.to_string(),
            });
        }
        let piece = match kind {
            AiKind::Generate => v.get("response").and_then(Value::as_str),
            AiKind::Chat => v.get("message").and_then(|m| m.get("content")).and_then(Value::as_str),
        };
        reply.text.push_str(piece.unwrap_or_default());
        if v.get("done").and_then(Value::as_bool).unwrap_or(false) {
            done = true;
            reply.prompt_eval_count = v.get("prompt_eval_count").and_then(Value::as_u64).unwrap_or(0);
            reply.eval_count = v.get("eval_count").and_then(Value::as_u64).unwrap_or(0);
            if let Some(m) = v.get("model").and_then(Value::as_str) {
                reply.model = m.to_string();
            }
        }
    }
    if !done {
        return Err(AiError::BadReply("the reply ended before \"done\": true".into()));
    }
    Ok(reply)
}

/// Token counts of one model within one invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    pub calls: u32,
    pub prompt_eval_count: u64,
    pub eval_count: u64,
}

/// AI usage of one invocation, reported in its result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub calls: u32,
    pub prompt_eval_count: u64,
    pub eval_count: u64,
    pub models: BTreeMap<String, ModelUsage>,
}

/// One invocation's access to the AI node: its default model, a call budget,
/// and the usage it adds up.
pub struct AiSession {
    client: AiClient,
    default_model: String,
    max_calls: u32,
    usage: Usage,
    metrics: Arc<Metrics>,
}

impl AiSession {
    pub fn new(client: AiClient, model: Option<String>, max_calls: u32, metrics: Arc<Metrics>) -> Self {
        let default_model = model.unwrap_or_else(|| client.default_model.clone());
        AiSession {
            client,
            default_model,
            max_calls,
            usage: Usage::default(),
            metrics,
        }
    }

    /// Serves one request from the function: `{kind, model?, prompt|messages, options}`.
    /// Answers what the SDK returns: the text (generate) or the message (chat).
    pub async fn handle(&mut self, request: &Value, time_left: Duration) -> Result<Value, AiError> {
        let kind = match request.get("kind").and_then(Value::as_str) {
            Some("generate") => AiKind::Generate,
            Some("chat") => AiKind::Chat,
            other => return Err(AiError::Invalid(format!("unknown AI call {other:?}"))),
        };
        if self.usage.calls >= self.max_calls {
            return Err(AiError::TooManyCalls(self.max_calls));
        }
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(&self.default_model)
            .to_string();
        let input = match kind {
            AiKind::Generate => request.get("prompt").cloned().filter(Value::is_string),
            AiKind::Chat => request.get("messages").cloned().filter(Value::is_array),
        }
        .ok_or_else(|| AiError::Invalid("generate needs a prompt string; chat needs a list of messages".into()))?;
        let options = request.get("options").cloned().unwrap_or(Value::Null);
        self.usage.calls += 1;
        let result = self.client.call(kind, &model, input, options, time_left).await;
        let status = if result.is_ok() { "ok" } else { "error" };
        self.metrics.ai_calls.with_label_values(&[&model, status]).inc();
        let reply = result?;
        let entry = self.usage.models.entry(reply.model.clone()).or_default();
        entry.calls += 1;
        entry.prompt_eval_count += reply.prompt_eval_count;
        entry.eval_count += reply.eval_count;
        self.usage.prompt_eval_count += reply.prompt_eval_count;
        self.usage.eval_count += reply.eval_count;
        self.metrics
            .ai_tokens
            .with_label_values(&[&reply.model, "prompt"])
            .inc_by(reply.prompt_eval_count);
        self.metrics
            .ai_tokens
            .with_label_values(&[&reply.model, "completion"])
            .inc_by(reply.eval_count);
        Ok(match kind {
            AiKind::Generate => Value::String(reply.text),
            AiKind::Chat => json!({"role": "assistant", "content": reply.text}),
        })
    }

    /// The usage, when the function made any AI call.
    pub fn usage(&self) -> Option<Usage> {
        (self.usage.calls > 0).then(|| self.usage.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_and_single_replies_reduce_to_text_and_counts() {
        let single = r#"{"model":"m","response":"Hello","done":true,"prompt_eval_count":7,"eval_count":3}"#;
        let r = parse_reply(AiKind::Generate, "m", single).unwrap();
        assert_eq!((r.text.as_str(), r.prompt_eval_count, r.eval_count), ("Hello", 7, 3));
        let stream = "{\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n\
                      {\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n\
                      {\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"prompt_eval_count\":5,\"eval_count\":2}\n";
        let r = parse_reply(AiKind::Chat, "m", stream).unwrap();
        assert_eq!((r.text.as_str(), r.prompt_eval_count, r.eval_count), ("Hello", 5, 2));
        assert!(parse_reply(AiKind::Generate, "m", r#"{"response":"cut","done":false}"#).is_err());
        assert!(parse_reply(AiKind::Generate, "m", r#"{"error":"model not found"}"#).is_err());
    }
}
