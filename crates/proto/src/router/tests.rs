use proptest::prelude::*;

use super::*;

fn spec(
    host: &str,
    path: &str,
    methods: &[&str],
    priority: i32,
    target: &'static str,
) -> RouteSpec<&'static str> {
    RouteSpec {
        host: host.into(),
        path: path.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        priority,
        owner: None,
        target,
    }
}

fn target<'a>(
    table: &'a RouteTable<&'static str>,
    host: &str,
    method: &str,
    path: &str,
) -> Option<&'a str> {
    table.lookup(host, method, path).map(|m| m.spec.target)
}

#[test]
fn exact_prefix_and_named_segments() {
    let table = RouteTable::new(vec![
        spec("example.com", "/a/b", &[], 0, "exact"),
        spec("example.com", "/api/*", &[], 0, "prefix"),
        spec("example.com", "/users/:id", &[], 0, "user"),
        spec("example.com", "/users/:id/posts/:post", &[], 0, "post"),
    ])
    .unwrap();
    assert_eq!(target(&table, "example.com", "GET", "/a/b"), Some("exact"));
    assert_eq!(target(&table, "example.com", "GET", "/a/b/c"), None);
    assert_eq!(target(&table, "example.com", "GET", "/api"), Some("prefix"));
    assert_eq!(
        target(&table, "example.com", "GET", "/api/v1/things"),
        Some("prefix")
    );
    assert_eq!(target(&table, "example.com", "GET", "/apix"), None);
    let user = table.lookup("example.com", "GET", "/users/42").unwrap();
    assert_eq!(user.spec.target, "user");
    assert_eq!(user.params, vec![("id".to_string(), "42".to_string())]);
    let post = table
        .lookup("example.com", "GET", "/users/7/posts/9")
        .unwrap();
    assert_eq!(
        post.params,
        vec![("id".into(), "7".into()), ("post".into(), "9".into())]
    );
    assert_eq!(
        target(&table, "example.com", "GET", "/users/"),
        None,
        "a parameter is never empty"
    );
    assert_eq!(target(&table, "other.com", "GET", "/a/b"), None);
}

#[test]
fn hosts_exact_wildcard_any_with_ports_and_case() {
    let table = RouteTable::new(vec![
        spec("*", "/", &[], 0, "any"),
        spec("*.example.com", "/", &[], 0, "wild"),
        spec("api.example.com", "/", &[], 0, "exact"),
    ])
    .unwrap();
    assert_eq!(
        target(&table, "API.example.com:8080", "GET", "/"),
        Some("exact")
    );
    assert_eq!(target(&table, "a.b.example.com", "GET", "/"), Some("wild"));
    assert_eq!(
        target(&table, "example.com", "GET", "/"),
        Some("any"),
        "the apex is not a subdomain"
    );
    assert_eq!(target(&table, "elsewhere.org.", "GET", "/"), Some("any"));
}

#[test]
fn priority_then_specificity_then_age() {
    let table = RouteTable::new(vec![
        spec("*", "/*", &[], 10, "high-prefix"),
        spec("example.com", "/x", &[], 5, "low-exact"),
        spec("example.com", "/y/*", &[], 0, "older"),
        spec("example.com", "/y/*", &[], 0, "newer"),
        spec("example.com", "/z/:id", &[], 0, "param"),
        spec("example.com", "/z/*", &[], 0, "prefix"),
    ])
    .unwrap();
    assert_eq!(
        target(&table, "example.com", "GET", "/x"),
        Some("high-prefix")
    );
    let table =
        RouteTable::new(table.routes.into_iter().skip(1).map(|r| r.spec).collect()).unwrap();
    assert_eq!(
        target(&table, "example.com", "GET", "/x"),
        Some("low-exact")
    );
    assert_eq!(target(&table, "example.com", "GET", "/y/1"), Some("older"));
    assert_eq!(target(&table, "example.com", "GET", "/z/1"), Some("param"));
    assert_eq!(
        target(&table, "example.com", "GET", "/z/1/2"),
        Some("prefix")
    );
}

#[test]
fn methods_select_among_routes_with_the_same_host_and_path() {
    let table = RouteTable::new(vec![
        spec("example.com", "/items", &["GET"], 0, "list"),
        spec("example.com", "/items", &["post", "PUT"], 0, "write"),
    ])
    .unwrap();
    assert_eq!(target(&table, "example.com", "GET", "/items"), Some("list"));
    assert_eq!(
        target(&table, "example.com", "PUT", "/items"),
        Some("write")
    );
    assert_eq!(
        target(&table, "example.com", "POST", "/items"),
        Some("write")
    );
    assert_eq!(target(&table, "example.com", "DELETE", "/items"), None);
}

#[test]
fn invalid_patterns_name_the_position() {
    let cases = [
        ("example.com", "api/x", "path", 0),
        ("example.com", "/a/*/b", "path", 3),
        ("example.com", "/a/b*", "path", 4),
        ("example.com", "/a/:", "path", 3),
        ("example.com", "/a//b", "path", 3),
        ("example.com", "/a b", "path", 2),
        ("exa_mple.com", "/", "host", 3),
        ("*.", "/", "host", 2),
        ("a..b", "/", "host", 1),
    ];
    for (host, path, field, position) in cases {
        let (index, error) = RouteTable::new(vec![
            spec("ok.com", "/", &[], 0, "ok"),
            spec(host, path, &[], 0, "bad"),
        ])
        .unwrap_err();
        assert_eq!(index, 1);
        assert_eq!(
            (error.field, error.position),
            (field, position),
            "{host} {path}: {error}"
        );
    }
}

fn arb_host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        prop::sample::select(vec!["a.com", "b.a.com", "c.b.a.com", "x.org"])
            .prop_map(str::to_string),
        prop::sample::select(vec!["*.a.com", "*.b.a.com", "*.org"]).prop_map(str::to_string),
    ]
}

fn arb_path_pattern() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec!["u", "v", "w", ":id", ":x"]);
    (prop::collection::vec(segment, 0..4), any::<bool>()).prop_map(|(segments, star)| {
        let literal_only: Vec<&str> = segments
            .iter()
            .copied()
            .filter(|s| !s.starts_with(':'))
            .collect();
        let segments = if star { literal_only } else { segments };
        let mut path = format!("/{}", segments.join("/"));
        if star {
            path = if segments.is_empty() {
                "/*".into()
            } else {
                format!("{path}/*")
            };
        }
        path
    })
}

fn arb_spec() -> impl Strategy<Value = RouteSpec<usize>> {
    (
        arb_host(),
        arb_path_pattern(),
        prop::sample::subsequence(vec!["GET", "POST"], 0..=2),
        -2i32..3,
        prop::option::of(prop::sample::select(vec!["p", "q"])),
    )
        .prop_map(|(host, path, methods, priority, owner)| RouteSpec {
            host,
            path,
            methods: methods.into_iter().map(str::to_string).collect(),
            priority,
            owner: owner.map(str::to_string),
            target: 0,
        })
}

fn arb_request() -> impl Strategy<Value = (String, String, String)> {
    let host = prop::sample::select(vec![
        "a.com",
        "b.a.com",
        "c.b.a.com",
        "d.c.b.a.com",
        "x.org",
        "y.x.org",
        "z.net",
    ]);
    let method = prop::sample::select(vec!["GET", "POST", "DELETE"]);
    let segment = prop::sample::select(vec!["u", "v", "w", "7", ""]);
    (host, method, prop::collection::vec(segment, 0..5))
        .prop_map(|(h, m, s)| (h.to_string(), m.to_string(), format!("/{}", s.join("/"))))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// For arbitrary route sets and requests the indexed lookup picks exactly the route a
    /// full scan ranks first, and no matching route has a higher priority.
    #[test]
    fn the_chosen_route_is_the_highest_priority_match(
        specs in prop::collection::vec(arb_spec(), 0..30),
        requests in prop::collection::vec(arb_request(), 1..20),
    ) {
        let specs: Vec<_> = specs.into_iter().enumerate().map(|(i, s)| RouteSpec { target: i, ..s }).collect();
        let table = RouteTable::new(specs.clone()).unwrap();
        for (host, method, path) in &requests {
            let chosen = table.lookup(host, method, path).map(|m| m.index);
            prop_assert_eq!(chosen, table.lookup_by_scan(host, method, path), "{} {} {}", host, method, path);
            if let Some(index) = chosen {
                let route = &table.routes[index];
                let mut params = Vec::new();
                prop_assert!(route.host.matches(host) && route.method_matches(method) && route.path.matches(path, &mut params));
                for other in &table.routes {
                    let mut params = Vec::new();
                    if other.owner == route.owner && other.host.matches(host) && other.method_matches(method) && other.path.matches(path, &mut params) {
                        prop_assert!(other.spec.priority <= route.spec.priority);
                    }
                }
            }
        }
    }
}

fn owned(
    host: &str,
    path: &str,
    priority: i32,
    owner: &str,
    target: &'static str,
) -> RouteSpec<&'static str> {
    RouteSpec {
        owner: Some(owner.into()),
        ..spec(host, path, &[], priority, target)
    }
}

/// Regression: a project's `*` route with the highest priority served every tenant's
/// requests. A host's owner is decided first; priorities only rank that owner's routes.
#[test]
fn no_priority_outranks_the_owner_of_a_host() {
    let table = RouteTable::new(vec![
        owned("*", "/*", i32::MAX, "attacker", "takeover"),
        owned("*.example.com", "/*", i32::MAX, "attacker", "wildcard"),
        owned("shop.example.com", "/", 0, "shop", "shop-root"),
        owned("*.shop.example.com", "/*", 0, "shop", "shop-any"),
        owned("attacker.example", "/*", i32::MAX, "attacker", "own"),
    ])
    .unwrap();
    assert_eq!(
        target(&table, "shop.example.com", "GET", "/"),
        Some("shop-root")
    );
    // The owner's routes do not match this path: 404, not the other project's route.
    assert_eq!(target(&table, "shop.example.com", "GET", "/other"), None);
    assert_eq!(
        target(&table, "a.shop.example.com", "GET", "/x"),
        Some("shop-any")
    );
    // Hosts nobody else owns: the attacker's own routes apply.
    assert_eq!(
        target(&table, "blog.example.com", "GET", "/x"),
        Some("wildcard")
    );
    assert_eq!(target(&table, "nobody.test", "GET", "/x"), Some("takeover"));
    assert_eq!(target(&table, "attacker.example", "GET", "/x"), Some("own"));
}
