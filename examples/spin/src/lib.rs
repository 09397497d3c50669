//! Never answers: a tight loop with no host calls, to test execution time limits.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

impl wasip2::exports::http::incoming_handler::Guest for Spin {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        let mut counter: u64 = 0;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

wasip2::http::proxy::export!(Spin);
