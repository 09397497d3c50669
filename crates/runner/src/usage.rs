//! This process's CPU and memory use, for heartbeats: CPU time from `/proc/self/stat` over
//! wall time since the previous sample, resident memory from `/proc/self/statm`.

use std::time::Instant;

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

pub struct UsageSampler {
    last: Option<(Instant, u64)>,
}

impl Default for UsageSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageSampler {
    pub fn new() -> Self {
        Self {
            last: cpu_ticks().map(|t| (Instant::now(), t)),
        }
    }

    /// CPU % since the previous sample (100 = one core busy) and resident bytes now; zeros
    /// where `/proc` cannot be read.
    pub fn sample(&mut self) -> (f64, u64) {
        let now = Instant::now();
        let ticks = cpu_ticks();
        let percent = match (self.last, ticks) {
            (Some((then, before)), Some(after)) => {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    (after.saturating_sub(before) as f64 / TICKS_PER_SECOND) / wall * 100.0
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        if let Some(ticks) = ticks {
            self.last = Some((now, ticks));
        }
        (percent.clamp(0.0, 100_000.0), resident_bytes().unwrap_or(0))
    }
}

/// User plus system time of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain numbers.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_reports_cpu_and_memory() {
        let mut sampler = UsageSampler::new();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let (cpu, memory) = sampler.sample();
        assert!(cpu > 20.0, "cpu {cpu}");
        assert!(memory > 1 << 20, "memory {memory}");
    }
}
