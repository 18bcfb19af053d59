//! Client for the Ollama-compatible AI node (`AI_NODE_URL`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

const TAGS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AiClient {
    base: Option<reqwest::Url>,
    http: reqwest::Client,
    default_model: String,
}

/// One model as the node lists it (Ollama `/api/tags`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub details: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Tags {
    #[serde(default)]
    models: Vec<ModelInfo>,
}

/// `GET /models`: the node's models, or a clearly marked fallback.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelsResponse {
    /// True when the list came from the AI node.
    pub available: bool,
    /// `ai-node` or `fallback`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub default_model: String,
    pub models: Vec<ModelInfo>,
}

impl AiClient {
    pub fn new(base: Option<reqwest::Url>, default_model: String) -> Self {
        // Building a client only fails when TLS backends cannot initialise; we use none.
        let http = reqwest::Client::builder()
            .timeout(TAGS_TIMEOUT)
            .build()
            .unwrap_or_default();
        AiClient {
            base,
            http,
            default_model,
        }
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub async fn models(&self) -> ModelsResponse {
        let fallback = |reason: String| ModelsResponse {
            available: false,
            source: "fallback",
            reason: Some(reason),
            default_model: self.default_model.clone(),
            models: vec![ModelInfo {
                name: self.default_model.clone(),
                size: None,
                modified_at: None,
                details: None,
            }],
        };
        let Some(base) = &self.base else {
            return fallback("AI_NODE_URL is not set".into());
        };
        let url = match base.join("api/tags") {
            Ok(u) => u,
            Err(e) => return fallback(format!("invalid AI_NODE_URL: {e}")),
        };
        let resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => return fallback(format!("AI node unreachable: {}", without_url(&e))),
        };
        if !resp.status().is_success() {
            return fallback(format!("AI node answered HTTP {}", resp.status().as_u16()));
        }
        match resp.json::<Tags>().await {
            Ok(tags) => ModelsResponse {
                available: true,
                source: "ai-node",
                reason: None,
                default_model: self.default_model.clone(),
                models: tags.models,
            },
            Err(e) => fallback(format!("AI node sent an unreadable model list: {}", without_url(&e))),
        }
    }

    pub async fn ping(&self) -> Option<bool> {
        self.base.as_ref()?;
        Some(self.models().await.available)
    }
}

/// reqwest errors embed the URL, which may carry credentials; keep only the kind.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() {
        "invalid response body"
    } else {
        "request failed"
    };
    kind.to_string()
}
