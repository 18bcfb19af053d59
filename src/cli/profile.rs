//! Where the client sends its requests, and with which key: flags, then
//! `INFRA_URL` / `INFRA_API_KEY`, then the profile `infra login` writes
//! (`$XDG_CONFIG_HOME/infra/profile.yaml`, else `~/.config/infra/profile.yaml`,
//! mode 0600), then `http://127.0.0.1:8080` (what `infra up` serves) and no key.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::CliError;

/// The default target: `infra up` on this machine.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// The API the client talks to.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Without a trailing slash.
    pub url: String,
    pub api_key: Option<String>,
}

// By hand, so the key never reaches a debug print.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The profile file's path, from the environment's config directory.
pub fn path_from(xdg_config_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    let base = match (
        xdg_config_home.filter(|d| !d.is_empty()),
        home.filter(|h| !h.is_empty()),
    ) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => Path::new(home).join(".config"),
        (None, None) => return None,
    };
    Some(base.join("infra").join("profile.yaml"))
}

pub fn path() -> Option<PathBuf> {
    path_from(
        std::env::var("XDG_CONFIG_HOME").ok().as_deref(),
        std::env::var("HOME").ok().as_deref(),
    )
}

/// The profile, or an empty one when there is none.
pub fn load(path: Option<&Path>) -> Result<Profile, CliError> {
    let Some(path) = path else {
        return Ok(Profile::default());
    };
    match std::fs::read_to_string(path) {
        Ok(text) => serde_yaml::from_str(&text)
            .map_err(|e| CliError::Usage(format!("the profile {} is not valid: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profile::default()),
        Err(e) => Err(CliError::Usage(format!(
            "cannot read the profile {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the profile readable by its owner only (it holds the key),
/// replacing any earlier one at once.
pub fn save(path: &Path, profile: &Profile) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| CliError::Usage(format!("cannot write the profile {}: {e}", path.display()));
    let dir = path
        .parent()
        .ok_or_else(|| CliError::Usage(format!("{} has no parent directory", path.display())))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)?;
    let text = format!(
        "# Written by `infra login`; holds the API key: keep it private.\n{}",
        serde_yaml::to_string(profile).map_err(|e| CliError::Usage(e.to_string()))?
    );
    let tmp = dir.join(".profile.yaml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    // The mode above is filtered by the umask; only ever narrower, but say it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Flags and environment (already merged by clap, flags first) over the profile.
pub fn target(url: Option<&str>, api_key: Option<&str>, profile: &Profile) -> Result<Target, CliError> {
    let url = url
        .filter(|u| !u.trim().is_empty())
        .map(str::to_string)
        .or_else(|| profile.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let url = url.trim().trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(CliError::Usage(format!(
            "the API URL {url:?} must start with http:// or https://"
        )));
    }
    let api_key = api_key
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .or_else(|| profile.api_key.clone());
    Ok(Target { url, api_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_path_follows_xdg() {
        assert_eq!(
            path_from(Some("/x"), Some("/home/a")),
            Some(PathBuf::from("/x/infra/profile.yaml"))
        );
        assert_eq!(
            path_from(Some(""), Some("/home/a")),
            Some(PathBuf::from("/home/a/.config/infra/profile.yaml"))
        );
        assert_eq!(path_from(None, None), None);
    }

    #[test]
    fn flags_and_env_win_over_the_profile() {
        let profile = Profile {
            url: Some("http://saved:1/".into()),
            api_key: Some("saved-key".into()),
        };
        let t = target(None, None, &profile).unwrap();
        assert_eq!(t.url, "http://saved:1");
        assert_eq!(t.api_key.as_deref(), Some("saved-key"));
        let t = target(Some("https://given"), Some("given-key"), &profile).unwrap();
        assert_eq!(t.url, "https://given");
        assert_eq!(t.api_key.as_deref(), Some("given-key"));
        let t = target(None, None, &Profile::default()).unwrap();
        assert_eq!(t.url, DEFAULT_URL);
        assert_eq!(t.api_key, None);
        assert_eq!(target(Some("ftp://x"), None, &profile).unwrap_err().code(), 2);
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let t = target(None, Some("secret-key-123"), &Profile::default()).unwrap();
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn saved_profiles_are_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("infra").join("profile.yaml");
        let profile = Profile {
            url: Some("http://127.0.0.1:9".into()),
            api_key: Some("k".repeat(20)),
        };
        save(&path, &profile).unwrap();
        assert_eq!(load(Some(&path)).unwrap(), profile);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        save(&path, &Profile::default()).unwrap();
        assert_eq!(load(Some(&path)).unwrap(), Profile::default());
        assert_eq!(load(Some(&dir.path().join("none.yaml"))).unwrap(), Profile::default());
    }
}
