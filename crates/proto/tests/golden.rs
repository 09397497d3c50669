//! Golden files of the persisted and wire formats: the bytes of `tests/golden/` are what
//! this build writes and reads. Changing a format means a new file and a new `format`, not
//! editing an old one. Regenerate after an intended change with `UPDATE_GOLDEN=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use edgefn_proto::GuestKind;
use edgefn_proto::sync::FunctionSettings;
use edgefn_proto::sync::{DecodeError, DesiredFunction, DesiredRoute, DesiredState};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn sample() -> DesiredState {
    DesiredState {
        format: 1,
        node_id: "node_0123".into(),
        revision: 42,
        functions: vec![DesiredFunction {
            function_id: "fn_hello".into(),
            version: 3,
            kind: GuestKind::Component,
            artifact_url: "http://127.0.0.1:8080/api/v1/artifacts/ab12".into(),
            sha256: "ab12".into(),
            settings: FunctionSettings {
                entrypoint: None,
                memory_pages: 256,
                max_execution_ms: 10_000,
                allowed_outbound_hosts: vec!["api.example.com".into()],
                min_hot_instances: 1,
                max_hot_instances: 16,
                instance_reuse: Some(1000),
                env: BTreeMap::from([("GREETING".into(), "hi".into())]),
                tenant: "default".into(),
                databases: vec![],
                requires: BTreeMap::new(),
            },
            retry: 0,
        }],
        routes: vec![DesiredRoute {
            id: "rt_1".into(),
            host: "*".into(),
            path: "/hello".into(),
            methods: vec!["GET".into()],
            priority: 0,
            function_id: "fn_hello".into(),
            version: None,
            project: None,
        }],
        quotas: BTreeMap::new(),
        databases: vec![],
    }
}

/// Format 2: routes name the project owning their host; projects carry quotas.
fn sample_v2() -> DesiredState {
    let mut state = sample();
    state.format = 2;
    state.functions[0].settings.tenant = "shop".into();
    state.routes[0].host = "shop.example.com".into();
    state.routes[0].project = Some("shop".into());
    state.quotas.insert(
        "shop".into(),
        edgefn_proto::sync::ProjectQuota {
            max_concurrent: Some(100),
            per_minute: Some(10_000),
            pool_share_percent: Some(25),
        },
    );
    state
}

/// Format 3: edge databases with their pending changes; versions that require a schema.
fn sample_v3() -> DesiredState {
    let mut state = sample_v2();
    state.format = 3;
    let settings = &mut state.functions[0].settings;
    settings.databases = vec![edgefn_proto::sync::DatabaseGrant {
        name: "orders".into(),
        read_only: false,
    }];
    settings.requires = BTreeMap::from([("orders".into(), 1)]);
    state.databases = vec![edgefn_proto::sync::DesiredDatabase {
        id: "db_1".into(),
        project: "shop".into(),
        name: "orders".into(),
        target_seq: 1,
        chain: "c1".into(),
        changes: vec![edgefn_proto::sync::DesiredChange {
            seq: 1,
            sql: "CREATE TABLE orders (id INTEGER PRIMARY KEY)".into(),
            sha256: "s1".into(),
            fingerprint: "f1".into(),
            chain: "c1".into(),
        }],
        repair: None,
    }];
    state
}

#[test]
fn desired_state_v3_reads_and_writes_its_golden_file() {
    let path = golden("desired_state_v3.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, sample_v3().encode()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(DesiredState::decode(&bytes).unwrap(), sample_v3());
    assert_eq!(
        String::from_utf8(sample_v3().encode()).unwrap(),
        String::from_utf8(bytes).unwrap()
    );
}

#[test]
fn desired_state_v2_reads_and_writes_its_golden_file() {
    let path = golden("desired_state_v2.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, sample_v2().encode()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(DesiredState::decode(&bytes).unwrap(), sample_v2());
    assert_eq!(
        String::from_utf8(sample_v2().encode()).unwrap(),
        String::from_utf8(bytes).unwrap()
    );
}

#[test]
fn desired_state_v1_reads_and_writes_its_golden_file() {
    let path = golden("desired_state_v1.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, sample().encode()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        DesiredState::decode(&bytes).unwrap(),
        sample(),
        "the golden file still reads the same"
    );
    assert_eq!(
        String::from_utf8(sample().encode()).unwrap(),
        String::from_utf8(bytes).unwrap(),
        "and is what we write"
    );
}

#[test]
fn a_newer_format_is_refused_cleanly_and_unknown_fields_are_ignored() {
    let mut document: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
    document["a_field_from_later"] = serde_json::json!({"anything": true});
    let with_extra = serde_json::to_vec(&document).unwrap();
    assert_eq!(DesiredState::decode(&with_extra).unwrap(), sample());

    // A format-4 document may have changed any field: refused before it is misread.
    let newer = br#"{"format": 4, "node_id": 7, "something": "else"}"#;
    match DesiredState::decode(newer) {
        Err(DecodeError::NewerFormat {
            found: 4,
            supported: 3,
        }) => {}
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    assert!(matches!(
        DesiredState::decode(b"not json"),
        Err(DecodeError::Invalid(_))
    ));
}
