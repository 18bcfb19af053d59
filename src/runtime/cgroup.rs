//! Cgroups for instances: a hard limit on the resident memory of an
//! instance's whole process tree (and a count of the kernel's OOM kills), and
//! a limit on its number of processes (`pids.max`, which holds for root too,
//! unlike RLIMIT_NPROC). cgroup v2 where the host offers it (a delegated
//! subtree, e.g. a systemd unit with `Delegate=yes`), v1 hierarchies otherwise.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where this worker creates its instances' cgroups: the memory controller's
/// place and the pids controller's (one v2 dir holds both).
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    version: Version,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl CgroupRoot {
    /// Finds the hierarchies this process may create children in. Memory is
    /// wanted unless `memory` is false; pids is taken where offered.
    pub fn detect(memory: bool) -> Result<CgroupRoot, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("no /proc/self/cgroup: {e}"))?;
        let root = match v2_root(&own, memory) {
            Ok(root) => root,
            Err(v2) => v1_root(&own, memory).map_err(|v1| format!("cgroup v2: {v2}; cgroup v1: {v1}"))?,
        };
        root.remove_orphans();
        Ok(root)
    }

    /// Removes instance cgroups left by workers that are gone (killed before
    /// they could clean up).
    fn remove_orphans(&self) {
        for dir in self.dirs() {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(owner) = name.strip_prefix("infra-").and_then(|r| r.split('-').next()) else {
                    continue;
                };
                if owner.parse::<u32>().is_ok() && !Path::new("/proc").join(owner).exists() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// The distinct parent dirs (one for v2).
    fn dirs(&self) -> Vec<&PathBuf> {
        let mut dirs: Vec<&PathBuf> = self.memory.iter().chain(self.pids.iter()).collect();
        dirs.dedup();
        dirs
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether instances get a memory limit from here.
    pub fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Whether instances get a process limit from here.
    pub fn has_pids(&self) -> bool {
        self.pids.is_some()
    }

    /// A new, empty cgroup limited to `memory_bytes` and `max_processes`.
    pub fn create(&self, memory_bytes: u64, max_processes: u64) -> std::io::Result<Cgroup> {
        let name = format!("infra-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut cg = Cgroup {
            version: self.version,
            memory: None,
            pids: None,
        };
        // Assigned as they are made, so a failure removes what exists (Drop).
        if let Some(parent) = &self.memory {
            let dir = parent.join(&name);
            std::fs::create_dir(&dir)?;
            cg.memory = Some(dir);
        }
        if let Some(parent) = &self.pids {
            let dir = parent.join(&name);
            if Some(&dir) != cg.memory.as_ref() {
                std::fs::create_dir(&dir)?;
            }
            std::fs::write(dir.join("pids.max"), max_processes.to_string())?;
            cg.pids = Some(dir);
        }
        if let Some(dir) = &cg.memory {
            if self.version == Version::V2 {
                // No swap: the limit is the memory the instance really gets.
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                // Kill the whole instance on OOM, not one random process of it.
                let _ = std::fs::write(dir.join("memory.oom.group"), "1");
            }
        }
        cg.set_limit(memory_bytes)?;
        Ok(cg)
    }
}

fn v2_root(own: &str, memory: bool) -> Result<CgroupRoot, String> {
    let mount = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))
        .map_err(|_| "not mounted at /sys/fs/cgroup".to_string())?;
    let offered = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if memory && !offered("memory") {
        return Err("no memory controller".into());
    }
    if !offered("memory") && !offered("pids") {
        return Err("neither memory nor pids controller".into());
    }
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process is not in a v2 cgroup")?;
    let dir = mount.join(path.trim_start_matches('/'));
    // A v2 cgroup with children may hold no processes itself: move this
    // process into a leaf, then let the children have the controllers.
    let leaf = dir.join("worker");
    if !leaf.is_dir() {
        std::fs::create_dir(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
    }
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()).map_err(|e| {
        format!(
            "cannot move into {} (delegate the cgroup to this service): {e}",
            leaf.display()
        )
    })?;
    let enable = |c: &str| std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    let memory_dir = if memory && offered("memory") {
        enable("memory").map_err(|e| format!("cannot enable the memory controller in {}: {e}", dir.display()))?;
        Some(dir.clone())
    } else {
        None
    };
    let pids_dir = (offered("pids") && enable("pids").is_ok()).then(|| dir.clone());
    Ok(CgroupRoot {
        version: Version::V2,
        memory: memory_dir,
        pids: pids_dir,
    })
}

/// This process's dir in the v1 hierarchy of `controller`, if it may create
/// children there.
fn v1_dir(own: &str, controller: &str) -> Result<PathBuf, String> {
    let path = own
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == controller).then_some(path)
        })
        .ok_or(format!("no {controller} controller"))?;
    let dir = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'));
    // Probe: can we create (and remove) a child here?
    let probe = dir.join(format!("infra-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| format!("cannot create cgroups in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_dir(&probe);
    Ok(dir)
}

fn v1_root(own: &str, memory: bool) -> Result<CgroupRoot, String> {
    let memory_dir = if memory { Some(v1_dir(own, "memory")?) } else { None };
    let pids_dir = v1_dir(own, "pids").ok();
    if memory_dir.is_none() && pids_dir.is_none() {
        return Err("no pids controller".into());
    }
    Ok(CgroupRoot {
        version: Version::V1,
        memory: memory_dir,
        pids: pids_dir,
    })
}

/// One instance's cgroup(s); removed when dropped (after its processes died).
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

impl Cgroup {
    fn dirs(&self) -> Vec<&PathBuf> {
        let mut dirs: Vec<&PathBuf> = self.memory.iter().chain(self.pids.iter()).collect();
        dirs.dedup();
        dirs
    }

    /// `cgroup.procs` of each hierarchy, opened for writing, so a child can
    /// join between fork and exec (see `join_from_child`).
    pub fn procs_files(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.dirs()
            .into_iter()
            .map(|d| {
                let f = std::fs::OpenOptions::new().write(true).open(d.join("cgroup.procs"))?;
                Ok(f.into())
            })
            .collect()
    }

    /// Whether this cgroup bounds memory (else only processes).
    pub fn limits_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Sets the memory limit (nothing without a memory controller).
    pub fn set_limit(&self, bytes: u64) -> std::io::Result<()> {
        let Some(dir) = &self.memory else { return Ok(()) };
        match self.version {
            Version::V2 => std::fs::write(dir.join("memory.max"), bytes.to_string()),
            Version::V1 => {
                std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())?;
                // With swap accounting, no swap either (absent without it).
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    let _ = std::fs::write(memsw, bytes.to_string());
                }
                Ok(())
            }
        }
    }

    /// How many times the kernel killed a process here for memory.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let (file, key) = match self.version {
            Version::V2 => ("memory.events", "oom_kill"),
            Version::V1 => ("memory.oom_control", "oom_kill"),
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next() == Some(key)).then(|| it.next()?.parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// CPU time used by every process that was ever in the cgroup, in µs
    /// (cgroup v2 keeps `cpu.stat` in every cgroup, with or without the cpu
    /// controller). None on v1, where it needs a cpuacct hierarchy.
    pub fn cpu_usage_usec(&self) -> Option<u64> {
        if self.version != Version::V2 {
            return None;
        }
        let dir = self.memory.as_ref().or(self.pids.as_ref())?;
        let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec ").and_then(|n| n.trim().parse().ok()))
    }

    /// The highest memory use of the cgroup's processes together, when the
    /// kernel keeps it (v2 `memory.peak`, Linux 5.19+; v1 `max_usage_in_bytes`).
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        let file = match self.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// How many times a fork was refused for the process limit.
    pub fn pids_refused(&self) -> u64 {
        let Some(dir) = &self.pids else { return 0 };
        let text = std::fs::read_to_string(dir.join("pids.events")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("max ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let pending: Vec<PathBuf> = self
            .dirs()
            .into_iter()
            .filter(|d| std::fs::remove_dir(d).is_err())
            .cloned()
            .collect();
        if pending.is_empty() {
            return;
        }
        // The processes were just killed; the kernel frees the cgroup once
        // they have exited. Retry off the async threads.
        std::thread::spawn(move || {
            for dir in pending {
                for attempt in 0..100 {
                    match std::fs::remove_dir(&dir) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(_) if attempt < 99 => std::thread::sleep(std::time::Duration::from_millis(20)),
                        Err(_) => tracing::warn!(cgroup = %dir.display(), "could not remove an instance cgroup"),
                    }
                }
            }
        });
    }
}

/// Writes the calling process's pid to `procs` (an fd from `procs_files`).
/// Async-signal-safe: meant for `pre_exec`, between fork and exec.
pub fn join_from_child(procs: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let mut pid = unsafe { libc::getpid() } as u64;
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    let digits = &buf[i..];
    // SAFETY: a plain write of a stack buffer to an open fd.
    let n = unsafe { libc::write(procs.as_raw_fd(), digits.as_ptr().cast(), digits.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn join(cg: &Cgroup, pid: u32) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(cg.memory.as_ref().unwrap().join("cgroup.procs"))?
            .write_all(pid.to_string().as_bytes())
    }

    #[test]
    fn a_cgroup_limits_memory_and_counts_oom_kills() {
        let root = match CgroupRoot::detect(true) {
            Ok(r) => r,
            Err(why) => {
                eprintln!("skipping: no usable memory cgroup here ({why})");
                return;
            }
        };
        let cg = root.create(64 * 1024 * 1024, 64).unwrap();
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "read x; exec python3 -c 'b = bytearray(300 * 1024 * 1024); print(len(b))'",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        join(&cg, child.id()).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "300 MB inside a 64 MB cgroup must fail");
        assert!(cg.oom_kills() >= 1);
    }
}
