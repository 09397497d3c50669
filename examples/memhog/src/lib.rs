//! Memory behaviour under limits.
//!
//! - `/hog`: allocates 1 MiB blocks until the host refuses to grow memory.
//! - `/grow?pages=A,B,...`: grows linear memory by each amount in turn, reports the results.
//! - `/secret/write`: fills 1 MiB with a recognisable pattern and keeps it.
//! - `/secret/scan`: counts copies of that pattern anywhere in linear memory.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct MemHog;

const PAGE: usize = 64 * 1024;
const BLOCK: usize = 64;

/// The secret block, computed at run time so that it is not in the module's data segment.
fn secret_block() -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    for (i, byte) in block.iter_mut().enumerate() {
        *byte = ((i as u8).wrapping_mul(37).wrapping_add(11)) ^ 0xa5;
    }
    block
}

fn memory_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * PAGE
}

impl wasip2::exports::http::incoming_handler::Guest for MemHog {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match guest::path(&request).as_str() {
            "/hog" => {
                let mut blocks: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page so the memory is really used.
                    blocks.push(vec![0xab; 1 << 20]);
                    std::hint::black_box(&blocks);
                }
            }
            "/grow" => {
                let pages = guest::query_param(&request, "pages").unwrap_or_default();
                let mut results = Vec::new();
                for delta in pages.split(',').filter_map(|p| p.parse::<usize>().ok()) {
                    let previous = core::arch::wasm32::memory_grow(0, delta);
                    results.push(if previous == usize::MAX {
                        "fail".to_string()
                    } else {
                        previous.to_string()
                    });
                }
                let body = format!("{} pages={}\n", results.join(","), memory_bytes() / PAGE);
                guest::text(out, 200, &body);
            }
            "/secret/write" => {
                let block = secret_block();
                // Aligned like the scan's stride, and leaked so it stays in memory.
                let layout = std::alloc::Layout::from_size_align(1 << 20, BLOCK).expect("layout");
                let secret =
                    unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc(layout), 1 << 20) };
                for chunk in secret.chunks_exact_mut(BLOCK) {
                    chunk.copy_from_slice(&block);
                }
                std::hint::black_box(secret);
                guest::text(out, 200, "written\n");
            }
            "/secret/scan" => {
                let block = secret_block();
                let end = memory_bytes();
                let mut copies = 0usize;
                // Linear memory starts at address 0; skip the first block (null page) and read
                // every other aligned block, the way an attacker would look for leftovers.
                let mut address = BLOCK;
                while address + BLOCK <= end {
                    let candidate =
                        unsafe { core::slice::from_raw_parts(address as *const u8, BLOCK) };
                    if candidate == block {
                        copies += 1;
                    }
                    address += BLOCK;
                }
                guest::text(out, 200, &format!("{copies}\n"));
            }
            _ => guest::text(out, 404, "unknown memhog path\n"),
        }
    }
}

wasip2::http::proxy::export!(MemHog);
