//! Tries what a guest must not be able to do, and reports what happened.
//!
//! `/env`, `/file/read`, `/file/write`, `/tcp?addr=HOST:PORT`, `/udp`, `/dns?name=NAME`.
//! Each answers `denied: <error>` or `allowed: <detail>`.

use std::net::ToSocketAddrs as _;

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Sandbox;

fn outcome<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(value) => format!("allowed: {value:?}\n"),
        Err(error) => format!("denied: {error}\n"),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Sandbox {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let body = match guest::path(&request).as_str() {
            "/env" => std::env::vars()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect(),
            "/file/read" => outcome(std::fs::read("/etc/passwd").map(|b| b.len())),
            "/file/write" => outcome(std::fs::write("/tmp/edgefn-sandbox-escape", b"x")),
            "/tcp" => {
                let addr =
                    guest::query_param(&request, "addr").unwrap_or_else(|| "127.0.0.1:80".into());
                outcome(std::net::TcpStream::connect(addr.as_str()).map(|_| "connected"))
            }
            "/udp" => outcome(std::net::UdpSocket::bind("0.0.0.0:0").map(|_| "bound")),
            "/dns" => {
                let name =
                    guest::query_param(&request, "name").unwrap_or_else(|| "localhost".into());
                outcome((name.as_str(), 80).to_socket_addrs().map(|a| a.count()))
            }
            _ => "unknown sandbox path\n".to_string(),
        };
        guest::text(out, 200, &body);
    }
}

wasip2::http::proxy::export!(Sandbox);
