//! Which hosts a project may route (pure rules, tested without a database).
//!
//! A project owns the domains it claimed and proved (a DNS TXT record, or a fleet
//! administrator's word): `shop.example.com` is that one name, `*.shop.example.com` every
//! name under it. Two projects never own overlapping names: a verified name of one project
//! blocks the same name, its parents and its children for every other project (so nobody
//! claims `*.example.com` over `shop.example.com`, or `example.com` above it). Claims that
//! are not verified own nothing — they never reach nodes — and when one is verified, the
//! other projects' overlapping claims are dropped.
//!
//! Every project also has platform hosts that need no proof: `{project}.{platform}` and
//! every name under it (`{function}.{project}.{platform}` reaches a function without a
//! route). Names at or under the platform domain cannot be claimed. The host `*` (any host)
//! is for fleet administrators only.

pub mod dns;

/// The platform domain by default: `*.localhost` resolves to the loopback address.
pub const DEFAULT_PLATFORM_DOMAIN: &str = "edgefn.localhost";

/// The DNS TXT record that proves a claim: `{TXT_PREFIX}.{name}` must hold
/// `edgefn-verification={token}`.
pub const TXT_PREFIX: &str = "_edgefn-challenge";

/// A claimable name: `shop.example.com`, or `*.shop.example.com` (`wildcard`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainName {
    /// Lower case, without `*.` or a trailing dot.
    pub base: String,
    pub wildcard: bool,
}

impl std::fmt::Display for DomainName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.base)
        } else {
            f.write_str(&self.base)
        }
    }
}

/// Whether `name` is `parent` or a name under it (label-wise).
fn within(name: &str, parent: &str) -> bool {
    name == parent
        || (name.len() > parent.len()
            && name.ends_with(parent)
            && name.as_bytes()[name.len() - parent.len() - 1] == b'.')
}

impl DomainName {
    /// Parses a claim: at least two labels of letters, digits and '-' (not at either end
    /// of a label), the last starting with a letter (as every top-level domain does, so a
    /// numeric address is never a name), at most 253 characters in all.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > 253 {
            return Err("must be 1-253 characters".into());
        }
        let lower = text.to_ascii_lowercase();
        let (rest, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        let base = rest.strip_suffix('.').unwrap_or(rest);
        if base.is_empty() || base.len() > 253 {
            return Err("must be 1-253 characters".into());
        }
        let labels: Vec<&str> = base.split('.').collect();
        if labels.len() < 2 {
            return Err("must have at least two labels, e.g. example.com".into());
        }
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return Err("each label must be 1-63 characters".into());
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return Err(format!(
                    "label {label:?} must be letters, digits and '-' (not at either end)"
                ));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| !tld.starts_with(|c: char| c.is_ascii_alphabetic()))
        {
            return Err(
                "must be a name, not an address: the last label starts with a letter".into(),
            );
        }
        Ok(Self {
            base: base.to_string(),
            wildcard,
        })
    }

    /// Whether this claim and `other` cover a name in common or one is the other's parent
    /// or child: then they cannot belong to two projects.
    pub fn overlaps(&self, other: &DomainName) -> bool {
        within(&self.base, &other.base) || within(&other.base, &self.base)
    }

    /// Whether a route's host pattern (`name` or `*.name`, never `*`) lies in this claim:
    /// an exact claim allows only its name; a wildcard claim every name strictly under its
    /// base, and wildcards at or under it.
    pub fn covers(&self, host: &DomainName) -> bool {
        if !self.wildcard {
            return !host.wildcard && host.base == self.base;
        }
        if host.wildcard {
            within(&host.base, &self.base)
        } else {
            host.base != self.base && within(&host.base, &self.base)
        }
    }
}

/// The platform host of `project`: `{project}.{platform_domain}`.
pub fn platform_host(project: &str, platform_domain: &str) -> String {
    format!("{project}.{platform_domain}")
}

/// Whether a route host pattern is one of `project`'s platform hosts.
pub fn is_platform_host(host: &DomainName, project: &str, platform_domain: &str) -> bool {
    within(&host.base, &platform_host(project, platform_domain))
}

/// Whether a claim touches the platform domain (at, under or above it).
pub fn is_reserved(name: &DomainName, platform_domain: &str) -> bool {
    within(&name.base, platform_domain) || within(platform_domain, &name.base)
}

/// Whether `project` may route `host` (a validated route host pattern), given every
/// verified claim as `(project, name)`.
pub fn may_route(
    host: &str,
    project: &str,
    admin: bool,
    platform_domain: &str,
    verified: &[(String, DomainName)],
) -> Result<(), String> {
    if host == "*" {
        return if admin {
            Ok(())
        } else {
            Err("the host '*' (every host of every project) is for fleet administrators".into())
        };
    }
    let pattern = DomainName::parse(host).map_err(|e| format!("invalid host: {e}"))?;
    if is_platform_host(&pattern, project, platform_domain) {
        return Ok(());
    }
    if verified
        .iter()
        .any(|(owner, claim)| owner == project && claim.covers(&pattern))
    {
        return Ok(());
    }
    Err(format!(
        "{host} is not a verified domain of project {project}: add it with `edgefn domains add`, \
         or use {}",
        platform_host(project, platform_domain)
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn name(text: &str) -> DomainName {
        DomainName::parse(text).unwrap()
    }

    #[test]
    fn names_parse_and_are_refused_with_a_reason() {
        assert_eq!(
            name("*.Shop.Example.com."),
            DomainName {
                base: "shop.example.com".into(),
                wildcard: true
            }
        );
        for bad in [
            "", "com", "*.com", "a..b", "-a.com", "a-.com", "a_b.com", "1.2.3.4", "*",
        ] {
            assert!(DomainName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parents_children_and_equal_names_overlap() {
        assert!(name("shop.example.com").overlaps(&name("*.example.com")));
        assert!(name("example.com").overlaps(&name("shop.example.com")));
        assert!(name("shop.example.com").overlaps(&name("*.shop.example.com")));
        assert!(!name("shop.example.com").overlaps(&name("blog.example.com")));
        assert!(!name("ample.com").overlaps(&name("example.com")));
    }

    #[test]
    fn claims_cover_route_hosts() {
        assert!(name("shop.example.com").covers(&name("shop.example.com")));
        assert!(!name("shop.example.com").covers(&name("a.shop.example.com")));
        assert!(!name("shop.example.com").covers(&name("*.shop.example.com")));
        let wildcard = name("*.shop.example.com");
        assert!(wildcard.covers(&name("a.shop.example.com")));
        assert!(wildcard.covers(&name("b.a.shop.example.com")));
        assert!(wildcard.covers(&name("*.shop.example.com")));
        assert!(wildcard.covers(&name("*.a.shop.example.com")));
        assert!(!wildcard.covers(&name("shop.example.com")));
        assert!(!wildcard.covers(&name("xshop.example.com")));
    }

    #[test]
    fn routes_need_an_owned_host() {
        let verified = vec![
            ("shop".to_string(), name("shop.example.com")),
            ("blog".to_string(), name("*.blog.example")),
        ];
        let check = |host: &str, project: &str, admin: bool| {
            may_route(host, project, admin, DEFAULT_PLATFORM_DOMAIN, &verified)
        };
        assert!(check("shop.example.com", "shop", false).is_ok());
        assert!(check("shop.example.com", "blog", false).is_err());
        assert!(
            check("shop.example.com", "blog", true).is_err(),
            "admins too"
        );
        assert!(check("x.blog.example", "blog", false).is_ok());
        assert!(check("*", "shop", false).is_err());
        assert!(check("*", "shop", true).is_ok());
        assert!(check("shop.edgefn.localhost", "shop", false).is_ok());
        assert!(check("hello.shop.edgefn.localhost", "shop", false).is_ok());
        assert!(check("*.shop.edgefn.localhost", "shop", false).is_ok());
        assert!(check("blog.edgefn.localhost", "shop", false).is_err());
        assert!(check("*.edgefn.localhost", "shop", false).is_err());
        let error = check("other.test", "shop", false).unwrap_err();
        assert!(error.contains("edgefn domains add"), "{error}");
    }

    #[test]
    fn the_platform_domain_is_reserved() {
        assert!(is_reserved(
            &name("x.edgefn.localhost"),
            DEFAULT_PLATFORM_DOMAIN
        ));
        assert!(is_reserved(
            &name("*.edgefn.localhost"),
            DEFAULT_PLATFORM_DOMAIN
        ));
        assert!(!is_reserved(
            &name("shop.example.com"),
            DEFAULT_PLATFORM_DOMAIN
        ));
    }

    fn arb_name() -> impl Strategy<Value = DomainName> {
        let label = prop::sample::select(vec!["a", "b", "c"]);
        (prop::collection::vec(label, 1..4), any::<bool>()).prop_map(|(labels, wildcard)| {
            DomainName {
                base: format!("{}.test", labels.join(".")),
                wildcard,
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Two claims that do not overlap never cover a common route host: so a route host
        /// allowed to one project is never allowed to another.
        #[test]
        fn claims_that_do_not_overlap_share_no_host(a in arb_name(), b in arb_name(), host in arb_name()) {
            if !a.overlaps(&b) {
                prop_assert!(!(a.covers(&host) && b.covers(&host)), "{} {} {}", a, b, host);
            }
            prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
        }

        /// Parsing never panics, and what parses prints back as it parses.
        #[test]
        fn parsing_never_panics(text in "[a-z0-9*.\\-]{0,30}") {
            if let Ok(parsed) = DomainName::parse(&text) {
                prop_assert_eq!(DomainName::parse(&parsed.to_string()).unwrap(), parsed);
            }
        }
    }
}
