//! Packaging uploaded code into a content-addressed zip artifact. Pure: bytes
//! in, bytes or a precise error out.

use std::io::{Cursor, Read, Write};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::settings::Handler;
use crate::model::Runtime;

/// Largest accepted upload (a source file or a `.zip`).
pub const MAX_UPLOAD_BYTES: usize = 50 * 1024 * 1024;
/// Largest total uncompressed size of an archive (AWS Lambda's limit).
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PackageError {
    #[error("unsupported file type {0:?}: upload a .py, .js or .mjs file, or a .zip archive")]
    UnsupportedType(String),
    #[error("{file} does not match the function's runtime {runtime}")]
    WrongRuntime { file: String, runtime: Runtime },
    #[error("the uploaded file is empty")]
    Empty,
    #[error("the uploaded file is {size} bytes; the limit is {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("{0} is not UTF-8 text")]
    NotUtf8(String),
    #[error("not a valid zip archive: {0}")]
    BadZip(String),
    #[error("zip entry {0:?} has an unsafe path (absolute, '..', or backslashes)")]
    UnsafePath(String),
    #[error("zip entry {0:?} is a symbolic link; links are not allowed")]
    Symlink(String),
    #[error("zip archive has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("zip archive expands to more than {MAX_UNZIPPED_BYTES} bytes")]
    UnzippedTooLarge,
    #[error("zip entry {name:?} declares {declared} bytes but holds {actual}")]
    SizeMismatch { name: String, declared: u64, actual: u64 },
    #[error("zip archive does not contain the handler module for {handler}: expected {expected} at the archive root")]
    MissingHandler { handler: String, expected: String },
}

impl PackageError {
    pub fn is_too_large(&self) -> bool {
        matches!(self, PackageError::TooLarge { .. })
    }
}

/// A packaged function: the zip bytes and their sha256 (hex).
#[derive(Debug, Clone)]
pub struct Artifact {
    pub bytes: Bytes,
    pub sha256: String,
}

impl Artifact {
    pub fn new(bytes: Bytes) -> Artifact {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Artifact { bytes, sha256 }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Content-addressed key: unchanged code maps to the same key.
    pub fn key(&self, function_id: &str) -> String {
        format!("functions/{function_id}/{}.zip", self.sha256)
    }
}

/// Packages an upload: a `.py` file becomes `{module}.py` in a deterministic
/// zip; a `.zip` is checked and stored as it is.
pub fn package(file_name: &str, data: Bytes, handler: &Handler, runtime: Runtime) -> Result<Artifact, PackageError> {
    if data.is_empty() {
        return Err(PackageError::Empty);
    }
    if data.len() > MAX_UPLOAD_BYTES {
        return Err(PackageError::TooLarge {
            size: data.len(),
            max: MAX_UPLOAD_BYTES,
        });
    }
    let lower = file_name.to_ascii_lowercase();
    if let Some(file_runtime) = Runtime::of_file(file_name) {
        if file_runtime != runtime {
            return Err(PackageError::WrongRuntime {
                file: file_name.to_string(),
                runtime,
            });
        }
        if std::str::from_utf8(&data).is_err() {
            return Err(PackageError::NotUtf8(file_name.to_string()));
        }
        let module_file = handler.single_file_name(file_name, runtime);
        Ok(Artifact::new(Bytes::from(single_file_zip(&module_file, &data)?)))
    } else if lower.ends_with(".zip") {
        check_zip(&data, handler, runtime)?;
        // Stored as uploaded: no copy of what may be 50 MiB.
        Ok(Artifact::new(data))
    } else {
        let ext = Path::new(file_name)
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_else(|| file_name.to_string());
        Err(PackageError::UnsupportedType(ext))
    }
}

/// Builds a zip with one file and fixed metadata, so equal code gives equal bytes.
pub fn single_file_zip(name: &str, data: &[u8]) -> Result<Vec<u8>, PackageError> {
    zip_files(&[(name.to_string(), data.to_vec())].into())
}

/// Builds a zip of `files` (path → content) in path order with fixed
/// metadata: the same files always give the same bytes (and sha256).
pub fn zip_files(files: &std::collections::BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, PackageError> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    let err = |e: zip::result::ZipError| PackageError::BadZip(e.to_string());
    for (name, data) in files {
        safe_entry_path(name)?;
        writer.start_file(name.as_str(), options).map_err(err)?;
        writer
            .write_all(data)
            .map_err(|e| PackageError::BadZip(e.to_string()))?;
    }
    Ok(writer.finish().map_err(err)?.into_inner())
}

/// The relative path an entry may be extracted to, or why it may not.
pub fn safe_entry_path(name: &str) -> Result<PathBuf, PackageError> {
    let unsafe_path = || PackageError::UnsafePath(name.to_string());
    if name.is_empty() || name.contains('\\') || name.contains('\0') || name.starts_with('/') {
        return Err(unsafe_path());
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(unsafe_path()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(unsafe_path());
    }
    Ok(out)
}

/// One file of an artifact, as the console's code view shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeFile {
    pub path: String,
    pub size: u64,
    /// The content, when it is UTF-8 text of at most `MAX_SHOWN_FILE_BYTES`
    /// and the listing's text budget allows.
    pub text: Option<String>,
}

/// Largest file whose text a listing carries.
pub const MAX_SHOWN_FILE_BYTES: u64 = 256 * 1024;
/// Most text one listing carries in all.
pub const MAX_SHOWN_BYTES: u64 = 1024 * 1024;
/// Most files one listing names.
pub const MAX_LISTED_FILES: usize = 500;

/// What `list_files` found: at most `MAX_LISTED_FILES` of `total` files.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeFiles {
    pub files: Vec<CodeFile>,
    pub total: usize,
}

/// The files of a stored artifact (a zip this module built), sorted by path,
/// directories left out; small text files with their content. CPU-bound for
/// large archives: call it off the async threads.
pub fn list_files(data: &[u8]) -> Result<CodeFiles, PackageError> {
    let mut archive = ZipArchive::new(Cursor::new(data)).map_err(|e| PackageError::BadZip(e.to_string()))?;
    let mut files = Vec::new();
    let mut budget = MAX_SHOWN_BYTES;
    let mut names: Vec<(usize, String)> = (0..archive.len())
        .filter_map(|i| archive.name_for_index(i).map(|n| (i, n.to_string())))
        .filter(|(_, n)| !n.ends_with('/'))
        .collect();
    names.sort_by(|a, b| a.1.cmp(&b.1));
    let total = names.len();
    for (i, name) in names.into_iter().take(MAX_LISTED_FILES) {
        let entry = archive.by_index(i).map_err(|e| PackageError::BadZip(e.to_string()))?;
        let size = entry.size();
        let text = if size <= MAX_SHOWN_FILE_BYTES && size <= budget {
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .take(MAX_SHOWN_FILE_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| PackageError::BadZip(format!("entry {name:?}: {e}")))?;
            String::from_utf8(bytes).ok()
        } else {
            None
        };
        // By what was read, not what the entry declares: an archive that
        // lies about its sizes cannot overdraw the budget.
        let text = text.filter(|t| t.len() as u64 <= budget);
        if let Some(t) = &text {
            budget -= t.len() as u64;
        }
        files.push(CodeFile { path: name, size, text });
    }
    Ok(CodeFiles { files, total })
}

fn is_symlink(mode: Option<u32>) -> bool {
    mode.is_some_and(|m| m & 0o170000 == 0o120000)
}

/// Checks an archive by inflating every entry (into nothing): well-formed,
/// checksums right, safe entry names, no links, bounded entries, each entry
/// exactly the size it declares (a zip that lies about its sizes is refused
/// here, not found out by every run), the real total within the limit, and the
/// handler module present. CPU-bound for large archives: call it off the async
/// threads.
pub fn check_zip(data: &[u8], handler: &Handler, runtime: Runtime) -> Result<(), PackageError> {
    let mut archive = ZipArchive::new(Cursor::new(data)).map_err(|e| PackageError::BadZip(e.to_string()))?;
    if archive.len() > MAX_ENTRIES {
        return Err(PackageError::TooManyEntries);
    }
    let expected = handler.module_files(runtime);
    let mut found = false;
    let mut budget = MAX_UNZIPPED_BYTES;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| PackageError::BadZip(e.to_string()))?;
        let name = entry.name().to_string();
        let path = safe_entry_path(&name)?;
        if is_symlink(entry.unix_mode()) {
            return Err(PackageError::Symlink(name));
        }
        let declared = entry.size();
        if declared > budget {
            return Err(PackageError::UnzippedTooLarge);
        }
        // Inflate one byte past what is left, to catch what the headers hide.
        let actual = std::io::copy(&mut (&mut entry).take(budget + 1), &mut std::io::sink())
            .map_err(|e| PackageError::BadZip(format!("entry {name:?}: {e}")))?;
        if actual > budget {
            return Err(PackageError::UnzippedTooLarge);
        }
        if actual != declared {
            return Err(PackageError::SizeMismatch { name, declared, actual });
        }
        budget -= actual;
        let rel = path.to_string_lossy();
        if !entry.is_dir() && expected.iter().any(|e| *e == rel) {
            found = true;
        }
    }
    if !found {
        return Err(PackageError::MissingHandler {
            handler: handler.to_string(),
            expected: expected.join(" or "),
        });
    }
    Ok(())
}

/// Extracts an archive into `dest` (which must exist and be empty), enforcing
/// the same rules as `check_zip` on the actual bytes, not the declared sizes.
pub fn extract_zip(data: &[u8], dest: &Path) -> Result<(), ExtractError> {
    let mut archive = ZipArchive::new(Cursor::new(data)).map_err(|e| PackageError::BadZip(e.to_string()))?;
    if archive.len() > MAX_ENTRIES {
        return Err(PackageError::TooManyEntries.into());
    }
    let mut budget = MAX_UNZIPPED_BYTES;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| PackageError::BadZip(e.to_string()))?;
        let rel = safe_entry_path(entry.name())?;
        if is_symlink(entry.unix_mode()) {
            return Err(PackageError::Symlink(entry.name().to_string()).into());
        }
        let target = dest.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&target)?;
        // Read one byte past the budget to detect archives that lie about sizes.
        let copied = std::io::copy(&mut (&mut entry).take(budget + 1), &mut out)?;
        if copied > budget {
            return Err(PackageError::UnzippedTooLarge.into());
        }
        if copied != entry.size() {
            return Err(PackageError::SizeMismatch {
                name: entry.name().to_string(),
                declared: entry.size(),
                actual: copied,
            }
            .into());
        }
        budget -= copied;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("cannot write extracted file: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn listing_shows_text_files_and_names_the_rest() {
        let mut files = std::collections::BTreeMap::new();
        files.insert("main.py".to_string(), b"def handler(e, c):\n    return 1\n".to_vec());
        files.insert("lib/data.bin".to_string(), vec![0xff, 0xfe, 0x00]);
        files.insert("big.txt".to_string(), vec![b'a'; MAX_SHOWN_FILE_BYTES as usize + 1]);
        let zip = zip_files(&files).unwrap();
        let CodeFiles { files: listed, total } = list_files(&zip).unwrap();
        assert_eq!(total, 3);
        let paths: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["big.txt", "lib/data.bin", "main.py"]);
        assert_eq!(listed[0].text, None, "too large to show");
        assert_eq!(listed[0].size, MAX_SHOWN_FILE_BYTES + 1);
        assert_eq!(listed[1].text, None, "not UTF-8");
        assert_eq!(listed[2].text.as_deref(), Some("def handler(e, c):\n    return 1\n"));
        assert_eq!(
            list_files(b"not a zip").unwrap_err().to_string().split(':').next(),
            Some("not a valid zip archive")
        );
    }

    use super::*;

    fn pkg_of(name: &str, data: &[u8], h: &Handler, r: Runtime) -> Result<Artifact, PackageError> {
        package(name, Bytes::copy_from_slice(data), h, r)
    }

    fn handler() -> Handler {
        Handler::parse("main.handler").unwrap()
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn py_files_are_packaged_deterministically() {
        let a = pkg_of(
            "hello.py",
            b"def handler(e, c): return 1\n",
            &handler(),
            Runtime::Python,
        )
        .unwrap();
        let b = pkg_of(
            "other.py",
            b"def handler(e, c): return 1\n",
            &handler(),
            Runtime::Python,
        )
        .unwrap();
        assert_eq!(a.sha256, b.sha256, "same code, same artifact");
        assert_eq!(a.key("f1"), format!("functions/f1/{}.zip", a.sha256));
        let dir = tempfile::tempdir().unwrap();
        extract_zip(&a.bytes, dir.path()).unwrap();
        assert!(
            dir.path().join("main.py").exists(),
            "stored under the handler's module name"
        );
    }

    #[test]
    fn zips_need_the_handler_module() {
        let ok = zip_of(&[("main.py", b"def handler(e,c): pass"), ("lib/util.py", b"")]);
        assert!(pkg_of("f.zip", &ok, &handler(), Runtime::Python).is_ok());
        let pkg = zip_of(&[("app/__init__.py", b"def run(e,c): pass")]);
        assert!(pkg_of("f.zip", &pkg, &Handler::parse("app.run").unwrap(), Runtime::Python).is_ok());
        let missing = zip_of(&[("other.py", b"")]);
        let e = pkg_of("f.zip", &missing, &handler(), Runtime::Python).unwrap_err();
        assert!(e.to_string().contains("main.py"), "{e}");
        let nested = zip_of(&[("src/main.py", b"")]);
        assert!(matches!(
            pkg_of("f.zip", &nested, &handler(), Runtime::Python),
            Err(PackageError::MissingHandler { .. })
        ));
    }

    #[test]
    fn node_sources_keep_their_module_system() {
        let h = Handler::parse("index.handler").unwrap();
        for (file, stored) in [
            ("app.js", "index.js"),
            ("app.mjs", "index.mjs"),
            ("app.cjs", "index.cjs"),
        ] {
            let a = pkg_of(file, b"exports.handler = () => 1;", &h, Runtime::Nodejs).unwrap();
            let dir = tempfile::tempdir().unwrap();
            extract_zip(&a.bytes, dir.path()).unwrap();
            assert!(dir.path().join(stored).exists(), "{file}");
        }
        let wrong = pkg_of("main.py", b"x", &h, Runtime::Nodejs).unwrap_err();
        assert!(wrong.to_string().contains("runtime nodejs"), "{wrong}");
        let esm = zip_of(&[("index.mjs", b"export const handler = () => 1;")]);
        assert!(check_zip(&esm, &h, Runtime::Nodejs).is_ok());
        assert!(check_zip(&esm, &h, Runtime::Python).is_err());
    }

    #[test]
    fn unsafe_entries_are_rejected() {
        for name in ["../x", "a/../../x", "/etc/passwd", "a\\..\\b"] {
            let z = zip_of(&[("main.py", b""), (name, b"x")]);
            assert!(
                matches!(
                    pkg_of("f.zip", &z, &handler(), Runtime::Python),
                    Err(PackageError::UnsafePath(_))
                ),
                "{name}"
            );
        }
        assert!(safe_entry_path("./a/b.py").is_ok());
    }

    #[test]
    fn bad_inputs_have_precise_errors() {
        assert_eq!(
            pkg_of("x.py", b"", &handler(), Runtime::Python).unwrap_err(),
            PackageError::Empty
        );
        assert!(
            matches!(pkg_of("x.txt", b"x", &handler(), Runtime::Python), Err(PackageError::UnsupportedType(e)) if e == ".txt")
        );
        assert!(matches!(
            pkg_of("x.zip", b"not a zip", &handler(), Runtime::Python),
            Err(PackageError::BadZip(_))
        ));
        assert!(matches!(
            pkg_of("x.py", &[0xff, 0xfe], &handler(), Runtime::Python),
            Err(PackageError::NotUtf8(_))
        ));
        let big = vec![b'#'; MAX_UPLOAD_BYTES + 1];
        assert!(pkg_of("x.py", &big, &handler(), Runtime::Python)
            .unwrap_err()
            .is_too_large());
    }

    #[test]
    fn extraction_enforces_real_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let z = zip_of(&[("main.py", b"print(1)"), ("d/x.txt", b"hi")]);
        extract_zip(&z, dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("d/x.txt")).unwrap(), b"hi");
    }

    /// Rewrites every size an archive declares for its entries to `declared`
    /// (local headers and central directory), as a hostile client would.
    pub(crate) fn lie_about_sizes(zip: &mut [u8], declared: u32) {
        let mut i = 0;
        while i + 46 <= zip.len() {
            match zip[i..i + 4] {
                [0x50, 0x4b, 0x03, 0x04] => zip[i + 22..i + 26].copy_from_slice(&declared.to_le_bytes()),
                [0x50, 0x4b, 0x01, 0x02] => zip[i + 24..i + 28].copy_from_slice(&declared.to_le_bytes()),
                _ => {}
            }
            i += 1;
        }
    }

    #[test]
    fn archives_are_checked_by_what_they_inflate_to() {
        let big = vec![b'#'; 3 * 1024 * 1024];
        let mut liar = zip_of(&[
            ("main.py", &b"def handler(e, c):\n    return 1\n"[..]),
            ("blob.txt", &big[..]),
        ]);
        lie_about_sizes(&mut liar, 1);
        match pkg_of("f.zip", &liar, &handler(), Runtime::Python) {
            Err(PackageError::SizeMismatch {
                declared: 1, actual, ..
            }) => assert!(actual > 1),
            other => panic!("a lying archive must be refused: {other:?}"),
        }
        // Honest sizes pass.
        let honest = zip_of(&[("main.py", &b"x = 1\n"[..]), ("blob.txt", &big[..])]);
        assert!(pkg_of("f.zip", &honest, &handler(), Runtime::Python).is_ok());
    }
}
