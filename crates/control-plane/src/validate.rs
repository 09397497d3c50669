//! Request validation: every failing field is reported at once, as the 400's `details`.

use edgefn_proto::Selector;
use edgefn_proto::api::{CreateFunction, FieldError, RouteInput, SettingsInput};
use edgefn_proto::router::{RouteSpec, RouteTable};
use std::collections::BTreeMap;

use edgefn_proto::sync::{DatabaseGrant, FunctionSettings};

/// Operator limits that bound what functions may ask for.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_memory_pages: u64,
    pub max_execution_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_pages: 4096,
            max_execution_ms: 60_000,
        }
    }
}

#[derive(Default)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }

    pub fn into_result<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// A node's name and labels, as it enrolls.
pub fn node(
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), Vec<FieldError>> {
    let mut problems = Problems::default();
    if name.is_empty() || name.chars().count() > 253 {
        problems.add("name", "must be 1-253 characters");
    }
    for (key, value) in labels {
        if key.is_empty()
            || key.len() > 63
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            problems.add("labels", format!("invalid label key {key:?}"));
        }
        if value.chars().count() > 253 {
            problems.add(
                "labels",
                format!("label {key:?} is longer than 253 characters"),
            );
        }
    }
    problems.into_result(())
}

/// A lifetime like `12h` (`default` when absent), at most `max_secs`.
pub fn ttl(
    field: &str,
    value: Option<&str>,
    default: &str,
    max_secs: u64,
) -> Result<std::time::Duration, Vec<FieldError>> {
    let mut problems = Problems::default();
    match edgefn_proto::identity::parse_ttl(value.unwrap_or(default)) {
        Ok(ttl) if ttl.as_secs() <= max_secs => return Ok(ttl),
        Ok(_) => problems.add(field, format!("must be at most {}d", max_secs / 86_400)),
        Err(message) => problems.add(field, message),
    }
    Err(problems.0)
}

/// Longest user name (a DNS name's length, so e-mail addresses and OIDC subjects fit).
pub const MAX_USER_NAME: usize = 253;

/// A user as an administrator creates them.
pub fn user(input: &edgefn_proto::identity::CreateUser) -> Result<(), Vec<FieldError>> {
    let mut problems = Problems::default();
    if input.name.is_empty()
        || input.name.chars().count() > MAX_USER_NAME
        || input
            .name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        problems.add("name", "must be 1-253 characters without spaces");
    }
    if let Some(password) = &input.password {
        use crate::auth::password::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
        let length = password.chars().count();
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&length) {
            problems.add(
                "password",
                format!("must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} characters"),
            );
        }
    }
    if let Some(issuer) = &input.issuer {
        if input.password.is_some() {
            problems.add(
                "issuer",
                "a user of an external issuer signs in there, not with a password",
            );
        }
        if issuer.is_empty()
            || issuer.chars().count() > 2048
            || issuer.chars().any(char::is_control)
        {
            problems.add("issuer", "must be the issuer's `iss`, 1-2048 characters");
        }
    }
    problems.into_result(())
}

/// Lower-case letters, digits and '-', starting with a letter or digit, at most 63.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

fn check_range(
    problems: &mut Problems,
    field: &str,
    value: Option<i64>,
    default: i64,
    max: i64,
) -> i64 {
    let value = value.unwrap_or(default);
    if value <= 0 || value > max {
        problems.add(field, format!("must be between 1 and {max}, got {value}"));
    }
    value.max(0)
}

/// Checks one `allowed_outbound_hosts` entry: `host`, `host:port` or `*.domain`, at most
/// 253 characters; a host is dot-separated labels of letters, digits and '-', a port 1-5
/// digits up to 65535.
pub fn valid_outbound_host(entry: &str) -> bool {
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (entry, None),
    };
    let valid_port = |port: &str| {
        (1..=5).contains(&port.len())
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok()
    };
    if port.is_some_and(|p| !valid_port(p)) {
        return false;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    entry.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub fn settings(
    input: &SettingsInput,
    project: &str,
    limits: Limits,
    problems: &mut Problems,
) -> FunctionSettings {
    if let Some(entrypoint) = &input.entrypoint
        && (entrypoint.is_empty()
            || entrypoint.chars().count() > 256
            || entrypoint
                .chars()
                .any(|c| c.is_control() || c.is_whitespace()))
    {
        problems.add(
            "entrypoint",
            "must be 1-256 printable characters without spaces",
        );
    }
    let memory_pages = check_range(
        problems,
        "memory_pages",
        input.memory_pages,
        256,
        limits.max_memory_pages as i64,
    );
    let max_execution_ms = check_range(
        problems,
        "max_execution_ms",
        input.max_execution_ms,
        10_000,
        limits.max_execution_ms as i64,
    );
    for (i, host) in input.allowed_outbound_hosts.iter().enumerate() {
        if !valid_outbound_host(host) {
            problems.add(
                &format!("allowed_outbound_hosts[{i}]"),
                "must be host, host:port or *.domain",
            );
        }
    }
    let max_hot = check_range(
        problems,
        "max_hot_instances",
        input.max_hot_instances,
        16,
        10_000,
    );
    let min_hot = input.min_hot_instances.unwrap_or(1);
    if min_hot < 0 || min_hot > max_hot {
        problems.add(
            "min_hot_instances",
            "must be between 0 and max_hot_instances",
        );
    }
    // Unset: the node decides from the guest's toolchain (reuse where it is known to be
    // safe, a fresh instance per request otherwise).
    let reuse = input
        .instance_reuse
        .map(|given| check_range(problems, "instance_reuse", Some(given), 1, 1_000_000_000) as u32);
    for name in input.env.keys() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            problems.add("env", format!("invalid variable name {name:?}"));
        }
    }
    let mut databases: Vec<DatabaseGrant> = Vec::new();
    for (i, entry) in input.databases.iter().enumerate() {
        let (name, mode) = entry.split_once(':').unwrap_or((entry, "rw"));
        if !valid_name(name) || !matches!(mode, "rw" | "ro") {
            problems.add(
                &format!("databases[{i}]"),
                "must be a database name, optionally followed by :ro or :rw",
            );
        } else {
            // Listed twice: the last grant holds.
            databases.retain(|d: &DatabaseGrant| d.name != name);
            databases.push(DatabaseGrant {
                name: name.to_string(),
                read_only: mode == "ro",
            });
        }
    }
    let mut requires = BTreeMap::new();
    for (name, seq) in &input.requires {
        if !valid_name(name) {
            problems.add("requires", format!("{name:?} is not a database name"));
        } else if *seq < 1 {
            problems.add(
                "requires",
                format!("{name}: a schema change sequence starts at 1"),
            );
        } else {
            requires.insert(name.clone(), *seq as u64);
        }
    }
    // The quota tenant is the project, always: a free name would let one project run its
    // traffic against another's quotas.
    let tenant = project.to_string();
    FunctionSettings {
        entrypoint: input.entrypoint.clone(),
        memory_pages: memory_pages as u64,
        max_execution_ms: max_execution_ms as u64,
        allowed_outbound_hosts: input.allowed_outbound_hosts.clone(),
        min_hot_instances: min_hot.clamp(0, u32::MAX as i64) as u32,
        max_hot_instances: max_hot as u32,
        instance_reuse: reuse,
        env: input.env.clone(),
        tenant,
        databases,
        requires,
    }
}

/// A validated `POST /functions`: project, name and settings.
pub fn create_function(
    input: &CreateFunction,
    limits: Limits,
) -> Result<(String, FunctionSettings), Vec<FieldError>> {
    let mut problems = Problems::default();
    if !valid_name(&input.name) {
        problems.add(
            "name",
            "must be 1-63 lower-case letters, digits and '-', not starting with '-'",
        );
    }
    let project = input.project.clone().unwrap_or_else(|| "default".into());
    if !valid_name(&project) {
        problems.add("project", "must be lower-case letters, digits and '-'");
    }
    let settings = settings(&input.settings, &project, limits, &mut problems);
    problems.into_result((project, settings))
}

/// A validated route: methods upper-cased, sorted and deduplicated (the uniqueness key).
pub fn route(input: &RouteInput) -> Result<RouteInput, Vec<FieldError>> {
    let mut problems = Problems::default();
    let mut methods: Vec<String> = input
        .methods
        .iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    methods.sort();
    methods.dedup();
    for method in &methods {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.add("methods", format!("invalid method {method:?}"));
        }
    }
    let spec = RouteSpec {
        host: input.host.clone(),
        path: input.path.clone(),
        methods: methods.clone(),
        priority: 0,
        owner: None,
        target: (),
    };
    if let Err((_, error)) = RouteTable::new(vec![spec]) {
        problems.add(error.field, error.to_string());
    }
    if input.version.is_some_and(|v| v <= 0) {
        problems.add("version", "must be positive");
    }
    if !(i32::MIN as i64..=i32::MAX as i64).contains(&input.priority) {
        problems.add("priority", "must fit in 32 bits");
    }
    if let Err(error) = Selector::parse(&input.pop_selector) {
        problems.add("pop_selector", error.to_string());
    }
    problems.into_result(RouteInput {
        methods,
        ..input.clone()
    })
}
