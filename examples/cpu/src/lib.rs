//! CPU-bound work: `?n=ROUNDS` rounds of an integer hash, no host calls in between.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Cpu;

impl wasip2::exports::http::incoming_handler::Guest for Cpu {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let rounds: u64 = guest::query_param(&request, "n")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000_000);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..rounds {
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd).wrapping_add(i);
        }
        guest::text(out, 200, &format!("{x:016x}\n"));
    }
}

wasip2::http::proxy::export!(Cpu);
