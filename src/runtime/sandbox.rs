//! The sandbox as data: what an instance sees (mounts), its environment, the
//! user it runs as and its limits are decided here, purely, from the host's
//! layout and the instance's needs; `instance.rs` only applies the plan.
//!
//! The rules this module keeps (each is tested below):
//! - nothing the function controls reaches a process outside the sandbox: an
//!   instance's environment never appears here (it travels over the instance
//!   protocol and is applied by the bootstrap, inside); a program's (which has
//!   no bootstrap) is set by bubblewrap, from the options fd, without the
//!   names the loader or the interpreters act on (`Request::env`);
//! - the function sees the system (`/usr` and the top-level links into it), a
//!   handful of `/etc` files, a synthetic `passwd`/`group`, the interpreter's
//!   prefix at a neutral path, its own code read-only at [`CODE_DIR`], and a
//!   size-bounded `/tmp` (its working dir) and `/dev/shm`: no `/root`,
//!   `/home`, `/var`, `/run`, data dir or host socket;
//! - when bubblewrap runs as root, the instance still runs as its own uid
//!   (`setpriv` drops it before the interpreter starts) unless root was asked
//!   for explicitly, and no capability survives in either case.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where a function's code appears inside the sandbox (read-only).
pub const CODE_DIR: &str = "/var/task";
/// The function's working dir, `HOME` and `TMPDIR` inside the sandbox.
pub const WORK_DIR: &str = "/tmp";
/// Size of the sandbox's `/dev/shm` (shared memory, e.g. Python's multiprocessing).
pub const SHM_BYTES: u64 = 64 * 1024 * 1024;
/// Where an interpreter installed outside the system dirs (pyenv, nvm, a
/// venv's base) is mounted, one folder per runtime.
const NEUTRAL_PREFIX: &str = "/opt/infra";

/// `/etc` entries a runtime may need (name resolution, TLS roots, time
/// zone, the dynamic loader's cache, Debian's alternatives). Missing ones are
/// skipped.
pub const ETC_ENTRIES: &[&str] = &[
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "alternatives",
    "mime.types",
    "protocols",
    "services",
    "os-release",
];

/// One top-level entry of the host's system view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemEntry {
    /// A directory shown read-only at the same path (`/usr`, or `/lib64` on
    /// hosts without merged `/usr`).
    Dir(PathBuf),
    /// A symbolic link recreated as it is (`/bin -> usr/bin`).
    Link { path: PathBuf, target: PathBuf },
}

/// What the host offers the sandbox, probed once (`runtime::host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLayout {
    pub system: Vec<SystemEntry>,
    /// Existing `/etc` entries from [`ETC_ENTRIES`], as host paths.
    pub etc: Vec<PathBuf>,
    /// `setpriv` (util-linux), used to leave root inside the sandbox.
    pub setpriv: Option<PathBuf>,
}

/// An interpreter as the sandbox runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The program on the host (a real path, not a shim).
    pub host: PathBuf,
    /// Its installation prefix when it lies outside the system dirs; it is
    /// then mounted at `/opt/infra/<name>` and run from there.
    pub prefix: Option<PathBuf>,
    /// Folder name under `/opt/infra` (the runtime's name).
    pub name: &'static str,
}

impl Interpreter {
    /// Finds the prefix of an interpreter outside the system dirs
    /// (`<prefix>/bin/<program>`); none for `/usr/...`.
    pub fn new(host: PathBuf, name: &'static str, system: &[SystemEntry]) -> Interpreter {
        let visible = system.iter().any(|e| match e {
            SystemEntry::Dir(d) => host.starts_with(d),
            SystemEntry::Link { path, .. } => host.starts_with(path),
        });
        let prefix = if visible {
            None
        } else {
            host.parent()
                .filter(|bin| bin.file_name().is_some_and(|n| n == "bin"))
                .and_then(Path::parent)
                .map(Path::to_path_buf)
        };
        Interpreter { host, prefix, name }
    }

    fn neutral_prefix(&self) -> PathBuf {
        Path::new(NEUTRAL_PREFIX).join(self.name)
    }

    /// The program's path inside the sandbox.
    pub fn in_sandbox(&self) -> PathBuf {
        match (&self.prefix, self.host.file_name()) {
            (Some(prefix), Some(_)) => {
                let rel = self.host.strip_prefix(prefix).unwrap_or(&self.host);
                self.neutral_prefix().join(rel)
            }
            _ => self.host.clone(),
        }
    }

    /// The library dir a relocated interpreter needs (its RUNPATH names the
    /// host prefix, which the sandbox does not show).
    pub fn library_path(&self) -> Option<PathBuf> {
        self.prefix.as_ref().map(|_| self.neutral_prefix().join("lib"))
    }
}

/// Whom the instance runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    /// The worker is root: the instance gets this unprivileged uid (and gid).
    Uid(u32),
    /// The worker is root and `INSTANCE_USER=root` was set: root without
    /// capabilities.
    Root,
    /// The worker is not root: the instance keeps the worker's user
    /// (bubblewrap then runs unprivileged, in a user namespace).
    Worker,
}

/// One instance's needs.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub interpreter: &'a Interpreter,
    /// Arguments after the program (bootstrap flags and source).
    pub args: &'a [&'a str],
    /// Host dir shown read-only at [`CODE_DIR`] (the instance's own copy).
    pub code: &'a Path,
    /// Host files shown as `/etc/passwd` and `/etc/group`.
    pub passwd: &'a Path,
    pub group: &'a Path,
    pub network: bool,
    /// Size of `/tmp`, the working dir.
    pub tmp_bytes: u64,
    pub user: User,
    /// More host dirs shown inside (a program's input and output dirs).
    pub binds: &'a [Bind<'a>],
    /// Variables set at launch beyond the platform's base: a program's
    /// environment (a program has no bootstrap to apply it inside). Names a
    /// function may not set (`settings::reserved_env_name`) must be gone
    /// from it already; bubblewrap applies these before it starts `setpriv`.
    pub env: &'a [(String, String)],
}

/// A host dir shown at `dest` inside the sandbox.
#[derive(Debug, Clone)]
pub struct Bind<'a> {
    pub host: &'a Path,
    pub dest: &'a str,
    pub writable: bool,
}

/// What to run: `bwrap --args FD <command...>` with `options` written to FD
/// (so the mount sources, host paths, never show in `/proc/*/cmdline`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// bubblewrap's options (namespaces, mounts, environment), read from an fd.
    pub options: Vec<OsString>,
    /// The command bubblewrap runs (paths inside the sandbox only).
    pub command: Vec<OsString>,
}

/// The platform's environment of an instance process; the function's own
/// variables are added by the bootstrap after start-up, inside the sandbox.
pub fn base_env(home: &Path, library_path: Option<&Path>) -> Vec<(String, OsString)> {
    let mut env = vec![
        ("PATH".to_string(), OsString::from("/usr/local/bin:/usr/bin:/bin")),
        ("HOME".to_string(), home.as_os_str().to_owned()),
        ("TMPDIR".to_string(), home.as_os_str().to_owned()),
        ("PWD".to_string(), home.as_os_str().to_owned()),
        ("LANG".to_string(), OsString::from("C.UTF-8")),
        ("PYTHONDONTWRITEBYTECODE".to_string(), OsString::from("1")),
    ];
    if let Some(lib) = library_path {
        env.push(("LD_LIBRARY_PATH".to_string(), lib.as_os_str().to_owned()));
    }
    env
}

fn push<I: IntoIterator<Item = S>, S: Into<OsString>>(out: &mut Vec<OsString>, items: I) {
    out.extend(items.into_iter().map(Into::into));
}

/// Creates `dir`'s missing ancestors (and itself) world-searchable: bubblewrap
/// would otherwise copy the mode of the host's parent (0700 for `/root/...`).
fn dirs(out: &mut Vec<OsString>, dir: &Path) {
    let mut chain: Vec<&Path> = dir.ancestors().filter(|a| a.parent().is_some()).collect();
    chain.reverse();
    for d in chain {
        push(out, ["--perms", "0755", "--dir"]);
        out.push(d.as_os_str().to_owned());
    }
}

/// The plan for one instance. Pure.
pub fn plan(layout: &HostLayout, req: &Request<'_>) -> Plan {
    let mut o: Vec<OsString> = Vec::new();
    push(
        &mut o,
        [
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "sandbox",
            "--die-with-parent",
            "--new-session",
        ],
    );
    if !req.network {
        o.push("--unshare-net".into());
    }
    match req.user {
        // Privileged bubblewrap: keep only what setpriv needs to leave root;
        // setpriv then clears every set, bounding set included.
        User::Uid(_) => push(
            &mut o,
            [
                "--cap-drop",
                "ALL",
                "--cap-add",
                "CAP_SETUID",
                "--cap-add",
                "CAP_SETGID",
                "--cap-add",
                "CAP_SETPCAP",
            ],
        ),
        User::Root => push(&mut o, ["--cap-drop", "ALL"]),
        // Unprivileged bubblewrap gives the sandbox no capabilities.
        User::Worker => {}
    }
    for entry in &layout.system {
        match entry {
            SystemEntry::Dir(d) => {
                o.push("--ro-bind".into());
                o.push(d.as_os_str().to_owned());
                o.push(d.as_os_str().to_owned());
            }
            SystemEntry::Link { path, target } => {
                o.push("--symlink".into());
                o.push(target.as_os_str().to_owned());
                o.push(path.as_os_str().to_owned());
            }
        }
    }
    dirs(&mut o, Path::new("/etc"));
    for e in &layout.etc {
        o.push("--ro-bind-try".into());
        o.push(e.as_os_str().to_owned());
        o.push(e.as_os_str().to_owned());
    }
    for (host, name) in [(req.passwd, "/etc/passwd"), (req.group, "/etc/group")] {
        o.push("--ro-bind".into());
        o.push(host.as_os_str().to_owned());
        o.push(name.into());
    }
    push(&mut o, ["--proc", "/proc", "--dev", "/dev"]);
    push(&mut o, ["--perms", "1777", "--size"]);
    o.push(SHM_BYTES.to_string().into());
    push(&mut o, ["--tmpfs", "/dev/shm"]);
    push(&mut o, ["--perms", "1777", "--size"]);
    o.push(req.tmp_bytes.to_string().into());
    push(&mut o, ["--tmpfs", WORK_DIR]);
    dirs(&mut o, Path::new(CODE_DIR).parent().unwrap_or(Path::new("/var")));
    o.push("--ro-bind".into());
    o.push(req.code.as_os_str().to_owned());
    o.push(CODE_DIR.into());
    if let Some(prefix) = &req.interpreter.prefix {
        let neutral = req.interpreter.neutral_prefix();
        dirs(&mut o, neutral.parent().unwrap_or(Path::new(NEUTRAL_PREFIX)));
        o.push("--ro-bind".into());
        o.push(prefix.as_os_str().to_owned());
        o.push(neutral.into_os_string());
    }
    for bind in req.binds {
        if let Some(parent) = Path::new(bind.dest).parent().filter(|p| p != &Path::new("/")) {
            dirs(&mut o, parent);
        }
        o.push(if bind.writable { "--bind" } else { "--ro-bind" }.into());
        o.push(bind.host.as_os_str().to_owned());
        o.push(bind.dest.into());
    }
    o.push("--seccomp".into());
    o.push(SECCOMP_FD.to_string().into());
    push(&mut o, ["--chdir", WORK_DIR, "--clearenv"]);
    let library = req.interpreter.library_path();
    for (k, v) in base_env(Path::new(WORK_DIR), library.as_deref()) {
        o.push("--setenv".into());
        o.push(k.into());
        o.push(v);
    }
    for (k, v) in req.env {
        o.push("--setenv".into());
        o.push(k.into());
        o.push(v.into());
    }

    let mut command: Vec<OsString> = Vec::new();
    if let User::Uid(uid) = req.user {
        let setpriv = layout
            .setpriv
            .clone()
            .unwrap_or_else(|| PathBuf::from("/usr/bin/setpriv"));
        command.push(setpriv.into_os_string());
        push(
            &mut command,
            [
                "--reuid".to_string(),
                uid.to_string(),
                "--regid".to_string(),
                uid.to_string(),
                "--clear-groups".to_string(),
                "--inh-caps=-all".to_string(),
                "--bounding-set=-all".to_string(),
                "--no-new-privs".to_string(),
                "--pdeathsig".to_string(),
                "SIGKILL".to_string(),
                "--".to_string(),
            ],
        );
    }
    command.push(req.interpreter.in_sandbox().into_os_string());
    push(&mut command, req.args.iter().copied());
    Plan { options: o, command }
}

/// The synthetic `/etc/passwd` and `/etc/group` of an instance running as
/// `uid` (root and nobody only besides it: no host account is named).
pub fn accounts(uid: u32) -> (String, String) {
    let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    let mut group = String::from("root:x:0:\n");
    if uid != 0 {
        passwd.push_str(&format!(
            "function:x:{uid}:{uid}:function:{WORK_DIR}:/usr/sbin/nologin\n"
        ));
        group.push_str(&format!("function:x:{uid}:\n"));
    }
    passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    group.push_str("nogroup:x:65534:\n");
    (passwd, group)
}

/// The fd bubblewrap reads the seccomp filter from (`--seccomp`).
pub const SECCOMP_FD: i32 = 5;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// A seccomp filter (classic BPF, as bubblewrap's `--seccomp` takes it)
/// refusing what a function never needs and what widens the kernel's attack
/// surface or leaks between tenants:
/// - the kernel keyrings (`keyctl`, `add_key`, `request_key`): a uid's user
///   keyring outlives its instances, and uids are reused;
/// - new namespaces (`unshare`, `setns`, `clone` with a `CLONE_NEW*` flag):
///   user namespaces would hand the function a fresh root;
/// - `clone3` answers ENOSYS (its flags live in memory a filter cannot read),
///   so libc falls back to `clone`, which is checked;
/// - any other architecture's system calls (32-bit entry points) kill.
pub fn seccomp_filter() -> Vec<u8> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const ALLOW: u32 = 0x7fff_0000;
    const KILL: u32 = 0x8000_0000;
    const ERRNO: u32 = 0x0005_0000;
    const NEW_NAMESPACES: u32 = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP) as u32;
    let refused = [
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_unshare,
        libc::SYS_setns,
    ];
    let ins = |code: u16, jt: u8, jf: u8, k: u32| (code, jt, jf, k);
    let mut prog = vec![
        ins(LD_W_ABS, 0, 0, 4), // arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH),
        ins(RET_K, 0, 0, KILL),
        ins(LD_W_ABS, 0, 0, 0), // syscall number
        // The x32 ABI's numbers carry bit 30 on x86_64.
        ins(JGE_K, 0, 1, 0x4000_0000),
        ins(RET_K, 0, 0, KILL),
    ];
    // Each refused call jumps to the EPERM return at the end.
    let tail = 6; // clone3 check (2), clone checks (4)
    for (i, nr) in refused.iter().enumerate() {
        let to_eperm = (refused.len() - 1 - i) + tail;
        prog.push(ins(JEQ_K, to_eperm as u8, 0, *nr as u32));
    }
    prog.extend([
        ins(JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        ins(RET_K, 0, 0, ERRNO | libc::ENOSYS as u32),
        ins(JEQ_K, 0, 2, libc::SYS_clone as u32),
        ins(LD_W_ABS, 0, 0, 16), // clone's flags: args[0], low word
        ins(JSET_K, 1, 0, NEW_NAMESPACES),
        ins(RET_K, 0, 0, ALLOW),
        ins(RET_K, 0, 0, ERRNO | libc::EPERM as u32),
    ]);
    let mut bytes = Vec::with_capacity(prog.len() * 8);
    for (code, jt, jf, k) in prog {
        bytes.extend_from_slice(&code.to_ne_bytes());
        bytes.push(jt);
        bytes.push(jf);
        bytes.extend_from_slice(&k.to_ne_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> HostLayout {
        HostLayout {
            system: vec![
                SystemEntry::Dir("/usr".into()),
                SystemEntry::Link {
                    path: "/bin".into(),
                    target: "usr/bin".into(),
                },
                SystemEntry::Link {
                    path: "/lib".into(),
                    target: "usr/lib".into(),
                },
            ],
            etc: vec!["/etc/resolv.conf".into(), "/etc/ssl".into()],
            setpriv: Some("/usr/bin/setpriv".into()),
        }
    }

    fn strings(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn plan_for(interp: &Interpreter, user: User, network: bool) -> Plan {
        plan(
            &layout(),
            &Request {
                interpreter: interp,
                args: &["-I", "-c", "boot"],
                code: Path::new("/data/instances/inst-1/code"),
                passwd: Path::new("/data/instances/inst-1/passwd"),
                group: Path::new("/data/instances/inst-1/group"),
                network,
                tmp_bytes: 512 << 20,
                user,
                binds: &[],
                env: &[],
            },
        )
    }

    /// The mount destinations (second operand of binds and links, operand of
    /// dirs and tmpfs).
    fn destinations(options: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < options.len() {
            let (skip, dest) = match options[i].as_str() {
                "--ro-bind" | "--ro-bind-try" | "--bind" | "--symlink" => (3, Some(options[i + 2].clone())),
                "--tmpfs" | "--dir" | "--proc" | "--dev" => (2, Some(options[i + 1].clone())),
                "--setenv" => (3, None),
                "--perms" | "--size" | "--chdir" | "--hostname" | "--cap-add" | "--cap-drop" => (2, None),
                _ => (1, None),
            };
            out.extend(dest);
            i += skip;
        }
        out
    }

    #[test]
    fn the_view_is_minimal() {
        let py = Interpreter::new("/usr/bin/python3.11".into(), "python", &layout().system);
        let p = plan_for(&py, User::Uid(100_001), false);
        let dests = destinations(&strings(&p.options));
        for forbidden in ["/", "/root", "/home", "/var/run", "/run", "/srv", "/mnt", "/data"] {
            assert!(
                !dests.iter().any(|d| d == forbidden),
                "{forbidden} must not be mounted: {dests:?}"
            );
        }
        for wanted in [
            "/usr",
            "/bin",
            "/etc/resolv.conf",
            "/etc/passwd",
            "/tmp",
            "/dev/shm",
            CODE_DIR,
        ] {
            assert!(dests.iter().any(|d| d == wanted), "{wanted} missing: {dests:?}");
        }
        // The code is the instance's own copy, read-only.
        let o = strings(&p.options);
        let at = o.iter().position(|a| a == CODE_DIR).unwrap();
        assert_eq!(o[at - 2], "--ro-bind");
        assert_eq!(o[at - 1], "/data/instances/inst-1/code");
        assert!(o.contains(&"--unshare-net".to_string()));
        assert!(o.contains(&"--new-session".to_string()));
        assert!(o.contains(&"--die-with-parent".to_string()));
    }

    #[test]
    fn writable_space_is_bounded() {
        let py = Interpreter::new("/usr/bin/python3".into(), "python", &layout().system);
        let o = strings(&plan_for(&py, User::Worker, false).options);
        for dest in ["/tmp", "/dev/shm"] {
            let at = o.iter().position(|a| a == dest).unwrap();
            assert_eq!(o[at - 1], "--tmpfs");
            assert_eq!(o[at - 3], "--size", "{dest} needs a size");
        }
        assert!(!o.iter().any(|a| a == "--bind"), "nothing of the host is writable");
    }

    #[test]
    fn root_is_left_before_the_interpreter_starts() {
        let py = Interpreter::new("/usr/bin/python3".into(), "python", &layout().system);
        let p = plan_for(&py, User::Uid(100_007), false);
        let c = strings(&p.command);
        assert_eq!(c[0], "/usr/bin/setpriv");
        let at = c.iter().position(|a| a == "--reuid").unwrap();
        assert_eq!(c[at + 1], "100007");
        assert!(c.contains(&"--no-new-privs".to_string()));
        assert!(c.contains(&"--bounding-set=-all".to_string()));
        let interp = c.iter().position(|a| a == "/usr/bin/python3").unwrap();
        assert!(interp > at);
        // Explicit root: no setpriv, and every capability dropped.
        let p = plan_for(&py, User::Root, false);
        assert_eq!(strings(&p.command)[0], "/usr/bin/python3");
        let o = strings(&p.options);
        assert!(o.windows(2).any(|w| w == ["--cap-drop", "ALL"]));
        assert!(!o.contains(&"--cap-add".to_string()));
    }

    #[test]
    fn an_interpreter_outside_the_system_is_mounted_at_a_neutral_path() {
        let py = Interpreter::new(
            "/root/.pyenv/versions/3.11.7/bin/python3.11".into(),
            "python",
            &layout().system,
        );
        assert_eq!(py.in_sandbox(), Path::new("/opt/infra/python/bin/python3.11"));
        let p = plan_for(&py, User::Uid(100_001), false);
        let o = strings(&p.options);
        let at = o.iter().position(|a| a == "/opt/infra/python").unwrap();
        assert_eq!(o[at - 1], "/root/.pyenv/versions/3.11.7");
        // Its parents are searchable by the instance's user.
        assert!(o.windows(3).any(|w| w == ["--perms", "0755", "--dir"]));
        assert!(o
            .windows(3)
            .any(|w| w == ["--setenv", "LD_LIBRARY_PATH", "/opt/infra/python/lib"]));
        // No host path in what /proc/1/cmdline shows (the command).
        for arg in strings(&p.command) {
            assert!(!arg.contains("/root"), "{arg}");
        }
        assert!(!strings(&p.command).iter().any(|a| a.contains("/data")));
    }

    #[test]
    fn the_environment_is_the_platforms_only() {
        let py = Interpreter::new("/usr/bin/python3".into(), "python", &layout().system);
        let o = strings(&plan_for(&py, User::Uid(100_001), true).options);
        assert!(o.contains(&"--clearenv".to_string()));
        let names: Vec<&str> = o
            .windows(2)
            .filter(|w| w[0] == "--setenv")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            names,
            ["PATH", "HOME", "TMPDIR", "PWD", "LANG", "PYTHONDONTWRITEBYTECODE"]
        );
        assert!(
            !o.contains(&"--unshare-net".to_string()),
            "network=true keeps the network"
        );
    }

    #[test]
    fn accounts_name_no_host_user() {
        let (passwd, group) = accounts(100_003);
        assert!(passwd.contains("function:x:100003:100003:"));
        assert_eq!(passwd.lines().count(), 3);
        assert!(group.contains("function:x:100003:"));
        assert!(!accounts(0).0.contains("function"));
    }

    /// Runs the filter on a system call, as the kernel would (the subset of
    /// classic BPF it uses).
    fn verdict(filter: &[u8], arch: u32, nr: u32, arg0: u64) -> u32 {
        let prog: Vec<(u16, u8, u8, u32)> = filter
            .chunks(8)
            .map(|c| {
                (
                    u16::from_ne_bytes([c[0], c[1]]),
                    c[2],
                    c[3],
                    u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = prog[pc];
            pc += 1;
            match code {
                0x20 => {
                    acc = match k {
                        0 => nr,
                        4 => arch,
                        16 => arg0 as u32,
                        other => panic!("load of offset {other}"),
                    }
                }
                0x15 => pc += if acc == k { jt } else { jf } as usize,
                0x35 => pc += if acc >= k { jt } else { jf } as usize,
                0x45 => pc += if acc & k != 0 { jt } else { jf } as usize,
                0x06 => return k,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_seccomp_filter_refuses_keyrings_and_new_namespaces_only() {
        let f = seccomp_filter();
        let eperm = 0x0005_0000 | libc::EPERM as u32;
        for nr in [
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_unshare,
            libc::SYS_setns,
        ] {
            assert_eq!(verdict(&f, AUDIT_ARCH, nr as u32, 0), eperm, "syscall {nr}");
        }
        assert_eq!(
            verdict(&f, AUDIT_ARCH, libc::SYS_clone3 as u32, 0),
            0x0005_0000 | libc::ENOSYS as u32
        );
        let thread =
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64;
        assert_eq!(verdict(&f, AUDIT_ARCH, libc::SYS_clone as u32, thread), 0x7fff_0000);
        assert_eq!(
            verdict(&f, AUDIT_ARCH, libc::SYS_clone as u32, libc::SIGCHLD as u64),
            0x7fff_0000
        );
        assert_eq!(
            verdict(&f, AUDIT_ARCH, libc::SYS_clone as u32, libc::CLONE_NEWUSER as u64),
            eperm
        );
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_execve,
        ] {
            assert_eq!(verdict(&f, AUDIT_ARCH, nr as u32, 0), 0x7fff_0000, "syscall {nr}");
        }
        assert_eq!(
            verdict(&f, 0x4000_0003, libc::SYS_read as u32, 0),
            0x8000_0000,
            "foreign arch"
        );
    }
}
