//! Outbound HTTP through `wasi:http/outgoing-handler`: `?url=http://host:port/path` fetches
//! the URL and answers with the upstream status and body, or 502 with the host's error code.

use std::io::Read as _;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingRequest, ResponseOutparam, Scheme,
};

struct Fetch;

fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(format!("unsupported url {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "bad authority")?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| "bad path")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "body taken twice")?;
    let mut body = Vec::new();
    let mut stream = incoming.stream().map_err(|()| "stream taken twice")?;
    stream.read_to_end(&mut body).map_err(|e| e.to_string())?;
    drop(stream);
    IncomingBody::finish(incoming);
    Ok((status, body))
}

impl wasip2::exports::http::incoming_handler::Guest for Fetch {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some(url) = guest::query_param(&request, "url") else {
            return guest::text(out, 400, "missing ?url=\n");
        };
        match fetch(&url) {
            Ok((status, body)) => {
                let mut text = format!("upstream {status}\n").into_bytes();
                text.extend_from_slice(&body);
                guest::respond(out, 200, "text/plain", &text);
            }
            Err(error) => guest::text(out, 502, &format!("denied: {error}\n")),
        }
    }
}

wasip2::http::proxy::export!(Fetch);
