//! Real services for tests: a private `redis-server` per test (so a test can
//! stop and restart it) and the shared moto AWS emulator started by
//! `scripts/test` (tests isolate themselves with unique bucket, table and
//! queue names).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use infra_controller::backend::aws::AwsSettings;

pub fn aws() -> AwsSettings {
    let endpoint = std::env::var("INFRA_TEST_AWS_ENDPOINT")
        .expect("INFRA_TEST_AWS_ENDPOINT is not set: run the tests with scripts/test, which starts the moto server");
    AwsSettings {
        region: "us-east-1".into(),
        endpoint_url: Some(endpoint),
        s3_endpoint_url: None,
        dynamodb_endpoint_url: None,
        sqs_endpoint_url: None,
        static_credentials: Some(("test".into(), "test".into())),
    }
}

/// An SQS client on moto, for tests that put messages on a queue themselves.
pub async fn sqs_client() -> aws_sdk_sqs::Client {
    let settings = aws();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .endpoint_url(settings.endpoint_url.clone().expect("moto endpoint"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&sdk)
}

/// A short unique name usable as a bucket, table or queue name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..20])
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    pub fn resume(&mut self) {
        let bin = std::env::var("INFRA_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (run the tests with scripts/test): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
