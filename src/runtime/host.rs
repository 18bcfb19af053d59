//! What this host offers function instances, probed once at start-up (the
//! only I/O behind the sandbox plan): the system dirs and links, the `/etc`
//! entries that exist, `setpriv`, whether bubblewrap works here, and the
//! subordinate uid ranges already given to users.

use std::path::{Path, PathBuf};

use super::sandbox::{HostLayout, SystemEntry, ETC_ENTRIES};

/// Top-level system paths a runtime may need: a directory is shown
/// read-only, a link (merged `/usr`) recreated.
const SYSTEM_PATHS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Reads the host's layout.
pub fn layout() -> HostLayout {
    let mut system = Vec::new();
    for p in SYSTEM_PATHS {
        let path = Path::new(p);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    system.push(SystemEntry::Link {
                        path: path.to_path_buf(),
                        target,
                    });
                }
            }
            Ok(m) if m.is_dir() => system.push(SystemEntry::Dir(path.to_path_buf())),
            _ => {}
        }
    }
    let etc = ETC_ENTRIES
        .iter()
        .map(|e| Path::new("/etc").join(e))
        .filter(|p| p.exists())
        .collect();
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    HostLayout { system, etc, setpriv }
}

/// Finds bubblewrap and checks that it can build the sandbox here (it needs
/// namespaces, which some containers refuse).
pub fn find_bwrap() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
        .ok_or_else(|| "bwrap (bubblewrap) is not installed".to_string())?;
    let mut probe = std::process::Command::new(&path);
    probe.args(["--unshare-net", "--unshare-pid"]);
    for entry in layout().system {
        match entry {
            SystemEntry::Dir(d) => probe.arg("--ro-bind").arg(&d).arg(&d),
            SystemEntry::Link { path, target } => probe.arg("--symlink").arg(target).arg(path),
        };
    }
    let probe = probe
        .args([
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            "1048576",
            "--tmpfs",
            "/tmp",
            "/usr/bin/true",
        ])
        .env_clear()
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if probe.status.success() {
        Ok(path)
    } else {
        Err(format!(
            "bwrap cannot create a sandbox here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ))
    }
}

/// Whether this process runs as root (and so must give instances other users).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Every ancestor directory is searchable and the path itself readable by others.
pub fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = path.canonicalize() else { return false };
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    path.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0) && mode(&path) & 0o005 != 0
}

/// The users whose subordinate uids (`/etc/subuid`, used by rootless
/// containers) overlap `[base, base + count)`: their containers' processes
/// would run as instance uids (a lease's kill reaches them, and they can
/// signal instances).
pub fn subuid_overlaps(base: u32, count: u32) -> Vec<String> {
    std::fs::read_to_string("/etc/subuid")
        .map(|text| overlapping_subuids(&text, base, count))
        .unwrap_or_default()
}

/// `subuid_overlaps` on the file's text (`user:start:count` lines).
fn overlapping_subuids(text: &str, base: u32, count: u32) -> Vec<String> {
    let end = u64::from(base) + u64::from(count);
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(':');
            let (user, start, n) = (parts.next()?, parts.next()?, parts.next()?);
            let (start, n) = (start.parse::<u64>().ok()?, n.parse::<u64>().ok()?);
            (start < end && u64::from(base) < start + n).then(|| format!("{user} ({start}+{n})"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_uid_ranges_that_meet_the_instance_range_are_named() {
        let text = "alice:100000:65536\nbob:165536:65536\n# comment\nbad line\ncarol:99000:1000\n";
        assert_eq!(overlapping_subuids(text, 100_000, 1024), ["alice (100000+65536)"]);
        assert_eq!(overlapping_subuids(text, 97_000, 1024), Vec::<String>::new());
        assert_eq!(
            overlapping_subuids(text, 97_976, 1024),
            Vec::<String>::new(),
            "ends just before carol"
        );
        assert_eq!(overlapping_subuids(text, 98_500, 1024), ["carol (99000+1000)"]);
        assert_eq!(overlapping_subuids(text, 1_000_000, 1024), Vec::<String>::new());
    }
}
