//! The real TLS path: every real cluster speaks HTTPS, the mock API server of
//! the operator tests does not. Here the `infra operator` binary talks to a
//! local HTTPS server with a self-signed certificate, as it would to a
//! kube-apiserver; it must reach it and fail with a clear error (no CRD
//! there), never panic in the TLS set-up.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An HTTPS server (Python's ssl) answering every request with a
/// Kubernetes 404 Status, printing each request line to stdout.
const SERVER: &str = r#"
import http.server, json, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print('GET ' + self.path, flush=True)
        body = json.dumps({'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure',
                           'reason': 'NotFound', 'code': 404,
                           'message': 'the server could not find the requested resource'}).encode()
        self.send_response(404)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print('PORT %d' % server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn the_operator_speaks_https_to_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian's openssl package)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut server = Command::new("python3")
        .args(["-c", SERVER])
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("PORT ")
        .unwrap()
        .to_string();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: test-token-0123456789\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\ncurrent-context: local\n"
        ),
    )
    .unwrap();

    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_infra"))
        .arg("operator")
        .env("KUBECONFIG", &kubeconfig)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("BUCKET_NAME", "artifacts")
        .env("TABLE_NAME", "functions")
        .env("LEADER_ELECTION", "false")
        .env("OPERATOR_PORT", "0")
        .env("LOG_FORMAT", "text")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stderr.contains("panicked") && !stdout.contains("panicked"),
        "the TLS set-up panicked:\n{stderr}\n{stdout}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a clear failure, not a crash:\n{stderr}\n{stdout}"
    );
    assert!(
        format!("{stderr}{stdout}").contains("Function CRD is not installed"),
        "the operator reached the server over TLS and said what is missing:\n{stderr}\n{stdout}"
    );
    let requests: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        requests.iter().any(|r| r.starts_with("GET /apis/faas.infra.dev/")),
        "the server saw the operator's request: {requests:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
