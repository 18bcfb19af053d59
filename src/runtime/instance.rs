//! One runtime process. It starts generic (interpreter + bootstrap), is given
//! one function's code, environment and limits with `load`, then serves
//! `invoke`s one at a time. Where it runs, as whom and with what view of the
//! host is decided by `sandbox::plan`; this file applies that plan.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use super::protocol::{read_frame, write_frame, FromInstance, InvokeRequest, Outcome, ToInstance};
use super::sandbox::{self, HostLayout, Interpreter, User};
use super::{RuntimeError, NODE_BOOTSTRAP, PYTHON_BOOTSTRAP};
use crate::ai::AiSession;
use crate::function::settings::Handler;
use crate::model::{JobStatus, Runtime};

/// How instances are started on this host.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The Python interpreter (resolved to a real path, not a shim).
    pub python: PathBuf,
    /// The Node.js binary, when this worker has one.
    pub node: Option<PathBuf>,
    /// Parent of every instance's private directory (its code copy, and its
    /// working dir when there is no sandbox).
    pub instances_dir: PathBuf,
    pub start_timeout: Duration,
    /// When set, instances run inside a bubblewrap sandbox.
    pub sandbox: Option<Sandbox>,
    /// Generic instances kept started per runtime, ready to take any function.
    pub stem_cells: usize,
    /// Whom instances run as.
    pub users: Users,
    /// When set, each instance gets its own cgroup: a memory limit on its
    /// whole process tree and/or a process limit.
    pub cgroups: Option<super::cgroup::CgroupRoot>,
    /// Size of an instance's `/tmp` (its working dir) in the sandbox.
    pub tmp_bytes: u64,
}

/// Whom instances run as.
#[derive(Debug, Clone)]
pub enum Users {
    /// The worker is root: each instance gets its own unprivileged uid.
    Own(UidPool),
    /// The worker is root and `INSTANCE_USER=root` asked for root instances
    /// (without capabilities, still limited).
    Root,
    /// The worker is not root: instances keep its user.
    Worker,
}

/// Most processes (and threads) one instance may have: a fork bomb stops here.
pub const INSTANCE_MAX_PROCESSES: u64 = 128;
/// Largest file an instance may write.
pub const INSTANCE_MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;
/// Largest result (JSON) an invocation may return (AWS Lambda's response limit).
pub const MAX_RESULT_BYTES: usize = 6 * 1024 * 1024;
/// Most stdout or stderr kept per invocation (the bootstrap's own bound).
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// AI requests one invocation may send before it counts as a flood (the
/// relay's own budget, AI_MAX_CALLS_PER_INVOCATION, is far lower).
const MAX_AI_FRAMES: usize = 10_000;

/// Cuts captured output to MAX_OUTPUT_BYTES (on a character boundary).
fn bounded(mut s: String) -> String {
    if s.len() > MAX_OUTPUT_BYTES {
        let mut cut = MAX_OUTPUT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let dropped = s.len() - cut;
        s.truncate(cut);
        s.push_str(&format!("\n[truncated {dropped} bytes]"));
    }
    s
}

/// Unprivileged uids for instances, one per live instance, so per-uid limits
/// (RLIMIT_NPROC) are per instance. Handed out first-in first-out, so a uid
/// comes back only after all the others were used.
///
/// A uid is also exclusive across processes: every worker on the host takes
/// an exclusive `flock` on `<lock_dir>/<uid>` for as long as it uses the uid
/// and skips uids another process holds. Workers sharing a host (or several
/// `infra` processes) would otherwise give one uid to two functions at once,
/// letting one signal the other's processes, and the end of one's lease would
/// kill the other's. The kernel drops the lock when its holder dies, even by
/// SIGKILL, so a crashed worker's uids come back; the lock file then still
/// says `held`, and the next lease first kills what was left running as it.
#[derive(Debug, Clone)]
pub struct UidPool {
    free: Arc<Mutex<VecDeque<u32>>>,
    lock_dir: Arc<PathBuf>,
}

/// A lock file's content once its uid's processes were all killed at the
/// end of a lease: the next lease needs no kill of its own (a fork).
const UID_CLEAN: &[u8] = b"clean";
/// A lock file's content while its uid is in use.
const UID_HELD: &[u8] = b"held";

impl UidPool {
    /// `count` uids from `base`; `lock_dir` must exist and be shared by
    /// every worker on the host.
    pub fn new(base: u32, count: u32, lock_dir: PathBuf) -> UidPool {
        UidPool {
            free: Arc::new(Mutex::new((base..base.saturating_add(count)).collect())),
            lock_dir: Arc::new(lock_dir),
        }
    }

    /// A uid no process on this host uses, with anything left running as it
    /// killed; `None` when all of them are taken (or cannot be locked).
    pub(super) fn lease(&self) -> Option<UidLease> {
        let tries = self.free.lock().ok()?.len();
        for _ in 0..tries {
            let (uid, lock, clean) = self.lock_next()?;
            let lease = UidLease {
                uid,
                pool: self.free.clone(),
                lock: Some(lock),
                killed: std::sync::atomic::AtomicBool::new(false),
            };
            // Left clean by the last lease, or by a holder that died (or new
            // since boot, or from a worker without these locks), which may
            // have left processes behind. Killed outside the pool's mutex.
            if clean || kill_uid(uid) {
                return Some(lease);
            }
            // Not killed: not used. Dropping the lease tries again and keeps
            // the uid out of the pool if that fails too.
            drop(lease);
        }
        None
    }

    /// The next free uid this process could lock, marked in use, and whether
    /// its last lease ended cleanly.
    fn lock_next(&self) -> Option<(u32, std::fs::File, bool)> {
        let mut free = self.free.lock().ok()?;
        for _ in 0..free.len() {
            let uid = free.pop_front()?;
            let lock = match lock_uid(&self.lock_dir, uid) {
                Ok(Some(lock)) => lock,
                // Another process's: try it again after the others.
                Ok(None) => {
                    free.push_back(uid);
                    continue;
                }
                Err(e) => {
                    free.push_back(uid);
                    tracing::error!(uid, dir = %self.lock_dir.display(), error = %e, "cannot lock an instance uid");
                    return None;
                }
            };
            let clean = was_clean(&lock);
            if let Err(e) = mark(&lock, UID_HELD) {
                // Unmarked, a crash would pass for a clean end: not used.
                tracing::error!(uid, error = %e, "cannot mark an instance uid in use");
                free.push_back(uid);
                return None;
            }
            return Some((uid, lock, clean));
        }
        None
    }
}

/// Takes the host-wide lock of `uid`: `Ok(None)` when another process holds it.
fn lock_uid(dir: &Path, uid: u32) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(uid.to_string()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

fn was_clean(lock: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 8];
    matches!(lock.read_at(&mut buf, 0), Ok(n) if &buf[..n] == UID_CLEAN)
}

fn mark(lock: &std::fs::File, state: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    lock.set_len(0)?;
    lock.write_all_at(state, 0)
}

/// Kills every process running as `uid`. A uid is leased to one instance or
/// program run only, so these are all its processes, also those a
/// process-group kill misses: a daemon that left the group with `setsid()`
/// (without a sandbox no PID namespace ends it). It would otherwise outlive
/// its run, write to the output dir while the worker collects it, and still
/// run as this uid when the uid is handed to another function (whose input
/// and output dir are that uid's). Blocking (a fork and a wait). False when
/// it could not be done (no fork, or the switch to the uid failed).
fn kill_uid(uid: u32) -> bool {
    // SAFETY: the child makes only async-signal-safe system calls
    // (setresuid, kill, _exit) before it exits; the parent reaps it.
    let killed = unsafe {
        let pid = libc::fork();
        if pid == 0 {
            // kill(-1) as this uid reaches exactly the processes whose
            // real or saved uid is this one (never the worker, root).
            // One pass suffices against a fork bomb: a process with a
            // SIGKILL pending cannot fork; the second is for good measure.
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                libc::_exit(1);
            }
            libc::kill(-1, libc::SIGKILL);
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(0);
        }
        let mut status = 0;
        pid > 0 && {
            let mut reaped = libc::waitpid(pid, &mut status, 0);
            while reaped < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                reaped = libc::waitpid(pid, &mut status, 0);
            }
            // Only a child seen to exit 0 did the kill.
            reaped == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        }
    };
    if !killed {
        tracing::error!(uid, error = %std::io::Error::last_os_error(), "cannot kill the processes of an instance uid");
    }
    killed
}

/// A uid in use; returned to its pool (and its host-wide lock released)
/// when the instance is dropped.
#[derive(Debug)]
pub(super) struct UidLease {
    pub(super) uid: u32,
    pool: Arc<Mutex<VecDeque<u32>>>,
    /// Holds the uid's `flock` while open (taken when the lease ends).
    lock: Option<std::fs::File>,
    /// Set by a successful `kill_processes`: nothing has run as the uid since
    /// (its holder starts nothing more), so the end of the lease need not
    /// kill again.
    killed: std::sync::atomic::AtomicBool,
}

impl UidLease {
    /// Kills every process running as this uid now (see [`kill_uid`]), on a
    /// blocking thread (it forks and waits). The caller must start nothing
    /// more as this uid afterwards.
    pub(super) async fn kill_processes(&self) -> bool {
        let uid = self.uid;
        let killed = tokio::task::spawn_blocking(move || kill_uid(uid))
            .await
            .unwrap_or(false);
        if killed {
            self.killed.store(true, std::sync::atomic::Ordering::Release);
        }
        killed
    }
}

impl Drop for UidLease {
    /// Nothing of this run may be alive when the uid goes to another: its
    /// processes are killed, then it is marked clean, unlocked and returned.
    /// Off the caller's path (a fork) when a runtime is at hand; the uid
    /// stays out of use until then.
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else { return };
        let (uid, pool) = (self.uid, self.pool.clone());
        let killed = self.killed.load(std::sync::atomic::Ordering::Acquire);
        let release = move || {
            if !killed && !kill_uid(uid) {
                // Something of it may live on: the uid stays out of this
                // pool, and its file says `held` for any other worker.
                tracing::error!(uid, "instance uid withdrawn: its processes could not be killed");
                return;
            }
            if let Err(e) = mark(&lock, UID_CLEAN) {
                // Still `held`: the next lease kills again, no harm.
                tracing::debug!(uid, error = %e, "cannot mark an instance uid clean");
            }
            drop(lock);
            if let Ok(mut free) = pool.lock() {
                free.push_back(uid);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

/// The address-space ceiling of a stem cell until it learns its function's
/// memory limit (the largest a function may have).
const STEM_MEMORY_MB: u32 = crate::function::settings::MEMORY_MB_MAX;

/// What is known about an instance when it starts: a function's (fresh
/// start) or nothing yet (stem cell).
struct Launch<'a> {
    runtime: Runtime,
    network: bool,
    code_dir: Option<&'a Path>,
    memory_mb: u32,
}

/// The bubblewrap sandbox: the binary and the host layout it shows.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub bwrap: PathBuf,
    pub layout: HostLayout,
}

/// Everything that makes an instance specific to one function version.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub function_id: String,
    pub function_name: String,
    pub runtime: Runtime,
    pub code_dir: PathBuf,
    pub handler: Handler,
    pub memory_mb: u32,
    pub env_vars: BTreeMap<String, String>,
    /// Code version (sha256); instances of other versions are never reused.
    pub version: String,
    /// The function may use the network (no network namespace of its own).
    pub network: bool,
}

impl InstanceSpec {
    /// Instances are interchangeable only when all of this matches.
    pub fn pool_key(&self) -> String {
        let env = serde_json::to_string(&self.env_vars).unwrap_or_default();
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.function_id, self.version, self.memory_mb, self.handler, self.network, env
        )
    }
}

pub struct Instance {
    runtime: Runtime,
    child: Child,
    pid: i32,
    chan: UnixStream,
    /// The instance's private directory on the host: `code/` (its own
    /// hard-linked copy of the function's code) and, without a sandbox,
    /// `work/`. Removed when the instance is dropped.
    root: tempfile::TempDir,
    /// Where the instance itself sees its code (`/var/task` in the sandbox).
    code_path: PathBuf,
    /// The end of what the process wrote to stderr outside invocations (a
    /// runtime's fatal error message).
    stderr_tail: Arc<Mutex<String>>,
    /// Removed when dropped, after the processes are killed (Drop).
    cgroup: Option<super::cgroup::Cgroup>,
    // Declared last: returned to the pool after the process is killed (Drop).
    _uid: Option<UidLease>,
}

/// The runtime's binary, its name in the sandbox, and the rlimit that bounds
/// its memory where no cgroup does (for instances and programs alike).
pub(super) fn interpreter(
    cfg: &RuntimeConfig,
    runtime: Runtime,
) -> Result<(PathBuf, &'static str, libc::__rlimit_resource_t), RuntimeError> {
    match runtime {
        Runtime::Python => Ok((cfg.python.clone(), "python", libc::RLIMIT_AS)),
        // V8 reserves far more address space than it uses, so an address-space
        // limit stops Node from starting: limit the data segment instead.
        Runtime::Nodejs => match &cfg.node {
            Some(node) => Ok((node.clone(), "nodejs", libc::RLIMIT_DATA)),
            None => Err(RuntimeError::Unavailable(
                Runtime::Nodejs,
                "no node binary (NODE_BIN)".to_string(),
            )),
        },
    }
}

/// Whom a new instance or program run runs as: its own leased uid when the
/// worker is root, else root (asked for) or the worker's user.
pub(super) fn run_as(cfg: &RuntimeConfig) -> Result<(Option<UidLease>, User), RuntimeError> {
    let lease = match &cfg.users {
        Users::Own(pool) => Some(pool.lease().ok_or(RuntimeError::NoUid)?),
        Users::Root | Users::Worker => None,
    };
    let user = match (&cfg.users, &lease) {
        (_, Some(l)) => User::Uid(l.uid),
        (Users::Root, _) => User::Root,
        _ => User::Worker,
    };
    Ok((lease, user))
}

/// Puts each `(fd, target)` at its target in a child between fork and exec
/// (clearing close-on-exec). Every source is first copied above the targets,
/// so a source that already sits on another pair's target is not overwritten
/// before it moves. Async-signal-safe (no allocation: at most 3 pairs).
fn place_fds(pairs: &[(i32, i32)]) -> std::io::Result<()> {
    let mut high = [-1i32; 3];
    if pairs.len() > high.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: plain fcntl/dup2 on fds this process owns.
    unsafe {
        for (slot, (fd, _)) in high.iter_mut().zip(pairs) {
            *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64);
            if *slot < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for (copy, (_, target)) in high.iter().zip(pairs) {
            if libc::dup2(*copy, *target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Marks every fd from `first` up close-on-exec. Async-signal-safe.
fn close_others_on_exec(first: u32) -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain system calls on this process's own descriptor table.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) == 0 {
            return Ok(());
        }
        // Kernels before 5.11: walk the table (bounded by RLIMIT_NOFILE).
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as i32
        } else {
            65_536
        };
        for fd in first as i32..top {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// What a child process does between fork and exec, for instances and
/// programs alike: join its cgroups, take its fds, shed every other fd,
/// start its own session, take its limits and (without a sandbox) its uid.
pub(super) struct ChildSetup {
    /// `cgroup.procs` files the child joins first.
    pub procs: Vec<std::os::fd::OwnedFd>,
    /// `(fd, target)` pairs placed in the child (at most 3).
    pub fds: Vec<(i32, i32)>,
    /// Every fd from this one up is closed on exec.
    pub keep_below: u32,
    pub memory_resource: libc::__rlimit_resource_t,
    pub memory_bytes: u64,
    /// RLIMIT_NPROC (per-uid limits hold only for unprivileged users).
    pub limit_processes: bool,
    /// The uid the worker itself switches to (no sandbox).
    pub setuid_here: Option<u32>,
}

impl ChildSetup {
    pub fn install(self, cmd: &mut Command) {
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls (write, fcntl, dup2, setsid,
        // setrlimit, setgroups, setgid, setuid, prctl); `self` was built
        // before the fork, so nothing is allocated here.
        unsafe {
            cmd.pre_exec(move || {
                // Join the cgroups before anything else runs, so every later
                // process of the child is inside them.
                for p in &self.procs {
                    super::cgroup::join_from_child(p)?;
                }
                if !self.fds.is_empty() {
                    place_fds(&self.fds)?;
                }
                // Nothing else the worker holds (whatever its launcher left
                // open without close-on-exec) may reach the child.
                close_others_on_exec(self.keep_below)?;
                // Own process group, so a timeout kills the function's children too.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let limit = |resource, value: u64| {
                    let rl = libc::rlimit {
                        rlim_cur: value as libc::rlim_t,
                        rlim_max: value as libc::rlim_t,
                    };
                    libc::setrlimit(resource, &rl)
                };
                // The memory limit where no cgroup is available; no core
                // dumps; no file larger than the bound (root included: the
                // sandbox leaves it no capability to raise a limit).
                if limit(self.memory_resource, self.memory_bytes) != 0
                    || limit(libc::RLIMIT_CORE, 0) != 0
                    || limit(libc::RLIMIT_FSIZE, INSTANCE_MAX_FILE_BYTES) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if self.limit_processes && limit(libc::RLIMIT_NPROC, INSTANCE_MAX_PROCESSES) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(uid) = self.setuid_here {
                    if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Die with the worker rather than linger as an orphan (after
                // setuid, which clears this setting).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
}

impl Instance {
    /// Starts an instance for `spec` (memory limit, network and code known at
    /// start) and waits for its bootstrap to report ready; `load` then gives
    /// it the environment and imports the handler.
    pub async fn spawn(cfg: &RuntimeConfig, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let launch = Launch {
            runtime: spec.runtime,
            network: spec.network,
            code_dir: Some(&spec.code_dir),
            memory_mb: spec.memory_mb,
        };
        Self::start(cfg, launch).await
    }

    /// Starts a stem cell: interpreter and bootstrap only; `load_stem` later
    /// gives it a function's code, memory limit and environment.
    pub async fn spawn_stem(cfg: &RuntimeConfig, runtime: Runtime) -> Result<Instance, RuntimeError> {
        Self::start(
            cfg,
            Launch {
                runtime,
                // Stem cells serve functions without network only.
                network: false,
                code_dir: None,
                memory_mb: STEM_MEMORY_MB,
            },
        )
        .await
    }

    async fn start(cfg: &RuntimeConfig, launch: Launch<'_>) -> Result<Instance, RuntimeError> {
        let (program, name, memory_resource) = interpreter(cfg, launch.runtime)?;
        let args = match launch.runtime {
            Runtime::Python => vec!["-I", "-u", "-c", PYTHON_BOOTSTRAP],
            Runtime::Nodejs => vec!["-e", NODE_BOOTSTRAP],
        };
        let (lease, user) = run_as(cfg)?;
        let uid = lease.as_ref().map(|l| l.uid);
        let root = prepare_root(cfg, launch.code_dir, uid, cfg.sandbox.is_some())
            .await
            .map_err(RuntimeError::Workdir)?;
        let (parent, child_end) = std::os::unix::net::UnixStream::pair().map_err(RuntimeError::Spawn)?;
        let child_fd = child_end.as_raw_fd();
        let memory_bytes = u64::from(launch.memory_mb) * 1024 * 1024;
        let cgroup = match &cfg.cgroups {
            Some(root) => Some(
                root.create(memory_bytes, INSTANCE_MAX_PROCESSES)
                    .map_err(RuntimeError::Cgroup)?,
            ),
            None => None,
        };
        let procs = match &cgroup {
            Some(cg) => cg.procs_files().map_err(RuntimeError::Cgroup)?,
            None => Vec::new(),
        };

        let workdir = root.path().join("work");
        let mut seccomp = None;
        let (mut cmd, options, code_path) = match &cfg.sandbox {
            Some(sb) => {
                let interpreter = Interpreter::new(program.clone(), name, &sb.layout.system);
                let (passwd, group) = sandbox::accounts(uid.unwrap_or(0));
                let (passwd_file, group_file) = (root.path().join("passwd"), root.path().join("group"));
                std::fs::write(&passwd_file, passwd).map_err(RuntimeError::Workdir)?;
                std::fs::write(&group_file, group).map_err(RuntimeError::Workdir)?;
                let code = root.path().join("code");
                let plan = sandbox::plan(
                    &sb.layout,
                    &sandbox::Request {
                        interpreter: &interpreter,
                        args: &args,
                        code: &code,
                        passwd: &passwd_file,
                        group: &group_file,
                        network: launch.network,
                        tmp_bytes: cfg.tmp_bytes,
                        user,
                        binds: &[],
                        env: &[],
                    },
                );
                // bubblewrap reads its options (host paths) from fd 4, so
                // they never show in any process's command line.
                let mut file = tempfile::tempfile().map_err(RuntimeError::Spawn)?;
                for opt in &plan.options {
                    use std::os::unix::ffi::OsStrExt;
                    file.write_all(opt.as_bytes()).map_err(RuntimeError::Spawn)?;
                    file.write_all(b"\0").map_err(RuntimeError::Spawn)?;
                }
                file.rewind().map_err(RuntimeError::Spawn)?;
                let mut filter = tempfile::tempfile().map_err(RuntimeError::Spawn)?;
                filter
                    .write_all(&sandbox::seccomp_filter())
                    .and_then(|()| filter.rewind())
                    .map_err(RuntimeError::Spawn)?;
                seccomp = Some(filter);
                let mut cmd = Command::new(&sb.bwrap);
                cmd.args(["--args", "4"]).args(&plan.command).env_clear();
                (cmd, Some(file), PathBuf::from(sandbox::CODE_DIR))
            }
            None => {
                let mut cmd = Command::new(&program);
                cmd.args(&args)
                    .env_clear()
                    .envs(sandbox::base_env(&workdir, None))
                    .current_dir(&workdir);
                (cmd, None, root.path().join("code"))
            }
        };
        let options_fd = options.as_ref().map(|f| f.as_raw_fd());
        let seccomp_fd = seccomp.as_ref().map(|f: &std::fs::File| f.as_raw_fd());
        // Without a sandbox the worker itself leaves root for the instance's uid.
        let setuid_here = if cfg.sandbox.is_none() { uid } else { None };
        let limit_processes = uid.is_some();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let setup = ChildSetup {
            procs,
            fds: match (options_fd, seccomp_fd) {
                (Some(options), Some(filter)) => vec![(child_fd, 3), (options, 4), (filter, sandbox::SECCOMP_FD)],
                _ => vec![(child_fd, 3)],
            },
            keep_below: if seccomp_fd.is_some() { 6 } else { 4 },
            memory_resource,
            memory_bytes,
            limit_processes,
            setuid_here,
        };
        setup.install(&mut cmd);
        let mut child = cmd.spawn().map_err(RuntimeError::Spawn)?;
        drop(child_end);
        drop(options);
        drop(seccomp);
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        drain_output(child.stdout.take(), pid, "stdout", None);
        drain_output(child.stderr.take(), pid, "stderr", Some(stderr_tail.clone()));
        parent.set_nonblocking(true).map_err(RuntimeError::Spawn)?;
        let chan = UnixStream::from_std(parent).map_err(RuntimeError::Spawn)?;
        let mut instance = Instance {
            runtime: launch.runtime,
            child,
            pid,
            chan,
            root,
            code_path,
            stderr_tail,
            cgroup,
            _uid: lease,
        };

        match tokio::time::timeout(cfg.start_timeout, read_frame(&mut instance.chan)).await {
            Ok(Ok(Some(FromInstance::Ready { .. }))) => Ok(instance),
            Ok(Ok(Some(other))) => {
                instance.kill();
                Err(RuntimeError::Protocol(format!("expected ready, got {other:?}")))
            }
            Ok(Ok(None)) => {
                let (_, how) = instance.exit_status().await;
                Err(RuntimeError::Exited(how))
            }
            Ok(Err(e)) => {
                instance.kill();
                Err(e)
            }
            Err(_) => {
                instance.kill();
                Err(RuntimeError::StartTimeout(cfg.start_timeout))
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Gives a freshly spawned instance its environment and imports the
    /// handler. On failure the outcome to report (the instance is then unusable).
    pub async fn load(&mut self, spec: &InstanceSpec, timeout: Duration) -> Result<f64, Outcome> {
        self.load_with(&spec.handler, timeout, None, &spec.env_vars).await
    }

    /// Turns a stem cell into `spec`'s instance: links the code into the
    /// instance's own directory (the only one its sandbox shows), then has the
    /// bootstrap take the memory limit and environment before importing.
    pub async fn load_stem(&mut self, spec: &InstanceSpec, timeout: Duration) -> Result<f64, Outcome> {
        let source = spec.code_dir.clone();
        let copy_to = self.root.path().join("code");
        let copied = tokio::task::spawn_blocking(move || link_tree(&source, &copy_to)).await;
        if !matches!(copied, Ok(Ok(()))) {
            self.kill();
            return Err(Outcome::failed(
                JobStatus::Crashed,
                "CodeCopyFailed",
                "cannot give the code to a stem cell",
            ));
        }
        let memory_bytes = u64::from(spec.memory_mb) * 1024 * 1024;
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.set_limit(memory_bytes) {
                self.kill();
                return Err(Outcome::failed(
                    JobStatus::Crashed,
                    "MemoryLimitFailed",
                    format!("cannot set the memory limit on a stem cell: {e}"),
                ));
            }
        }
        // Python lowers its own limit from the load message. Node has no
        // setrlimit: the worker sets it from here, which needs CAP_SYS_RESOURCE
        // over another user's process; without it the bootstrap runs prlimit
        // on itself (always allowed) from the same message. With a memory
        // cgroup (set above) that is the limit.
        let self_limit = match self.runtime {
            Runtime::Python => Some(memory_bytes),
            // A memory cgroup already bounds the whole instance: the rlimit
            // (a prlimit process in the instance when the worker lacks
            // CAP_SYS_RESOURCE, ~6 ms) would add nothing.
            Runtime::Nodejs if self.cgroup.as_ref().is_some_and(|c| c.limits_memory()) => None,
            Runtime::Nodejs => limit_tree(self.pid, libc::RLIMIT_DATA, memory_bytes).err().map(|e| {
                tracing::debug!(error = %e, "the Node instance limits its own memory");
                memory_bytes
            }),
        };
        self.load_with(&spec.handler, timeout, self_limit, &spec.env_vars).await
    }

    async fn load_with(
        &mut self,
        handler: &Handler,
        timeout: Duration,
        memory_bytes: Option<u64>,
        env: &BTreeMap<String, String>,
    ) -> Result<f64, Outcome> {
        let code_dir = self.code_path.to_string_lossy().into_owned();
        let msg = ToInstance::Load {
            code_dir: &code_dir,
            module: &handler.module,
            function: &handler.function,
            memory_bytes,
            env: Some(env),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, write_frame(&mut self.chan, &msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.died_or(e).await),
            Err(_) => {
                self.kill();
                return Err(Outcome::failed(
                    JobStatus::Timeout,
                    "InitTimeout",
                    "the instance stopped reading its protocol socket",
                ));
            }
        }
        match tokio::time::timeout_at(deadline, read_frame(&mut self.chan)).await {
            Ok(Ok(Some(FromInstance::Loaded { init_ms }))) => Ok(init_ms),
            Ok(Ok(Some(FromInstance::LoadError {
                status,
                error,
                stdout,
                stderr,
            }))) => Err(Outcome {
                status,
                error: Some(error),
                stdout,
                stderr,
                ..Outcome::failed(status, "", "")
            }),
            Ok(Ok(Some(other))) => Err(Outcome::failed(
                JobStatus::Crashed,
                "ProtocolError",
                format!("unexpected {other:?}"),
            )),
            Ok(Ok(None)) => Err(self.crashed().await),
            Ok(Err(e)) => Err(self.died_or(e).await),
            Err(_) => {
                self.kill();
                Err(Outcome::failed(
                    JobStatus::Timeout,
                    "InitTimeout",
                    format!("importing the handler took longer than {} ms", timeout.as_millis()),
                ))
            }
        }
    }

    /// Runs one invocation. Returns the outcome and whether the instance may be
    /// reused (it may not after a timeout, crash, protocol error or OOM).
    pub async fn invoke(&mut self, req: &InvokeRequest, ai: &mut AiSession) -> (Outcome, bool) {
        let msg = ToInstance::Invoke {
            request_id: &req.request_id,
            function_id: &req.function_id,
            function_name: &req.function_name,
            memory_mb: req.memory_mb,
            model_id: req.model_id.as_deref(),
            timeout_ms: req.timeout_ms,
            event: &req.event,
        };
        let timeout = Duration::from_millis(req.timeout_ms);
        let started = Instant::now();
        let cpu_before = self.cpu_time();
        let deadline = tokio::time::Instant::now() + timeout;
        // Every write to the instance runs under the invocation's deadline: an
        // instance that stops reading must not hold the worker.
        match tokio::time::timeout_at(deadline, write_frame(&mut self.chan, &msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (self.died_or(e).await, false),
            Err(_) => return (self.timed_out(req.timeout_ms, started), false),
        }
        let mut ai_frames = 0usize;
        loop {
            let frame = tokio::time::timeout_at(deadline, read_frame(&mut self.chan)).await;
            return match frame {
                Ok(Ok(Some(FromInstance::Ai(_)))) if ai_frames >= MAX_AI_FRAMES => {
                    self.kill();
                    (
                        Outcome::failed(
                            JobStatus::Crashed,
                            "ProtocolViolation",
                            format!("more than {MAX_AI_FRAMES} AI requests in one invocation"),
                        ),
                        false,
                    )
                }
                Ok(Ok(Some(FromInstance::Ai(request)))) => {
                    ai_frames += 1;
                    // Relay within the invocation's own deadline, then keep waiting.
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let reply = ai.handle(&serde_json::Value::Object(request), left).await;
                    let msg = match &reply {
                        Ok(value) => ToInstance::AiReply {
                            ok: true,
                            value: Some(value),
                            error: None,
                        },
                        Err(e) => ToInstance::AiReply {
                            ok: false,
                            value: None,
                            error: Some(e.to_string()),
                        },
                    };
                    match tokio::time::timeout_at(deadline, write_frame(&mut self.chan, &msg)).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => return (self.died_or(e).await, false),
                        Err(_) => return (self.timed_out(req.timeout_ms, started), false),
                    }
                }
                Ok(Ok(Some(FromInstance::Result {
                    status,
                    value_json,
                    error,
                    stdout,
                    stderr,
                    duration_ms,
                    peak_memory_bytes,
                    strays,
                    discard,
                }))) => {
                    let value = if value_json.len() > MAX_RESULT_BYTES {
                        serde_json::Value::Null
                    } else {
                        serde_json::from_str(&value_json).unwrap_or(serde_json::Value::Null)
                    };
                    // The kernel stopped one of the instance's processes (a
                    // child the handler started) for exceeding the limit.
                    // (A new cgroup starts at 0, and an OOM retires the instance.)
                    let oom_killed = self.cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > 0);
                    let (status, error) = if oom_killed && status != JobStatus::Oom {
                        (
                            JobStatus::Oom,
                            Some(crate::model::ErrorInfo {
                                error_type: "OutOfMemory".into(),
                                message:
                                    "the function's processes together exceeded its memoryMb; the kernel stopped one"
                                        .into(),
                                traceback: None,
                            }),
                        )
                    } else {
                        (status, error)
                    };
                    // What the instance reports is the function's word: bound it here
                    // too (the bootstrap's own caps can be bypassed by a forged frame).
                    let (status, value, error) = if value_json.len() > MAX_RESULT_BYTES {
                        (
                            JobStatus::Error,
                            serde_json::Value::Null,
                            Some(crate::model::ErrorInfo {
                                error_type: "ResultTooLarge".into(),
                                message: format!(
                                    "the handler returned {} bytes of JSON; the limit is {MAX_RESULT_BYTES}",
                                    value_json.len()
                                ),
                                traceback: None,
                            }),
                        )
                    } else {
                        (status, value, error)
                    };
                    let outcome = Outcome {
                        status,
                        value,
                        error,
                        stdout: bounded(stdout),
                        stderr: bounded(stderr),
                        duration_ms,
                        peak_memory_bytes,
                        exit_code: (status == JobStatus::Success).then_some(0),
                        cpu_ms: cpu_before
                            .filter(|b| b.measures(started.elapsed()))
                            .and_then(|b| self.cpu_time().map(|a| (a.ms - b.ms).max(0.0))),
                    };
                    // An instance that hit its memory limit may be left in a bad state;
                    // one with processes still running (a fork bomb, a forgotten
                    // child) is never handed to the next invocation.
                    (outcome, status != JobStatus::Oom && strays == 0 && !discard)
                }
                Ok(Ok(Some(other))) => {
                    self.kill();
                    (
                        Outcome::failed(JobStatus::Crashed, "ProtocolError", format!("unexpected {other:?}")),
                        false,
                    )
                }
                Ok(Ok(None)) => (self.crashed().await, false),
                Ok(Err(e)) => (self.died_or(e).await, false),
                Err(_) => (self.timed_out(req.timeout_ms, started), false),
            };
        }
    }

    /// The CPU time of the instance so far: its cgroup's (v2), else the
    /// sum over its process tree from /proc (in clock ticks).
    fn cpu_time(&self) -> Option<CpuTime> {
        if let Some(usec) = self.cgroup.as_ref().and_then(|cg| cg.cpu_usage_usec()) {
            return Some(CpuTime {
                ms: usec as f64 / 1000.0,
                resolution_ms: 0.001,
            });
        }
        tree_cpu_ms(self.pid).map(|(ms, tick_ms)| CpuTime {
            ms,
            resolution_ms: tick_ms,
        })
    }

    fn timed_out(&mut self, timeout_ms: u64, started: Instant) -> Outcome {
        self.kill();
        let mut o = Outcome::failed(
            JobStatus::Timeout,
            "Timeout",
            format!("the handler did not finish within {timeout_ms} ms and was stopped"),
        );
        o.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        o
    }

    /// Whether the instance wrote anything it was not asked for (a handler
    /// forging frames on the protocol socket) or went away: such an instance
    /// is out of step with the worker and is never given another request.
    pub fn is_out_of_step(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.chan.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Kills the instance and all its descendants.
    pub fn kill(&mut self) {
        if self.pid > 0 {
            // SAFETY: plain syscall; a negative pid addresses the instance's process group.
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
    }

    async fn died_or(&mut self, e: RuntimeError) -> Outcome {
        match tokio::time::timeout(Duration::from_millis(200), self.child.wait()).await {
            Ok(_) => self.crashed().await,
            Err(_) => {
                self.kill();
                Outcome::failed(JobStatus::Crashed, "ProtocolError", e.to_string())
            }
        }
    }

    async fn crashed(&mut self) -> Outcome {
        let (code, how) = self.exit_status().await;
        // Give the stderr reader a moment to take the last words.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tail = self.stderr_tail.lock().map(|t| t.clone()).unwrap_or_default();
        // V8 aborts the process when its heap cannot grow within the limit;
        // the kernel kills it when the cgroup's limit is reached.
        let oom_killed = self.cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > 0);
        let mut o = if oom_killed || tail.contains("out of memory") || tail.contains("Allocation failed") {
            Outcome::failed(
                JobStatus::Oom,
                "OutOfMemory",
                "the function ran out of memory (its memoryMb limit) and was stopped",
            )
        } else {
            Outcome::failed(
                JobStatus::Crashed,
                "InstanceExited",
                format!("the function process {how}"),
            )
        };
        o.exit_code = code;
        o
    }

    /// Exit code (128+signal for signals) and a description.
    async fn exit_status(&mut self) -> (Option<i32>, String) {
        match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (Some(c), _) => (Some(c), format!("exited with code {c}")),
                (None, Some(s)) => (Some(128 + s), format!("was killed by signal {s}")),
                _ => (None, "ended".to_string()),
            },
            _ => {
                self.kill();
                (None, "stopped responding".to_string())
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes an instance's private directory: `code/` (filled from the code
/// cache now for a fresh start, at load for a stem cell) and, without a
/// sandbox, `work/` owned by the instance's user. Only the worker (and, without
/// a sandbox, the instance's own group) may enter it.
async fn prepare_root(
    cfg: &RuntimeConfig,
    code_dir: Option<&Path>,
    uid: Option<u32>,
    sandboxed: bool,
) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let instances = cfg.instances_dir.clone();
    let code_dir = code_dir.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&instances)?;
        let root = tempfile::Builder::new().prefix("inst-").tempdir_in(&instances)?;
        let code = root.path().join("code");
        std::fs::create_dir(&code)?;
        std::fs::set_permissions(&code, std::fs::Permissions::from_mode(0o755))?;
        if let Some(from) = &code_dir {
            link_tree(from, &code)?;
        }
        let mut mode = 0o700;
        if !sandboxed {
            let work = root.path().join("work");
            std::fs::create_dir(&work)?;
            std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))?;
            if let Some(uid) = uid {
                // The instance's own directory is the only place it may write;
                // its group (its uid) may enter the instance root, nobody else.
                std::os::unix::fs::chown(&work, Some(uid), Some(uid))?;
                std::os::unix::fs::chown(root.path(), None, Some(uid))?;
                mode = 0o750;
            }
        }
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(mode))?;
        Ok(root)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Gives `to` the code tree of `from` (regular files and directories only):
/// hard links where the file system allows (cheap, and the instance cannot
/// write them: they belong to the worker), copies otherwise.
pub(super) fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else if kind.is_file() && std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Logs what the process writes outside a handler's captured output (e.g.
/// C-level writes), so the pipe never fills up and blocks the instance.
fn drain_output<R: AsyncReadExt + Unpin + Send + 'static>(
    pipe: Option<R>,
    pid: i32,
    stream: &'static str,
    tail: Option<Arc<Mutex<String>>>,
) {
    const TAIL: usize = 4096;
    let Some(mut pipe) = pipe else { return };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(Ok(mut t)) = tail.as_ref().map(|t| t.lock()) {
                        t.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if t.len() > TAIL {
                            let mut cut = t.len() - TAIL;
                            while !t.is_char_boundary(cut) {
                                cut += 1;
                            }
                            t.drain(..cut);
                        }
                    }
                    tracing::debug!(pid, stream, output = %String::from_utf8_lossy(&buf[..n]), "instance output");
                }
            }
        }
    });
}

/// A reading of an instance's CPU time.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    ms: f64,
    /// The source's granularity (a clock tick for /proc).
    resolution_ms: f64,
}

impl CpuTime {
    /// Whether this source can measure a run of `wall`: at least 20 of its
    /// units (a 3 ms handler on a 10 ms clock tick reads as 0 % or 300 %,
    /// both false). Short runs on /proc then cost no second reading.
    fn measures(self, wall: Duration) -> bool {
        wall.as_secs_f64() * 1000.0 >= 20.0 * self.resolution_ms
    }
}

/// User and system CPU time of `pid` and its descendants (children it has
/// reaped included), in ms, with the clock tick in ms.
fn tree_cpu_ms(pid: i32) -> Option<(f64, f64)> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    let tick_ms = 1000.0 / ticks as f64;
    let mut total: u64 = 0;
    let mut pending = vec![pid];
    let mut seen = 0usize;
    while let Some(p) = pending.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces), from field 3 on.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime, stime, cutime, cstime are fields 14 to 17 (indices 11 to 14 here).
        total += fields
            .get(11..15)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum::<u64>())
            .unwrap_or(0);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                pending.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
    }
    (seen > 0).then_some((total as f64 * tick_ms, tick_ms))
}

/// Sets a resource limit on a process and all its descendants (a sandboxed
/// runtime sits below bubblewrap's own processes).
fn limit_tree(pid: i32, resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    let mut pending = vec![pid];
    while let Some(p) = pending.pop() {
        // SAFETY: plain syscall on a pid we started (or its descendants); rl outlives the call.
        if unsafe { libc::prlimit(p, resource, &rl, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                pending.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Far above any uid a test machine gives out: leasing kills whatever
    /// runs as it, which must be nothing.
    const BASE: u32 = 3_900_000_000;

    #[test]
    fn two_pools_on_one_host_never_hold_the_same_uid() {
        let locks = tempfile::tempdir().unwrap();
        // Two pools over one lock dir behave as two worker processes would:
        // flock excludes other open files of the same path, in any process.
        let a = UidPool::new(BASE, 3, locks.path().to_path_buf());
        let b = UidPool::new(BASE, 3, locks.path().to_path_buf());
        let a1 = a.lease().unwrap();
        let a2 = a.lease().unwrap();
        let b1 = b.lease().unwrap();
        assert_eq!((a1.uid, a2.uid), (BASE, BASE + 1));
        assert_eq!(b1.uid, BASE + 2, "b skips the uids a holds");
        assert!(b.lease().is_none(), "every uid is held by one pool or the other");
        assert!(a.lease().is_none());
        drop(a1);
        assert_eq!(
            b.lease().unwrap().uid,
            BASE,
            "a released uid is free for the other pool"
        );
    }

    #[test]
    fn a_uid_another_process_holds_is_skipped_until_that_process_dies() {
        let locks = tempfile::tempdir().unwrap();
        let uid = BASE + 10;
        // Another process (util-linux flock; -o: it alone holds the lock,
        // not the command it runs) holds the uid's lock.
        let mut other = std::process::Command::new("flock")
            .arg("-o")
            .arg(locks.path().join(uid.to_string()))
            .args(["sleep", "20"])
            .spawn()
            .unwrap();
        let pool = UidPool::new(uid, 1, locks.path().to_path_buf());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !locks.path().join(uid.to_string()).exists() || lock_uid(locks.path(), uid).unwrap().is_some() {
            assert!(Instant::now() < deadline, "flock never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(pool.lease().is_none(), "held by another process");
        // Killed: the kernel releases its lock.
        other.kill().unwrap();
        other.wait().unwrap();
        assert_eq!(pool.lease().unwrap().uid, uid);
    }

    #[test]
    fn a_lease_kills_leftovers_unless_the_last_lease_ended_cleanly() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: running a process as another uid needs root");
            return;
        }
        use std::os::unix::process::CommandExt;
        let locks = tempfile::tempdir().unwrap();
        let uid = BASE + 20;
        let pool = UidPool::new(uid, 1, locks.path().to_path_buf());
        let sleeper = || std::process::Command::new("sleep").arg("30").uid(uid).spawn().unwrap();
        let alive = |child: &mut std::process::Child| child.try_wait().unwrap().is_none();

        // A holder died: its lock file still says `held`, its process runs.
        std::fs::write(locks.path().join(uid.to_string()), UID_HELD).unwrap();
        let mut leftover = sleeper();
        let lease = pool.lease().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&mut leftover) {
            assert!(Instant::now() < deadline, "the dead holder's process was not killed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(std::fs::read(locks.path().join(uid.to_string())).unwrap(), UID_HELD);

        // The lease ends (no runtime here: at once): killed, marked clean.
        let mut own = sleeper();
        drop(lease);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!alive(&mut own), "the lease's own process outlived it");
        assert_eq!(std::fs::read(locks.path().join(uid.to_string())).unwrap(), UID_CLEAN);

        // After a clean end, a lease forks no kill: a process started as the
        // uid since (by no lease: only a test does that) is left alone.
        let mut unrelated = sleeper();
        let again = pool.lease().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(alive(&mut unrelated), "a clean uid was killed again");
        drop(again);
        let _ = unrelated.wait();
    }
}
