//! Program-style functions, as the original platform ran them: a fresh
//! process per run (`python main.py`, `node index.js`) in the same sandbox,
//! uid, cgroup and limits as an instance, never reused. Its input is the
//! environment (`PAYLOAD`, or `PAYLOAD_FILE` for large inputs), its output is
//! what it prints and its exit code, and the files it leaves in `OUTPUT_DIR`
//! (`/output` in the sandbox) are collected afterwards, without following
//! links, for the worker to upload.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::instance::{ChildSetup, RuntimeConfig};
use super::sandbox::{self, Bind, Interpreter};
use super::RuntimeError;
use crate::model::{ErrorInfo, JobStatus, Runtime};

/// The Python program launcher (passed to `python3 -c`): makes `sdk`
/// importable, then runs the entry file as `__main__`.
pub const PYTHON_PROGRAM: &str = include_str!("bootstrap/program.py");

/// Largest `PAYLOAD` passed in the environment (the original's 100 KiB);
/// larger inputs are written to a file named by `PAYLOAD_FILE`.
pub const PAYLOAD_INLINE_MAX: usize = 100 * 1024;
/// Most stdout kept per run (the original worker's MAX_OUTPUT_SIZE).
pub const PROGRAM_STDOUT_BYTES: usize = 1024 * 1024;
/// Most stderr kept per run.
pub const PROGRAM_STDERR_BYTES: usize = 256 * 1024;
/// Most files collected from the output dir per run.
pub const OUTPUT_MAX_FILES: usize = 100;
/// Most bytes collected from the output dir per run (all files together).
pub const OUTPUT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Deepest directory nesting collected from the output dir.
pub const OUTPUT_MAX_DEPTH: usize = 8;
/// Most disk a run's output dir may take while the program runs (it lies
/// on the worker's disk): beyond it, or beyond OUTPUT_DISK_MAX_ENTRIES
/// entries, the run is stopped. Checked every OUTPUT_CHECK_EVERY.
pub const OUTPUT_DISK_MAX_BYTES: u64 = 4 * OUTPUT_MAX_BYTES;
pub const OUTPUT_DISK_MAX_ENTRIES: usize = 10_000;
const OUTPUT_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Where the output dir appears in the sandbox.
pub const OUTPUT_MOUNT: &str = "/output";
/// Where the input file's dir appears in the sandbox.
pub const INPUT_MOUNT: &str = "/input";
const PAYLOAD_FILE_NAME: &str = "payload.json";
/// Environment names the platform sets for a program; a function's own
/// variables cannot override them.
pub const SYSTEM_ENV: &[&str] = &[
    "JOB_ID",
    "FUNCTION_ID",
    "MEMORY_MB",
    "LLM_MODEL",
    "OUTPUT_DIR",
    "PAYLOAD",
    "PAYLOAD_FILE",
    "HOME",
    "TMPDIR",
    "PATH",
    "PWD",
    "LANG",
    "PYTHONDONTWRITEBYTECODE",
    "LD_LIBRARY_PATH",
];

/// One program-style function version.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    pub runtime: Runtime,
    /// The extracted code (shared, read-only: each run gets its own links).
    pub code_dir: PathBuf,
    /// The file run, relative to the code dir (`main.py`, `index.js`).
    pub entry: String,
    pub memory_mb: u32,
    pub env_vars: BTreeMap<String, String>,
    pub network: bool,
}

/// One run's request.
#[derive(Debug, Clone)]
pub struct ProgramRequest<'a> {
    pub request_id: &'a str,
    pub function_id: &'a str,
    pub model_id: Option<&'a str>,
    pub timeout_ms: u64,
    pub input: &'a serde_json::Value,
}

/// How the input reaches the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `PAYLOAD` holds the JSON.
    Inline(String),
    /// The JSON is written to a file named by `PAYLOAD_FILE`.
    File(String),
}

impl Payload {
    /// The original's rule: JSON over 100 KiB goes to a file.
    pub fn of(input: &serde_json::Value) -> Payload {
        let json = input.to_string();
        if json.len() > PAYLOAD_INLINE_MAX {
            Payload::File(json)
        } else {
            Payload::Inline(json)
        }
    }
}

/// Where the program sees its dirs.
#[derive(Debug, Clone)]
pub struct ProgramPaths {
    pub code: PathBuf,
    pub work: PathBuf,
    pub output: PathBuf,
    pub input: PathBuf,
}

/// The program's whole environment: the platform's base, the function's
/// variables (without names the loader or the interpreters act on, nor the
/// platform's own), then the original's contract. Pure.
pub fn program_env(
    spec: &ProgramSpec,
    req: &ProgramRequest<'_>,
    payload: &Payload,
    paths: &ProgramPaths,
    library_path: Option<&Path>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &spec.env_vars {
        let system = SYSTEM_ENV.iter().any(|s| s.eq_ignore_ascii_case(k));
        if !system && !crate::function::settings::reserved_env_name(k) && !v.contains('\0') {
            env.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in sandbox::base_env(&paths.work, library_path) {
        env.insert(k, v.to_string_lossy().into_owned());
    }
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("JOB_ID", req.request_id.to_string());
    set("FUNCTION_ID", req.function_id.to_string());
    set("MEMORY_MB", spec.memory_mb.to_string());
    if let Some(model) = req.model_id {
        set("LLM_MODEL", model.to_string());
    }
    set("OUTPUT_DIR", paths.output.to_string_lossy().into_owned());
    match payload {
        Payload::Inline(json) => set("PAYLOAD", json.clone()),
        Payload::File(_) => set(
            "PAYLOAD_FILE",
            paths.input.join(PAYLOAD_FILE_NAME).to_string_lossy().into_owned(),
        ),
    }
    env.into_iter().collect()
}

/// A program's `result`: its stdout as JSON when the whole of it (trimmed)
/// is valid JSON, else the trimmed text; null when it printed nothing.
pub fn parse_result(stdout: &str) -> serde_json::Value {
    let text = stdout.trim();
    if text.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// What a run came to.
pub struct ProgramRun {
    pub status: JobStatus,
    /// 0 on success; 128+signal when killed; -1 on a timeout (as the original).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<ErrorInfo>,
    pub duration_ms: f64,
    pub peak_memory_bytes: u64,
    pub cpu_ms: Option<f64>,
    /// The run's private dir, removed when dropped; `output_dir()` is in it.
    root: tempfile::TempDir,
    /// The run's own uid, when it had one: its output files are that uid's.
    uid: Option<u32>,
}

impl ProgramRun {
    /// The host dir the program wrote its output files to.
    pub fn output_dir(&self) -> PathBuf {
        self.root.path().join("output")
    }

    /// The uid whose files alone are collected from `output_dir()`.
    pub fn output_owner(&self) -> Option<u32> {
        self.uid
    }
}

/// Captures a pipe up to `max` bytes, then drains (and counts) the rest so
/// the program never blocks on a full pipe.
async fn capture<R: AsyncReadExt + Unpin>(pipe: Option<R>, max: usize) -> String {
    let Some(mut pipe) = pipe else { return String::new() };
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped += n.saturating_sub(room);
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!("\n[truncated {dropped} bytes]"));
    }
    text
}

/// Runs one invocation of a program and waits for it (at most its timeout,
/// after which its whole process tree is killed).
pub async fn run_program(
    cfg: &RuntimeConfig,
    spec: &ProgramSpec,
    req: &ProgramRequest<'_>,
) -> Result<ProgramRun, RuntimeError> {
    let (program, name, memory_resource) = super::instance::interpreter(cfg, spec.runtime)?;
    let (lease, user) = super::instance::run_as(cfg)?;
    let uid = lease.as_ref().map(|l| l.uid);
    let payload = Payload::of(req.input);
    let sandboxed = cfg.sandbox.is_some();
    let root = prepare_run_dir(cfg, spec, &payload, uid, sandboxed)
        .await
        .map_err(RuntimeError::Workdir)?;
    let memory_bytes = u64::from(spec.memory_mb) * 1024 * 1024;
    let cgroup = match &cfg.cgroups {
        Some(c) => Some(
            c.create(memory_bytes, super::instance::INSTANCE_MAX_PROCESSES)
                .map_err(RuntimeError::Cgroup)?,
        ),
        None => None,
    };
    let procs = match &cgroup {
        Some(cg) => cg.procs_files().map_err(RuntimeError::Cgroup)?,
        None => Vec::new(),
    };

    let mut seccomp = None;
    let mut options = None;
    let mut cmd = match &cfg.sandbox {
        Some(sb) => {
            let interpreter = Interpreter::new(program.clone(), name, &sb.layout.system);
            let paths = ProgramPaths {
                code: PathBuf::from(sandbox::CODE_DIR),
                work: PathBuf::from(sandbox::WORK_DIR),
                output: PathBuf::from(OUTPUT_MOUNT),
                input: PathBuf::from(INPUT_MOUNT),
            };
            let env = program_env(spec, req, &payload, &paths, interpreter.library_path().as_deref());
            let args = program_args(spec, &paths.code);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (passwd, group) = sandbox::accounts(uid.unwrap_or(0));
            let (passwd_file, group_file) = (root.path().join("passwd"), root.path().join("group"));
            std::fs::write(&passwd_file, passwd).map_err(RuntimeError::Workdir)?;
            std::fs::write(&group_file, group).map_err(RuntimeError::Workdir)?;
            let (output, input) = (root.path().join("output"), root.path().join("input"));
            let binds = [
                Bind {
                    host: &output,
                    dest: OUTPUT_MOUNT,
                    writable: true,
                },
                Bind {
                    host: &input,
                    dest: INPUT_MOUNT,
                    writable: false,
                },
            ];
            let plan = sandbox::plan(
                &sb.layout,
                &sandbox::Request {
                    interpreter: &interpreter,
                    args: &args,
                    code: &root.path().join("code"),
                    passwd: &passwd_file,
                    group: &group_file,
                    network: spec.network,
                    tmp_bytes: cfg.tmp_bytes,
                    user,
                    binds: &binds,
                    env: &env,
                },
            );
            // bubblewrap reads its options (host paths, the environment)
            // from fd 4, so they never show in any process's command line.
            let mut file = tempfile::tempfile().map_err(RuntimeError::Spawn)?;
            for opt in &plan.options {
                use std::os::unix::ffi::OsStrExt;
                file.write_all(opt.as_bytes()).map_err(RuntimeError::Spawn)?;
                file.write_all(b"\0").map_err(RuntimeError::Spawn)?;
            }
            std::io::Seek::rewind(&mut file).map_err(RuntimeError::Spawn)?;
            options = Some(file);
            let mut filter = tempfile::tempfile().map_err(RuntimeError::Spawn)?;
            filter
                .write_all(&sandbox::seccomp_filter())
                .and_then(|()| std::io::Seek::rewind(&mut filter))
                .map_err(RuntimeError::Spawn)?;
            seccomp = Some(filter);
            let mut cmd = Command::new(&sb.bwrap);
            cmd.args(["--args", "4"]).args(&plan.command).env_clear();
            cmd
        }
        None => {
            let paths = ProgramPaths {
                code: root.path().join("code"),
                work: root.path().join("work"),
                output: root.path().join("output"),
                input: root.path().join("input"),
            };
            let env = program_env(spec, req, &payload, &paths, None);
            let mut cmd = Command::new(&program);
            cmd.args(program_args(spec, &paths.code))
                .env_clear()
                .envs(env)
                .current_dir(&paths.work);
            cmd
        }
    };
    let fds = match (&options, &seccomp) {
        (Some(o), Some(s)) => vec![(o.as_raw_fd(), 4), (s.as_raw_fd(), sandbox::SECCOMP_FD)],
        _ => Vec::new(),
    };
    ChildSetup {
        procs,
        fds,
        keep_below: if sandboxed { 6 } else { 3 },
        memory_resource,
        memory_bytes,
        limit_processes: uid.is_some(),
        setuid_here: if sandboxed { None } else { uid },
    }
    .install(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(RuntimeError::Spawn)?;
    drop(options);
    drop(seccomp);
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let stdout = tokio::spawn(capture(child.stdout.take(), PROGRAM_STDOUT_BYTES));
    let stderr = tokio::spawn(capture(child.stderr.take(), PROGRAM_STDERR_BYTES));
    let kill_tree = || {
        if pid > 0 {
            // SAFETY: plain syscall; a negative pid addresses the run's process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    };
    let timeout = Duration::from_millis(req.timeout_ms);
    let output_dir = root.path().join("output");
    let mut over_disk = None;
    let waited = tokio::time::timeout(timeout, async {
        loop {
            tokio::select! {
                s = child.wait() => return s.map(Some),
                _ = tokio::time::sleep(OUTPUT_CHECK_EVERY) => {
                    let dir = output_dir.clone();
                    let over = tokio::task::spawn_blocking(move || output_overflow(&dir)).await.ok().flatten();
                    if let Some(why) = over {
                        over_disk = Some(why);
                        return Ok(None);
                    }
                }
            }
        }
    })
    .await;
    // Whatever the program left running (a background child) ends with it:
    // nothing may write to its output dir while it is collected.
    kill_tree();
    let _ = child.start_kill();
    // ... and whatever left the group (a `setsid()` daemon; without a
    // sandbox no PID namespace ends it): every process of the run's uid.
    if let Some(lease) = &lease {
        lease.kill_processes().await;
    }
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = match waited {
        Ok(Ok(Some(s))) => Some(s),
        Ok(Err(e)) => return Err(RuntimeError::Spawn(e)),
        Ok(Ok(None)) | Err(_) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            None
        }
    };
    // The pipes close when the last process holding them is gone.
    let take = |h: tokio::task::JoinHandle<String>| async move {
        tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let (stdout, mut stderr) = (take(stdout).await, take(stderr).await);
    let oom_killed = cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > 0);
    let peak_memory_bytes = cgroup.as_ref().and_then(|cg| cg.peak_memory_bytes()).unwrap_or(0);
    let cpu_ms = cgroup
        .as_ref()
        .and_then(|cg| cg.cpu_usage_usec())
        .map(|us| us as f64 / 1000.0);
    let (status, exit_code, error) = match status {
        None if over_disk.is_some() => {
            let message = format!(
                "the program was stopped: its output dir {}",
                over_disk.unwrap_or_default()
            );
            if !stderr.is_empty() && !stderr.ends_with('\n') {
                stderr.push('\n');
            }
            stderr.push_str(&message);
            stderr.push('\n');
            (JobStatus::Error, Some(-1), Some(error_info("OutputTooLarge", message)))
        }
        None => {
            let message = format!("Execution timed out after {} ms", req.timeout_ms);
            if !stderr.is_empty() && !stderr.ends_with('\n') {
                stderr.push('\n');
            }
            stderr.push_str(&message);
            stderr.push('\n');
            (JobStatus::Timeout, Some(-1), Some(error_info("Timeout", message)))
        }
        Some(s) => {
            let code = match (s.code(), s.signal()) {
                (Some(c), _) => c,
                (None, Some(sig)) => 128 + sig,
                _ => -1,
            };
            if code == 0 {
                (JobStatus::Success, Some(0), None)
            } else if oom_killed || stderr.contains("MemoryError") || stderr.contains("JavaScript heap out of memory") {
                (
                    JobStatus::Oom,
                    Some(code),
                    Some(error_info(
                        "OutOfMemory",
                        "the program ran out of memory (its memoryMb limit) and was stopped".into(),
                    )),
                )
            } else {
                (
                    JobStatus::Error,
                    Some(code),
                    Some(error_info(
                        "NonZeroExit",
                        format!("the program exited with code {code}"),
                    )),
                )
            }
        }
    };
    drop(cgroup);
    drop(lease);
    Ok(ProgramRun {
        status,
        exit_code,
        stdout,
        stderr,
        error,
        duration_ms,
        peak_memory_bytes,
        cpu_ms,
        root,
        uid,
    })
}

fn error_info(error_type: &str, message: String) -> ErrorInfo {
    ErrorInfo {
        error_type: error_type.to_string(),
        message,
        traceback: None,
    }
}

/// The interpreter's arguments: Python through the launcher (isolated mode,
/// unbuffered), Node.js on the entry file itself.
fn program_args(spec: &ProgramSpec, code: &Path) -> Vec<String> {
    let code = code.to_string_lossy().into_owned();
    match spec.runtime {
        Runtime::Python => vec![
            "-I".into(),
            "-u".into(),
            "-c".into(),
            PYTHON_PROGRAM.into(),
            code,
            spec.entry.clone(),
        ],
        Runtime::Nodejs => vec![Path::new(&code).join(&spec.entry).to_string_lossy().into_owned()],
    }
}

/// The run's private dir: `code/` (its own links to the code), `output/`
/// (writable by the program's user only), `input/` (the payload file, when
/// the input is large) and, without a sandbox, `work/` (its HOME and TMPDIR).
async fn prepare_run_dir(
    cfg: &RuntimeConfig,
    spec: &ProgramSpec,
    payload: &Payload,
    uid: Option<u32>,
    sandboxed: bool,
) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let instances = cfg.instances_dir.clone();
    let code_dir = spec.code_dir.clone();
    let payload_json = match payload {
        Payload::File(json) => Some(json.clone()),
        Payload::Inline(_) => None,
    };
    tokio::task::spawn_blocking(move || {
        let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        std::fs::create_dir_all(&instances)?;
        let root = tempfile::Builder::new().prefix("prog-").tempdir_in(&instances)?;
        let code = root.path().join("code");
        std::fs::create_dir(&code)?;
        mode(&code, 0o755)?;
        super::instance::link_tree(&code_dir, &code)?;
        let input = root.path().join("input");
        std::fs::create_dir(&input)?;
        mode(&input, 0o755)?;
        if let Some(json) = payload_json {
            let file = input.join(PAYLOAD_FILE_NAME);
            std::fs::write(&file, json)?;
            mode(&file, 0o644)?;
        }
        let mut dirs = vec![root.path().join("output")];
        if !sandboxed {
            dirs.push(root.path().join("work"));
        }
        for dir in &dirs {
            std::fs::create_dir(dir)?;
            mode(dir, 0o700)?;
            if let Some(uid) = uid {
                std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
            }
        }
        // Without a sandbox the program's own group (its uid) enters the
        // run dir; with one, only the worker (bubblewrap mounts from it).
        match (sandboxed, uid) {
            (false, Some(uid)) => {
                std::os::unix::fs::chown(root.path(), None, Some(uid))?;
                mode(root.path(), 0o750)?;
            }
            _ => mode(root.path(), 0o700)?,
        }
        Ok(root)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Deepest nesting the running check measures; a deeper output dir stops
/// the run (its dirs are walked through open descriptors, one per level).
pub const OUTPUT_DISK_MAX_DEPTH: usize = 64;

/// Why a running program's output dir is over its bounds, if it is: more
/// than OUTPUT_DISK_MAX_BYTES of disk (allocated blocks, so sparse files
/// count for what they take), OUTPUT_DISK_MAX_ENTRIES entries or
/// OUTPUT_DISK_MAX_DEPTH levels. Blocking.
///
/// The program runs (and renames) while this walks, so the walk never goes
/// by path: a dir checked by path and then listed by path can be swapped
/// for a symbolic link in between, and the worker would walk (as itself)
/// whatever host dir the link names, stopping the run when that is large:
/// an oracle on the host's files. Each dir is opened O_NOFOLLOW relative to
/// its already-opened parent and listed through its descriptor.
fn output_overflow(dir: &Path) -> Option<String> {
    use std::rc::Rc;
    let root = open_dir(dir).ok()?;
    let (mut bytes, mut entries) = (0u64, 0usize);
    // (parent, name, depth) of the dirs still to list; a parent stays open
    // while any of its subdirs is pending, so at most one descriptor per
    // level is open (depth-first).
    let mut pending: Vec<(Rc<OwnedFd>, Option<CString>, usize)> = vec![(Rc::new(root), None, 0)];
    while let Some((parent, name, depth)) = pending.pop() {
        let d = match name {
            None => parent,
            Some(name) => match open_at_c(&parent, &name, true) {
                Ok(fd) => Rc::new(fd),
                Err(_) => continue,
            },
        };
        let Ok(list) = std::fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd())) else {
            continue;
        };
        for entry in list.flatten() {
            entries += 1;
            if entries > OUTPUT_DISK_MAX_ENTRIES {
                return Some(format!("holds more than {OUTPUT_DISK_MAX_ENTRIES} entries"));
            }
            let Ok(c) = CString::new(entry.file_name().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: all-zero is a valid `stat`, filled by fstatat below.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: plain syscall on an fd we own; `st` is a valid out-pointer.
            if unsafe { libc::fstatat(d.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
                continue;
            }
            bytes += (st.st_blocks as u64) * 512;
            if bytes > OUTPUT_DISK_MAX_BYTES {
                return Some(format!("takes more than {OUTPUT_DISK_MAX_BYTES} bytes of disk"));
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                if depth + 1 > OUTPUT_DISK_MAX_DEPTH {
                    return Some(format!("is nested deeper than {OUTPUT_DISK_MAX_DEPTH} levels"));
                }
                pending.push((d.clone(), Some(c), depth + 1));
            }
        }
    }
    None
}

/// A file collected from a run's output dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Relative path, `/`-separated.
    pub path: String,
    /// The file's length (`data` may have been handed on since).
    pub size: u64,
    pub data: Vec<u8>,
}

/// What was collected from an output dir, and what was left and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectedOutputs {
    pub files: Vec<OutputFile>,
    /// `path: reason` for each entry not collected.
    pub skipped: Vec<String>,
}

/// Whether a name can be part of an artifact key: letters, digits, `.`,
/// `-`, `_`, not `.` or `..`, at most 255 bytes.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Opens the dir `dir` itself without following a link in its last component.
fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: plain syscall with a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open just returned this fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` in the dir `at` without following a link in its last
/// component (every earlier one is a dir already opened the same way).
fn open_at(at: &OwnedFd, name: &str, dir: bool) -> std::io::Result<OwnedFd> {
    let c = CString::new(name).map_err(std::io::Error::other)?;
    open_at_c(at, &c, dir)
}

fn open_at_c(at: &OwnedFd, c: &CString, dir: bool) -> std::io::Result<OwnedFd> {
    let mut flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    // SAFETY: plain syscall on an fd we own and a NUL-terminated name.
    let fd = unsafe { libc::openat(at.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Collects the regular files under `dir` (a run's output dir, written by
/// a function running as another user), never following a symbolic link
/// (a link is skipped, and every file and dir is opened with O_NOFOLLOW
/// relative to its already-opened parent), within OUTPUT_MAX_FILES,
/// OUTPUT_MAX_BYTES and OUTPUT_MAX_DEPTH. Names that cannot be artifact
/// keys are skipped. Only files with one name are read (and, given `owner`,
/// only that uid's): a hard link can name a file from outside the dir.
/// Blocking.
pub fn collect_outputs(dir: &Path, owner: Option<u32>) -> std::io::Result<CollectedOutputs> {
    let root = open_dir(dir)?;
    let mut out = CollectedOutputs::default();
    let mut budget = OUTPUT_MAX_BYTES;
    walk(&root, "", 0, owner, &mut out, &mut budget);
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &OwnedFd, prefix: &str, depth: usize, owner: Option<u32>, out: &mut CollectedOutputs, budget: &mut u64) {
    // The dir's entries through its open fd (the magic link names the very
    // dir opened, wherever it is).
    let mut names: Vec<String> = match std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => {
            out.skipped.push(format!("{prefix}: cannot list ({e})"));
            return;
        }
    };
    names.sort();
    for name in names {
        let path = format!("{prefix}{name}");
        if !is_plain_name(&name) {
            out.skipped.push(format!(
                "{path}: name not allowed (letters, digits, '.', '-', '_' only)"
            ));
            continue;
        }
        // lstat through the parent fd: the entry itself, never a link's target.
        let c = match CString::new(name.as_str()) {
            Ok(c) => c,
            Err(_) => continue,
        };
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall; `st` is a valid out-pointer.
        if unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            continue;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if depth + 1 >= OUTPUT_MAX_DEPTH {
                    out.skipped
                        .push(format!("{path}/: nested deeper than {OUTPUT_MAX_DEPTH} levels"));
                    continue;
                }
                match open_at(dir, &name, true) {
                    Ok(sub) => walk(&sub, &format!("{path}/"), depth + 1, owner, out, budget),
                    Err(e) => out.skipped.push(format!("{path}/: {e}")),
                }
            }
            libc::S_IFREG => {
                if out.files.len() >= OUTPUT_MAX_FILES {
                    out.skipped.push(format!("{path}: more than {OUTPUT_MAX_FILES} files"));
                    continue;
                }
                match read_file_at(dir, &name, owner, *budget) {
                    Ok(Some(data)) => {
                        *budget -= data.len() as u64;
                        out.files.push(OutputFile {
                            path,
                            size: data.len() as u64,
                            data,
                        });
                    }
                    Ok(None) => out.skipped.push(format!(
                        "{path}: over the {OUTPUT_MAX_BYTES}-byte total of output files"
                    )),
                    Err(e) => out.skipped.push(format!("{path}: {e}")),
                }
            }
            libc::S_IFLNK => out.skipped.push(format!("{path}: symbolic link, not followed")),
            _ => out.skipped.push(format!("{path}: not a regular file")),
        }
    }
}

/// Reads a regular file (opened without following links, checked on the
/// open fd), or None when it is larger than `budget`.
fn read_file_at(dir: &OwnedFd, name: &str, owner: Option<u32>, budget: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::MetadataExt;
    let fd = open_at(dir, name, false)?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    // O_NOFOLLOW stops symbolic links, not hard ones: without a sandbox
    // (one mount) and where fs.protected_hardlinks is off, the program can
    // link any file it can reach by path (the worker's database in the
    // 0711 data dir) into its output dir, and the worker would read it as
    // itself. A file of the program's has one name and is its uid's.
    if meta.nlink() > 1 {
        return Err(std::io::Error::other("hard link (more than one name), not collected"));
    }
    if owner.is_some_and(|uid| meta.uid() != uid) {
        return Err(std::io::Error::other("not the program's own file, not collected"));
    }
    if meta.len() > budget {
        return Ok(None);
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // One byte more than the budget tells a file that grew.
    (&file).take(budget + 1).read_to_end(&mut data)?;
    if data.len() as u64 > budget {
        return Ok(None);
    }
    Ok(Some(data))
}

/// The name the run's own output is kept under among a program's output
/// files, as the original worker kept it (its `outputFiles` always list it).
pub const RUN_LOG: &str = "stdout.log";

/// Adds the run's output (stdout, then stderr, each as bounded as in the
/// result) to `collected` as [`RUN_LOG`], in path order. A file or dir of
/// that name the program wrote itself gives way to it, with a note: in the
/// original both wrote one file.
pub fn add_run_log(collected: &mut CollectedOutputs, stdout: &str, stderr: &str) {
    let dir = format!("{RUN_LOG}/");
    let before = collected.files.len();
    collected
        .files
        .retain(|f| f.path != RUN_LOG && !f.path.starts_with(&dir));
    if collected.files.len() < before {
        collected.skipped.push(format!(
            "{RUN_LOG}: the name of the run's own output, which replaces it"
        ));
    }
    let mut data = Vec::with_capacity(stdout.len() + stderr.len());
    data.extend_from_slice(stdout.as_bytes());
    data.extend_from_slice(stderr.as_bytes());
    let log = OutputFile {
        path: RUN_LOG.to_string(),
        size: data.len() as u64,
        data,
    };
    let at = collected.files.partition_point(|f| f.path.as_str() < RUN_LOG);
    collected.files.insert(at, log);
}

/// The top-level names of the collected files (the original's
/// `outputFiles`: files and dirs directly in the output dir).
pub fn top_level_names(files: &[OutputFile]) -> Vec<String> {
    let mut names: Vec<String> = files
        .iter()
        .map(|f| f.path.split('/').next().unwrap_or(&f.path).to_string())
        .collect();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(path: &str, data: &[u8]) -> OutputFile {
        OutputFile {
            path: path.to_string(),
            size: data.len() as u64,
            data: data.to_vec(),
        }
    }

    #[test]
    fn the_run_log_is_listed_in_path_order_and_replaces_a_file_of_its_name() {
        let mut c = CollectedOutputs {
            files: vec![file("a.txt", b"a"), file("z/b.txt", b"b")],
            skipped: vec![],
        };
        add_run_log(&mut c, "out\n", "err\n");
        let paths: Vec<&str> = c.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "stdout.log", "z/b.txt"]);
        assert_eq!(c.files[1].data, b"out\nerr\n");
        assert_eq!(c.files[1].size, 8);
        assert!(c.skipped.is_empty());

        let mut own = CollectedOutputs {
            files: vec![file("stdout.log", b"mine"), file("stdout.log/x", b"deeper")],
            skipped: vec![],
        };
        add_run_log(&mut own, "", "");
        assert_eq!(own.files, vec![file("stdout.log", b"")]);
        assert_eq!(own.skipped.len(), 1, "{:?}", own.skipped);
        assert_eq!(top_level_names(&own.files), ["stdout.log"]);
    }

    fn spec() -> ProgramSpec {
        ProgramSpec {
            runtime: Runtime::Python,
            code_dir: "/code".into(),
            entry: "main.py".into(),
            memory_mb: 256,
            env_vars: [
                ("GREETING", "hi"),
                ("PAYLOAD", "forged"),
                ("job_id", "forged"),
                ("LD_PRELOAD", "/tmp/x.so"),
                ("PYTHONPATH", "/tmp"),
                ("HOME", "/root"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            network: false,
        }
    }

    fn paths() -> ProgramPaths {
        ProgramPaths {
            code: "/var/task".into(),
            work: "/tmp".into(),
            output: "/output".into(),
            input: "/input".into(),
        }
    }

    #[test]
    fn large_inputs_go_to_a_file() {
        assert_eq!(Payload::of(&json!({"a": 1})), Payload::Inline(r#"{"a":1}"#.into()));
        let at_limit = json!("x".repeat(PAYLOAD_INLINE_MAX - 2));
        assert!(matches!(Payload::of(&at_limit), Payload::Inline(s) if s.len() == PAYLOAD_INLINE_MAX));
        let over = json!("x".repeat(PAYLOAD_INLINE_MAX - 1));
        assert!(matches!(Payload::of(&over), Payload::File(s) if s.len() == PAYLOAD_INLINE_MAX + 1));
    }

    #[test]
    fn the_platforms_variables_win_and_dangerous_ones_are_dropped() {
        let req = ProgramRequest {
            request_id: "job-1",
            function_id: "fn-1",
            model_id: Some("llama3:8b"),
            timeout_ms: 1000,
            input: &json!({}),
        };
        let env: BTreeMap<String, String> = program_env(&spec(), &req, &Payload::Inline("{}".into()), &paths(), None)
            .into_iter()
            .collect();
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["PAYLOAD"], "{}");
        assert_eq!(env["JOB_ID"], "job-1");
        assert_eq!(env["FUNCTION_ID"], "fn-1");
        assert_eq!(env["MEMORY_MB"], "256");
        assert_eq!(env["LLM_MODEL"], "llama3:8b");
        assert_eq!(env["OUTPUT_DIR"], "/output");
        assert_eq!(env["HOME"], "/tmp");
        assert_eq!(env["TMPDIR"], "/tmp");
        assert!(!env.contains_key("PAYLOAD_FILE"));
        for gone in ["LD_PRELOAD", "PYTHONPATH", "job_id"] {
            assert!(!env.contains_key(gone), "{gone} must not be set");
        }
        let env: BTreeMap<String, String> = program_env(&spec(), &req, &Payload::File("{}".into()), &paths(), None)
            .into_iter()
            .collect();
        assert_eq!(env["PAYLOAD_FILE"], "/input/payload.json");
        assert!(
            !env.contains_key("PAYLOAD"),
            "the forged PAYLOAD must not reach the program"
        );
    }

    #[test]
    fn stdout_is_the_result_json_when_it_is_json() {
        assert_eq!(parse_result("{\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(parse_result("  [1, 2]  "), json!([1, 2]));
        assert_eq!(parse_result("42\n"), json!(42));
        assert_eq!(parse_result("hello world\n"), json!("hello world"));
        assert_eq!(parse_result("log line\n{\"a\": 1}\n"), json!("log line\n{\"a\": 1}"));
        assert_eq!(parse_result(" \n"), serde_json::Value::Null);
    }

    #[test]
    fn outputs_are_collected_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("output");
        std::fs::create_dir_all(out.join("charts/deep")).unwrap();
        std::fs::write(out.join("report.txt"), "ok").unwrap();
        std::fs::write(out.join("charts/a.csv"), "1,2").unwrap();
        std::fs::write(out.join("charts/deep/b.json"), "{}").unwrap();
        std::fs::write(out.join("bad name.txt"), "x").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "top secret").unwrap();
        std::os::unix::fs::symlink(&secret, out.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path(), out.join("up")).unwrap();
        let got = collect_outputs(&out, None).unwrap();
        let paths: Vec<&str> = got.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["charts/a.csv", "charts/deep/b.json", "report.txt"]);
        assert!(got.files.iter().all(|f| f.data != b"top secret"));
        assert!(
            got.skipped.iter().any(|s| s.starts_with("leak.txt: symbolic link")),
            "{:?}",
            got.skipped
        );
        assert!(got.skipped.iter().any(|s| s.starts_with("up: symbolic link")));
        assert!(got.skipped.iter().any(|s| s.starts_with("bad name.txt")));
        assert_eq!(top_level_names(&got.files), ["charts", "report.txt"]);
        // The output dir itself may not be a link.
        std::os::unix::fs::symlink(&out, dir.path().join("linked")).unwrap();
        assert!(collect_outputs(&dir.path().join("linked"), None).is_err());
    }

    #[test]
    fn a_hard_link_to_a_file_outside_is_not_collected() {
        // Without a sandbox (one mount) and with fs.protected_hardlinks=0,
        // a program can hard-link any file it can reach by path, e.g. the
        // worker's database in the 0711 data dir, into its output dir: the
        // worker, reading as itself, must not upload it.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("output");
        std::fs::create_dir(&out).unwrap();
        let secret = dir.path().join("infra.redb");
        std::fs::write(&secret, "every function's envVars").unwrap();
        std::fs::hard_link(&secret, out.join("db.bin")).unwrap();
        std::fs::write(out.join("own.txt"), "mine").unwrap();
        let got = collect_outputs(&out, None).unwrap();
        let paths: Vec<&str> = got.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["own.txt"]);
        assert!(
            got.skipped.iter().any(|s| s.starts_with("db.bin: hard link")),
            "{:?}",
            got.skipped
        );
        // Given the run's uid, another user's file (the worker's) is not read either.
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let got = collect_outputs(&out, Some(me.wrapping_add(1))).unwrap();
        assert!(got.files.is_empty(), "{:?}", got.files);
        assert!(got
            .skipped
            .iter()
            .any(|s| s.starts_with("own.txt: not the program's own")));
        assert_eq!(collect_outputs(&out, Some(me)).unwrap().files.len(), 1);
    }

    #[test]
    fn the_running_disk_check_never_follows_links_and_bounds_depth() {
        let dir = tempfile::tempdir().unwrap();
        let (out, big) = (dir.path().join("output"), dir.path().join("big"));
        std::fs::create_dir_all(&big).unwrap();
        for i in 0..OUTPUT_DISK_MAX_ENTRIES + 10 {
            std::fs::File::create(big.join(format!("h{i}"))).unwrap();
        }
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&big, out.join("x")).unwrap();
        assert_eq!(output_overflow(&out), None);
        let mut d = out.clone();
        for _ in 0..OUTPUT_DISK_MAX_DEPTH {
            d = d.join("d");
            std::fs::create_dir(&d).unwrap();
        }
        assert_eq!(output_overflow(&out), None);
        std::fs::create_dir(d.join("d")).unwrap();
        assert!(output_overflow(&out).is_some_and(|w| w.contains("deeper")));
        assert!(output_overflow(&big).is_some_and(|w| w.contains("entries")));
    }

    #[test]
    fn outputs_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..OUTPUT_MAX_FILES + 5 {
            std::fs::write(dir.path().join(format!("f{i:03}")), "x").unwrap();
        }
        let got = collect_outputs(dir.path(), None).unwrap();
        assert_eq!(got.files.len(), OUTPUT_MAX_FILES);
        assert_eq!(got.skipped.len(), 5);
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("big")).unwrap();
        f.set_len(OUTPUT_MAX_BYTES + 1).unwrap();
        std::fs::write(dir.path().join("small"), "x").unwrap();
        let got = collect_outputs(dir.path(), None).unwrap();
        assert_eq!(got.files.len(), 1);
        assert!(got.skipped[0].starts_with("big: over"), "{:?}", got.skipped);
    }
}
