//! The TOML manifest that tells a runner what to serve without a control plane: function
//! versions (a local `path` or a `url`, with the edge databases they may open and the
//! schema they require) and routes. Field names match the control plane's
//! API. It is the operator's file format: [`load`] turns it into the node's [`NodeSpec`]
//! (as `reconcile::spec_of` does the control plane's desired state). A bad manifest is
//! refused with the file, the entry and the reason.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefn_runtime::{FunctionSettings, SqlGrant};
use serde::Deserialize;

use edgefn_proto::router::{RouteSpec, RouteTable};

use crate::databases::safe_name;
use crate::spec::{ArtifactSource, FunctionEntry, NodeSpec, RouteTarget, valid_function_id};

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {entry}: {reason}")]
pub struct ManifestError {
    pub file: String,
    /// `functions[2] (id "hello")`, `routes[0]`, or `file` for whole-file problems.
    pub entry: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    functions: Vec<RawFunction>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    id: String,
    version: u64,
    path: Option<PathBuf>,
    url: Option<String>,
    sha256: Option<String>,
    tenant: Option<String>,
    entrypoint: Option<String>,
    memory_pages: Option<u64>,
    max_execution_ms: Option<u64>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    min_hot_instances: Option<u32>,
    max_hot_instances: Option<u32>,
    instance_reuse: Option<u32>,
    idle_timeout_ms: Option<u64>,
    /// Edge databases the function may open: `"shop"` or `"shop:ro"` (`:rw` the default).
    #[serde(default)]
    databases: Vec<String>,
    /// The schema sequence each of them must be at before this version serves.
    #[serde(default)]
    requires: std::collections::BTreeMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default = "any_host")]
    host: String,
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    function: String,
    version: Option<u64>,
    #[serde(default)]
    priority: i32,
}

fn any_host() -> String {
    "*".to_string()
}

/// Reads and validates a manifest file.
pub fn load(path: &Path) -> Result<NodeSpec, ManifestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: file.clone(),
        entry: "file".into(),
        reason: format!("cannot read: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &file, base)
}

/// Parses and validates manifest text; `base` resolves relative artifact paths.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<NodeSpec, ManifestError> {
    let error = |entry: String, reason: String| ManifestError {
        file: file.to_string(),
        entry,
        reason,
    };
    let raw: RawManifest =
        toml::from_str(text).map_err(|e| error("file".into(), e.message().to_string()))?;
    let mut functions = Vec::with_capacity(raw.functions.len());
    let mut seen = HashSet::new();
    for (index, f) in raw.functions.into_iter().enumerate() {
        let entry = format!("functions[{index}] (id {:?})", f.id);
        let fail = |reason: &str| error(entry.clone(), reason.to_string());
        if !valid_function_id(&f.id) {
            return Err(fail(
                "id must be 1-128 characters of letters, digits, '-', '_' and '.'",
            ));
        }
        if !seen.insert((f.id.clone(), f.version)) {
            return Err(fail("the same id and version appear twice"));
        }
        let source = match (f.path, f.url) {
            (Some(path), None) => ArtifactSource::Path(if path.is_absolute() {
                path
            } else {
                base.join(path)
            }),
            (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                ArtifactSource::Url(url)
            }
            (None, Some(_)) => return Err(fail("url must start with http:// or https://")),
            _ => return Err(fail("exactly one of path and url is required")),
        };
        if let Some(sha) = &f.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(fail("sha256 must be 64 hex digits"));
        }
        let tenant = f.tenant.unwrap_or_else(|| "default".into());
        let databases = grants(&tenant, &f.databases, &f.requires).map_err(|r| fail(&r))?;
        let defaults = FunctionSettings::default();
        let settings = FunctionSettings {
            entrypoint: f.entrypoint,
            memory_pages: f.memory_pages.unwrap_or(defaults.memory_pages),
            max_execution_ms: f.max_execution_ms.unwrap_or(defaults.max_execution_ms),
            allowed_outbound_hosts: f.allowed_outbound_hosts,
            env: f.env.into_iter().collect(),
            min_hot_instances: f.min_hot_instances.unwrap_or(defaults.min_hot_instances),
            max_hot_instances: f.max_hot_instances.unwrap_or(defaults.max_hot_instances),
            instance_reuse: f.instance_reuse.or(defaults.instance_reuse),
            idle_timeout: f
                .idle_timeout_ms
                .map_or(defaults.idle_timeout, Duration::from_millis),
            databases,
        };
        if settings.memory_pages == 0 {
            return Err(fail("memory_pages must be positive"));
        }
        if settings.max_execution_ms == 0 {
            return Err(fail("max_execution_ms must be positive"));
        }
        if settings.instance_reuse == Some(0) {
            return Err(fail(
                "instance_reuse must be positive (1 = fresh instance per request)",
            ));
        }
        if settings.max_hot_instances == 0
            || settings.min_hot_instances > settings.max_hot_instances
        {
            return Err(fail(
                "need 0 <= min_hot_instances <= max_hot_instances and max_hot_instances > 0",
            ));
        }
        functions.push(FunctionEntry {
            id: f.id,
            version: f.version,
            source,
            sha256: f.sha256.map(|s| s.to_ascii_lowercase()),
            tenant,
            settings,
            retry: 0,
        });
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (index, r) in raw.routes.into_iter().enumerate() {
        let entry = format!("routes[{index}]");
        let known = functions
            .iter()
            .any(|f| f.id == r.function && r.version.is_none_or(|v| v == f.version));
        if !known {
            let version = r
                .version
                .map(|v| format!(" version {v}"))
                .unwrap_or_default();
            return Err(error(
                entry,
                format!("no function {:?}{version} in this manifest", r.function),
            ));
        }
        routes.push(RouteSpec {
            host: r.host,
            path: r.path,
            methods: r.methods,
            priority: r.priority,
            owner: None,
            target: RouteTarget {
                function_id: r.function,
                version: r.version,
            },
        });
    }
    // Patterns are checked by building the table once.
    RouteTable::new(routes.clone())
        .map_err(|(index, e)| error(format!("routes[{index}]"), e.to_string()))?;
    Ok(NodeSpec {
        functions,
        routes,
        quotas: Default::default(),
    })
}

/// The grants of `databases` (`name` or `name:ro`/`name:rw`) with their `requires`: files
/// of the function's own project, `{project}/{name}.sqlite` under the node's database
/// directory.
fn grants(
    tenant: &str,
    databases: &[String],
    requires: &std::collections::BTreeMap<String, u64>,
) -> Result<Vec<SqlGrant>, String> {
    let mut grants = Vec::with_capacity(databases.len());
    for database in databases {
        let (name, read_only) = match database.split_once(':') {
            None => (database.as_str(), false),
            Some((name, "rw")) => (name, false),
            Some((name, "ro")) => (name, true),
            Some(_) => {
                return Err(format!(
                    "databases: {database:?} must be NAME, NAME:ro or NAME:rw"
                ));
            }
        };
        if !safe_name(name) || !safe_name(tenant) {
            return Err(format!(
                "databases: {name:?} (of project {tenant:?}) must be 1-63 lower-case letters, digits and '-'"
            ));
        }
        grants.push(SqlGrant {
            name: name.to_string(),
            file: PathBuf::from(tenant).join(format!("{name}.sqlite")),
            read_only,
            required_seq: requires.get(name).copied().unwrap_or(0),
        });
    }
    if let Some(name) = requires
        .keys()
        .find(|r| !grants.iter().any(|g| &g.name == *r))
    {
        return Err(format!("requires {name:?}, which is not in its databases"));
    }
    Ok(grants)
}

/// Refuses a manifest whose versions require a newer schema than the node's files have
/// (`db_dir` is `{state_dir}/db`): without a control plane there is no earlier version to
/// keep serving, and a version is never served against an older schema than it requires.
pub fn check_schemas(spec: &NodeSpec, file: &str, db_dir: &Path) -> Result<(), ManifestError> {
    for (index, function) in spec.functions.iter().enumerate() {
        for grant in &function.settings.databases {
            if grant.required_seq == 0 {
                continue;
            }
            let path = db_dir.join(&grant.file);
            let at = schema_seq(&path);
            if at < grant.required_seq {
                return Err(ManifestError {
                    file: file.to_string(),
                    entry: format!("functions[{index}] (id {:?})", function.id),
                    reason: format!(
                        "requires schema {}@{} but {} is at {at}",
                        grant.name,
                        grant.required_seq,
                        path.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The ledger sequence a database file is at (0 when it is missing or unreadable).
fn schema_seq(path: &Path) -> u64 {
    if !path.is_file() {
        return 0;
    }
    edgefn_edgedb::rusqlite::Connection::open_with_flags(
        path,
        edgefn_edgedb::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()
    .and_then(|conn| edgefn_edgedb::status(&conn).ok())
    .map_or(0, |status| status.seq)
}

/// [`load`], then [`check_schemas`] against the node's database directory.
pub fn load_checked(path: &Path, db_dir: &Path) -> Result<NodeSpec, ManifestError> {
    let spec = load(path)?;
    check_schemas(&spec, &path.display().to_string(), db_dir)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeSpec, ManifestError> {
        super::parse(text, "edge.toml", Path::new("/srv"))
    }

    #[test]
    fn a_full_manifest_parses_with_defaults() {
        let manifest = parse(
            r#"
            [[functions]]
            id = "hello"
            version = 2
            path = "hello.wasm"
            memory_pages = 64
            env = { GREETING = "hi" }

            [[functions]]
            id = "remote"
            version = 1
            url = "https://artifacts.example.com/remote.wasm"
            tenant = "acme"

            [[routes]]
            host = "*.example.com"
            path = "/hello/:name"
            methods = ["GET"]
            function = "hello"
            priority = 5
            "#,
        )
        .unwrap();
        let hello = &manifest.functions[0];
        assert_eq!(hello.source, ArtifactSource::Path("/srv/hello.wasm".into()));
        assert_eq!(hello.settings.memory_pages, 64);
        assert_eq!(
            hello.settings.env,
            vec![("GREETING".to_string(), "hi".to_string())]
        );
        assert_eq!(hello.tenant, "default");
        assert_eq!(manifest.functions[1].tenant, "acme");
        assert_eq!(
            manifest.routes[0].target,
            RouteTarget {
                function_id: "hello".into(),
                version: None
            }
        );
    }

    #[test]
    fn databases_and_requires_become_grants_checked_against_the_files() {
        let text = r#"
            [[functions]]
            id = "items"
            version = 1
            path = "items.wasm"
            databases = ["shop", "stats:ro"]
            requires = { shop = 2 }
            "#;
        let manifest = parse(text).unwrap();
        let grants = &manifest.functions[0].settings.databases;
        assert_eq!(
            grants,
            &vec![
                SqlGrant {
                    name: "shop".into(),
                    file: "default/shop.sqlite".into(),
                    read_only: false,
                    required_seq: 2,
                },
                SqlGrant {
                    name: "stats".into(),
                    file: "default/stats.sqlite".into(),
                    read_only: true,
                    required_seq: 0,
                },
            ]
        );
        // Refused until the node's file is at change 2.
        let dir = tempfile::tempdir().unwrap();
        let refused = check_schemas(&manifest, "edge.toml", dir.path()).unwrap_err();
        assert!(
            refused.reason.contains("requires schema shop@2"),
            "{refused}"
        );
        assert!(refused.reason.ends_with("is at 0"), "{refused}");
        let path = dir.path().join("default/shop.sqlite");
        let conn = edgefn_edgedb::open_node_database(&path).unwrap();
        let changes =
            edgefn_edgedb::build_ledger(&["CREATE TABLE a (x)", "CREATE TABLE b (y)"]).unwrap();
        edgefn_edgedb::apply_changes(&conn, &changes[..1]).unwrap();
        assert!(check_schemas(&manifest, "edge.toml", dir.path()).is_err());
        edgefn_edgedb::apply_changes(&conn, &changes).unwrap();
        check_schemas(&manifest, "edge.toml", dir.path()).unwrap();

        for (bad, reason) in [
            ("databases = [\"shop:rx\"]", "NAME:ro"),
            ("databases = [\"../x\"]", "lower-case"),
            ("requires = { shop = 1 }", "not in its databases"),
        ] {
            let text = format!("[[functions]]\nid = \"a\"\nversion = 1\npath = \"a\"\n{bad}\n");
            let error = parse(&text).unwrap_err();
            assert!(error.reason.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn errors_name_the_file_the_entry_and_the_reason() {
        let cases = [
            (
                "[[functions]]\nid = \"a\"\nversion = 1\n",
                "functions[0] (id \"a\")",
                "exactly one of path and url",
            ),
            (
                "[[functions]]\nid = \"../x\"\nversion = 1\npath = \"x\"\n",
                "functions[0]",
                "id must be",
            ),
            (
                "[[functions]]\nid = \"a\"\nversion = 1\npath = \"a\"\nsha256 = \"zz\"\n",
                "functions[0]",
                "sha256",
            ),
            (
                "[[functions]]\nid = \"a\"\nversion = 1\npath = \"a\"\nmemory_pages = 0\n",
                "functions[0]",
                "memory_pages",
            ),
            (
                "[[routes]]\npath = \"/\"\nfunction = \"nope\"\n",
                "routes[0]",
                "no function \"nope\"",
            ),
            (
                "[[functions]]\nid = \"a\"\nversion = 1\npath = \"a\"\n[[routes]]\npath = \"/x/*/y\"\nfunction = \"a\"\n",
                "routes[0]",
                "position 3",
            ),
            (
                "[[functions]]\nid = \"a\"\nversion = 1\npath = \"a\"\ncolour = 1\n",
                "file",
                "unknown field `colour`",
            ),
            ("this is = = not toml", "file", ""),
        ];
        for (text, entry, reason) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.file, "edge.toml");
            assert!(error.entry.starts_with(entry), "{text}: {error}");
            assert!(error.reason.contains(reason), "{text}: {error}");
        }
    }
}
