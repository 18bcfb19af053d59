use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{sdk_config, unavailable, AwsSettings};
use crate::backend::{Delivery, Error, JobQueue, Result};
use crate::model::{Job, Runtime};

/// SQS's batch limit.
const BATCH: usize = 10;
/// Batches in flight at once.
const IN_FLIGHT_BATCHES: usize = 32;

/// SQS's longest message delay.
const MAX_DELAY_SECONDS: u64 = 900;

struct SendReq {
    job: Job,
    /// Seconds before the message becomes receivable (0 to 900).
    delay_seconds: i32,
    done: oneshot::Sender<Result<()>>,
}

/// Jobs on an SQS queue (standard or FIFO). Sends are batched: concurrent
/// `send`s are folded into `SendMessageBatch` calls of up to 10, each caller
/// still waiting for its own message to be accepted.
pub struct SqsQueue {
    client: Client,
    url: String,
    visibility: Duration,
    sender: mpsc::UnboundedSender<SendReq>,
}

impl SqsQueue {
    pub async fn new(settings: &AwsSettings, url: &str, visibility: Duration) -> Self {
        let client = client(settings).await;
        let (sender, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_sender(client.clone(), url.to_string(), rx));
        SqsQueue {
            client,
            url: url.to_string(),
            visibility,
            sender,
        }
    }

    /// Creates a queue (tests and local setups); returns its URL.
    pub async fn create_queue(settings: &AwsSettings, name: &str) -> Result<String> {
        let client = client(settings).await;
        let mut req = client.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let out = req.send().await.map_err(|e| unavailable("sqs create_queue", e))?;
        out.queue_url
            .ok_or_else(|| Error::Invalid("create_queue returned no URL".into()))
    }
}

async fn client(settings: &AwsSettings) -> Client {
    let sdk = sdk_config(settings).await;
    let mut conf = aws_sdk_sqs::config::Builder::from(&sdk);
    if let Some(url) = &settings.sqs_endpoint_url {
        conf = conf.endpoint_url(url);
    }
    Client::from_conf(conf.build())
}

fn is_fifo(url: &str) -> bool {
    url.ends_with(".fifo")
}

async fn batch_sender(client: Client, url: String, mut rx: mpsc::UnboundedReceiver<SendReq>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_BATCHES));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            send_batch(&client, &url, batch).await;
            drop(permit);
        });
    }
}

async fn send_batch(client: &Client, url: &str, batch: Vec<SendReq>) {
    let mut entries = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for (i, req) in batch.into_iter().enumerate() {
        let body = match serde_json::to_string(&req.job) {
            Ok(b) => b,
            Err(e) => {
                let _ = req.done.send(Err(Error::Invalid(format!("unencodable job: {e}"))));
                continue;
            }
        };
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .message_body(body);
        if is_fifo(url) {
            // Group per job: FIFO is used for exactly-once admission, not to
            // serialise a function's jobs. Dedup on the job id and run, so a
            // retry is not taken for a duplicate. FIFO queues have no
            // per-message delay: retries there go out at once.
            entry = entry
                .message_group_id(&req.job.request_id)
                .message_deduplication_id(format!("{}-{}", req.job.request_id, req.job.lifecycle.first_attempt()));
        } else if req.delay_seconds > 0 {
            entry = entry.delay_seconds(req.delay_seconds);
        }
        match entry.build() {
            Ok(e) => {
                entries.push(e);
                waiting.push((i.to_string(), req.done));
            }
            Err(e) => {
                let _ = req.done.send(Err(Error::Invalid(e.to_string())));
            }
        }
    }
    if entries.is_empty() {
        return;
    }
    match client
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            for (id, done) in waiting {
                let failure = out.failed().iter().find(|f| f.id() == id);
                let _ = done.send(match failure {
                    None => Ok(()),
                    Some(f) => Err(Error::Unavailable {
                        message: format!(
                            "sqs rejected the message: {} {}",
                            f.code(),
                            f.message().unwrap_or_default()
                        ),
                        source: None,
                    }),
                });
            }
        }
        Err(e) => {
            let message = format!(
                "sqs send_message_batch: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            );
            for (_, done) in waiting {
                let _ = done.send(Err(Error::Unavailable {
                    message: message.clone(),
                    source: None,
                }));
            }
        }
    }
}

/// A message that is not a job: keep what identifies it, so the worker can
/// end it as FAILED (if it names a job) and delete it instead of looping.
fn defective(body: &str, reason: String) -> (Job, String) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let job = Job {
        request_id: text("requestId").unwrap_or_default(),
        function_id: text("functionId").unwrap_or_default(),
        runtime: Runtime::Python,
        memory_mb: 0,
        s3_bucket: String::new(),
        s3_key: String::new(),
        timeout_ms: 0,
        input: serde_json::Value::Null,
        model_id: None,
        env_vars: Default::default(),
        handler: String::new(),
        sha256: String::new(),
        warm_pool: Default::default(),
        network: false,
        style: Default::default(),
        trace_id: None,
        submitted_at: chrono::Utc::now(),
        lifecycle: Default::default(),
        original_format: v.get("submittedAt").is_none(),
    };
    (job, reason)
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn send(&self, job: &Job) -> Result<()> {
        self.send_delayed(job, Duration::ZERO).await
    }

    async fn send_delayed(&self, job: &Job, delay: Duration) -> Result<()> {
        let (done, rx) = oneshot::channel();
        let delay_seconds = delay.as_secs().min(MAX_DELAY_SECONDS) as i32;
        self.sender
            .send(SendReq {
                job: job.clone(),
                delay_seconds,
                done,
            })
            .map_err(|_| Error::Unavailable {
                message: "sqs sender stopped".into(),
                source: None,
            })?;
        rx.await.map_err(|_| Error::Unavailable {
            message: "sqs sender stopped".into(),
            source: None,
        })?
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        // SQS waits in whole seconds, at most 20.
        let wait_secs = wait.as_millis().div_ceil(1000).min(20) as i32;
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .wait_time_seconds(wait_secs)
            .visibility_timeout(self.visibility.as_secs().max(1) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| unavailable("sqs receive_message", e))?;
        let mut deliveries = Vec::new();
        for m in out.messages() {
            let Some(receipt) = m.receipt_handle() else { continue };
            let body = m.body().unwrap_or_default();
            let attempt = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            let (job, defect) = match serde_json::from_str::<Job>(body) {
                Ok(job) => (job, None),
                Err(e) => {
                    let (job, reason) = defective(body, format!("the queue message is not a valid job: {e}"));
                    (job, Some(reason))
                }
            };
            deliveries.push(Delivery {
                job,
                receipt: receipt.to_string(),
                attempt,
                defect,
            });
        }
        Ok(deliveries)
    }

    async fn extend(&self, receipt: &str, by: Duration) -> Result<()> {
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(by.as_secs().clamp(1, 43_200) as i32)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_message_not_inflight() || s.is_receipt_handle_is_invalid()) =>
            {
                Err(Error::NotFound(format!("no in-flight job for receipt {receipt}")))
            }
            Err(e) => Err(unavailable("sqs change_message_visibility", e)),
        }
    }

    async fn ack(&self, receipt: &str) -> Result<()> {
        match self
            .client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already deleted (or redelivered under a new handle): nothing left to do.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_receipt_handle_is_invalid()) => Ok(()),
            Err(e) => Err(unavailable("sqs delete_message", e)),
        }
    }

    async fn ping(&self) -> Result<()> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| unavailable("sqs get_queue_attributes", e))?;
        Ok(())
    }
}
