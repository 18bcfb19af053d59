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

fn decode(item: HashMap<String, AttributeValue>) -> Result<FunctionRecord> {
    serde_dynamo::from_item(item).map_err(|e| Error::Invalid(format!("unreadable function item: {e}")))
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
                // One item this version cannot read (e.g. written by the
                // original controller) must not hide every other function.
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
