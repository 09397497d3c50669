//! The binary refuses to start, with a clear message, when what it needs is not there.

use std::process::Command;

/// The control-plane binary on 127.0.0.1 port 0 with its data in `data_dir`, the
/// environment's database and artifact store left out.
fn command(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgefn-control-plane"));
    command
        .args(["--listen", "127.0.0.1:0", "--node-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("EDGEFN_DATABASE_URL")
        .env_remove("EDGEFN_ARTIFACTS");
    command
}

fn start(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path()).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_database_is_refused_with_a_message() {
    let (ok, stderr) = start(&["--database-url", "postgres://postgres@127.0.0.1:1/nothing"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_bucket_is_refused_with_a_message() {
    let (ok, stderr) = start(&[
        "--artifacts",
        "s3://missing",
        "--s3-endpoint",
        "http://127.0.0.1:1",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("bucket \"missing\" is not reachable"),
        "{stderr}"
    );
    let (ok, stderr) = start(&["--artifacts", "gs://elsewhere"]);
    assert!(!ok);
    assert!(stderr.contains("s3://BUCKET"), "{stderr}");
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display());
    edgefn_control_plane::store::Store::connect(&url)
        .await
        .unwrap();
    // A later release applied a migration this binary does not know.
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', '2030-01-01', TRUE, X'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let error = match edgefn_control_plane::store::Store::connect(&url).await {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a newer schema was accepted"),
    };
    assert!(error.contains("newer than this binary"), "{error}");
}

/// The control-plane binary on 127.0.0.1 port 0 with its data in `dir`; killed on drop.
pub struct Binary {
    child: std::process::Child,
    /// `host:port` of the developer API, as the binary announced it.
    pub address: String,
    /// `host:port` of the node listener.
    pub nodes: String,
}

impl Binary {
    pub fn start(dir: &std::path::Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// Started with `args` besides the listeners and the data directory.
    pub fn start_with(dir: &std::path::Path, args: &[&std::ffi::OsStr]) -> Self {
        use std::io::BufRead as _;
        let mut child = command(dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["message"] == "listening"
                {
                    let _ = lines.send((
                        value["listener"].as_str().unwrap_or("").to_string(),
                        value["address"].as_str().unwrap_or("").to_string(),
                    ));
                }
            }
        });
        let (mut address, mut nodes) = (String::new(), String::new());
        while address.is_empty() || nodes.is_empty() {
            let (listener, bound) = listening
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the control plane announces its addresses");
            match listener.as_str() {
                "api" => address = bound,
                _ => nodes = bound,
            }
        }
        Self {
            child,
            address,
            nodes,
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_the_api_on_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::start(dir.path());
    let address = binary.address.clone();
    let client = reqwest::Client::new();
    let anonymous = client
        .post(format!("http://{address}/api/v1/functions"))
        .header("content-type", "application/json")
        .body(r#"{"name":"hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "no token, no access");
    // The bootstrap administrator's token, readable only by the owner.
    let token_file = dir.path().join("admin-token");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let created = client
        .post(format!("http://{address}/api/v1/functions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"name":"hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let body: serde_json::Value = serde_json::from_str(&created.text().await.unwrap()).unwrap();
    // The upload URL points back at this control plane.
    let upload = body["upload_url"].as_str().unwrap().to_string();
    assert!(
        upload.starts_with(&format!("http://{address}/api/v1/uploads/")),
        "{upload}"
    );
    let wasm = std::fs::read(edgefn_test_support::guest_wasm("hello")).unwrap();
    assert_eq!(
        client
            .put(&upload)
            .body(wasm)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let id = body["function_id"].as_str().unwrap();
    let completed = client
        .post(format!(
            "http://{address}/api/v1/functions/{id}/versions/1/complete"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(completed.status(), 200);
    assert!(
        dir.path().join("edgefn.db").exists(),
        "SQLite in the data directory by default"
    );
    let key = dir.path().join("upload-signing.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(binary);
}

#[tokio::test]
async fn the_sweeper_marks_silent_nodes_offline() {
    let app = crate::fixture::app(&crate::fixture::Backend::Sqlite).await;
    let id = app.enroll("edge", serde_json::json!({})).await.id;
    let beat = edgefn_proto::sync::Heartbeat {
        node_id: id.clone(),
        status: edgefn_proto::sync::NodeStatus::Online,
        cpu_percent: 1.0,
        mem_bytes: 1,
        inventory: vec![],
        applied_revision: None,
        results: vec![],
        usage: Default::default(),
        databases: vec![],
    };
    app.store.heartbeat(&id, &beat).await.unwrap();
    edgefn_control_plane::spawn_offline_sweeper(
        app.store.clone(),
        std::time::Duration::from_millis(200),
        std::time::Duration::from_millis(50),
    );
    assert_eq!(
        app.store.get_node(&id).await.unwrap().status,
        edgefn_proto::sync::NodeStatus::Online
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        app.store.get_node(&id).await.unwrap().status,
        edgefn_proto::sync::NodeStatus::Offline
    );
}
