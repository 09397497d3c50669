use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn public_addresses_are_allowed() {
    for address in [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ] {
        assert_eq!(forbidden_reason(ip(address)), None, "{address}");
    }
}

#[test]
fn internal_addresses_are_forbidden() {
    for address in [
        "0.0.0.0",
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:a9fe:a9fe",
        "::ffff:10.1.2.3",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "2001:0:4136:e378::1",
        "fd00:ec2::254",
        "fc00::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
    ] {
        assert!(
            forbidden_reason(ip(address)).is_some(),
            "{address} must be forbidden"
        );
    }
}

#[test]
fn numeric_ipv4_forms_are_decoded_like_inet_aton() {
    let cases = [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("0", "0.0.0.0"),
    ];
    for (host, expected) in cases {
        assert_eq!(
            parse_numeric_ipv4(host),
            Some(expected.parse().unwrap()),
            "{host}"
        );
    }
    for host in [
        "example.com",
        "1.2.3.4.5",
        "256.1.1.1",
        "0x",
        "1..2",
        "09.1.1.1",
    ] {
        let parsed = parse_numeric_ipv4(host);
        assert!(
            parsed.is_none() || host == "0x",
            "{host} parsed as {parsed:?}"
        );
    }
}

fn policy(hosts: &[&str]) -> OutboundPolicy {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    OutboundPolicy::new(&hosts, &[]).unwrap()
}

#[test]
fn allowlist_matches_exact_names_wildcards_and_ports() {
    let policy = policy(&[
        "api.example.com",
        "*.cdn.example.net",
        "metrics.example.org:8443",
    ]);
    assert!(policy.host_allowed("api.example.com", 443));
    assert!(policy.host_allowed("API.Example.com.", 80));
    assert!(!policy.host_allowed("evil-api.example.com", 443));
    assert!(!policy.host_allowed("api.example.com.evil.io", 443));
    assert!(policy.host_allowed("a.cdn.example.net", 443));
    assert!(policy.host_allowed("a.b.cdn.example.net", 443));
    assert!(!policy.host_allowed("cdn.example.net", 443));
    assert!(!policy.host_allowed("xcdn.example.net", 443));
    assert!(policy.host_allowed("metrics.example.org", 8443));
    assert!(!policy.host_allowed("metrics.example.org", 443));
}

#[test]
fn invalid_allowlist_entries_are_refused() {
    for entry in [
        "",
        "*",
        "a.*.com",
        "http://x.com/",
        "user@x.com",
        "x.com:http",
    ] {
        assert!(
            OutboundPolicy::new(&[entry.to_string()], &[]).is_err(),
            "{entry:?} must be refused"
        );
    }
}

/// SSRF vectors, each as a URL a guest could pass. Every one is refused by the checks alone:
/// numeric hosts never reach a resolver and `localhost.` resolves from the hosts file, so no
/// packet leaves the machine.
#[tokio::test]
async fn ssrf_vectors_are_refused_before_connecting() {
    let vectors = [
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[fd00:ec2::254]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0251.0376.0251.0376/",
        "http://localhost./",
        "http://127.0.0.1:8080/",
    ];
    for url in vectors {
        let uri: http::Uri = url.parse().unwrap();
        let host = uri.host().unwrap();
        let port = uri.port_u16().unwrap_or(80);
        // Even a function that allow-lists the host itself may not reach it.
        let policy = policy(&[host, &format!("{host}:{port}")]);
        let denied = policy.resolve(host, port).await.unwrap_err();
        assert!(
            matches!(denied, OutboundDenied::ForbiddenAddress { .. }),
            "{url}: expected a forbidden address, got {denied:?}"
        );
    }
}

#[tokio::test]
async fn userinfo_does_not_change_the_checked_host() {
    let uri: http::Uri = "http://api.example.com@169.254.169.254/".parse().unwrap();
    assert_eq!(uri.host(), Some("169.254.169.254"));
    let denied = policy(&["api.example.com"])
        .resolve(uri.host().unwrap(), 80)
        .await
        .unwrap_err();
    assert_eq!(
        denied,
        OutboundDenied::HostNotAllowed("169.254.169.254".into())
    );
}

#[tokio::test]
async fn operator_networks_open_internal_addresses() {
    let networks = ["127.0.0.0/8".parse().unwrap()];
    let policy = OutboundPolicy::new(&["127.0.0.1:9000".to_string()], &networks).unwrap();
    let addresses = policy.resolve("127.0.0.1", 9000).await.unwrap();
    assert_eq!(addresses, vec!["127.0.0.1:9000".parse().unwrap()]);
    assert!(policy.check_address("x", ip("169.254.169.254")).is_err());
}

#[test]
fn networks_parse_and_match() {
    let net: Network = "10.0.0.0/8".parse().unwrap();
    assert!(net.contains(ip("10.200.1.1")));
    assert!(!net.contains(ip("11.0.0.1")));
    assert!(!net.contains(ip("::1")));
    let v6: Network = "fd00::/8".parse().unwrap();
    assert!(v6.contains(ip("fd12::1")));
    assert!("10.0.0.0/33".parse::<Network>().is_err());
    assert!("nonsense".parse::<Network>().is_err());
}
