//! What went wrong in a client command, and the exit code scripts read.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (for `invoke` and `jobs get`: the run succeeded, or the job is still pending) |
//! | 1 | the function ran and did not succeed (FAILED, TIMEOUT, OOM, …), or a sync wait ran out |
//! | 2 | invalid usage or input: flags, files, `--data`, settings the API refused (400, 409, 413, 422) |
//! | 3 | not found: no such function (by name or id) or job |
//! | 4 | authentication: no key, or the key was refused (401, 403) |
//! | 5 | the server is unreachable or failing (connection, 5xx, 429 rate limited) |

use std::process::ExitCode;

/// One failure of a client command: its class decides the exit code, its
/// text is the one line printed on stderr.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// The function ran and did not succeed.
    #[error("{0}")]
    Failed(String),
    /// Bad flags or input, or a request the API refused as invalid.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Auth(String),
    /// Cannot reach the server, or it answered with a server-side error.
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::Auth(_) => 4,
            CliError::Unavailable(_) => 5,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    /// The class of an HTTP error answer.
    pub fn from_status(status: u16, message: String) -> CliError {
        match status {
            401 | 403 => CliError::Auth(message),
            404 => CliError::NotFound(message),
            // Rate limited: nothing is wrong with the request; try again later.
            429 => CliError::Unavailable(message),
            400..=499 => CliError::Usage(message),
            _ => CliError::Unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_exit_codes() {
        let code = |s| CliError::from_status(s, String::new()).code();
        assert_eq!(code(400), 2);
        assert_eq!(code(409), 2);
        assert_eq!(code(413), 2);
        assert_eq!(code(422), 2);
        assert_eq!(code(401), 4);
        assert_eq!(code(403), 4);
        assert_eq!(code(404), 3);
        assert_eq!(code(429), 5);
        assert_eq!(code(500), 5);
        assert_eq!(code(503), 5);
        assert_eq!(CliError::Failed(String::new()).code(), 1);
    }
}
