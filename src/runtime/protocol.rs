//! The bootstrap protocol: 4-byte big-endian length + JSON, both directions,
//! over the instance's private socket (fd 3 in the instance).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::RuntimeError;
use crate::model::{ErrorInfo, JobStatus};

/// Frames larger than this are a protocol violation (results are bounded too).
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum ToInstance<'a> {
    /// Import the handler. A stem cell also gets its function's memory
    /// limit and environment here.
    #[serde(rename_all = "camelCase")]
    Load {
        code_dir: &'a str,
        module: &'a str,
        function: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        memory_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        env: Option<&'a std::collections::BTreeMap<String, String>>,
    },
    #[serde(rename_all = "camelCase")]
    Invoke {
        request_id: &'a str,
        function_id: &'a str,
        function_name: &'a str,
        memory_mb: u32,
        model_id: Option<&'a str>,
        timeout_ms: u64,
        event: &'a serde_json::Value,
    },
    /// The answer to an `ai` request of the function.
    #[serde(rename_all = "camelCase")]
    AiReply {
        ok: bool,
        value: Option<&'a serde_json::Value>,
        error: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum FromInstance {
    #[serde(rename_all = "camelCase")]
    Ready { pid: i32 },
    #[serde(rename_all = "camelCase")]
    Loaded { init_ms: f64 },
    #[serde(rename_all = "camelCase")]
    LoadError {
        status: JobStatus,
        error: ErrorInfo,
        stdout: String,
        stderr: String,
    },
    #[serde(rename_all = "camelCase")]
    Result {
        status: JobStatus,
        value_json: String,
        error: Option<ErrorInfo>,
        stdout: String,
        stderr: String,
        duration_ms: f64,
        peak_memory_bytes: u64,
        /// Child processes still alive after the handler returned.
        #[serde(default)]
        strays: u32,
        /// The runtime saw state it cannot vouch for (an error that escaped
        /// the handler): the instance must not be reused.
        #[serde(default)]
        discard: bool,
    },
    #[serde(rename_all = "camelCase")]
    ProtocolError { message: String },
    /// The function asks the AI node something (relayed by the worker).
    Ai(serde_json::Map<String, serde_json::Value>),
}

/// One invocation's input.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub request_id: String,
    pub function_id: String,
    pub function_name: String,
    pub memory_mb: u32,
    pub model_id: Option<String>,
    pub timeout_ms: u64,
    pub event: serde_json::Value,
}

/// What came of an invocation (or of a failed start).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: JobStatus,
    pub value: serde_json::Value,
    pub error: Option<ErrorInfo>,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: f64,
    pub peak_memory_bytes: u64,
    pub exit_code: Option<i32>,
    /// CPU time of the instance's processes during the invocation, where
    /// it could be measured finely enough to mean something.
    pub cpu_ms: Option<f64>,
}

impl Outcome {
    pub fn failed(status: JobStatus, error_type: &str, message: impl Into<String>) -> Outcome {
        Outcome {
            status,
            value: serde_json::Value::Null,
            error: Some(ErrorInfo {
                error_type: error_type.into(),
                message: message.into(),
                traceback: None,
            }),
            stdout: String::new(),
            stderr: String::new(),
            duration_ms: 0.0,
            peak_memory_bytes: 0,
            exit_code: None,
            cpu_ms: None,
        }
    }
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &ToInstance<'_>) -> Result<(), RuntimeError> {
    let body = serde_json::to_vec(msg).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(RuntimeError::Protocol(format!(
            "request of {} bytes is too large",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)
        .await
        .map_err(|e| RuntimeError::Protocol(format!("write: {e}")))
}

/// Reads one frame; `Ok(None)` when the instance closed its end (it exited).
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Option<FromInstance>, RuntimeError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(RuntimeError::Protocol(format!("read: {e}"))),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(RuntimeError::Protocol(format!(
            "instance sent a frame of {len} bytes (limit {MAX_FRAME})"
        )));
    }
    let mut body = vec![0u8; len];
    match r.read_exact(&mut body).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(RuntimeError::Protocol(format!("read: {e}"))),
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| RuntimeError::Protocol(format!("bad frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_rejected() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let ev = serde_json::json!({"x": 1});
        let msg = ToInstance::Invoke {
            request_id: "r",
            function_id: "f",
            function_name: "n",
            memory_mb: 128,
            model_id: None,
            timeout_ms: 5,
            event: &ev,
        };
        write_frame(&mut a, &msg).await.unwrap();
        let mut len = [0u8; 4];
        b.read_exact(&mut len).await.unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        b.read_exact(&mut body).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["op"], "invoke");
        assert_eq!(v["requestId"], "r");
        assert_eq!(v["timeoutMs"], 5);

        b.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        assert!(read_frame(&mut a).await.is_err());
        drop(b);
        assert!(
            read_frame(&mut a).await.unwrap().is_none(),
            "EOF means the instance exited"
        );
    }

    #[test]
    fn result_frames_parse() {
        let raw = r#"{"op":"result","status":"OOM","valueJson":"null","error":{"type":"MemoryError","message":""},"stdout":"","stderr":"","durationMs":1.0,"peakMemoryBytes":5}"#;
        match serde_json::from_str::<FromInstance>(raw).unwrap() {
            FromInstance::Result { status, .. } => assert_eq!(status, JobStatus::Oom),
            other => panic!("{other:?}"),
        }
    }
}
