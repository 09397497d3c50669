//! The smallest useful handler: answers every request with a greeting.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        guest::text(out, 200, "Hello, edgefn!\n");
    }
}

wasip2::http::proxy::export!(Hello);
