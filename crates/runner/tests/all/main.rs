//! End-to-end tests: the real `edgefn-runner` binary, started with a manifest, spoken to
//! over real sockets on 127.0.0.1, serving real guests built from `examples/`.

mod hostile;
mod serving;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running runner process; killed when dropped.
pub struct Runner {
    child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub scheme: &'static str,
    lines: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
}

/// Writes `manifest` (with `{guests}` replaced by the guests' directory) into `dir`.
pub fn write_manifest(dir: &Path, manifest: &str) -> PathBuf {
    let guests = edgefn_test_support::guest_wasm("hello")
        .parent()
        .unwrap()
        .to_path_buf();
    let cgi = edgefn_test_support::guest_wasm("cgi")
        .parent()
        .unwrap()
        .to_path_buf();
    let text = manifest
        .replace("{guests}", &guests.display().to_string())
        .replace("{cgi_guests}", &cgi.display().to_string());
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Runner {
    /// Starts a runner on free ports with `manifest` and waits until it is ready.
    pub fn start(manifest: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        Self::start_in(dir, manifest, extra)
    }

    pub fn start_in(dir: PathBuf, manifest: &str, extra: &[&str]) -> Self {
        let manifest_path = write_manifest(&dir, manifest);
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgefn-runner"))
            .arg("--manifest")
            .arg(&manifest_path)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--node-id",
                "test-node",
                "--labels",
                "region=tokyo,pop=tokyo-1",
            ])
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start edgefn-runner");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"listening\"") {
                    let _ = sender.send(line.clone());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let mut http = None;
        let mut admin = None;
        let mut scheme = "http";
        while http.is_none() || admin.is_none() {
            let line = receiver
                .recv_timeout(Duration::from_secs(30))
                .expect("runner announced its listeners");
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let address: SocketAddr = value["address"].as_str().unwrap().parse().unwrap();
            match value["listener"].as_str().unwrap() {
                "admin" => admin = Some(address),
                "https" => {
                    scheme = "https";
                    http = Some(address)
                }
                _ => http = Some(address),
            }
        }
        let runner = Self {
            child,
            http: http.unwrap(),
            admin: admin.unwrap(),
            scheme,
            lines,
            dir,
        };
        runner.wait_ready();
        runner
    }

    fn wait_ready(&self) {
        // Generous: the JavaScript and Python guests take a debug build's compile worker
        // seconds each, and the other tests of this binary share the cores meanwhile.
        let deadline = Instant::now() + Duration::from_secs(240);
        while Instant::now() < deadline {
            if let Ok(200) = blocking::status(&format!("http://{}/readyz", self.admin)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("runner did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.http)
    }

    /// The JSON lines the runner printed so far.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric line `name{labels} value` in a Prometheus text exposition.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Minimal blocking GET for readiness polling (no runtime needed).
mod blocking {
    use std::io::{Read as _, Write as _};

    pub fn status(url: &str) -> std::io::Result<u16> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .unwrap_or((rest, "/".into()));
        let mut stream = std::net::TcpStream::connect(host)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }
}
