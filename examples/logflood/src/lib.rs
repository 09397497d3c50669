//! Emits logs: `?n=N` records through `wasi:logging` and `?stdout=M` lines on stdout, plus
//! one line on stderr.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

wit_bindgen::generate!({
    path: "../../wit",
    world: "edgefn:host/imports",
    generate_all,
});

use wasi::logging::logging::{Level, log};

struct LogFlood;

impl wasip2::exports::http::incoming_handler::Guest for LogFlood {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let count = |name| guest::query_param(&request, name).and_then(|n| n.parse::<u32>().ok());
        let records = count("n").unwrap_or(1);
        let lines = count("stdout").unwrap_or(0);
        for i in 0..records {
            let level = match i % 4 {
                0 => Level::Info,
                1 => Level::Debug,
                2 => Level::Warn,
                _ => Level::Error,
            };
            log(level, "logflood", &format!("record {i}"));
        }
        for i in 0..lines {
            println!("stdout line {i}");
        }
        eprintln!("stderr line");
        guest::text(
            out,
            200,
            &format!("logged {records} records and {lines} lines\n"),
        );
    }
}

wasip2::http::proxy::export!(LogFlood);
