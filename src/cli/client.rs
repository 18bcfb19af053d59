//! The public HTTP API, as the client uses it. Answers stay JSON values:
//! `-o json` prints exactly what the API answered.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use super::error::CliError;
use super::output;
use super::profile::Target;

/// Requests that are not runs or uploads answer quickly; a run waits for the
/// function and an upload may be large, so they have no overall bound.
const QUICK: Duration = Duration::from_secs(60);

pub struct Api {
    target: Target,
    http: reqwest::Client,
}

/// An upload: the code file and the settings as form fields.
pub struct Upload {
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub fields: Vec<(String, String)>,
}

impl Api {
    pub fn new(target: Target) -> Result<Api, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("infra-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Api { target, http })
    }

    pub fn url(&self) -> &str {
        &self.target.url
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.target.url));
        match &self.target.api_key {
            Some(key) => req.header("x-api-key", key),
            None => req,
        }
    }

    /// Sends, and turns every failure into its class and one line.
    async fn send(&self, req: RequestBuilder) -> Result<Value, CliError> {
        let response = req.send().await.map_err(|e| self.unreachable(&e))?;
        self.answer(response).await
    }

    async fn answer(&self, response: Response) -> Result<Value, CliError> {
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            if body.is_null() && !text.trim().is_empty() {
                return Err(CliError::Unavailable(format!(
                    "{} answered HTTP {status} with something other than JSON: is it an Infra Controller API?",
                    self.target.url
                )));
            }
            return Ok(body);
        }
        let message = output::api_message(status, &body);
        Err(match status {
            401 if self.target.api_key.is_none() => CliError::Auth(format!(
                "no API key for {}: set INFRA_API_KEY, pass --api-key or run `infra login` (HTTP 401)",
                self.target.url
            )),
            401 | 403 => CliError::Auth(format!("the API key was refused by {}: {message}", self.target.url)),
            _ => CliError::from_status(status, message),
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        // reqwest's own text is "error sending request"; the cause is below it.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        let what = if e.is_timeout() { "timed out" } else { cause.as_str() };
        CliError::Unavailable(format!(
            "cannot reach the API at {}: {what} (is it running? set INFRA_URL or run `infra login`)",
            self.target.url
        ))
    }

    pub async fn list_functions(&self) -> Result<Vec<Value>, CliError> {
        match self
            .send(self.request(Method::GET, "/functions").timeout(QUICK))
            .await?
        {
            Value::Array(items) => Ok(items),
            other => Err(CliError::Unavailable(format!(
                "GET /functions answered {other} instead of an array"
            ))),
        }
    }

    /// The id of a function given by name or id.
    pub async fn resolve(&self, name_or_id: &str) -> Result<String, CliError> {
        output::resolve(&self.list_functions().await?, name_or_id)
    }

    pub async fn get_function(&self, id: &str) -> Result<Value, CliError> {
        self.send(
            self.request(Method::GET, &format!("/functions/{}", seg(id)))
                .timeout(QUICK),
        )
        .await
    }

    pub async fn delete_function(&self, id: &str) -> Result<Value, CliError> {
        self.send(
            self.request(Method::DELETE, &format!("/functions/{}", seg(id)))
                .timeout(QUICK),
        )
        .await
    }

    /// `POST /upload`, or with `id` `PUT /functions/{id}` (new code and settings).
    pub async fn upload(&self, upload: Upload, id: Option<&str>) -> Result<Value, CliError> {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in upload.fields {
            form = form.text(k, v);
        }
        let part = reqwest::multipart::Part::bytes(upload.bytes).file_name(upload.file_name);
        form = form.part("file", part);
        let req = match id {
            Some(id) => self.request(Method::PUT, &format!("/functions/{}", seg(id))),
            None => self.request(Method::POST, "/upload"),
        };
        self.send(req.multipart(form)).await
    }

    pub async fn run(
        &self,
        id: &str,
        input: &Value,
        model: Option<&str>,
        asynchronous: bool,
    ) -> Result<Value, CliError> {
        let mut body = serde_json::json!({"functionId": id, "inputData": input});
        if let Some(model) = model {
            body["modelId"] = Value::from(model);
        }
        let mut req = self.request(Method::POST, "/run").json(&body);
        if asynchronous {
            req = req.header("x-async", "true").timeout(QUICK);
        }
        self.send(req).await
    }

    pub async fn status(&self, job_id: &str) -> Result<Value, CliError> {
        self.send(
            self.request(Method::GET, &format!("/status/{}", seg(job_id)))
                .timeout(QUICK),
        )
        .await
    }

    pub async fn logs(&self, id: &str, limit: u32) -> Result<Vec<Value>, CliError> {
        let req = self
            .request(Method::GET, &format!("/functions/{}/logs", seg(id)))
            .query(&[("limit", limit)])
            .timeout(QUICK);
        match self.send(req).await? {
            Value::Array(items) => Ok(items),
            other => Err(CliError::Unavailable(format!(
                "the logs answer was {other} instead of an array"
            ))),
        }
    }
}

/// An id as one path segment: anything but unreserved characters escaped,
/// so a typed name with `/` or `?` cannot reach another route.
fn seg(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(super::seg("a1-b_c.d~"), "a1-b_c.d~");
        assert_eq!(super::seg("../x?y"), "..%2Fx%3Fy");
    }
}
