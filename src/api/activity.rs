//! The original controller's `GET /logs`: the last things this API process
//! did (runs requested, uploads, changes, results it delivered), newest
//! first. Process-local and short by design; invocation logs that last are
//! `/functions/{id}/logs`.

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// Entries kept (the original keeps 100).
const KEEP: usize = 100;
/// Longest `msg` kept, in characters (as the original).
const MSG_CHARS: usize = 200;

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityEntry {
    id: String,
    /// `INFO`, `WARN` or `ERROR`.
    level: &'static str,
    timestamp: DateTime<Utc>,
    /// What happened: `Run Request`, `Function Executed: <functionId>`,
    /// `Upload Success`, `Function Updated`, `Function Deleted`, `Timeout: <functionId>`.
    msg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_id: Option<String>,
    /// The event's details, flat in the entry (requestId, duration, memory, status, ...).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    context: serde_json::Map<String, serde_json::Value>,
}

#[derive(Default)]
pub struct Activity {
    entries: Mutex<VecDeque<ActivityEntry>>,
}

impl Activity {
    pub fn info(&self, msg: &str, function_id: &str, context: serde_json::Value) {
        self.push("INFO", msg, function_id, context);
    }

    pub fn warn(&self, msg: &str, function_id: &str, context: serde_json::Value) {
        self.push("WARN", msg, function_id, context);
    }

    pub fn error(&self, msg: &str, function_id: &str, context: serde_json::Value) {
        self.push("ERROR", msg, function_id, context);
    }

    fn push(&self, level: &'static str, msg: &str, function_id: &str, context: serde_json::Value) {
        let mut cut: String = msg.chars().take(MSG_CHARS).collect();
        if cut.len() < msg.len() {
            cut.push_str("...");
        }
        let msg = cut;
        let context = match context {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let entry = ActivityEntry {
            id: uuid::Uuid::new_v4().to_string(),
            level,
            timestamp: Utc::now(),
            msg,
            function_id: (!function_id.is_empty()).then(|| function_id.to_string()),
            context,
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() == KEEP {
                entries.pop_back();
            }
            entries.push_front(entry);
        }
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<ActivityEntry> {
        self.entries
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_hundred_newest_first() {
        let a = Activity::default();
        for i in 0..150 {
            a.info(&format!("event {i}"), "f", serde_json::json!({"n": i}));
        }
        let recent = a.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0].msg, "event 149");
        assert_eq!(recent[99].msg, "event 50");
        let v = serde_json::to_value(&recent[0]).expect("json");
        assert_eq!(v["n"], 149);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["functionId"], "f");
    }

    #[test]
    fn long_messages_are_cut() {
        let a = Activity::default();
        a.error(&"x".repeat(500), "", serde_json::json!(null));
        let e = &a.recent()[0];
        assert_eq!(e.msg.chars().count(), MSG_CHARS + 3);
        assert!(e.msg.ends_with("..."));
        assert!(e.function_id.is_none());
    }
}
