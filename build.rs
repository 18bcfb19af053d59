//! Bundles the web console (`console/`, Preact + uPlot, pinned in its
//! package-lock.json) with esbuild, and embeds the result in the binary: the
//! console is served at `/ui` with no separate server and no CDN.
//!
//! Needs Node.js (18 or newer) and npm. The packages are installed with
//! `npm ci --ignore-scripts` into this build's own `OUT_DIR` (never into the
//! source tree, so concurrent cargo runs cannot pull each other's tree away),
//! again only when the lock file changes. `INFRA_CONSOLE=skip` builds without
//! the console (then `/ui/` answers 404 saying so, and the console's tests
//! fail).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=INFRA_CONSOLE");
    for p in [
        "console/src",
        "console/build.mjs",
        "console/package.json",
        "console/package-lock.json",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let table = out.join("console_assets.rs");
    if std::env::var("INFRA_CONSOLE").as_deref() == Ok("skip") {
        std::fs::write(&table, "pub static ASSETS: &[Asset] = &[];\n").expect("write the asset table");
        return;
    }
    let console = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("console");
    let work = out.join("console-build");
    install(&console, &work);
    let dist = out.join("console");
    let _ = std::fs::remove_dir_all(&dist);
    run(
        Command::new("node")
            .arg(work.join("build.mjs"))
            .arg(console.join("src"))
            .arg(&dist)
            .current_dir(&work),
        "bundle the console (node build.mjs)",
    );
    write_table(&dist, &table);
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot {what}: {e}. The web console needs Node.js 18+ and npm to build \
             (Debian: apt-get install nodejs npm); INFRA_CONSOLE=skip builds without it"
        )
    });
    assert!(status.success(), "failed to {what}: {status}");
}

/// The packages of `console/package-lock.json`, installed in `work` unless
/// the lock file there is already the same.
fn install(console: &Path, work: &Path) {
    std::fs::create_dir_all(work).expect("create the console's build dir");
    for f in ["package.json", "package-lock.json", "build.mjs"] {
        std::fs::copy(console.join(f), work.join(f)).unwrap_or_else(|e| panic!("copy console/{f}: {e}"));
    }
    let lock = std::fs::read(console.join("package-lock.json")).expect("read console/package-lock.json");
    let stamp = work.join("node_modules/.installed-lock");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) {
        return;
    }
    run(
        Command::new("npm")
            .args([
                "ci",
                "--ignore-scripts",
                "--prefer-offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(work),
        "install the console's packages (npm ci)",
    );
    std::fs::write(&stamp, lock).expect("stamp the console's packages");
}

fn mime(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// One entry per file: its bytes and a gzip of them, both embedded.
fn write_table(dist: &Path, table: &Path) {
    let mut entries: Vec<_> = std::fs::read_dir(dist)
        .expect("the console bundle exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "gz"))
        .collect();
    entries.sort();
    let mut src = String::from("pub static ASSETS: &[Asset] = &[\n");
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("plain names")
            .to_string();
        let data = std::fs::read(&path).expect("read a bundled file");
        let gz_path = dist.join(format!("{name}.gz"));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&data).expect("gzip in memory");
        std::fs::write(&gz_path, enc.finish().expect("gzip in memory")).expect("write the gzip");
        // Names with a content hash never change: cached for good.
        let immutable = name != "index.html";
        src.push_str(&format!(
            "    Asset {{ name: {name:?}, mime: {:?}, immutable: {immutable}, body: include_bytes!({:?}), gzip: include_bytes!({:?}) }},\n",
            mime(&name),
            path.display().to_string(),
            gz_path.display().to_string(),
        ));
    }
    src.push_str("];\n");
    std::fs::write(table, src).expect("write the asset table");
}
