//! The desired state of a node, computed from the active deployments and the routes: pure,
//! so the rule is tested without a database. A node gets every function version whose
//! active deployment's selector matches its labels, and every route whose own selector
//! matches and whose function it gets — if the route's host is its project's (a verified
//! domain or a platform host; `*` was allowed to an administrator). Each function it gets is
//! also reachable at `{function}.{project}.{platform}`, below every explicit route of that
//! host. Every route names the project owning its host, and every function's quota tenant
//! is its project, with the project's quotas alongside.

use std::collections::BTreeMap;

use edgefn_proto::Selector;
use edgefn_proto::api::{DatabaseRepairAction, Route};
use edgefn_proto::sync::{
    DESIRED_STATE_FORMAT, DesiredChange, DesiredDatabase, DesiredFunction, DesiredRepair,
    DesiredRoute, DesiredState, FunctionSettings, ProjectQuota,
};

use crate::domains::{DomainName, may_route};

/// An active deployment with what nodes need of its version.
#[derive(Clone, Debug)]
pub struct ActiveDeployment {
    /// The function's name and project (for its platform host).
    pub name: String,
    pub project: String,
    pub selector: Selector,
    pub function: DesiredFunction,
}

/// Who owns which hosts, and the projects' quotas.
#[derive(Clone, Copy, Debug)]
pub struct Hosts<'a> {
    pub platform_domain: &'a str,
    /// Every verified domain as `(project, name)`.
    pub verified: &'a [(String, DomainName)],
    pub quotas: &'a BTreeMap<String, ProjectQuota>,
}

/// The desired state of the node `node_id` with `labels`, at `revision`.
pub fn compute(
    node_id: &str,
    labels: &BTreeMap<String, String>,
    revision: u64,
    deployments: &[ActiveDeployment],
    routes: &[(Route, Selector)],
    hosts: &Hosts<'_>,
) -> DesiredState {
    let held: Vec<&ActiveDeployment> = deployments
        .iter()
        .filter(|d| d.selector.matches(labels))
        .collect();
    let functions: Vec<DesiredFunction> = held.iter().map(|d| d.function.clone()).collect();
    let mut desired_routes: Vec<DesiredRoute> = routes
        .iter()
        .filter(|(route, selector)| {
            selector.matches(labels)
                && functions.iter().any(|f| f.function_id == route.function_id)
                // A route whose domain is no longer its project's never reaches a node.
                && may_route(
                    &route.host,
                    &route.project,
                    true,
                    hosts.platform_domain,
                    hosts.verified,
                )
                .is_ok()
        })
        .map(|(route, _)| DesiredRoute {
            id: route.id.clone(),
            host: route.host.clone(),
            path: route.path.clone(),
            methods: route.methods.clone(),
            priority: route.priority,
            function_id: route.function_id.clone(),
            version: route.version,
            project: Some(route.project.clone()),
        })
        .collect();
    for deployment in &held {
        desired_routes.push(DesiredRoute {
            id: format!("platform:{}", deployment.function.function_id),
            host: format!(
                "{}.{}",
                deployment.name,
                crate::domains::platform_host(&deployment.project, hosts.platform_domain)
            ),
            path: "/*".into(),
            methods: vec![],
            priority: i32::MIN,
            function_id: deployment.function.function_id.clone(),
            version: None,
            project: Some(deployment.project.clone()),
        });
    }
    let quotas = held
        .iter()
        .filter_map(|d| Some((d.project.clone(), hosts.quotas.get(&d.project)?.clone())))
        .collect();
    DesiredState {
        format: DESIRED_STATE_FORMAT,
        node_id: node_id.to_string(),
        revision,
        functions,
        routes: desired_routes,
        quotas,
        databases: Vec::new(),
    }
}

/// A database with its ledger, as the desired-state rule needs it.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub id: String,
    pub project: String,
    pub name: String,
    /// `None`: the nodes that run a function of the project which uses the database.
    pub selector: Option<Selector>,
    pub changes: Vec<DesiredChange>,
}

/// Whether a function version with `settings` uses database `name` (of its project).
pub fn uses(settings: &FunctionSettings, name: &str) -> bool {
    settings.databases.iter().any(|d| d.name == name) || settings.requires.contains_key(name)
}

/// The databases a node with `labels` and the functions of `state` holds: those its labels
/// select, and — for databases without a selector — those a function it runs uses. Each
/// carries the ledger's changes after `applied` (the sequence the node last reported), and
/// the repair asked for on the node, if any (with the whole ledger, for a `recreate`).
pub fn databases_of(
    state: &DesiredState,
    labels: &BTreeMap<String, String>,
    ledgers: &[Ledger],
    applied: Option<&BTreeMap<String, u64>>,
    repairs: Option<&BTreeMap<String, DesiredRepair>>,
) -> Vec<DesiredDatabase> {
    ledgers
        .iter()
        .filter(|ledger| match &ledger.selector {
            Some(selector) => selector.matches(labels),
            None => state
                .functions
                .iter()
                .any(|f| f.settings.tenant == ledger.project && uses(&f.settings, &ledger.name)),
        })
        .map(|ledger| {
            let repair = repairs.and_then(|r| r.get(&ledger.id)).cloned();
            let from = match &repair {
                Some(r) if r.action == DatabaseRepairAction::Recreate => 0,
                _ => applied
                    .and_then(|a| a.get(&ledger.id))
                    .copied()
                    .unwrap_or(0),
            };
            let last = ledger.changes.last();
            DesiredDatabase {
                id: ledger.id.clone(),
                project: ledger.project.clone(),
                name: ledger.name.clone(),
                target_seq: last.map_or(0, |c| c.seq),
                chain: last.map(|c| c.chain.clone()).unwrap_or_default(),
                changes: ledger
                    .changes
                    .iter()
                    .filter(|c| c.seq > from)
                    .cloned()
                    .collect(),
                repair,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use edgefn_proto::GuestKind;
    use edgefn_proto::sync::FunctionSettings;

    use super::*;

    fn function(id: &str, version: u64) -> DesiredFunction {
        DesiredFunction {
            function_id: id.into(),
            version,
            kind: GuestKind::Component,
            artifact_url: format!("http://cp/{id}"),
            sha256: "00".into(),
            settings: FunctionSettings {
                entrypoint: None,
                memory_pages: 1,
                max_execution_ms: 1,
                allowed_outbound_hosts: vec![],
                min_hot_instances: 0,
                max_hot_instances: 1,
                instance_reuse: Some(1),
                env: BTreeMap::new(),
                tenant: "default".into(),
                databases: vec![],
                requires: BTreeMap::new(),
            },
            retry: 0,
        }
    }

    fn route(id: &str, function_id: &str) -> Route {
        Route {
            id: id.into(),
            project: "default".into(),
            host: "*".into(),
            path: format!("/{id}"),
            function_id: function_id.into(),
            version: None,
            methods: vec![],
            priority: 0,
            pop_selector: String::new(),
            created_at: 0,
        }
    }

    #[test]
    fn nodes_get_what_their_labels_select_and_only_routes_to_what_they_hold() {
        let deployments = vec![
            ActiveDeployment {
                name: "a".into(),
                project: "default".into(),
                selector: Selector::parse("region == 'tokyo'").unwrap(),
                function: function("fn_a", 2),
            },
            ActiveDeployment {
                name: "b".into(),
                project: "default".into(),
                selector: Selector::parse("").unwrap(),
                function: function("fn_b", 1),
            },
        ];
        let routes = vec![
            (route("r_a", "fn_a"), Selector::parse("").unwrap()),
            (
                route("r_b", "fn_b"),
                Selector::parse("pop != 'osaka-1'").unwrap(),
            ),
        ];
        let tokyo = BTreeMap::from([("region".to_string(), "tokyo".to_string())]);
        let osaka = BTreeMap::from([
            ("region".to_string(), "osaka".to_string()),
            ("pop".to_string(), "osaka-1".to_string()),
        ]);
        let quotas = BTreeMap::new();
        let hosts = Hosts {
            platform_domain: "edgefn.localhost",
            verified: &[],
            quotas: &quotas,
        };
        let state = compute("n1", &tokyo, 7, &deployments, &routes, &hosts);
        assert_eq!(state.revision, 7);
        assert_eq!(
            state
                .functions
                .iter()
                .map(|f| f.function_id.as_str())
                .collect::<Vec<_>>(),
            ["fn_a", "fn_b"]
        );
        assert_eq!(
            state
                .routes
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["r_a", "r_b", "platform:fn_a", "platform:fn_b"]
        );
        assert_eq!(state.routes[2].host, "a.default.edgefn.localhost");
        assert_eq!(state.routes[2].priority, i32::MIN);
        let state = compute("n2", &osaka, 1, &deployments, &routes, &hosts);
        assert_eq!(
            state
                .functions
                .iter()
                .map(|f| f.function_id.as_str())
                .collect::<Vec<_>>(),
            ["fn_b"]
        );
        assert_eq!(
            state
                .routes
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["platform:fn_b"],
            "r_a's function is not here, r_b's selector excludes osaka-1"
        );
    }

    #[test]
    fn routes_on_hosts_their_project_does_not_own_never_reach_nodes() {
        let deployments = vec![ActiveDeployment {
            name: "a".into(),
            project: "shop".into(),
            selector: Selector::parse("").unwrap(),
            function: function("fn_a", 1),
        }];
        let mut owned = route("r_owned", "fn_a");
        owned.project = "shop".into();
        owned.host = "shop.example.com".into();
        let mut foreign = owned.clone();
        foreign.id = "r_foreign".into();
        foreign.host = "blog.example.com".into();
        let verified = vec![
            (
                "shop".to_string(),
                DomainName::parse("shop.example.com").unwrap(),
            ),
            (
                "blog".to_string(),
                DomainName::parse("blog.example.com").unwrap(),
            ),
        ];
        let quotas = BTreeMap::from([(
            "shop".to_string(),
            ProjectQuota {
                max_concurrent: Some(5),
                ..ProjectQuota::default()
            },
        )]);
        let hosts = Hosts {
            platform_domain: "edgefn.localhost",
            verified: &verified,
            quotas: &quotas,
        };
        let routes = vec![
            (owned, Selector::parse("").unwrap()),
            (foreign, Selector::parse("").unwrap()),
        ];
        let state = compute("n1", &BTreeMap::new(), 1, &deployments, &routes, &hosts);
        let ids: Vec<&str> = state.routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r_owned", "platform:fn_a"]);
        assert!(
            state
                .routes
                .iter()
                .all(|r| r.project.as_deref() == Some("shop"))
        );
        assert_eq!(state.quotas["shop"].max_concurrent, Some(5));
    }
}
