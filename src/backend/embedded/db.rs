//! The embedded database: one redb file under the data dir, with a single
//! writer thread that group-commits. Concurrent writers are batched into one
//! transaction and one fsync, so durable admission does not cost an fsync per
//! request.

use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::backend::Error;

pub const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
pub const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
pub const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
/// Durable records (`RecordStore`): 8 bytes of creation time (Unix ms, big
/// endian) followed by the value.
pub const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// Keyed `{functionId}/{requestId}`.
pub const LOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("logs");

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 4096;

type Apply = Box<dyn FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send>;

struct WriteReq {
    apply: Apply,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the embedded database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    db: Arc<Database>,
    writer: mpsc::UnboundedSender<WriteReq>,
}

fn unavailable(what: &str, e: impl Into<redb::Error>) -> Error {
    let e: redb::Error = e.into();
    Error::unavailable(format!("embedded database: {what}"), e)
}

impl Db {
    /// Opens (or creates) `dir/infra.redb`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Db, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::unavailable(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join("infra.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                Error::Conflict(format!("{} is in use by another process", path.display()))
            }
            other => unavailable("open", other),
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Function settings (envVars values) live here: the worker's alone.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::unavailable(format!("cannot make {} private", path.display()), e))?;
        }
        // Create every table up front so readers never meet a missing table.
        let txn = db.begin_write().map_err(|e| unavailable("begin", e))?;
        txn.open_table(FUNCTIONS).map_err(|e| unavailable("table", e))?;
        txn.open_table(JOBS).map_err(|e| unavailable("table", e))?;
        txn.open_table(QUEUE).map_err(|e| unavailable("table", e))?;
        txn.open_table(LOGS).map_err(|e| unavailable("table", e))?;
        txn.open_table(RECORDS).map_err(|e| unavailable("table", e))?;
        txn.commit().map_err(|e| unavailable("commit", e))?;

        let db = Arc::new(db);
        let (writer, rx) = mpsc::unbounded_channel();
        let thread_db = db.clone();
        std::thread::Builder::new()
            .name("infra-db-writer".into())
            .spawn(move || writer_loop(thread_db, rx))
            .map_err(|e| Error::unavailable("cannot start database writer", e))?;
        Ok(Db { db, writer })
    }

    /// Runs `f` in a write transaction shared with other concurrent writers and
    /// returns its value once the transaction is durably committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    {
        let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let apply: Apply = Box::new(move |txn| {
            let value = f(txn)?;
            if let Ok(mut s) = out.lock() {
                *s = Some(value);
            }
            Ok(())
        });
        let (done, rx) = oneshot::channel();
        self.writer
            .send(WriteReq { apply, done })
            .map_err(|_| Error::Unavailable {
                message: "embedded database is closed".into(),
                source: None,
            })?;
        match rx.await {
            Ok(Ok(())) => slot
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .ok_or_else(|| Error::Unavailable {
                    message: "embedded database lost a write result".into(),
                    source: None,
                }),
            Ok(Err(msg)) => Err(Error::Unavailable {
                message: format!("embedded database: {msg}"),
                source: None,
            }),
            Err(_) => Err(Error::Unavailable {
                message: "embedded database writer stopped".into(),
                source: None,
            }),
        }
    }

    /// Runs `f` on a read snapshot. Reads are served from redb's page cache and
    /// are short, so they run inline.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, redb::Error>) -> Result<T, Error> {
        let txn = self.db.begin_read().map_err(|e| unavailable("begin read", e))?;
        f(&txn).map_err(|e| unavailable("read", e))
    }

    /// Deletes the JSON values of `table` that `expired` says are old (or
    /// that cannot be read); returns how many went.
    pub async fn purge<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        expired: impl Fn(&T) -> bool + Send + 'static,
    ) -> Result<usize, Error> {
        self.write(move |txn| {
            let mut t = txn.open_table(table)?;
            let mut old = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                if serde_json::from_slice::<T>(v.value())
                    .map(|r| expired(&r))
                    .unwrap_or(true)
                {
                    old.push(k.value().to_string());
                }
            }
            for k in &old {
                t.remove(k.as_str())?;
            }
            Ok(old.len())
        })
        .await
    }

    pub fn ping(&self) -> Result<(), Error> {
        if self.writer.is_closed() {
            return Err(Error::Unavailable {
                message: "embedded database writer stopped".into(),
                source: None,
            });
        }
        self.read(|txn| {
            txn.open_table(FUNCTIONS)?;
            Ok(())
        })
    }
}

fn writer_loop(db: Arc<Database>, mut rx: mpsc::UnboundedReceiver<WriteReq>) {
    let mut batch: Vec<WriteReq> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let (applies, replies): (Vec<Apply>, Vec<_>) = batch.drain(..).map(|r| (r.apply, r.done)).unzip();
        let outcome = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            for apply in applies {
                apply(&txn)?;
            }
            txn.commit()?;
            Ok(())
        })();
        // A failed batch fails every write in it; storage errors are not per-request.
        let outcome = outcome.map_err(|e| e.to_string());
        for reply in replies {
            let _ = reply.send(outcome.clone());
        }
    }
}
