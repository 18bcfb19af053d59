use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::db::{Db, QUEUE};
use crate::backend::{Delivery, Error, JobQueue, Result};
use crate::model::Job;

/// What is persisted per queued job.
#[derive(Serialize, Deserialize)]
struct Stored {
    job: Job,
    /// Times the job was handed to a worker, persisted so that a job that
    /// keeps killing its worker (or the platform) is eventually given up.
    #[serde(default)]
    deliveries: u32,
    /// When a delayed job becomes receivable (Unix ms; wall clock, so the
    /// delay holds across a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before_ms: Option<i64>,
}

struct Entry {
    job: Job,
    deliveries: u32,
    /// Changes on every delivery, so a stale receipt cannot extend a redelivered job.
    token: u64,
    invisible_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<u64>,
    /// Jobs sent with a delay that has not passed yet.
    delayed: Vec<(Instant, u64)>,
    in_flight: HashSet<u64>,
    entries: HashMap<u64, Entry>,
}

/// Jobs found in the queue when it was opened: accepted before a shutdown or
/// crash and not yet acknowledged. They are delivered again.
pub struct RecoveredJobs(pub Vec<Job>);

/// A durable in-process queue with SQS semantics: a job is persisted before
/// `send` returns, hidden while a receiver works on it, redelivered when its
/// visibility lapses, and removed only by `ack`.
pub struct EmbeddedQueue {
    db: Db,
    state: Mutex<State>,
    notify: Notify,
    next_seq: AtomicU64,
    next_token: AtomicU64,
    visibility: Duration,
}

fn encode(stored: &Stored) -> Result<Vec<u8>> {
    serde_json::to_vec(stored).map_err(|e| Error::Invalid(format!("unencodable job: {e}")))
}

/// The same limit as SQS's message delay.
const MAX_DELAY: Duration = Duration::from_secs(900);

/// The instant a wall-clock time (Unix ms) falls on; `None` when it passed.
fn delay_until(not_before_ms: i64) -> Option<Instant> {
    let left = not_before_ms - chrono::Utc::now().timestamp_millis();
    (left > 0).then(|| Instant::now() + Duration::from_millis(left as u64))
}

fn parse_receipt(receipt: &str) -> Result<(u64, u64)> {
    let (seq, token) = receipt
        .split_once(':')
        .ok_or_else(|| Error::Invalid(format!("malformed receipt {receipt:?}")))?;
    match (seq.parse(), token.parse()) {
        (Ok(s), Ok(t)) => Ok((s, t)),
        _ => Err(Error::Invalid(format!("malformed receipt {receipt:?}"))),
    }
}

impl EmbeddedQueue {
    /// Opens the queue, re-queueing every job left from a previous run.
    pub async fn open(db: Db, visibility: Duration) -> Result<(EmbeddedQueue, RecoveredJobs)> {
        let leftovers = db.read(|txn| {
            let table = txn.open_table(QUEUE)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        let mut state = State::default();
        let mut max_seq = 0;
        let mut recovered = Vec::new();
        for (seq, bytes) in leftovers {
            max_seq = max_seq.max(seq);
            let stored = match serde_json::from_slice::<Stored>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    // Unreadable entries cannot be run or reported; say so loudly.
                    tracing::error!(seq, error = %e, "skipping unreadable queue entry");
                    continue;
                }
            };
            recovered.push(stored.job.clone());
            match stored.not_before_ms.and_then(delay_until) {
                Some(at) => state.delayed.push((at, seq)),
                None => state.ready.push_back(seq),
            }
            state.entries.insert(
                seq,
                Entry {
                    job: stored.job,
                    deliveries: stored.deliveries,
                    token: 0,
                    invisible_until: None,
                },
            );
        }
        let queue = EmbeddedQueue {
            db,
            state: Mutex::new(state),
            notify: Notify::new(),
            next_seq: AtomicU64::new(max_seq + 1),
            next_token: AtomicU64::new(1),
            visibility,
        };
        Ok((queue, RecoveredJobs(recovered)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state stays consistent
        // because every mutation below is completed before any call that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of jobs waiting or in flight.
    pub fn depth(&self) -> usize {
        self.lock().entries.len()
    }

    /// Records the delivery counts of just-received jobs, in the background:
    /// the count only decides when a job that keeps failing is given up, so a
    /// crash before it lands costs at most one extra delivery, and the job
    /// need not wait for another fsync.
    fn persist_deliveries(&self, deliveries: &[Delivery]) {
        let mut rows = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            if let (Ok((seq, _)), Ok(bytes)) = (
                parse_receipt(&d.receipt),
                encode(&Stored {
                    job: d.job.clone(),
                    deliveries: d.attempt,
                    not_before_ms: None,
                }),
            ) {
                rows.push((seq, bytes));
            }
        }
        let db = self.db.clone();
        tokio::spawn(async move {
            let written = db
                .write(move |txn| {
                    let mut table = txn.open_table(QUEUE)?;
                    for (seq, bytes) in rows {
                        // An entry acked meanwhile stays deleted.
                        if table.get(seq)?.is_some() {
                            table.insert(seq, bytes.as_slice())?;
                        }
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not record delivery counts");
            }
        });
    }

    /// Moves in-flight jobs whose visibility lapsed back to the front of the
    /// queue, and delayed jobs whose time came to its end; returns the
    /// earliest remaining deadline.
    fn requeue_expired(state: &mut State, now: Instant) -> Option<Instant> {
        let mut next = None::<Instant>;
        let mut due = Vec::new();
        state.delayed.retain(|&(at, seq)| {
            if at <= now {
                due.push((at, seq));
                false
            } else {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
                true
            }
        });
        due.sort_unstable();
        state.ready.extend(due.into_iter().map(|(_, seq)| seq));
        let mut expired = Vec::new();
        for seq in &state.in_flight {
            if let Some(until) = state.entries.get(seq).and_then(|e| e.invisible_until) {
                if until <= now {
                    expired.push(*seq);
                } else {
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
            }
        }
        expired.sort_unstable();
        for seq in expired.into_iter().rev() {
            state.in_flight.remove(&seq);
            if let Some(e) = state.entries.get_mut(&seq) {
                e.invisible_until = None;
                state.ready.push_front(seq);
            }
        }
        next
    }
}

#[async_trait]
impl JobQueue for EmbeddedQueue {
    async fn send(&self, job: &Job) -> Result<()> {
        self.send_delayed(job, Duration::ZERO).await
    }

    async fn send_delayed(&self, job: &Job, delay: Duration) -> Result<()> {
        let delay = delay.min(MAX_DELAY);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let not_before_ms =
            (!delay.is_zero()).then(|| chrono::Utc::now().timestamp_millis() + delay.as_millis() as i64);
        let bytes = encode(&Stored {
            job: job.clone(),
            deliveries: 0,
            not_before_ms,
        })?;
        self.db
            .write(move |txn| {
                txn.open_table(QUEUE)?.insert(seq, bytes.as_slice())?;
                Ok(())
            })
            .await?;
        {
            let mut st = self.lock();
            st.entries.insert(
                seq,
                Entry {
                    job: job.clone(),
                    deliveries: 0,
                    token: 0,
                    invisible_until: None,
                },
            );
            if delay.is_zero() {
                st.ready.push_back(seq);
            } else {
                st.delayed.push((Instant::now() + delay, seq));
            }
        }
        self.notify.notify_one();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let (out, next_expiry) = {
                let now = Instant::now();
                let mut st = self.lock();
                let next_expiry = Self::requeue_expired(&mut st, now);
                let mut out = Vec::new();
                while out.len() < max {
                    let Some(seq) = st.ready.pop_front() else { break };
                    let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                    let Some(entry) = st.entries.get_mut(&seq) else {
                        continue;
                    };
                    entry.deliveries += 1;
                    entry.token = token;
                    entry.invisible_until = Some(now + self.visibility);
                    out.push(Delivery {
                        job: entry.job.clone(),
                        receipt: format!("{seq}:{token}"),
                        attempt: entry.deliveries,
                        defect: None,
                    });
                    st.in_flight.insert(seq);
                }
                // More may be waiting: let another receiver look too.
                if !out.is_empty() && !st.ready.is_empty() {
                    self.notify.notify_one();
                }
                (out, next_expiry)
            };
            if !out.is_empty() {
                self.persist_deliveries(&out);
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wake = next_expiry.map_or(deadline, |e| e.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn extend(&self, receipt: &str, by: Duration) -> Result<()> {
        let (seq, token) = parse_receipt(receipt)?;
        let mut st = self.lock();
        match st.entries.get_mut(&seq) {
            Some(e) if e.token == token && e.invisible_until.is_some() => {
                e.invisible_until = Some(Instant::now() + by);
                Ok(())
            }
            _ => Err(Error::NotFound(format!("no in-flight job for receipt {receipt}"))),
        }
    }

    async fn ack(&self, receipt: &str) -> Result<()> {
        let (seq, _) = parse_receipt(receipt)?;
        self.db
            .write(move |txn| {
                txn.open_table(QUEUE)?.remove(seq)?;
                Ok(())
            })
            .await?;
        let mut st = self.lock();
        st.entries.remove(&seq);
        st.in_flight.remove(&seq);
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping()
    }
}
