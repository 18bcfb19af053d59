use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

use super::{describe_table, dynamodb_client, unavailable, AwsSettings};
use crate::backend::{Error, LogStore, Result};
use crate::model::LogEntry;

/// Invocation logs as DynamoDB items (`functionId` hash key, `requestId`
/// range key) that DynamoDB deletes after `expiresAt` (its TTL attribute).
pub struct DynamoLogStore {
    client: Client,
    table: String,
    retention: Duration,
}

const TTL_ATTRIBUTE: &str = "expiresAt";

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(e.to_string())
}

impl DynamoLogStore {
    pub async fn new(settings: &AwsSettings, table: &str, retention: Duration) -> Self {
        DynamoLogStore {
            client: dynamodb_client(settings).await,
            table: table.to_string(),
            retention,
        }
    }

    /// Creates the table with its TTL attribute if it does not exist.
    pub async fn ensure_table(&self) -> Result<()> {
        if describe_table(&self.client, &self.table).await.is_ok() {
            return Ok(());
        }
        let key = |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        self.client
            .create_table()
            .table_name(&self.table)
            .key_schema(key("functionId", KeyType::Hash).map_err(invalid)?)
            .key_schema(key("requestId", KeyType::Range).map_err(invalid)?)
            .attribute_definitions(attr("functionId").map_err(invalid)?)
            .attribute_definitions(attr("requestId").map_err(invalid)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| unavailable("dynamodb create_table", e))?;
        let ttl = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL_ATTRIBUTE)
            .build()
            .map_err(invalid)?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(|e| unavailable("dynamodb update_time_to_live", e))?;
        Ok(())
    }
}

fn decode(item: HashMap<String, AttributeValue>) -> Result<LogEntry> {
    serde_dynamo::from_item(item).map_err(|e| Error::Invalid(format!("unreadable log item: {e}")))
}

#[async_trait]
impl LogStore for DynamoLogStore {
    async fn put(&self, entry: &LogEntry) -> Result<()> {
        let mut item: HashMap<String, AttributeValue> = serde_dynamo::to_item(entry).map_err(invalid)?;
        let expires = entry.finished_at.timestamp() + self.retention.as_secs() as i64;
        item.insert(TTL_ATTRIBUTE.into(), AttributeValue::N(expires.to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable("dynamodb put_item", e))?;
        Ok(())
    }

    async fn list(&self, function_id: &str, limit: usize) -> Result<Vec<LogEntry>> {
        let mut entries = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("functionId = :f")
                .expression_attribute_values(":f", AttributeValue::S(function_id.to_string()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("dynamodb query", e))?;
            for item in out.items.unwrap_or_default() {
                entries.push(decode(item)?);
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        // Request ids are random: order by time here.
        Ok(crate::backend::newest_logs(entries, limit))
    }

    async fn get(&self, function_id: &str, request_id: &str) -> Result<LogEntry> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("functionId", AttributeValue::S(function_id.to_string()))
            .key("requestId", AttributeValue::S(request_id.to_string()))
            .send()
            .await
            .map_err(|e| unavailable("dynamodb get_item", e))?;
        match out.item {
            Some(item) => decode(item),
            None => Err(Error::NotFound(format!("log of {request_id}"))),
        }
    }

    async fn ping(&self) -> Result<()> {
        describe_table(&self.client, &self.table).await
    }
}
