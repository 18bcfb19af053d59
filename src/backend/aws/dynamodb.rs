use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;

use super::{describe_table, dynamodb_client, unavailable, AwsSettings};
use crate::backend::{Error, FunctionRegistry, Result};
use crate::model::FunctionRecord;

/// Function records as DynamoDB items keyed by `functionId`, with the
/// original controller's attribute names and atomic counters (`invocations`,
/// `totalDuration`, ...).
pub struct DynamoRegistry {
    client: Client,
    table: String,
}

const KEY: &str = "functionId";
/// Counters only ever added to (`add_usage`); `put` starts them at the
/// record's value when new, so concurrent additions survive a settings change.
const COUNTERS: &[&str] = &[
    "invocations",
    "finishedRuns",
    "totalDuration",
    "handlerInvocations",
    "totalHandlerDuration",
];
/// Attributes a record may lack (serialised only when present).
const OPTIONAL: &[&str] = &["owner", "updatedAt"];

impl DynamoRegistry {
    pub async fn new(settings: &AwsSettings, table: &str) -> Self {
        DynamoRegistry {
            client: dynamodb_client(settings).await,
            table: table.to_string(),
        }
    }

    /// Creates the table (on-demand billing) if it does not exist.
    pub async fn ensure_table(&self) -> Result<()> {
        if describe_table(&self.client, &self.table).await.is_ok() {
            return Ok(());
        }
        let key = KeySchemaElement::builder()
            .attribute_name(KEY)
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let attr = AttributeDefinition::builder()
            .attribute_name(KEY)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        match self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(key)
            .attribute_definitions(attr)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => Ok(()),
            Err(e) => Err(unavailable("dynamodb create_table", e)),
        }
    }

    fn key(id: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([(KEY.to_string(), AttributeValue::S(id.to_string()))])
    }
}

/// A DynamoDB number: integers without a fraction, others to the microsecond.
fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n:.3}")
    }
}

fn decode(mut item: HashMap<String, AttributeValue>) -> Result<FunctionRecord> {
    if !item.contains_key("sha256") {
        adopt_original(&mut item)?;
    }
    serde_dynamo::from_item(item).map_err(|e| Error::Invalid(format!("unreadable function item: {e}")))
}

/// The original controller ran every job with this timeout.
const ORIGINAL_TIMEOUT_MS: u64 = 300_000;

/// Reads an item the original controller wrote (it has no `sha256`) as a
/// record, so a table shared with, or inherited from, the original keeps
/// every function (docs/compat.md): its `envVars` is a JSON string, and it
/// has no handler, timeout, code hash or size. Its Node.js functions were
/// programs (`node index.js`); its Python functions were called through
/// `handler` (or `main`), as this platform's default handler does. Runtimes
/// this version does not run are a `Conflict` naming them.
fn adopt_original(item: &mut HashMap<String, AttributeValue>) -> Result<()> {
    let text = |item: &HashMap<String, AttributeValue>, k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let id = text(item, KEY).unwrap_or_default();
    let runtime_name = text(item, "runtime").unwrap_or_else(|| "python".into());
    let Some(runtime) = crate::model::Runtime::parse(&runtime_name) else {
        return Err(Error::Conflict(format!(
            "function {id} uses the runtime {runtime_name:?}, which this version does not run yet (python and nodejs)"
        )));
    };
    item.insert("runtime".into(), AttributeValue::S(runtime.as_str().into()));
    let env: HashMap<String, AttributeValue> = match item.get("envVars") {
        Some(AttributeValue::S(json)) => serde_json::from_str::<HashMap<String, serde_json::Value>>(json)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, AttributeValue::S(v))
            })
            .collect(),
        Some(AttributeValue::M(m)) => m.clone(),
        _ => HashMap::new(),
    };
    item.insert("envVars".into(), AttributeValue::M(env));
    item.entry("handler".into())
        .or_insert_with(|| AttributeValue::S(runtime.default_handler().into()));
    item.entry("timeoutMs".into())
        .or_insert_with(|| AttributeValue::N(ORIGINAL_TIMEOUT_MS.to_string()));
    item.entry("sha256".into())
        .or_insert_with(|| AttributeValue::S(String::new()));
    item.entry("sizeBytes".into())
        .or_insert_with(|| AttributeValue::N("0".into()));
    let name = text(item, "name").unwrap_or_default();
    item.entry("originalName".into())
        .or_insert_with(|| AttributeValue::S(name));
    item.entry("memoryMb".into())
        .or_insert_with(|| AttributeValue::N("128".into()));
    if runtime == crate::model::Runtime::Nodejs {
        item.entry("style".into())
            .or_insert_with(|| AttributeValue::S("program".into()));
    }
    Ok(())
}

#[async_trait]
impl FunctionRegistry for DynamoRegistry {
    async fn put(&self, record: &FunctionRecord) -> Result<()> {
        let item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(record).map_err(|e| Error::Invalid(format!("unencodable function record: {e}")))?;
        // One UpdateItem: every attribute is set, except the counter, which only
        // starts at the record's value when new, so concurrent increments survive.
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (i, (name, value)) in item.into_iter().enumerate() {
            if name == KEY {
                continue;
            }
            let n = format!("#a{i}");
            let v = format!(":v{i}");
            if COUNTERS.contains(&name.as_str()) {
                sets.push(format!("{n} = if_not_exists({n}, {v})"));
            } else if matches!(value, AttributeValue::Null(_)) {
                removes.push(n.clone());
                names.insert(n, name);
                continue;
            } else {
                sets.push(format!("{n} = {v}"));
            }
            names.insert(n, name);
            values.insert(v, value);
        }
        // Optional attributes the record no longer has must go too.
        for (i, name) in OPTIONAL.iter().enumerate() {
            if !names.values().any(|n| n == name) {
                let n = format!("#o{i}");
                removes.push(n.clone());
                names.insert(n, name.to_string());
            }
        }
        let mut expr = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expr.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(&record.function_id)))
            .update_expression(expr)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| unavailable("dynamodb update_item", e))?;
        Ok(())
    }

    async fn get(&self, function_id: &str) -> Result<FunctionRecord> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(function_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("dynamodb get_item", e))?;
        match out.item {
            Some(item) => decode(item),
            None => Err(Error::NotFound(format!("function {function_id}"))),
        }
    }

    async fn list(&self) -> Result<Vec<FunctionRecord>> {
        let mut records = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("dynamodb scan", e))?;
            for item in out.items.unwrap_or_default() {
                // One item this version cannot read (e.g. an original
                // function in a runtime not run here) must not hide every other.
                match decode(item) {
                    Ok(record) => records.push(record),
                    Err(e) => tracing::warn!(error = %e, "skipping a function item this version cannot read"),
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        records.sort_by(|a, b| a.function_id.cmp(&b.function_id));
        Ok(records)
    }

    async fn delete(&self, function_id: &str) -> Result<()> {
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(function_id)))
            .condition_expression("attribute_exists(functionId)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(Error::NotFound(format!("function {function_id}")))
            }
            Err(e) => Err(unavailable("dynamodb delete_item", e)),
        }
    }

    async fn add_usage(&self, function_id: &str, delta: &crate::model::UsageDelta) -> Result<()> {
        let amounts = [
            (COUNTERS[0], delta.invocations as f64),
            (COUNTERS[1], delta.finished_runs as f64),
            (COUNTERS[2], delta.total_duration),
            (COUNTERS[3], delta.handler_invocations as f64),
            (COUNTERS[4], delta.total_handler_duration),
        ];
        let mut adds = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (i, (name, amount)) in amounts.into_iter().enumerate() {
            if amount == 0.0 || !amount.is_finite() {
                continue;
            }
            adds.push(format!("#c{i} :c{i}"));
            names.insert(format!("#c{i}"), name.to_string());
            values.insert(format!(":c{i}"), AttributeValue::N(format_number(amount)));
        }
        if adds.is_empty() {
            return Ok(());
        }
        match self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(function_id)))
            .update_expression(format!("ADD {}", adds.join(", ")))
            .condition_expression("attribute_exists(functionId)")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // The function was deleted meanwhile: nothing to count.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable("dynamodb update_item", e)),
        }
    }

    async fn ping(&self) -> Result<()> {
        describe_table(&self.client, &self.table).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FunctionStyle, Runtime};

    /// An item exactly as the original controller's upload writes it.
    fn original(runtime: &str, env: &str) -> HashMap<String, AttributeValue> {
        let s = |v: &str| AttributeValue::S(v.to_string());
        HashMap::from([
            ("functionId".to_string(), s("f-1")),
            ("name".to_string(), s("hello")),
            ("description".to_string(), s("")),
            ("s3Key".to_string(), s("functions/f-1/code.zip")),
            ("originalName".to_string(), s("code.zip")),
            ("runtime".to_string(), s(runtime)),
            ("memoryMb".to_string(), AttributeValue::N("256".into())),
            ("uploadedAt".to_string(), s("2026-01-02T03:04:05.678Z")),
            ("envVars".to_string(), s(env)),
            ("invocations".to_string(), AttributeValue::N("7".into())),
        ])
    }

    #[test]
    fn the_originals_items_are_read() {
        let r = decode(original("python", r#"{"A":"1","N":2}"#)).unwrap();
        assert_eq!(
            (r.function_id.as_str(), r.name.as_str(), r.runtime),
            ("f-1", "hello", Runtime::Python)
        );
        assert_eq!(
            (r.memory_mb, r.invocations, r.timeout_ms),
            (256, 7, ORIGINAL_TIMEOUT_MS)
        );
        assert_eq!(r.handler, "main.handler");
        assert_eq!(r.style, FunctionStyle::Handler);
        assert_eq!(r.sha256, "", "the worker hashes what it downloads");
        assert_eq!(r.env_vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(r.env_vars.get("N").map(String::as_str), Some("2"));

        let node = decode(original("nodejs", "not json")).unwrap();
        assert_eq!(node.style, FunctionStyle::Program, "the original ran `node index.js`");
        assert!(
            node.env_vars.is_empty(),
            "unreadable envVars are dropped, as the original did"
        );
    }

    #[test]
    fn an_original_runtime_not_run_here_is_a_conflict_naming_it() {
        match decode(original("go", "{}")) {
            Err(Error::Conflict(m)) => assert!(m.contains("\"go\""), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn this_platforms_items_are_left_as_they_are() {
        let mut record = crate::backend::conformance::sample_function("f-2");
        record.timeout_ms = 1234;
        let item: HashMap<String, AttributeValue> = serde_dynamo::to_item(&record).unwrap();
        assert_eq!(decode(item).unwrap(), record);
    }
}
