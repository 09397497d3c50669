//! End-to-end tests of the whole system: the real `edgefn` binary running a control plane
//! (`edgefn control-plane`) and runners (`edgefn runner`) as separate processes on
//! 127.0.0.1, driven by the CLI as a developer would, serving guests built from `examples/`.

mod abuse;
mod databases;
mod deploy;
mod dev;
mod errors;
mod fleet;
mod security;
mod tenants;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const EDGEFN: &str = env!("CARGO_BIN_EXE_edgefn");

/// A child process whose stdout lines are collected; killed when dropped.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start edgefn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line for which `pick` returns something.
    pub fn wait_line<T>(&mut self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(found) = self.lines.lock().unwrap().iter().find_map(|l| pick(l)) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("edgefn exited ({status}) before printing {what}");
            }
            assert!(Instant::now() < deadline, "no {what} within 120 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the `listener` named in a `"listening"` log line.
    pub fn listening(&mut self, listener: &str) -> SocketAddr {
        self.wait_line(&format!("the {listener} address"), |line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            (value["message"] == "listening" && value["listener"] == listener)
                .then(|| value["address"].as_str()?.parse().ok())?
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "edgefn did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port free right now on 127.0.0.1 (for a server that must come back on the same one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it holds, failing after `timeout` with `what`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET url` → (status, body); status 0 when nothing answers.
pub fn get(url: &str) -> (u16, String) {
    send(|client| client.get(url))
}

/// `POST url` with `body` → (status, body); status 0 when nothing answers.
pub fn post(url: &str, body: &str) -> (u16, String) {
    send(|client| client.post(url).body(body.to_string()))
}

fn send(
    request: impl FnOnce(&reqwest::blocking::Client) -> reqwest::blocking::RequestBuilder,
) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    match request(&client).send() {
        Ok(reply) => {
            let status = reply.status().as_u16();
            (status, reply.text().unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// What an `edgefn` command printed and how it ended.
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.success,
            "edgefn failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `edgefn --url {url} args…` without a token.
pub fn cli(url: &str, args: &[&str]) -> CliOutput {
    cli_as(url, None, args)
}

/// Runs `edgefn --url {url} args…` with `token` (in `EDGEFN_TOKEN`, as a user would).
pub fn cli_as(url: &str, token: Option<&str>, args: &[&str]) -> CliOutput {
    cli_with_input(url, token, args, "")
}

/// Like [`cli_as`], with `input` on standard input (a password, say).
pub fn cli_with_input(url: &str, token: Option<&str>, args: &[&str], input: &str) -> CliOutput {
    use std::io::Write as _;
    let mut command = Command::new(EDGEFN);
    command
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("EDGEFN_TOKEN")
        // No login of the machine's user leaks in.
        .env_remove("EDGEFN_CLI_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent-edgefn-test-config");
    if let Some(token) = token {
        command.env("EDGEFN_TOKEN", token);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edgefn");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().expect("run edgefn");
    CliOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Which metadata database the control plane uses.
pub enum Backend {
    Sqlite,
    Postgres(edgefn_test_support::postgres::TestSchema),
}

impl Backend {
    /// A fresh PostgreSQL schema.
    pub fn postgres() -> Self {
        let name = edgefn_test_support::postgres::unique_schema_name("edgefn_fleet");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self::Postgres(runtime.block_on(edgefn_test_support::postgres::test_schema(&name)))
    }
}

/// A control plane process on fixed ports, so it can be killed and started again.
pub struct ControlPlane {
    pub process: Process,
    pub url: String,
    pub data_dir: PathBuf,
    /// The bootstrap administrator's token.
    pub token: String,
    listen: String,
    node_listen: String,
    database_url: Option<String>,
    extra: Vec<String>,
}

impl ControlPlane {
    pub fn start(backend: &Backend, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_token(backend, data_dir, extra, None)
    }

    /// A control plane; `token` is an administrator's token when the database has its
    /// administrator already (a replica), else the bootstrap token is read from the data
    /// directory.
    pub fn start_with_token(
        backend: &Backend,
        data_dir: &Path,
        extra: &[&str],
        token: Option<&str>,
    ) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let node_listen = format!("127.0.0.1:{}", free_port());
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres(schema) => Some(schema.url.clone()),
        };
        let mut cp = Self {
            process: Self::spawn(
                &listen,
                &node_listen,
                data_dir,
                database_url.as_deref(),
                extra,
            ),
            url: format!("http://{listen}"),
            data_dir: data_dir.to_path_buf(),
            token: String::new(),
            listen,
            node_listen,
            database_url,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        cp.process.listening("api");
        cp.token = match token {
            Some(token) => token.to_string(),
            None => std::fs::read_to_string(data_dir.join("admin-token"))
                .expect("the control plane writes its administrator token")
                .trim()
                .to_string(),
        };
        cp
    }

    fn spawn(
        listen: &str,
        node_listen: &str,
        data_dir: &Path,
        database_url: Option<&str>,
        extra: &[impl AsRef<std::ffi::OsStr>],
    ) -> Process {
        let mut command = Command::new(EDGEFN);
        command
            .args([
                "control-plane",
                "--listen",
                listen,
                "--node-listen",
                node_listen,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra);
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        Process::spawn(command)
    }

    /// SIGKILL: no shutdown, no flush — a crash.
    pub fn crash(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port, database and data directory.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = Self::spawn(
            &self.listen,
            &self.node_listen,
            &self.data_dir,
            self.database_url.as_deref(),
            &self.extra,
        );
        self.process.listening("api");
    }

    /// `edgefn` as the administrator.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli_as(&self.url, Some(&self.token), args)
    }

    /// A one-time bootstrap token and the CA's SHA-256, for one runner.
    pub fn bootstrap_token(&self) -> (String, String) {
        let created = self
            .cli(&["nodes", "token", "create", "--ttl", "10m", "--json"])
            .ok()
            .json();
        (
            created["token"].as_str().unwrap().to_string(),
            created["ca_sha256"].as_str().unwrap().to_string(),
        )
    }

    /// A blocking HTTP client and the administrator's `Authorization` value.
    pub fn http(&self) -> (reqwest::blocking::Client, String) {
        (
            reqwest::blocking::Client::new(),
            format!("Bearer {}", self.token),
        )
    }

    /// The per-node entries of a deployment, as `edgefn deployments show --json` gives them.
    pub fn deployment_nodes(&self, id: &str) -> Vec<serde_json::Value> {
        let shown = self.cli(&["deployments", "show", id, "--json"]).ok().json();
        shown["nodes"].as_array().unwrap().clone()
    }

    /// The id the node named `name` registered under.
    pub fn node_id(&self, name: &str) -> String {
        let nodes = self.cli(&["nodes", "list", "--json"]).ok().json();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no node named {name}: {nodes}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A runner process attached to a control plane.
pub struct Runner {
    pub process: Process,
    pub http: SocketAddr,
    pub name: String,
    dir: PathBuf,
    control_plane: String,
    labels: String,
    heartbeat_ms: u64,
}

impl Runner {
    /// A runner heartbeating every `heartbeat_ms`, enrolled with a bootstrap token of its
    /// own (pinned to the control plane's CA).
    pub fn start(
        cp: &ControlPlane,
        dir: &Path,
        name: &str,
        labels: &str,
        heartbeat_ms: u64,
    ) -> Self {
        let (token, ca) = cp.bootstrap_token();
        let mut runner = Self {
            process: Self::spawn(
                &cp.url,
                dir,
                name,
                labels,
                heartbeat_ms,
                &["--bootstrap-token", &token, "--ca-sha256", &ca],
            ),
            http: "0.0.0.0:0".parse().unwrap(),
            name: name.to_string(),
            dir: dir.to_path_buf(),
            control_plane: cp.url.clone(),
            labels: labels.to_string(),
            heartbeat_ms,
        };
        runner.http = runner.process.listening("http");
        runner
    }

    fn spawn(
        control_plane: &str,
        dir: &Path,
        name: &str,
        labels: &str,
        heartbeat_ms: u64,
        enroll: &[&str],
    ) -> Process {
        let mut command = Command::new(EDGEFN);
        command
            .args(["runner", "--control-plane", control_plane])
            .args(enroll)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--node-id", name, "--labels", labels])
            .args(["--heartbeat-ms", &heartbeat_ms.to_string()])
            .args(["--fetch-backoff-ms", "100", "--fetch-attempts", "3"])
            .args([
                "--memory-budget-bytes",
                "268435456",
                "--pool-instances",
                "50",
            ])
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--state-dir")
            .arg(dir.join("state"));
        Process::spawn(command)
    }

    /// Stops it (SIGTERM, drained) and starts it again with the same directories (and
    /// the identity it enrolled with).
    pub fn restart(&mut self) {
        assert!(self.process.terminate().success());
        self.start_again();
    }

    /// SIGKILL: no drain, no flush — a crash.
    pub fn crash(&mut self) {
        self.process.kill();
    }

    /// Starts it again after [`Runner::crash`], with the same directories and identity.
    pub fn start_again(&mut self) {
        self.process = Self::spawn(
            &self.control_plane,
            &self.dir,
            &self.name,
            &self.labels,
            self.heartbeat_ms,
            &[],
        );
        self.http = self.process.listening("http");
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        get(&format!("http://{}{path}", self.http))
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        post(&format!("http://{}{path}", self.http), body)
    }

    /// The runner's state directory (identity, desired state, edge databases).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The value of one sample of the runner's `/metrics` (`name{labels}` as exposed), or
    /// 0 when it has none.
    pub fn metric(&self, sample: &str) -> f64 {
        let admin = self
            .process
            .stdout()
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|v| v["message"] == "listening" && v["listener"] == "admin")
            .find_map(|v| v["address"].as_str().map(str::to_string))
            .expect("the runner logged its admin address");
        let (_, text) = get(&format!("http://{admin}/metrics"));
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// The example guests' `.wasm` files.
pub fn guest(name: &str) -> String {
    edgefn_test_support::guest_wasm(name).display().to_string()
}

pub const HELLO_BODY: &str = "Hello, edgefn!";
/// The echo guest answers JSON starting like this.
pub const ECHO_BODY: &str = "{\"method\":\"GET\"";
