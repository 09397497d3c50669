//! Each pattern of the document accepts exactly what its validator accepts: checked on
//! chosen cases and on random strings over the characters that matter to each rule.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::domains::DomainName;
use crate::validate;

fn matches(pattern: &str, text: &str) -> bool {
    regex::Regex::new(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .is_match(text)
}

fn route_host_valid(host: &str) -> bool {
    // Empty means the project's own host; the handler fills it in before validating.
    host.is_empty() || route_error(host, "/").is_none_or(|field| field != "host")
}

fn route_path_valid(path: &str) -> bool {
    route_error("*", path).is_none()
}

fn route_error(host: &str, path: &str) -> Option<&'static str> {
    let spec = edgefn_proto::router::RouteSpec {
        host: host.into(),
        path: path.into(),
        methods: vec![],
        priority: 0,
        owner: None,
        target: (),
    };
    edgefn_proto::router::RouteTable::new(vec![spec])
        .err()
        .map(|(_, error)| error.field)
}

fn entrypoint_valid(text: &str) -> bool {
    let input = edgefn_proto::api::SettingsInput {
        entrypoint: Some(text.into()),
        ..Default::default()
    };
    let mut problems = validate::Problems::default();
    validate::settings(&input, "p", Limits::default(), &mut problems);
    problems.0.is_empty()
}

fn label_key_valid(key: &str) -> bool {
    validate::node("n", &BTreeMap::from([(key.to_string(), String::new())])).is_ok()
}

fn ttl_valid(text: &str, max_secs: u64) -> bool {
    validate::ttl("ttl", Some(text), "1h", max_secs).is_ok()
}

#[test]
fn numbers_up_to_a_bound() {
    for max in [1, 9, 10, 30, 99, 100, 366, 720, 8784, 31_622_400, u64::MAX] {
        let pattern = format!("^(?:{})$", at_most(max));
        for n in (0..=1000).chain([max.saturating_sub(1), max, max.saturating_add(1)]) {
            assert_eq!(
                matches(&pattern, &n.to_string()),
                (1..=max).contains(&n),
                "{n} ≤ {max}"
            );
        }
    }
}

#[test]
fn chosen_cases_agree() {
    for (text, valid) in [
        ("shop.example.com", true),
        ("*.a.io", true),
        ("a.b.", true),
        ("1.2.3.4", false),
        ("a.1b", false),
        ("example", false),
        ("-a.com", false),
        (" a.com", false),
    ] {
        assert_eq!(DomainName::parse(text).is_ok(), valid, "{text}");
        assert_eq!(matches(DOMAIN, text), valid, "{text}");
    }
    for (text, valid) in [
        ("", true),
        ("*", true),
        ("a.b.", true),
        ("*.a", true),
        (".a", false),
        ("a..b", false),
        ("a.", true),
        ("a..", false),
        ("a:80", false),
    ] {
        assert_eq!(route_host_valid(text), valid, "{text}");
        assert_eq!(matches(ROUTE_HOST, text), valid, "{text}");
    }
    for (text, valid) in [
        ("/", true),
        ("/a/*", true),
        ("/:id/x", true),
        ("/:id/*", false),
        ("/a//b", false),
        ("/a/", true),
        ("a", false),
        ("/a b", false),
        ("/a*", false),
        ("/:", false),
        ("/a:b", true),
    ] {
        assert_eq!(route_path_valid(text), valid, "{text}");
        assert_eq!(matches(&route_path(), text), valid, "{text}");
    }
    for (text, valid) in [
        ("api.example.com", true),
        ("*.x.io:443", true),
        ("h:65535", true),
        ("h:65536", false),
        ("h:+80", false),
        ("a..b", false),
        ("h:", false),
    ] {
        assert_eq!(validate::valid_outbound_host(text), valid, "{text}");
        assert_eq!(matches(OUTBOUND_HOST, text), valid, "{text}");
    }
    for (text, valid) in [
        ("12h", true),
        ("366d", true),
        ("367d", false),
        ("0h", false),
        ("012h", true),
        (" 1h", false),
        ("1y", false),
    ] {
        assert_eq!(ttl_valid(text, 366 * 86_400), valid, "{text}");
        assert_eq!(matches(&ttl(366 * 86_400), text), valid, "{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn names(text in "[a-z0-9A-Z_ -]{0,3}|[a-z0-9-]{60,66}") {
        prop_assert_eq!(matches(NAME, &text), validate::valid_name(&text), "{:?}", text);
    }

    #[test]
    fn domains(text in "(\\*\\.)?([a-zA-Z0-9-]{0,3}[.]){0,3}[a-z0-9 *-]{0,3}[.]?|([a-z]{60,64}\\.){3,5}[a-z]{1,9}") {
        let valid = text.len() <= 253 && matches(DOMAIN, &text);
        prop_assert_eq!(valid, DomainName::parse(&text).is_ok(), "{:?}", text);
    }

    #[test]
    fn route_hosts(text in "(\\*|\\*\\.)?[a-zA-Z0-9.:_ -]{0,6}") {
        prop_assert_eq!(matches(ROUTE_HOST, &text), route_host_valid(&text), "{:?}", text);
    }

    #[test]
    fn route_paths(text in "/?([a-z:*_/ ?#\u{2000}\u{feff}\u{1c}]{0,3}/?){0,4}") {
        prop_assert_eq!(matches(&route_path(), &text), route_path_valid(&text), "{:?}", text);
    }

    #[test]
    fn outbound_hosts(text in "(\\*\\.)?[a-z0-9.-]{0,6}(:[0-9+]{0,6})?|[a-z]{250,256}") {
        let valid = text.len() <= 253 && matches(OUTBOUND_HOST, &text);
        prop_assert_eq!(valid, validate::valid_outbound_host(&text), "{:?}", text);
    }

    #[test]
    fn printable_names(text in "[a-z \t\u{0}\u{1c}\u{7f}\u{85}\u{a0}\u{2000}\u{3000}\u{feff}é]{0,6}|[a-zé]{250,260}") {
        prop_assert_eq!(matches(&printable(256), &text), entrypoint_valid(&text), "{:?}", text);
    }

    #[test]
    fn label_keys(text in "[a-zA-Z0-9._ =-]{0,4}|[a-z]{60,66}") {
        prop_assert_eq!(matches(LABEL_KEY, &text), label_key_valid(&text), "{:?}", text);
    }

    #[test]
    fn lifetimes(number in "0{0,2}[0-9]{0,9}", unit in "[smhdy ]?", max in 1u64..40_000_000) {
        let text = format!("{number}{unit}");
        prop_assert_eq!(matches(&ttl(max), &text), ttl_valid(&text, max), "{:?} ≤ {}s", text, max);
    }
}

/// Every rule reached the field it is for (a misspelt name would add nothing).
#[test]
fn the_document_carries_the_rules() {
    let document = document(Limits {
        max_memory_pages: 512,
        max_execution_ms: 2000,
    });
    let mut schemas = document["components"]["schemas"].clone();
    let mut property = |schema: &str, name: &str| {
        property_mut(&mut schemas[schema], name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(property("SettingsInput", "memory_pages")["maximum"], 512);
    assert_eq!(
        property("SettingsInput", "max_execution_ms")["maximum"],
        2000
    );
    for (schema, name, keyword) in [
        ("CreateFunction", "name", "pattern"),
        ("CreateFunction", "project", "pattern"),
        ("CreateProject", "name", "pattern"),
        ("SettingsInput", "entrypoint", "pattern"),
        ("SettingsInput", "instance_reuse", "minimum"),
        ("SettingsInput", "min_hot_instances", "maximum"),
        ("RouteInput", "host", "pattern"),
        ("RouteInput", "path", "pattern"),
        ("RouteInput", "priority", "maximum"),
        ("RouteInput", "pop_selector", "format"),
        ("DeployRequest", "strategy", "enum"),
        ("RollbackRequest", "to_version", "minimum"),
        ("CreateDomain", "name", "pattern"),
        ("ProjectQuota", "pool_share_percent", "maximum"),
        ("LoginRequest", "ttl", "pattern"),
        ("CreateToken", "ttl", "pattern"),
        ("CreateToken", "description", "maxLength"),
        ("CreateBootstrapToken", "ttl", "pattern"),
        ("EnrollNode", "labels", "propertyNames"),
        ("CreateUser", "password", "minLength"),
        ("CreateUser", "issuer", "pattern"),
    ] {
        assert!(
            property(schema, name).get(keyword).is_some(),
            "{schema}.{name}: no {keyword}"
        );
    }
    assert!(
        property("ProjectQuota", "per_minute")
            .get("format")
            .is_none()
    );
    let schemas = &document["components"]["schemas"];
    assert!(schemas["CreateUser"].get("not").is_some());
    assert!(schemas["CreateToken"].get("not").is_some());
    let verify = &document["paths"]["/api/v1/projects/{project}/domains/{name}/verify"]["post"];
    let name = verify["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "name")
        .unwrap();
    assert_eq!(name["schema"]["pattern"], DOMAIN);
}
