//! The attack suite: what a hostile function author would try, each attempt
//! asserted to fail while the platform keeps serving. Written from the
//! attacker's side (what can I read, run, reach, exhaust?), not as checks of
//! our own design. See docs/security.md for the threat model.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// The attacks need what CI has: root (to hand out uids), bubblewrap, gcc.
fn attack_ready() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let gcc = std::process::Command::new("gcc").arg("--version").output().is_ok();
    if !(root && sandbox_available() && gcc) {
        eprintln!("skipped: the attack suite needs root, bubblewrap and gcc (scripts/test installs them)");
        return false;
    }
    true
}

/// A world-writable directory on the host: if an attack lands anywhere
/// outside the sandbox, it can leave its mark here.
fn drop_zone() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Builds a shared object whose constructor, wherever it is loaded, writes
/// the process's uid and environment (and its parent's) into `zone`.
fn evil_library(zone: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("evil.c");
    std::fs::write(
        &src,
        format!(
            r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void copy(const char *from, FILE *to) {{
    FILE *f = fopen(from, "r"); int c;
    if (!f) return;
    while ((c = fgetc(f)) != EOF) fputc(c == 0 ? '\n' : c, to);
    fclose(f);
}}
__attribute__((constructor)) static void pwn(void) {{
    char path[512], parent[64];
    snprintf(path, sizeof path, "{zone}/pwned-%d", (int)getpid());
    FILE *out = fopen(path, "w");
    if (!out) return;
    fprintf(out, "uid=%d\n", (int)getuid());
    copy("/proc/self/environ", out);
    snprintf(parent, sizeof parent, "/proc/%d/environ", (int)getppid());
    copy(parent, out);
    fclose(out);
}}
"#,
            zone = zone.display()
        ),
    )
    .unwrap();
    let so = dir.path().join("evil.so");
    let out = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "gcc: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(so).unwrap()
}

fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn marks(zone: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(zone).unwrap().flatten().map(|e| e.path()).collect()
}

async fn upload_zip(app: &TestApp, zip: Vec<u8>, fields: &[(&str, &str)]) -> (u16, Value) {
    let resp = app.upload_raw("fn.zip", zip, fields).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const ATTEMPT: &str = r#"
import os, socket, subprocess
def attempt(f):
    try:
        return 'allowed: %r' % (f(),)
    except Exception as e:
        return 'denied: %s' % type(e).__name__
"#;

#[tokio::test]
async fn ld_preload_cannot_reach_the_launcher_or_the_worker() {
    if !attack_ready() {
        return;
    }
    let zone = drop_zone();
    let so = evil_library(zone.path());
    let app = TestApp::start().await;
    let handler = format!(
        "{ATTEMPT}\ndef handler(event, context):\n    env = dict(os.environ, LD_PRELOAD=os.path.abspath(os.path.join(os.path.dirname(__file__), 'evil.so')))\n    return attempt(lambda: subprocess.run(['/bin/true'], env=env, check=True).returncode)\n"
    );
    let zip = zip_bytes(&[("main.py", handler.as_bytes()), ("evil.so", &so)]);

    // 1. The loader's variables in envVars are refused outright, however spelt.
    for (name, network) in [
        ("LD_PRELOAD", "false"),
        ("LD_PRELOAD", "true"),
        ("LD_AUDIT", "false"),
        ("ld_preload", "false"),
    ] {
        let env = format!(r#"{{"{name}": "evil.so"}}"#);
        let (status, body) = upload_zip(&app, zip.clone(), &[("envVars", &env), ("network", network)]).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body["error"].as_str().unwrap().contains("reserved"), "{body}");
    }
    // ... and by PUT on an existing function.
    let (status, body) = upload_zip(&app, zip.clone(), &[]).await;
    assert_eq!(status, 200, "{body}");
    let id = body["functionId"].as_str().unwrap().to_string();
    let resp = app
        .put(&format!("/functions/{id}"))
        .json(&json!({"envVars": {"LD_PRELOAD": "evil.so"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // 2. Set from inside, it only ever loads into the function's own
    // sandboxed processes: the library runs, but cannot leave a mark on the
    // host, nor read the worker's environment.
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert!(body["result"].as_str().unwrap().starts_with("allowed"), "{body}");
    // The fresh-start path (network functions never use stem cells) too.
    let (status, body) = upload_zip(&app, zip, &[("network", "true")]).await;
    assert_eq!(status, 200, "{body}");
    let online = body["functionId"].as_str().unwrap().to_string();
    let body = app.run_ok(&online, json!({})).await;
    assert_eq!(body["startKind"], "fresh", "{body}");
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(
        marks(zone.path()),
        Vec::<PathBuf>::new(),
        "the library escaped the sandbox"
    );
    // The platform serves on.
    let ok = app.upload_py("def handler(e, c):\n    return 'fine'\n", &[]).await;
    assert_eq!(app.run_ok(&ok, json!({})).await["result"], "fine");
}

#[tokio::test]
async fn the_host_is_out_of_sight() {
    if !attack_ready() {
        return;
    }
    let app = TestApp::start().await;
    let data_dir = app.dir.path().canonicalize().unwrap();
    // Another tenant's secret code and settings.
    let victim = app
        .upload_py(
            "SECRET = 'victim-code'\ndef handler(e, c):\n    return SECRET\n",
            &[("envVars", r#"{"DB_PASSWORD":"hunter2"}"#)],
        )
        .await;
    assert_eq!(app.run_ok(&victim, json!({})).await["result"], "victim-code");
    let victim_code = files_under(&data_dir.join("cache"))
        .into_iter()
        .map(|p| data_dir.join("cache").join(p))
        .find(|p| p.ends_with("main.py"))
        .expect("the victim's code is cached on the host");

    // A host unix socket, reachable by anyone on the host.
    let zone = drop_zone();
    let socket_path = zone.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    listener.set_nonblocking(true).unwrap();

    // A descriptor the worker holds without close-on-exec (as a careless
    // launcher would leave it): instances must not inherit it.
    let leaked = tempfile::NamedTempFile::new().unwrap();
    let leaked_path = leaked.path().display().to_string();
    let leaked_fd = std::fs::File::open(leaked.path()).unwrap();
    // SAFETY: clearing close-on-exec on a descriptor this test owns.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&leaked_fd);
        libc::fcntl(fd, libc::F_SETFD, 0);
    }
    let spy = format!(
        r#"{ATTEMPT}
def listing(path):
    return sorted(os.listdir(path))
def unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return 'connected'
def handler(event, context):
    return {{
        'root': listing('/'),
        'slashRoot': attempt(lambda: listing('/root')),
        'home': attempt(lambda: listing('/home')),
        'project': attempt(lambda: listing(event['project'])),
        'dataDir': attempt(lambda: listing(event['dataDir'])),
        'database': attempt(lambda: open(os.path.join(event['dataDir'], 'infra.redb'), 'rb').read(16)),
        'apiKeyFile': attempt(lambda: open(os.path.join(event['dataDir'], 'api-key')).read()),
        'victimCode': attempt(lambda: open(event['victim']).read()),
        'shadow': attempt(lambda: open('/etc/shadow').read()),
        'socket': attempt(lambda: unix(event['socket'])),
        'dockerSocket': attempt(lambda: unix('/var/run/docker.sock')),
        'workerEnv': attempt(lambda: open('/proc/%d/environ' % event['workerPid']).read()),
        'pid1': open('/proc/1/cmdline').read().replace('\0', ' '),
        'procs': len([p for p in os.listdir('/proc') if p.isdigit()]),
        'passwd': open('/etc/passwd').read(),
        'uid': os.getuid(),
        'status': open('/proc/self/status').read(),
        'writeSystem': attempt(lambda: open('/usr/pwned', 'w').write('x')),
        'writeCode': attempt(lambda: open('/var/task/main.py', 'a').write('x')),
        'keyring': attempt(lambda: keyctl_add()),
        'userns': attempt(lambda: subprocess.run(['unshare', '-Ur', 'true'], check=True, capture_output=True).returncode),
        'fds': {{fd: attempt(lambda: os.readlink('/proc/self/fd/' + fd)) for fd in os.listdir('/proc/self/fd')}},
    }}
def keyctl_add():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    # add_key("user", "tenant", "secret", 6, KEY_SPEC_USER_KEYRING)
    r = libc.syscall(248 if os.uname().machine == 'x86_64' else 217, b'user', b'tenant', b'secret', 6, -4)
    if r < 0:
        raise OSError(ctypes.get_errno(), 'add_key')
    return r
"#
    );
    let id = app.upload_py(&spy, &[]).await;
    let event = json!({
        "project": env!("CARGO_MANIFEST_DIR"),
        "dataDir": data_dir,
        "victim": victim_code,
        "socket": socket_path,
        "workerPid": std::process::id(),
    });
    for start in ["cold", "warm"] {
        let body = app.run_ok(&id, event.clone()).await;
        assert_eq!(body["status"], "SUCCESS", "{start}: {body}");
        let r = &body["result"];
        let denied = |k: &str| {
            let v = r[k].as_str().unwrap_or_default();
            assert!(v.starts_with("denied"), "{start}: {k} must fail: {v}");
        };
        for k in [
            "slashRoot",
            "home",
            "project",
            "dataDir",
            "database",
            "apiKeyFile",
            "victimCode",
            "shadow",
            "socket",
            "dockerSocket",
            "workerEnv",
            "writeSystem",
            "writeCode",
            "keyring",
            "userns",
        ] {
            denied(k);
        }
        // Only its own descriptors: nothing the worker holds leaks in.
        for (fd, target) in r["fds"].as_object().unwrap() {
            let target = target.as_str().unwrap();
            assert!(
                !target.contains(&leaked_path) && fd.parse::<u32>().unwrap() < 16,
                "{start}: fd {fd} -> {target}"
            );
        }
        // Only the system, its own code and scratch space: nothing of the host's top level.
        let root: Vec<String> = serde_json::from_value(r["root"].clone()).unwrap();
        for host_only in ["root", "home", "srv", "mnt", "run", "work", "boot", "media"] {
            assert!(
                !root.contains(&host_only.to_string()),
                "{start}: /{host_only} is visible: {root:?}"
            );
        }
        // No host path in what /proc shows of the sandbox's first process.
        let pid1 = r["pid1"].as_str().unwrap();
        for host_path in [data_dir.to_str().unwrap(), "/root", env!("CARGO_MANIFEST_DIR")] {
            assert!(
                !pid1.contains(host_path),
                "{start}: /proc/1/cmdline shows {host_path}: {pid1}"
            );
        }
        assert!(r["procs"].as_u64().unwrap() <= 4, "{start}: own pid namespace: {r}");
        // Its own unprivileged user, no capability, no way to gain one.
        let uid = r["uid"].as_u64().unwrap();
        assert!(uid >= 100_000, "{start}: {r}");
        let status = r["status"].as_str().unwrap();
        for line in [
            "CapEff:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
        ] {
            assert!(status.contains(line), "{start}: expected {line:?} in {status}");
        }
        let passwd = r["passwd"].as_str().unwrap();
        assert!(
            !passwd.contains("/home/") && !passwd.contains("/bin/bash"),
            "{start}: host accounts: {passwd}"
        );
    }
    assert!(listener.accept().is_err(), "the host socket was reached");
    drop(leaked_fd);
    assert_eq!(
        app.run_ok(&victim, json!({})).await["result"],
        "victim-code",
        "the platform serves on"
    );
}

#[tokio::test]
async fn without_the_sandbox_state_stays_private() {
    // SANDBOX=none (hosts without namespaces): own uids and file modes are
    // then what keeps one function from another's settings.
    let system_python = Path::new("/usr/bin/python3");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !system_python.exists() {
        eprintln!("skipped: needs root and /usr/bin/python3 (reachable by other users)");
        return;
    }
    let app = TestApp::start_with(|a| {
        a.pool.sandbox = "none".into();
        a.pool.python = "/usr/bin/python3".into();
        a.pool.node = "none".into();
    })
    .await;
    let health = app.public_json("/health").await;
    assert!(
        health["isolation"].as_str().unwrap().contains("own unprivileged uid"),
        "{health}"
    );
    let data_dir = app.dir.path().canonicalize().unwrap();
    let victim = app
        .upload_py(
            "def handler(e, c):\n    return 1\n",
            &[("envVars", r#"{"DB_PASSWORD":"hunter2"}"#)],
        )
        .await;
    assert_eq!(app.run_ok(&victim, json!({})).await["result"], 1);
    let spy = format!(
        "{ATTEMPT}\ndef handler(event, context):\n    d = event['dataDir']\n    return {{'db': attempt(lambda: b'hunter2' in open(os.path.join(d, 'infra.redb'), 'rb').read()), 'key': attempt(lambda: open(os.path.join(d, 'api-key')).read()), 'cache': attempt(lambda: os.listdir(os.path.join(d, 'cache'))), 'artifacts': attempt(lambda: os.listdir(os.path.join(d, 'artifacts'))), 'list': attempt(lambda: os.listdir(d)), 'uid': os.getuid()}}\n"
    );
    let id = app.upload_py(&spy, &[]).await;
    let body = app.run_ok(&id, json!({"dataDir": data_dir})).await;
    let r = &body["result"];
    for k in ["db", "cache", "artifacts", "list"] {
        assert!(r[k].as_str().unwrap().starts_with("denied"), "{k}: {body}");
    }
    assert!(r["uid"].as_u64().unwrap() >= 100_000, "{body}");
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data_dir.join("infra.redb")), 0o600);
    assert_eq!(mode(data_dir.join("cache")), 0o700);
    assert_eq!(mode(data_dir.join("artifacts")), 0o700);
    assert_eq!(
        mode(data_dir.clone()) & 0o066,
        0,
        "nobody else may list or write the data dir"
    );
}

/// A fork bomb, 3 × 1 GiB of writes and twice the memory limit, as an
/// unprivileged instance and as an explicitly allowed root instance.
async fn contained_as(app: &TestApp, expect_root: bool) {
    let who = app
        .upload_py("import os\ndef handler(e, c):\n    return os.getuid()\n", &[])
        .await;
    let uid = app.run_ok(&who, json!({})).await["result"].as_u64().unwrap();
    assert_eq!(uid == 0, expect_root, "uid {uid}");

    let bomb = app
        .upload_py(
            "import os\ndef handler(e, c):\n    n = 0\n    while True:\n        try:\n            os.fork()\n            n += 1\n        except OSError:\n            pass\n",
            &[("timeoutMs", "3000")],
        )
        .await;
    let body = app.run_ok(&bomb, json!({})).await;
    // Stopped by the process limit (then the timeout) or, 128 interpreters
    // later, by the memory limit: either way a clear end.
    assert!(
        matches!(body["status"].as_str(), Some("TIMEOUT" | "FAILED" | "OOM")),
        "{body}"
    );

    let filler = app
        .upload_py(
            "def handler(e, c):\n    written = 0\n    for i in range(3):\n        with open('big-%d' % i, 'wb') as f:\n            for _ in range(1024):\n                f.write(b'x' * (1024 * 1024))\n                written += 1\n    return written\n",
            &[("memoryMb", "1024"), ("timeoutMs", "60000")],
        )
        .await;
    let body = app.run_ok(&filler, json!({})).await;
    assert_eq!(body["status"], "FAILED", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("No space left on device"), "{body}");
    // Nothing landed on the host's disk.
    let big: Vec<_> = files_under(app.dir.path())
        .into_iter()
        .filter(|p| std::fs::metadata(app.dir.path().join(p)).is_ok_and(|m| m.len() > 8 << 20))
        .filter(|p| !p.starts_with("artifacts"))
        .collect();
    assert!(big.is_empty(), "large files on the host: {big:?}");

    let hog = app
        .upload_py(
            "def handler(e, c):\n    return len(bytearray(2 * c.memory_limit_in_mb * 1024 * 1024))\n",
            &[("memoryMb", "128")],
        )
        .await;
    assert_eq!(app.run_ok(&hog, json!({})).await["status"], "OOM");
    // Serving on, and the bomb's processes are gone.
    assert_eq!(app.run_ok(&who, json!({})).await["status"], "SUCCESS");
}

#[tokio::test]
async fn exhaustion_is_contained_as_an_instance_user() {
    if !attack_ready() {
        return;
    }
    let app = TestApp::start_with(|a| a.pool.instance_tmp_mb = "64".into()).await;
    contained_as(&app, false).await;
}

#[tokio::test]
async fn exhaustion_is_contained_as_an_explicit_root_instance() {
    if !attack_ready() {
        return;
    }
    let app = TestApp::start_with(|a| {
        a.pool.instance_user = "root".into();
        a.pool.instance_tmp_mb = "64".into();
    })
    .await;
    let health = app.public_json("/health").await;
    assert!(health["isolation"].as_str().unwrap().contains("ROOT"), "loud: {health}");
    contained_as(&app, true).await;
}

#[tokio::test]
async fn stem_cells_start_under_instance_uids() {
    let python = Path::new("/usr/bin/python3");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !python.exists() || !sandbox_available() {
        eprintln!("skipped: needs root, bubblewrap and /usr/bin/python3");
        return;
    }
    let app = TestApp::start_with(|a| {
        a.pool.python = "/usr/bin/python3".into();
        a.pool.stem_cells = "1".into();
    })
    .await;
    let py = app
        .upload_py("import os\ndef handler(e, c):\n    return os.getuid()\n", &[])
        .await;
    let node = app
        .upload_file("index.js", "exports.handler = async () => process.getuid();\n", &[])
        .await;
    // Give the stem cells time to start.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !app.metrics().await.contains("infra_stem_cells 2") {
        assert!(Instant::now() < deadline, "stem cells did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in [&py, &node] {
        let body = app.run_ok(id, json!({})).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["startKind"], "stem", "{body}");
        assert!(body["result"].as_u64().unwrap() >= 100_000, "{body}");
    }
}

/// A zip whose headers lie (declares tiny, inflates big) and a bomb.
#[tokio::test]
async fn lying_zips_and_bombs_are_refused_at_upload() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, zipfile
liar, bomb = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(liar, 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('main.py', 'def handler(e, c):\n    return 1\n')
    z.writestr('blob.bin', b'\0' * (64 * 1024 * 1024))
data = bytearray(open(liar, 'rb').read())
i = 0
while True:
    i = data.find(b'blob.bin', i + 1)
    if i < 0:
        break
    # The size fields sit just before the name in both header kinds.
    if data[i - 30:i - 26] == b'PK\x03\x04':
        data[i - 8:i - 4] = (1).to_bytes(4, 'little')
    elif data[i - 46:i - 42] == b'PK\x01\x02':
        data[i - 22:i - 18] = (1).to_bytes(4, 'little')
open(liar, 'wb').write(data)
with zipfile.ZipFile(bomb, 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('main.py', 'def handler(e, c):\n    return 1\n')
    for n in range(5):
        z.writestr('zeros-%d' % n, b'\0' * (60 * 1024 * 1024))
"#;
    let (liar, bomb) = (dir.path().join("liar.zip"), dir.path().join("bomb.zip"));
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&liar)
        .arg(&bomb)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bomb_bytes = std::fs::read(&bomb).unwrap();
    assert!(bomb_bytes.len() < 2 << 20, "a bomb is small on the wire");
    for (file, expect) in [(&liar, "declares 1 bytes"), (&bomb, "expands to more than")] {
        let resp = app.upload_raw("fn.zip", std::fs::read(file).unwrap(), &[]).await;
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(expect), "{body}");
    }
    assert_eq!(
        app.get("/functions")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
        serde_json::json!([]),
        "nothing was registered"
    );
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        / 1024
}

#[tokio::test]
async fn concurrent_large_uploads_keep_memory_flat() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut infra = spawn_infra(
        &["up", "--port", "0", "--data-dir", data_dir.path().to_str().unwrap()],
        &[
            ("INFRA_API_KEY", KEY),
            ("RATE_LIMIT_PER_MINUTE", "0"),
            ("STEM_CELLS", "0"),
        ],
    );
    // 49 MiB that does not compress (stored as is), plus the handler.
    let mut noise = vec![0u8; 49 * 1024 * 1024 - 4096];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let zip = {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("main.py", stored).unwrap();
        w.write_all(b"def handler(e, c):\n    return 1\n").unwrap();
        w.start_file("noise.bin", stored).unwrap();
        w.write_all(&noise).unwrap();
        w.finish().unwrap().into_inner()
    };
    drop(noise);
    assert!(zip.len() < 50 * 1024 * 1024);
    let before = peak_rss_mb(infra.child.id());
    let client = reqwest::Client::new();
    let uploads = (0..16).map(|_| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(zip.clone()).file_name("big.zip"),
        );
        client
            .post(format!("{}/upload", infra.base))
            .header("x-api-key", KEY)
            .multipart(form)
            .send()
    });
    let results = futures::future::join_all(uploads).await;
    for r in results {
        let r = r.unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
    let peak = peak_rss_mb(infra.child.id());
    eprintln!("infra up peak RSS: {before} MB before, {peak} MB after 16 concurrent 49 MiB uploads");
    assert!(peak < 200, "peak RSS {peak} MB");
    let _ = infra.child.kill();
    let _ = infra.child.wait();
}

/// A handler that speaks the instance protocol itself: floods AI requests and
/// never reads the replies, or forges a result frame.
#[tokio::test]
async fn the_protocol_socket_cannot_hold_the_worker_or_forge_results() {
    let app = TestApp::start_with(|a| a.pool.worker_concurrency = "1".into()).await;
    let flood = app
        .upload_py(
            "import json, os, socket, struct, time\ndef handler(event, context):\n    s = socket.socket(fileno=os.dup(3))\n    b = json.dumps({'op': 'ai', 'kind': 'generate', 'prompt': 'x'}).encode()\n    s.sendall((struct.pack('>I', len(b)) + b) * 20000)\n    time.sleep(3600)\n",
            &[("timeoutMs", "2000")],
        )
        .await;
    let started = Instant::now();
    let body = app.run_ok(&flood, json!({})).await;
    assert!(matches!(body["status"].as_str(), Some("TIMEOUT" | "CRASHED")), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the worker was held: {:?}",
        started.elapsed()
    );

    // A forged early result: the worker takes it (it cannot tell), but the
    // instance is then out of step and never serves another request.
    let forger = app
        .upload_py(
            "import json, os, socket, struct\ndef handler(event, context):\n    if event.get('forge'):\n        s = socket.socket(fileno=os.dup(3))\n        b = json.dumps({'op': 'result', 'status': 'SUCCESS', 'valueJson': '\"forged\"', 'error': None, 'stdout': 'x' * (1024 * 1024), 'stderr': '', 'durationMs': 0, 'peakMemoryBytes': 0, 'strays': 0}).encode()\n        s.sendall(struct.pack('>I', len(b)) + b)\n    return event['n']\n",
            &[],
        )
        .await;
    let forged = app.run_ok(&forger, json!({"forge": true, "n": 1})).await;
    assert!(
        forged["stdout"].as_str().unwrap().len() <= 300 * 1024,
        "stdout bounded by the worker"
    );
    for n in 2..5 {
        let body = app.run_ok(&forger, json!({"n": n})).await;
        assert_eq!(body["result"], n, "each caller gets its own result: {body}");
    }
    // Results past the response limit are refused, not stored.
    let big = app
        .upload_py("def handler(e, c):\n    return 'x' * (7 * 1024 * 1024)\n", &[])
        .await;
    let body = app.run_ok(&big, json!({})).await;
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["error"]["type"], "ResultTooLarge", "{body}");
}

/// Pids of live processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0u8])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// A program that double-forks a daemon in its own session (out of the
/// run's process group), detached from the run's pipes, then exits 0.
fn daemonizing_program(mark: &str) -> String {
    format!(
        "import os\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    if os.fork() == 0:\n        fd = os.open('/dev/null', os.O_RDWR)\n        for i in range(3):\n            os.dup2(fd, i)\n        os.execv('/bin/sleep', ['sleep', '{mark}'])\n    os._exit(0)\nos.waitpid(pid, 0)\nprint('parent done')\n"
    )
}

/// A program's daemon must not outlive its run: it would keep its uid's
/// processes (and, uids being reused, be there when the same uid runs
/// another function's program: its input and output dir are that uid's),
/// and it could still write to the output dir while the worker collects it.
#[tokio::test]
async fn a_programs_daemon_does_not_outlive_the_run() {
    let system_python = Path::new("/usr/bin/python3");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !system_python.exists() {
        eprintln!("skipped: needs root (instance uids) and /usr/bin/python3");
        return;
    }
    let mut modes = vec!["none"];
    if sandbox_available() {
        modes.push("auto");
    }
    for (i, mode) in modes.into_iter().enumerate() {
        let app = TestApp::start_with(|a| {
            a.pool.sandbox = mode.into();
            a.pool.python = "/usr/bin/python3".into();
            a.pool.node = "none".into();
        })
        .await;
        let mark = format!("3141.{}{i}", std::process::id());
        let id = app
            .upload_py(&daemonizing_program(&mark), &[("style", "program")])
            .await;
        let body = app.run_ok(&id, json!({})).await;
        assert_eq!(body["status"], "SUCCESS", "{mode}: {body}");
        assert_eq!(body["result"], "parent done", "{mode}: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let left = processes_running(&["sleep", &mark]);
        for pid in &left {
            // SAFETY: plain syscall on the pids this test's program started.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        assert!(
            left.is_empty(),
            "SANDBOX={mode}: the program's daemon outlived its run: {left:?}"
        );
        app.stop().await;
    }
}

/// What a program can leave in its output dir that is not a plain file of
/// its own: the worker collects without blocking (a FIFO with no writer, a
/// socket), without reading a second name of a file (a hard link), and
/// keeps only plain names within the depth bound.
#[tokio::test]
async fn a_programs_odd_output_entries_are_not_collected() {
    let app = TestApp::start().await;
    let program = r#"import os, socket
out = os.environ['OUTPUT_DIR']
os.environ.get('PAYLOAD')
open(os.path.join(out, 'ok.txt'), 'w').write('ok')
os.mkfifo(os.path.join(out, 'pipe.txt'))
s = socket.socket(socket.AF_UNIX)
s.bind(os.path.join(out, 'sock.txt'))
open(os.path.join(out, 'first.txt'), 'w').write('twice')
os.link(os.path.join(out, 'first.txt'), os.path.join(out, 'second.txt'))
for bad in ['new\nline.txt', 'caf\u00e9.txt', 'sp ace', '-', 'a:b']:
    open(os.path.join(out, bad), 'w').write('x')
d = out
for i in range(20):
    d = os.path.join(d, 'd')
    os.mkdir(d)
open(os.path.join(d, 'deep.txt'), 'w').write('deep')
print('done')
"#;
    let id = app.upload_py(program, &[("style", "program")]).await;
    let started = Instant::now();
    let body = app.run_ok(&id, json!({})).await;
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(body["status"], "SUCCESS", "{body}");
    let paths: Vec<&str> = body["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["-", "ok.txt", "stdout.log"], "{body}");
    let stderr = body["stderr"].as_str().unwrap();
    for note in [
        "pipe.txt: not a regular file",
        "sock.txt: not a regular file",
        "first.txt: hard link",
        "second.txt: hard link",
        "nested deeper",
    ] {
        assert!(stderr.contains(note), "{note}: {stderr}");
    }
    let job = body["jobId"].as_str().unwrap();
    for path in [
        "first.txt",
        "pipe.txt",
        "d%2Fd%2Fd%2Fd%2Fd%2Fd%2Fd%2Fd%2Fd%2Fd",
        "%2e%2e%2fapi-key",
        "..%252Fapi-key",
    ] {
        let r = app.get(&format!("/status/{job}/files/{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    app.stop().await;
}

/// While a program runs, the worker measures its output dir every 250 ms.
/// A program that swaps a subdir for a symbolic link to a host dir between
/// the worker's check of the entry and its listing would make the worker
/// (as root) walk that host dir, and stop the run when it is large: an
/// oracle on the host's file system, and host I/O at the program's will.
#[tokio::test]
async fn the_output_dirs_disk_check_does_not_follow_a_swapped_link() {
    let app = TestApp::start().await;
    // A host dir the sandbox cannot see, with more entries than the bound.
    let host = tempfile::tempdir().unwrap();
    for i in 0..10_100 {
        std::fs::File::create(host.path().join(format!("h{i}"))).unwrap();
    }
    let program = r#"import json, os, time
target = json.loads(os.environ['PAYLOAD'])['host']
out = os.environ['OUTPUT_DIR']
x, tmp = os.path.join(out, 'x'), os.path.join(out, 'x.d')
os.mkdir(x)
end = time.time() + 4
while time.time() < end:
    os.rename(x, tmp)
    os.symlink(target, x)
    time.sleep(0.0005)
    os.unlink(x)
    os.rename(tmp, x)
    time.sleep(0.0005)
print('done')
"#;
    let id = app
        .upload_py(program, &[("style", "program"), ("timeoutMs", "30000")])
        .await;
    let body = app.run_ok(&id, json!({"host": host.path().to_string_lossy()})).await;
    assert_eq!(body["status"], "SUCCESS", "the worker walked the host dir: {body}");
    app.stop().await;
}

/// The same daemon from a handler without a sandbox: it may live as long as
/// its instance (same function, same uid), but not past the instance's end,
/// when its uid goes back to the pool for other functions.
#[tokio::test]
async fn a_handlers_daemon_ends_with_its_instance() {
    let system_python = Path::new("/usr/bin/python3");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !system_python.exists() {
        eprintln!("skipped: needs root (instance uids) and /usr/bin/python3");
        return;
    }
    let app = TestApp::start_with(|a| {
        a.pool.sandbox = "none".into();
        a.pool.python = "/usr/bin/python3".into();
        a.pool.node = "none".into();
    })
    .await;
    let mark = format!("2718.{}", std::process::id());
    let body = daemonizing_program(&mark).replace('\n', "\n    ");
    let source = format!("def handler(event, context):\n    {body}return 'started'\n");
    let id = app.upload_py(&source, &[]).await;
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["result"], "started", "{body}");
    app.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = processes_running(&["sleep", &mark]);
    for pid in &left {
        // SAFETY: plain syscall on the pids this test's handler started.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    assert!(left.is_empty(), "the handler's daemon outlived its instance: {left:?}");
}
