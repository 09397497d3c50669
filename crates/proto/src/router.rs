//! The edge router: pure data in, a decision out. A [`RouteTable`] is built once from route
//! specs (validated, with positions in errors) and answers `lookup(host, method, path)` with
//! the winning route and its named path parameters.
//!
//! Which route wins: first the request's host picks its owner — the owner (a project) of
//! the most specific host pattern any route has for it (the exact name, else the closest
//! `*.domain`) — and only that owner's routes compete, so no priority in one project can
//! outrank another project's route for a host it owns; `*` routes compete only for hosts
//! nobody owns (or when they belong to the owner). Then the highest `priority`; among equal
//! priorities the more specific one (exact host before `*.domain` before `*`; exact path
//! before named segments before a prefix, more literal segments first); then the older
//! route (lower index). Routes without an owner (a manifest, where the operator owns the
//! whole node) form one owner. The table is indexed by host and by the first path segment
//! so a lookup looks at a handful of candidates, not at every route.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;

/// One route as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSpec<T> {
    /// `example.com`, `*.example.com` or `*`.
    pub host: String,
    /// `/a/b`, `/api/*` or `/users/:id`.
    pub path: String,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    pub priority: i32,
    /// The project that owns the route's host (`None`: the node's operator, in a manifest).
    pub owner: Option<String>,
    pub target: T,
}

/// A route pattern that does not parse, with the 0-based byte position of the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} pattern {pattern:?} at position {position}: {reason}")]
pub struct PatternError {
    pub field: &'static str,
    pub pattern: String,
    pub position: usize,
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `example.com`.
    Wildcard(String),
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathPattern {
    Exact(String),
    /// Named segments, one per path segment.
    Segments(Vec<Segment>),
    /// `/api/*`: the literal segments before the star.
    Prefix(Vec<String>),
}

impl HostPattern {
    fn parse(host: &str) -> Result<Self, PatternError> {
        let error = |position, reason| PatternError {
            field: "host",
            pattern: host.into(),
            position,
            reason,
        };
        let lower = host.to_ascii_lowercase();
        if lower == "*" {
            return Ok(Self::Any);
        }
        let (name, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        // One trailing dot (the fully qualified form) is the same name.
        let name = name.strip_suffix('.').unwrap_or(name);
        let offset = if wildcard { 2 } else { 0 };
        if name.is_empty() {
            return Err(error(offset, "empty host name"));
        }
        if let Some(position) =
            name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            return Err(error(
                offset + position,
                "host names hold letters, digits, '-' and '.' only",
            ));
        }
        if name.starts_with('.') {
            return Err(error(offset, "empty label"));
        }
        if name.ends_with('.') {
            return Err(error(offset + name.len() - 1, "empty label"));
        }
        if let Some(position) = name.find("..") {
            return Err(error(offset + position, "empty label"));
        }
        Ok(if wildcard {
            Self::Wildcard(name.to_string())
        } else {
            Self::Exact(name.to_string())
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => name == host,
            Self::Wildcard(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Self::Exact(_) => 2,
            Self::Wildcard(_) => 1,
            Self::Any => 0,
        }
    }
}

impl PathPattern {
    fn parse(path: &str) -> Result<Self, PatternError> {
        let error = |position, reason| PatternError {
            field: "path",
            pattern: path.into(),
            position,
            reason,
        };
        if !path.starts_with('/') {
            return Err(error(0, "a path starts with '/'"));
        }
        if let Some(position) = path.find(|c: char| c.is_whitespace() || c == '?' || c == '#') {
            return Err(error(position, "no spaces, '?' or '#' in a path pattern"));
        }
        let mut segments = Vec::new();
        let mut position = 1;
        let parts: Vec<&str> = path[1..].split('/').collect();
        for (index, part) in parts.iter().enumerate() {
            let last = index + 1 == parts.len();
            if *part == "*" {
                if !last {
                    return Err(error(position, "'*' may only end a pattern"));
                }
                let literals = segments
                    .into_iter()
                    .map(|s| match s {
                        Segment::Literal(l) => Ok(l),
                        Segment::Param(_) => {
                            Err(error(0, "a prefix pattern holds literal segments only"))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(Self::Prefix(literals));
            }
            if let Some(star) = part.find('*') {
                return Err(error(position + star, "'*' must be a whole segment"));
            }
            if let Some(name) = part.strip_prefix(':') {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(error(
                        position,
                        "a parameter is ':' followed by letters, digits or '_'",
                    ));
                }
                segments.push(Segment::Param(name.to_string()));
            } else {
                if part.is_empty() && !last {
                    return Err(error(position, "empty path segment"));
                }
                segments.push(Segment::Literal(part.to_string()));
            }
            position += part.len() + 1;
        }
        if segments.iter().all(|s| matches!(s, Segment::Literal(_))) {
            Ok(Self::Exact(path.to_string()))
        } else {
            Ok(Self::Segments(segments))
        }
    }

    /// The literal first segment, when the pattern has one (for indexing).
    fn first_literal(&self) -> Option<&str> {
        match self {
            Self::Exact(path) => path[1..].split('/').next(),
            Self::Segments(segments) => match segments.first() {
                Some(Segment::Literal(l)) => Some(l),
                _ => None,
            },
            Self::Prefix(literals) => literals.first().map(String::as_str),
        }
    }

    fn matches(&self, path: &str, params: &mut Vec<(String, String)>) -> bool {
        match self {
            Self::Exact(exact) => exact == path,
            Self::Prefix(literals) => {
                let mut rest = &path[1..];
                for literal in literals {
                    let (segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
                    if segment != literal {
                        return false;
                    }
                    rest = tail;
                }
                true
            }
            Self::Segments(segments) => {
                let mut parts = path[1..].split('/');
                let start = params.len();
                for segment in segments {
                    let Some(part) = parts.next() else {
                        params.truncate(start);
                        return false;
                    };
                    let ok = match segment {
                        Segment::Literal(l) => l == part,
                        Segment::Param(name) => {
                            params.push((name.clone(), part.to_string()));
                            !part.is_empty()
                        }
                    };
                    if !ok {
                        params.truncate(start);
                        return false;
                    }
                }
                if parts.next().is_some() {
                    params.truncate(start);
                    return false;
                }
                true
            }
        }
    }

    /// (kind, literal segments): exact > segments > prefix, then more literals first.
    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(path) => (2, path.split('/').count()),
            Self::Segments(s) => (
                1,
                s.iter()
                    .filter(|s| matches!(s, Segment::Literal(_)))
                    .count(),
            ),
            Self::Prefix(literals) => (0, literals.len()),
        }
    }
}

#[derive(Clone, Debug)]
struct Route<T> {
    spec: RouteSpec<T>,
    host: HostPattern,
    path: PathPattern,
    /// Sort key: larger wins.
    key: (i32, u8, u8, usize, Reverse<usize>),
    /// The interned owner (0: none).
    owner: u32,
}

impl<T> Route<T> {
    fn method_matches(&self, method: &str) -> bool {
        self.spec.methods.is_empty() || self.spec.methods.iter().any(|m| m == method)
    }
}

/// The winning route of a lookup.
#[derive(Debug, PartialEq)]
pub struct RouteMatch<'a, T> {
    /// Index of the route in the specs the table was built from.
    pub index: usize,
    pub spec: &'a RouteSpec<T>,
    /// Values of the named segments, in pattern order.
    pub params: Vec<(String, String)>,
}

/// Routes indexed for lookup. Immutable: a new table replaces the old one atomically.
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
    /// Per host pattern: routes bucketed by first literal path segment, and the rest.
    exact_hosts: HashMap<String, HostRoutes>,
    wildcard_hosts: HashMap<String, HostRoutes>,
    any_host: HostRoutes,
}

#[derive(Default)]
struct HostRoutes {
    by_first_segment: HashMap<String, Vec<usize>>,
    other: Vec<usize>,
    /// The owner of the bucket's oldest route: the owner of this host pattern.
    owner: u32,
}

impl<T: fmt::Debug> fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            exact_hosts: HashMap::new(),
            wildcard_hosts: HashMap::new(),
            any_host: HostRoutes::default(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Builds the table; the first invalid pattern is reported with its route index.
    pub fn new(specs: Vec<RouteSpec<T>>) -> Result<Self, (usize, PatternError)> {
        let mut routes = Vec::with_capacity(specs.len());
        let mut owners: HashMap<String, u32> = HashMap::new();
        for (index, mut spec) in specs.into_iter().enumerate() {
            let owner = match &spec.owner {
                None => 0,
                Some(name) => {
                    let next = owners.len() as u32 + 1;
                    *owners.entry(name.clone()).or_insert(next)
                }
            };
            let host = HostPattern::parse(&spec.host).map_err(|e| (index, e))?;
            let path = PathPattern::parse(&spec.path).map_err(|e| (index, e))?;
            for method in &mut spec.methods {
                *method = method.to_ascii_uppercase();
            }
            let (path_kind, literals) = path.rank();
            let key = (
                spec.priority,
                host.rank(),
                path_kind,
                literals,
                Reverse(index),
            );
            routes.push(Route {
                spec,
                host,
                path,
                key,
                owner,
            });
        }
        let mut table = Self {
            routes: Vec::new(),
            ..Self::default()
        };
        for (index, route) in routes.iter().enumerate() {
            let (bucket, new) = match &route.host {
                HostPattern::Exact(name) => {
                    let new = !table.exact_hosts.contains_key(name);
                    (table.exact_hosts.entry(name.clone()).or_default(), new)
                }
                HostPattern::Wildcard(domain) => {
                    let new = !table.wildcard_hosts.contains_key(domain);
                    (table.wildcard_hosts.entry(domain.clone()).or_default(), new)
                }
                HostPattern::Any => (&mut table.any_host, false),
            };
            if new {
                bucket.owner = route.owner;
            }
            match route.path.first_literal() {
                Some(first) => bucket
                    .by_first_segment
                    .entry(first.to_string())
                    .or_default()
                    .push(index),
                None => bucket.other.push(index),
            }
        }
        // Within each bucket the best candidate comes first, so the first match is the
        // bucket's winner.
        let buckets = table
            .exact_hosts
            .values_mut()
            .chain(table.wildcard_hosts.values_mut());
        for bucket in buckets.chain(std::iter::once(&mut table.any_host)) {
            for list in bucket
                .by_first_segment
                .values_mut()
                .chain(std::iter::once(&mut bucket.other))
            {
                list.sort_by(|a, b| routes[*b].key.cmp(&routes[*a].key));
            }
        }
        table.routes = routes;
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The winning route for a request, or `None` (404). `host` may carry a port; `path`
    /// must not carry the query.
    pub fn lookup(&self, host: &str, method: &str, path: &str) -> Option<RouteMatch<'_, T>> {
        if !path.starts_with('/') {
            return None;
        }
        let host = normalize_host(host);
        let first_segment = path[1..].split('/').next().unwrap_or("");
        let exact = self.exact_hosts.get(host.as_ref());
        // The wildcard buckets of the host's parents, most specific first (no allocation:
        // this runs on every request).
        let wildcards = || {
            let mut rest = host.as_ref();
            std::iter::from_fn(move || {
                let (_, parent) = rest.split_once('.')?;
                rest = parent;
                Some(parent)
            })
            .filter_map(|parent| self.wildcard_hosts.get(parent))
        };
        // The owner of the most specific host pattern (none: only `*` routes match).
        let owner = exact.or_else(|| wildcards().next()).map(|b| b.owner);
        let mut best: Option<(usize, Vec<(String, String)>)> = None;
        let mut params = Vec::new();
        let mut consider =
            |bucket: &HostRoutes, best: &mut Option<(usize, Vec<(String, String)>)>| {
                let lists = [
                    bucket
                        .by_first_segment
                        .get(first_segment)
                        .map(Vec::as_slice)
                        .unwrap_or(&[]),
                    &bucket.other,
                ];
                for list in lists {
                    for &index in list {
                        let route = &self.routes[index];
                        if best
                            .as_ref()
                            .is_some_and(|(b, _)| self.routes[*b].key >= route.key)
                        {
                            // Lists are sorted: nothing later in this list can win.
                            break;
                        }
                        if owner.is_some_and(|owner| owner != route.owner) {
                            continue;
                        }
                        if route.method_matches(method) && route.path.matches(path, &mut params) {
                            *best = Some((index, std::mem::take(&mut params)));
                            break;
                        }
                    }
                }
            };
        if let Some(bucket) = exact {
            consider(bucket, &mut best);
        }
        for bucket in wildcards() {
            consider(bucket, &mut best);
        }
        consider(&self.any_host, &mut best);
        best.map(|(index, params)| RouteMatch {
            index,
            spec: &self.routes[index].spec,
            params,
        })
    }

    /// The same decision by scanning every route: the reference the index is tested against.
    #[doc(hidden)]
    pub fn lookup_by_scan(&self, host: &str, method: &str, path: &str) -> Option<usize> {
        let host = normalize_host(host);
        let mut params = Vec::new();
        // The owner: of the oldest route with the exact name, else of the oldest route with
        // the longest matching `*.domain`.
        let specificity = |r: &Route<T>| match &r.host {
            HostPattern::Exact(name) if *name == host => Some(usize::MAX),
            HostPattern::Wildcard(domain) if r.host.matches(&host) => Some(domain.len()),
            _ => None,
        };
        let most_specific = self.routes.iter().filter_map(specificity).max();
        let owner = most_specific.and_then(|most| {
            self.routes
                .iter()
                .find(|r| specificity(r) == Some(most))
                .map(|r| r.owner)
        });
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                path.starts_with('/')
                    && owner.is_none_or(|owner| owner == r.owner)
                    && r.host.matches(&host)
                    && r.method_matches(method)
                    && r.path.matches(path, &mut params)
            })
            .max_by_key(|(_, r)| r.key)
            .map(|(index, _)| index)
    }
}

/// The host without port or trailing dot, lower case (borrowed when it already is).
fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let name = match host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        Some(end) => &host[..end + 2],
        None => host.split(':').next().unwrap_or(host),
    };
    let name = name.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests;
