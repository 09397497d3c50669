//! Router lookup with 10,000 routes (goal: ≤ 1 µs median), beside a full scan of the same
//! routes as the peer. Run with `cargo bench -p edgefn-runner --bench router`.

use criterion::{Criterion, criterion_group, criterion_main};
use edgefn_proto::router::{RouteSpec, RouteTable};

/// 10,000 routes over 100 hosts: exact paths, prefixes and named segments, mixed methods
/// and priorities, plus wildcard and catch-all hosts.
fn routes() -> Vec<RouteSpec<usize>> {
    let mut routes = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let host = match i % 50 {
            0 => "*".to_string(),
            1 => format!("*.tenant{}.example.com", i % 100),
            _ => format!("app{}.example.com", i % 100),
        };
        let path = match i % 3 {
            0 => format!("/svc{i}/items"),
            1 => format!("/svc{i}/*"),
            _ => format!("/svc{i}/users/:id"),
        };
        let methods = if i % 4 == 0 {
            vec!["GET".to_string()]
        } else {
            Vec::new()
        };
        routes.push(RouteSpec {
            host,
            path,
            methods,
            priority: (i % 5) as i32,
            owner: None,
            target: i,
        });
    }
    routes
}

fn bench(c: &mut Criterion) {
    let table = RouteTable::new(routes()).unwrap();
    let requests = [
        ("app42.example.com", "GET", "/svc9942/items"),
        ("app43.example.com:8080", "POST", "/svc9943/anything/else"),
        ("app44.example.com", "GET", "/svc9944/users/123"),
        ("unknown.org", "GET", "/nothing/here"),
    ];
    for (host, method, path) in requests {
        assert_eq!(
            table.lookup(host, method, path).map(|m| m.index),
            table.lookup_by_scan(host, method, path)
        );
    }
    let mut group = c.benchmark_group("router_10k_routes");
    group.bench_function("edgefn-indexed", |b| {
        let mut i = 0;
        b.iter(|| {
            let (host, method, path) = requests[i % requests.len()];
            i += 1;
            std::hint::black_box(table.lookup(host, method, path).map(|m| m.index))
        })
    });
    group.bench_function("peer-full-scan", |b| {
        let mut i = 0;
        b.iter(|| {
            let (host, method, path) = requests[i % requests.len()];
            i += 1;
            std::hint::black_box(table.lookup_by_scan(host, method, path))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
