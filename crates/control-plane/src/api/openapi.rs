//! The OpenAPI documents: the developer API's ([`ApiDoc`], served at
//! `/api/v1/openapi.json`) and the node listener's ([`NodeApiDoc`]).
//!
//! utoipa derives the shapes from the handlers and types; [`document`] then adds what the
//! validators check and utoipa cannot say — patterns, ranges (the operator's limits among
//! them), rules between two fields — so that a request the document calls valid is one the
//! API accepts, and the other way round. The patterns are ECMA-262 regular expressions
//! that Python's and Rust's engines read alike; the tests below hold each one to its
//! validator. `scripts/schemathesis.sh`, run by the conformance test, checks the whole.

use serde_json::{Value, json};

use crate::validate::Limits;

/// The OpenAPI document of this API, generated from the handlers' annotations and the
/// types' derived schemas (see [`document`] for the one served).
#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&SecuritySchemes, &CommonResponses),
    security(("api_token" = [])),
    info(
        title = "edgefn control plane API",
        description = "Functions, versions, artifacts, routes, deployments, nodes, users, projects, tokens and the audit log. \
            Every endpoint but /openapi.json, /login, /uploads (presigned) and /nodes/register (a bootstrap token) needs \
            `Authorization: Bearer <token>`. The node endpoints (heartbeat, desired, node token, certificate) are served \
            on the node listener, which requires mTLS with a node certificate; they have a document of their own \
            (node-openapi.json beside this one in the source)."
    ),
    paths(
        super::functions::create_function,
        super::functions::list_functions,
        super::functions::get_function,
        super::functions::delete_function,
        super::functions::create_version,
        super::functions::update_settings,
        super::functions::renew_upload_url,
        super::functions::list_versions,
        super::functions::get_version,
        super::functions::upload,
        super::functions::complete_version,
        super::functions::download_artifact,
        super::routes::create_route,
        super::routes::list_routes,
        super::routes::get_route,
        super::routes::update_route,
        super::routes::delete_route,
        super::nodes::enroll,
        super::nodes::list_nodes,
        super::nodes::get_node,
        super::nodes::create_bootstrap_token,
        super::nodes::revoke_node,
        super::deployments::deploy,
        super::deployments::rollback,
        super::deployments::undeploy,
        super::deployments::get_deployment,
        super::deployments::retry_deployment,
        super::identity::login,
        super::identity::whoami,
        super::identity::create_user,
        super::identity::list_users,
        super::identity::create_project,
        super::identity::list_projects,
        super::identity::list_members,
        super::identity::set_member,
        super::identity::remove_member,
        super::domains::create_domain,
        super::domains::list_domains,
        super::domains::verify_domain,
        super::domains::delete_domain,
        super::domains::get_quota,
        super::domains::set_quota,
        super::databases::create_database,
        super::databases::list_databases,
        super::databases::get_database,
        super::databases::delete_database,
        super::databases::create_change,
        super::databases::list_changes,
        super::databases::database_nodes,
        super::databases::repair_node_database,
        super::databases::sync_log,
        super::identity::create_token,
        super::identity::list_tokens,
        super::identity::revoke_token,
        super::audit::list_audit,
        super::audit::verify_audit
    )
)]
pub struct ApiDoc;

/// The OpenAPI document of the node listener (mTLS with a node certificate, then a node
/// token): what a node calls.
#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&SecuritySchemes, &CommonResponses),
    security(("node_token" = [])),
    info(
        title = "edgefn node listener API",
        description = "Served on the control plane's node listener (`--node-listen`), which requires mTLS with a node \
            certificate from the node CA; every call but the token itself needs `Authorization: Bearer <node token>`."
    ),
    paths(
        super::node_sync::heartbeat,
        super::node_sync::get_desired,
        super::node_sync::node_token,
        super::node_sync::renew_certificate,
        super::node_sync::download_precompiled,
    )
)]
pub struct NodeApiDoc;

/// Answers every operation can give, whether or not its handler names them: 400 when a
/// path or query parameter or the body cannot be read (axum's rejections, in the API's
/// JSON by `error::json_errors`), 404 when a path names nothing (or matches no endpoint).
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let takes_input = operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
                    || operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                if takes_input {
                    responses.entry("400".into()).or_insert_with(|| {
                        error("The request cannot be read: a parameter or the body is malformed")
                            .into()
                    });
                }
                if path.contains('{') {
                    responses.entry("404".into()).or_insert_with(|| {
                        error("Nothing by that name, or no endpoint for that path").into()
                    });
                }
            }
        }
    }
}

/// The two kinds of bearer token in the document: API tokens (users) and node tokens
/// (nodes, on the node listener, over mTLS with their certificate).
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(description.to_string()))
                    .build(),
            )
        };
        components.add_security_scheme(
            "api_token",
            bearer("An API token: `edgefn login`, `edgefn tokens create`, the administrator's admin-token file, or an external OIDC issuer's token."),
        );
        components.add_security_scheme(
            "node_token",
            bearer("A node token (`POST /nodes/{id}/token`), on the node listener, over mTLS with the node's certificate."),
        );
    }
}

/// What `char::is_whitespace` calls white space, as a character-class body.
const WHITE_SPACE: &str =
    r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// What `char::is_control` calls a control character, as a character-class body.
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";

/// Project and function names (`validate::valid_name`).
pub const NAME: &str = "^[a-z0-9][a-z0-9-]{0,62}$";
/// A domain a project claims (`DomainName::parse`), with `maxLength` 253.
pub const DOMAIN: &str = "^(?:\\*\\.)?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.?$";
/// A route's host pattern (`router::HostPattern`): empty (the project's platform host),
/// `*`, a name or `*.` and a name, one trailing dot allowed.
pub const ROUTE_HOST: &str = "^(?:|\\*|(?:\\*\\.)?[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*\\.?)$";
/// An HTTP method name, any case (`validate::route` upper-cases it).
pub const METHOD: &str = "^[A-Za-z]+$";
/// An `allowed_outbound_hosts` entry (`validate::valid_outbound_host`), with `maxLength`
/// 253.
pub const OUTBOUND_HOST: &str = "^(?:\\*\\.)?[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?$";
/// An environment variable's name.
pub const ENV_NAME: &str = "^[^=\\x00]+$";
/// A database a function may open (`validate::settings`): a name, `:ro` or `:rw`.
pub const DATABASE_GRANT: &str = "^[a-z0-9][a-z0-9-]{0,62}(?::(?:ro|rw))?$";
/// A node label's key (`validate::node`).
pub const LABEL_KEY: &str = "^[A-Za-z0-9._-]{1,63}$";

/// A route's path pattern (`router::PathPattern`): segments after a '/', each a literal
/// (not starting with ':'), a `:param` or, last and after literals only, `*`.
pub fn route_path() -> String {
    let excluded = format!("/?#*{WHITE_SPACE}");
    let literal = format!("[^:{excluded}][^{excluded}]*");
    let segment = format!("(?:{literal}|:[A-Za-z0-9_]+)");
    format!("^/(?:(?:{literal}/)*\\*|(?:{segment}/)*{segment}?)$")
}

/// 1-`max` printable characters: no control characters, no white space.
pub fn printable(max: usize) -> String {
    format!("^[^{CONTROL}{WHITE_SPACE}]{{1,{max}}}$")
}

/// A lifetime like `12h` of at most `max_secs` (`identity::parse_ttl`, `validate::ttl`).
pub fn ttl(max_secs: u64) -> String {
    let units = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        .iter()
        .filter(|(_, seconds)| max_secs >= *seconds)
        .map(|(unit, seconds)| format!("(?:{}){unit}", at_most(max_secs / seconds)))
        .collect::<Vec<_>>();
    format!("^0*(?:{})$", units.join("|"))
}

/// A regular expression for the decimal numbers 1..=`max`, without leading zeros.
fn at_most(max: u64) -> String {
    let digits: Vec<u8> = max.to_string().bytes().map(|b| b - b'0').collect();
    let mut alternatives = Vec::new();
    // Every number with fewer digits.
    for length in 1..digits.len() {
        alternatives.push(match length {
            1 => "[1-9]".to_string(),
            _ => format!("[1-9][0-9]{{{}}}", length - 1),
        });
    }
    // As many digits: `max`'s first i digits, then a smaller one, then any.
    for (i, &digit) in digits.iter().enumerate() {
        let low = u8::from(i == 0);
        if digit > low {
            let prefix: String = digits[..i].iter().map(|d| char::from(b'0' + d)).collect();
            let rest = digits.len() - i - 1;
            let range = format!("[{low}-{}]", digit - 1);
            alternatives.push(match rest {
                0 => format!("{prefix}{range}"),
                _ => format!("{prefix}{range}[0-9]{{{rest}}}"),
            });
        }
    }
    alternatives.push(max.to_string());
    alternatives.join("|")
}

/// The document served at `/api/v1/openapi.json`: [`ApiDoc`] with the validators' rules.
pub fn document(limits: Limits) -> Value {
    let mut document =
        serde_json::to_value(<ApiDoc as utoipa::OpenApi>::openapi()).unwrap_or_else(|_| json!({}));
    constrain(&mut document, limits);
    document
}

fn constrain(document: &mut Value, limits: Limits) {
    let schemas = &mut document["components"]["schemas"];
    let mut field = |schema: &str, property: &str, rules: Value| {
        if let Some(target) = property_mut(&mut schemas[schema], property) {
            merge(target, rules);
        }
    };
    field("CreateFunction", "name", json!({ "pattern": NAME }));
    field("CreateFunction", "project", json!({ "pattern": NAME }));
    field("CreateProject", "name", json!({ "pattern": NAME }));
    field(
        "SettingsInput",
        "entrypoint",
        json!({ "pattern": printable(256) }),
    );
    let range = |min: u64, max: u64| json!({ "minimum": min, "maximum": max });
    field(
        "SettingsInput",
        "memory_pages",
        range(1, limits.max_memory_pages),
    );
    field(
        "SettingsInput",
        "max_execution_ms",
        range(1, limits.max_execution_ms),
    );
    field("SettingsInput", "max_hot_instances", range(1, 10_000));
    field(
        "SettingsInput",
        "min_hot_instances",
        json!({
            "minimum": 0,
            "maximum": 10_000,
            "description": "At most max_hot_instances (default 16), which JSON Schema cannot say.",
        }),
    );
    field("SettingsInput", "instance_reuse", range(1, 1_000_000_000));
    field(
        "SettingsInput",
        "allowed_outbound_hosts",
        json!({ "items": { "pattern": OUTBOUND_HOST, "maxLength": 253 } }),
    );
    field(
        "SettingsInput",
        "env",
        json!({ "propertyNames": { "pattern": ENV_NAME } }),
    );

    field("RouteInput", "host", json!({ "pattern": ROUTE_HOST }));
    field("RouteInput", "path", json!({ "pattern": route_path() }));
    field(
        "RouteInput",
        "methods",
        json!({ "items": { "pattern": METHOD } }),
    );
    field("RouteInput", "version", json!({ "minimum": 1 }));
    field(
        "RouteInput",
        "priority",
        json!({ "minimum": i32::MIN, "maximum": i32::MAX }),
    );
    let selector = json!({
        "format": "edgefn-selector",
        "maxLength": edgefn_proto::selector::MAX_LEN,
        "description": "A POP selector, e.g. `region == 'tokyo' && tier != 'canary'`; empty: every node.",
    });
    field(
        "SettingsInput",
        "databases",
        json!({ "items": { "pattern": DATABASE_GRANT } }),
    );
    field(
        "SettingsInput",
        "requires",
        json!({
            "propertyNames": { "pattern": NAME },
            "additionalProperties": { "minimum": 1, "maximum": i64::MAX },
        }),
    );
    field("CreateDatabase", "name", json!({ "pattern": NAME }));
    field("CreateDatabase", "pop_selector", selector.clone());
    field(
        "CreateChange",
        "sql",
        json!({
            "format": "edgefn-sql-change",
            "minLength": 1,
            "maxLength": super::databases::MAX_CHANGE_BYTES,
            "description": "SQLite statements. The dry run on top of the ledger refuses (400) SQL that fails, statements a transaction cannot hold, and changes that drop or rename a table or column without `destructive`.",
        }),
    );
    field("CreateChange", "description", json!({ "maxLength": 1000 }));
    field("RouteInput", "pop_selector", selector.clone());
    field("DeployRequest", "pop_selector", selector);
    field("DeployRequest", "version", json!({ "minimum": 1 }));
    field("DeployRequest", "strategy", json!({ "enum": ["all"] }));
    field("RollbackRequest", "to_version", json!({ "minimum": 1 }));

    field(
        "CreateDomain",
        "name",
        json!({ "pattern": DOMAIN, "maxLength": 253 }),
    );
    let count = json!({ "minimum": 1, "maximum": u32::MAX, "format": null });
    field("ProjectQuota", "max_concurrent", count.clone());
    field("ProjectQuota", "per_minute", count);
    field(
        "ProjectQuota",
        "pool_share_percent",
        json!({ "minimum": 1, "maximum": 100, "format": null }),
    );

    let token_ttl = ttl(super::identity::MAX_TOKEN_DAYS * 86_400);
    field("LoginRequest", "ttl", json!({ "pattern": token_ttl }));
    field("CreateToken", "ttl", json!({ "pattern": token_ttl }));
    field("CreateToken", "description", json!({ "maxLength": 200 }));
    field(
        "CreateBootstrapToken",
        "ttl",
        json!({ "pattern": ttl(super::nodes::MAX_BOOTSTRAP_DAYS * 86_400) }),
    );
    field(
        "EnrollNode",
        "name",
        json!({ "minLength": 1, "maxLength": 253 }),
    );
    field(
        "EnrollNode",
        "labels",
        json!({
            "propertyNames": { "pattern": LABEL_KEY },
            "additionalProperties": { "maxLength": 253 },
        }),
    );
    use crate::auth::password::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
    use crate::validate::MAX_USER_NAME;
    field(
        "CreateUser",
        "name",
        json!({ "pattern": printable(MAX_USER_NAME) }),
    );
    field(
        "CreateUser",
        "password",
        json!({ "minLength": MIN_PASSWORD_LEN, "maxLength": MAX_PASSWORD_LEN }),
    );
    field(
        "CreateUser",
        "issuer",
        json!({ "pattern": format!("^[^{CONTROL}]{{1,2048}}$") }),
    );

    // Rules between fields.
    merge(
        &mut schemas["CreateUser"],
        json!({ "not": {
            "description": "a user of an external issuer has no password",
            "required": ["password", "issuer"],
            "properties": { "password": { "type": "string" }, "issuer": { "type": "string" } },
        }}),
    );
    merge(
        &mut schemas["CreateToken"],
        json!({ "not": {
            "description": "a role needs a project",
            "required": ["role"],
            "properties": { "role": { "not": { "type": "null" } }, "project": { "type": "null" } },
        }}),
    );

    // The server refuses fields it does not know, which `allOf` (utoipa's rendering of
    // `#[serde(flatten)]`) cannot say: one object with every property does.
    let settings = schemas["SettingsInput"].clone();
    flatten_into(&mut schemas["CreateFunction"], &settings);

    // Path parameters.
    let paths = &mut document["paths"];
    for (path, method) in [
        ("/api/v1/projects/{project}/domains/{name}", "delete"),
        ("/api/v1/projects/{project}/domains/{name}/verify", "post"),
    ] {
        if let Some(parameters) = paths[path][method]["parameters"].as_array_mut() {
            for parameter in parameters.iter_mut().filter(|p| p["name"] == "name") {
                merge(
                    &mut parameter["schema"],
                    json!({ "pattern": DOMAIN, "maxLength": 253 }),
                );
            }
        }
    }
}

/// The schema of `name` among the properties of `schema` or of one of its `allOf` parts
/// (a `#[serde(flatten)]` struct is one).
fn property_mut<'a>(schema: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    if schema
        .get("properties")
        .is_some_and(|p| p.get(name).is_some())
    {
        return schema.get_mut("properties")?.get_mut(name);
    }
    schema
        .get_mut("allOf")?
        .as_array_mut()?
        .iter_mut()
        .find_map(|part| part.get_mut("properties")?.get_mut(name))
}

/// Replaces `schema`'s `allOf` of `part` (by reference) and an object with one object
/// holding the properties of both, and no others.
fn flatten_into(schema: &mut Value, part: &Value) {
    let Some(parts) = schema.get("allOf").and_then(Value::as_array) else {
        return;
    };
    let mut properties = part["properties"].as_object().cloned().unwrap_or_default();
    let mut required = Vec::new();
    for own in parts.iter().filter(|p| p.get("$ref").is_none()) {
        if let Some(own) = own["properties"].as_object() {
            properties.extend(own.clone());
        }
        if let Some(names) = own["required"].as_array() {
            required.extend(names.iter().cloned());
        }
    }
    let description = schema.get("description").cloned();
    *schema = json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    });
    if let Some(description) = description {
        schema["description"] = description;
    }
}

/// Adds `rules` to the schema `target`; a rule of `null` removes that keyword.
fn merge(target: &mut Value, rules: Value) {
    let (Some(target), Value::Object(rules)) = (target.as_object_mut(), rules) else {
        return;
    };
    for (keyword, rule) in rules {
        match rule {
            Value::Null => {
                target.remove(&keyword);
            }
            Value::Object(_) if target.get(&keyword).is_some_and(Value::is_object) => {
                if let Some(existing) = target.get_mut(&keyword) {
                    merge(existing, rule);
                }
            }
            rule => {
                target.insert(keyword, rule);
            }
        }
    }
}

#[cfg(test)]
mod tests;
