use std::collections::BTreeMap;
use std::sync::Mutex;

use edgefn_proto::sync::{DesiredFunction, DesiredRoute};
use proptest::prelude::*;

use super::*;

fn function(id: &str, version: u64, sha256: &str, url: &str) -> DesiredFunction {
    DesiredFunction {
        function_id: id.into(),
        version,
        kind: edgefn_proto::GuestKind::Component,
        artifact_url: url.into(),
        sha256: sha256.into(),
        settings: edgefn_proto::sync::FunctionSettings {
            entrypoint: None,
            memory_pages: 16,
            max_execution_ms: 500,
            allowed_outbound_hosts: vec!["api.example.com".into()],
            min_hot_instances: 1,
            max_hot_instances: 4,
            instance_reuse: Some(10),
            env: [("K".to_string(), "V".to_string())].into(),
            tenant: "acme".into(),
            databases: vec![],
            requires: BTreeMap::new(),
        },
        retry: 0,
    }
}

fn route(function_id: &str) -> DesiredRoute {
    DesiredRoute {
        id: format!("rt_{function_id}"),
        host: "*".into(),
        path: format!("/{function_id}"),
        methods: vec![],
        priority: 0,
        function_id: function_id.into(),
        version: None,
        project: None,
    }
}

fn state(revision: u64, functions: Vec<DesiredFunction>) -> DesiredState {
    let routes = functions.iter().map(|f| route(&f.function_id)).collect();
    DesiredState {
        format: edgefn_proto::sync::DESIRED_STATE_FORMAT,
        node_id: "node-1".into(),
        revision,
        functions,
        routes,
        quotas: Default::default(),
        databases: vec![],
    }
}

fn desired(sha256: &str, url: &str) -> DesiredState {
    state(3, vec![function("fn_1", 2, sha256, url)])
}

#[test]
fn a_desired_state_becomes_the_node_spec_it_stands_for() {
    let sha = "AB".repeat(32);
    let spec = spec_of(
        &desired(&sha, "http://cp/api/v1/artifacts/x"),
        &Schemas::new(),
    )
    .unwrap();
    let entry = &spec.functions[0];
    assert_eq!((entry.id.as_str(), entry.version), ("fn_1", 2));
    assert_eq!(entry.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(entry.tenant, "acme");
    assert_eq!(entry.settings.memory_pages, 16);
    assert_eq!(entry.settings.env, vec![("K".into(), "V".into())]);
    assert_eq!(spec.routes[0].target.function_id, "fn_1");
}

#[test]
fn unusable_items_are_refused_with_the_reason() {
    let sha = "ab".repeat(32);
    let bad_url = spec_of(&desired(&sha, "file:///etc/passwd"), &Schemas::new()).unwrap_err();
    assert!(bad_url.to_string().contains("artifact_url"), "{bad_url}");
    let bad_sha = spec_of(&desired("zz", "http://cp/a"), &Schemas::new()).unwrap_err();
    assert!(bad_sha.to_string().contains("sha256"), "{bad_sha}");
    let mut bad_id = desired(&sha, "http://cp/a");
    bad_id.functions[0].function_id = "../escape".into();
    assert!(spec_of(&bad_id, &Schemas::new()).is_err());
}

/// A node without a runtime: versions appear as loading when a spec names them, go away
/// when it no longer does, and settle as the test decides.
#[derive(Default)]
struct FakeNode {
    versions: Mutex<BTreeMap<(String, u64), Readiness>>,
}

impl FakeNode {
    fn versions(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, u64), Readiness>> {
        self.versions.lock().unwrap()
    }

    /// Every loading version becomes ready, or failed when `fails` says so.
    fn settle(&self, fails: impl Fn(&str, u64) -> bool) {
        for ((id, version), readiness) in self.versions().iter_mut() {
            if *readiness == Readiness::Loading {
                *readiness = if fails(id, *version) {
                    Readiness::Failed("invalid module".into())
                } else {
                    Readiness::Ready
                };
            }
        }
    }

    /// Function ids with a ready version.
    fn ready_functions(&self) -> std::collections::BTreeSet<String> {
        self.versions()
            .iter()
            .filter(|(_, r)| **r == Readiness::Ready)
            .map(|((id, _), _)| id.clone())
            .collect()
    }
}

impl Serving for &FakeNode {
    fn reconcile(&self, spec: &NodeSpec) {
        let mut versions = self.versions();
        let wanted: std::collections::BTreeSet<(String, u64)> = spec
            .functions
            .iter()
            .map(|f| (f.id.clone(), f.version))
            .collect();
        versions.retain(|key, _| wanted.contains(key));
        for key in wanted {
            versions.entry(key).or_insert(Readiness::Loading);
        }
    }

    fn readiness(&self, function_id: &str, version: u64) -> Option<Readiness> {
        self.versions()
            .get(&(function_id.to_string(), version))
            .cloned()
    }

    fn retry_failed(&self, function_id: &str, version: u64) {
        if let Some(readiness) = self.versions().get_mut(&(function_id.to_string(), version)) {
            *readiness = Readiness::Loading;
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// A desired state of this revision with these (function index, version) items.
    Deliver(u64, Vec<(u8, u64)>),
    /// Everything settles (versions whose `(function + version) % 4 == 0` fail), then the
    /// reconciler finishes; the state file can or cannot be written.
    SettleAndFinish { writable: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            0u64..12,
            proptest::collection::btree_map(0u8..4, 1u64..6, 0..4)
                .prop_map(|items| items.into_iter().collect::<Vec<_>>())
        )
            .prop_map(|(revision, items)| Step::Deliver(revision, items)),
        any::<bool>().prop_map(|writable| Step::SettleAndFinish { writable }),
    ]
}

fn fails(id: &str, version: u64) -> bool {
    let index: u64 = id.trim_start_matches('f').parse().unwrap_or(0);
    (index + version).is_multiple_of(4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever states arrive, in whatever order, and whether or not they can be written:
    /// the applied revision never goes down; what is applied (acked) is exactly what the
    /// state file holds; and a function that had a ready version keeps one until a desired
    /// state no longer names it.
    #[test]
    fn a_node_never_loses_ready_versions_goes_back_or_acks_what_it_did_not_persist(
        steps in proptest::collection::vec(step(), 1..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(APPLIED_FILE);
        let node = FakeNode::default();
        let mut reconciler = Reconciler::new(&node, dir.path(), None, Schemas::new());
        let mut last_desired: Option<DesiredState> = None;
        for step in steps {
            let revision_before = reconciler.applied_revision(Some("node-1"));
            let file_before = std::fs::read(&file).ok();
            let ready_before = node.ready_functions();
            match step {
                Step::Deliver(revision, items) => {
                    let sha = "ab".repeat(32);
                    let functions = items
                        .iter()
                        .map(|(f, v)| function(&format!("f{f}"), *v, &sha, "http://cp/a"))
                        .collect();
                    let state = state(revision, functions);
                    if let Started::Applying = reconciler.start(state.clone(), Some("node-1")) {
                        last_desired = Some(state);
                    }
                }
                Step::SettleAndFinish { writable } => {
                    node.settle(fails);
                    if !writable {
                        // A directory where the file should be: the rename fails (even
                        // for root, which file modes would not stop).
                        let _ = std::fs::remove_file(&file);
                        std::fs::create_dir_all(file.join("blocker")).unwrap();
                    }
                    let finished = reconciler.finish();
                    if !writable {
                        std::fs::remove_dir_all(&file).unwrap();
                        if let Some(bytes) = &file_before {
                            std::fs::write(&file, bytes).unwrap();
                        }
                        prop_assert!(finished.is_err() || revision_before == reconciler.applied_revision(Some("node-1")));
                        prop_assert_eq!(reconciler.applied_revision(Some("node-1")), revision_before, "acked a state it could not write");
                    }
                }
            }
            let revision_after = reconciler.applied_revision(Some("node-1"));
            prop_assert!(revision_after >= revision_before, "{revision_before:?} → {revision_after:?}");
            match reconciler.applied() {
                Some(applied) => {
                    let on_disk = DesiredState::decode(&std::fs::read(&file).unwrap()).unwrap();
                    prop_assert_eq!(&on_disk, applied);
                }
                None => prop_assert!(!file.exists()),
            }
            let named: std::collections::BTreeSet<String> = last_desired
                .iter()
                .flat_map(|s| s.functions.iter().map(|f| f.function_id.clone()))
                .collect();
            let ready_after = node.ready_functions();
            for function in ready_before.intersection(&named) {
                prop_assert!(ready_after.contains(function), "{function} lost its ready version");
            }
        }
    }
}

#[test]
fn an_unwritable_state_is_not_acked_and_is_applied_at_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(APPLIED_FILE);
    let node = FakeNode::default();
    let mut reconciler = Reconciler::new(&node, dir.path(), None, Schemas::new());
    let sha = "ab".repeat(32);
    let wanted = state(1, vec![function("f1", 1, &sha, "http://cp/a")]);
    assert!(matches!(
        reconciler.start(wanted.clone(), Some("node-1")),
        Started::Applying
    ));
    node.settle(|_, _| false);
    std::fs::create_dir_all(file.join("blocker")).unwrap();
    assert!(reconciler.finish().is_err());
    assert_eq!(reconciler.applied_revision(Some("node-1")), None);
    assert!(
        reconciler.applying(),
        "the target stays for the next attempt"
    );
    std::fs::remove_dir_all(&file).unwrap();
    reconciler.finish().unwrap();
    assert_eq!(reconciler.applied_revision(Some("node-1")), Some(1));
    assert_eq!(load_applied(dir.path()), Some(wanted));
}

/// A version that requires a schema the node does not have is not loaded: it is failed
/// with the reason, the old version keeps serving, and once the schema arrives the same
/// desired state is applied again and the new version replaces the old.
#[test]
fn a_version_waits_for_the_schema_it_requires_while_the_old_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    let node = FakeNode::default();
    let at = |seq: u64| Schemas::from([(("acme".to_string(), "shop".to_string()), seq)]);
    let mut reconciler = Reconciler::new(&node, dir.path(), None, at(3));
    let sha = "ab".repeat(32);
    let v1 = state(1, vec![function("f1", 1, &sha, "http://cp/a")]);
    reconciler.start(v1, Some("node-1"));
    node.settle(|_, _| false);
    reconciler.finish().unwrap();

    let mut needs_4 = function("f1", 2, &sha, "http://cp/a");
    needs_4.settings.requires.insert("shop".into(), 4);
    let v2 = state(2, vec![needs_4]);
    assert!(matches!(
        reconciler.start(v2, Some("node-1")),
        Started::Applying
    ));
    assert_eq!((&node).readiness("f1", 2), None, "not loaded");
    node.settle(|_, _| false);
    reconciler.finish().unwrap();
    assert_eq!(
        (&node).readiness("f1", 1),
        Some(Readiness::Ready),
        "v1 serves"
    );
    let results = reconciler.results();
    let v2 = results.iter().find(|r| r.version == 2).unwrap();
    assert_eq!(v2.state, ItemState::Failed);
    assert!(
        v2.error
            .as_deref()
            .is_some_and(|e| e.starts_with("schema shop@4 not applied")),
        "{results:?}"
    );
    assert!(!reconciler.regate(), "nothing changed");

    // After a restart the node still does not serve v2 against schema 3.
    let applied = load_applied(dir.path()).unwrap();
    let spec = spec_of(&applied, &at(3)).unwrap();
    assert_eq!(
        spec.functions.iter().map(|f| f.version).collect::<Vec<_>>(),
        vec![1]
    );

    reconciler.set_schemas(at(4));
    assert!(reconciler.regate());
    assert_eq!((&node).readiness("f1", 2), Some(Readiness::Loading));
    assert_eq!(
        (&node).readiness("f1", 1),
        Some(Readiness::Ready),
        "until v2 is ready"
    );
    node.settle(|_, _| false);
    reconciler.finish().unwrap();
    assert_eq!((&node).readiness("f1", 1), None, "replaced");
    let results = reconciler.results();
    assert_eq!(results.len(), 1);
    assert_eq!(
        (results[0].version, results[0].state),
        (2, ItemState::Ready)
    );
    assert!(!reconciler.regate());
}
