//! Small helpers for the example `wasi:http` handlers: read the request, send a response.

use std::io::{Read as _, Write as _};

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Sends a complete response with `status`, a `content-type` and `body`.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers =
        Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())])
            .expect("valid content-type header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("stream is taken once");
    // The host accepts at most 4 KiB per blocking write; write_all splits for us.
    stream.write_all(body).expect("write response body");
    stream.flush().expect("flush response body");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish response body");
}

/// Sends a plain-text response.
pub fn text(out: ResponseOutparam, status: u16, body: &str) {
    respond(out, status, "text/plain; charset=utf-8", body.as_bytes());
}

/// The request's path without the query.
pub fn path(request: &IncomingRequest) -> String {
    let full = request.path_with_query().unwrap_or_default();
    full.split('?').next().unwrap_or_default().to_string()
}

/// The request's query string (without `?`), empty when there is none.
pub fn query(request: &IncomingRequest) -> String {
    let full = request.path_with_query().unwrap_or_default();
    full.split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default()
}

/// The first value of query parameter `name`, not percent-decoded.
pub fn query_param(request: &IncomingRequest, name: &str) -> Option<String> {
    query(request).split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_string())
    })
}

/// The method as an upper-case string.
pub fn method(request: &IncomingRequest) -> String {
    match request.method() {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other,
    }
}

/// Reads the whole request body.
pub fn body(request: &IncomingRequest) -> Vec<u8> {
    let Ok(incoming) = request.consume() else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    if let Ok(mut stream) = incoming.stream() {
        let _ = stream.read_to_end(&mut bytes);
    }
    IncomingBody::finish(incoming);
    bytes
}

/// Escapes `s` as the inside of a JSON string.
pub fn json_escape(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            c if (c as u32) < 0x20 => escaped.push_str(&format!("\\u{:04x}", c as u32)),
            c => escaped.push(c),
        }
    }
    escaped
}
