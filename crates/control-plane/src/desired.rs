//! The desired state of a node, computed from the active deployments and the routes: pure,
//! so the rule is tested without a database. A node gets every function version whose
//! active deployment's selector matches its labels, and every route whose own selector
//! matches and whose function it gets.

use std::collections::BTreeMap;

use edgefn_proto::Selector;
use edgefn_proto::api::Route;
use edgefn_proto::sync::{DESIRED_STATE_FORMAT, DesiredFunction, DesiredRoute, DesiredState};

/// An active deployment with what nodes need of its version.
#[derive(Clone, Debug)]
pub struct ActiveDeployment {
    pub selector: Selector,
    pub function: DesiredFunction,
}

/// The desired state of the node `node_id` with `labels`, at `revision`.
pub fn compute(
    node_id: &str,
    labels: &BTreeMap<String, String>,
    revision: u64,
    deployments: &[ActiveDeployment],
    routes: &[(Route, Selector)],
) -> DesiredState {
    let functions: Vec<DesiredFunction> = deployments
        .iter()
        .filter(|d| d.selector.matches(labels))
        .map(|d| d.function.clone())
        .collect();
    let routes = routes
        .iter()
        .filter(|(route, selector)| {
            selector.matches(labels) && functions.iter().any(|f| f.function_id == route.function_id)
        })
        .map(|(route, _)| DesiredRoute {
            id: route.id.clone(),
            host: route.host.clone(),
            path: route.path.clone(),
            methods: route.methods.clone(),
            priority: route.priority,
            function_id: route.function_id.clone(),
            version: route.version,
        })
        .collect();
    DesiredState {
        format: DESIRED_STATE_FORMAT,
        node_id: node_id.to_string(),
        revision,
        functions,
        routes,
    }
}

#[cfg(test)]
mod tests {
    use edgefn_proto::GuestKind;
    use edgefn_proto::api::FunctionSettings;

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
                instance_reuse: 1,
                env: BTreeMap::new(),
                tenant: "default".into(),
            },
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
                selector: Selector::parse("region == 'tokyo'").unwrap(),
                function: function("fn_a", 2),
            },
            ActiveDeployment {
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
        let state = compute("n1", &tokyo, 7, &deployments, &routes);
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
            ["r_a", "r_b"]
        );
        let state = compute("n2", &osaka, 1, &deployments, &routes);
        assert_eq!(
            state
                .functions
                .iter()
                .map(|f| f.function_id.as_str())
                .collect::<Vec<_>>(),
            ["fn_b"]
        );
        assert!(
            state.routes.is_empty(),
            "r_a's function is not here, r_b's selector excludes osaka-1"
        );
    }
}
