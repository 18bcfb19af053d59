//! Running functions: instance processes speaking the bootstrap protocol, and
//! the warm pool that keeps them for reuse.

pub mod cgroup;
pub mod host;
mod instance;
mod pool;
pub mod program;
pub mod protocol;
pub mod sandbox;

pub use instance::{Instance, InstanceSpec, RuntimeConfig, Sandbox, UidPool, Users};
pub use pool::{Invocation, Pool, PoolLimits, PoolStats, StartKind, WarmTarget};
pub use protocol::{InvokeRequest, Outcome};

/// The Python bootstrap, embedded in the binary (passed to `python3 -c`).
pub const PYTHON_BOOTSTRAP: &str = include_str!("bootstrap/python.py");
/// The Node.js bootstrap (passed to `node -e`).
pub const NODE_BOOTSTRAP: &str = include_str!("bootstrap/node.js");

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the runtime process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot prepare the instance directory: {0}")]
    Workdir(#[source] std::io::Error),
    #[error("instance protocol error: {0}")]
    Protocol(String),
    #[error("instance exited during start-up ({0})")]
    Exited(String),
    #[error("cannot set up the instance's cgroup: {0}")]
    Cgroup(#[source] std::io::Error),
    #[error("no unprivileged uid is free for another instance")]
    NoUid,
    #[error("the {0} runtime is not available on this worker ({1})")]
    Unavailable(crate::model::Runtime, String),
    #[error("instance did not become ready within {0:?}")]
    StartTimeout(std::time::Duration),
}
