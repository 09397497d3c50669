//! Echoes the request back as JSON: method, path, query, headers and body.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Echo;

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        use guest::json_escape as esc;
        let headers = request
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| {
                format!(
                    "[\"{}\",\"{}\"]",
                    esc(&name),
                    esc(&String::from_utf8_lossy(&value))
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let json = format!(
            "{{\"method\":\"{}\",\"path\":\"{}\",\"query\":\"{}\",\"headers\":[{}],\"body\":\"{}\"}}",
            esc(&guest::method(&request)),
            esc(&guest::path(&request)),
            esc(&guest::query(&request)),
            headers,
            esc(&String::from_utf8_lossy(&guest::body(&request))),
        );
        guest::respond(out, 200, "application/json", json.as_bytes());
    }
}

wasip2::http::proxy::export!(Echo);
