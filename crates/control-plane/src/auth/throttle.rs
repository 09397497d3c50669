//! Password guessing at `POST /login` is throttled: failed attempts are counted per user
//! name and per client address, and past a few free ones each further failure locks that
//! key out for twice as long as the last (1 s, 2 s, 4 s … at most 15 minutes), answered 429
//! with `Retry-After` before any hashing. Argon2 runs on the blocking pool, a bounded number
//! at once (half the cores, at least one), so a flood of logins cannot take the CPU from
//! heartbeats and deploys; a login that cannot get a turn within a few seconds is 429 too.
//!
//! The counters live in each replica's memory: with several replicas an attacker gets each
//! replica's allowance, which still bounds guesses to a few per minute per key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures of one user name before lockouts start.
const FREE_FAILURES_PER_USER: u32 = 5;
/// Failures from one address before lockouts start (it may try several user names).
const FREE_FAILURES_PER_ADDRESS: u32 = 20;
/// The first lockout; each further failure doubles it.
const FIRST_LOCKOUT: Duration = Duration::from_secs(1);
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// A key whose last failure is older than this starts over.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Keys kept at most; beyond, the ones that are not locked out are forgotten first.
const MAX_KEYS: usize = 100_000;
/// How long a login waits for its turn to hash.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Why a login was not even tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttled {
    /// The user name or the address is locked out for this long.
    LockedOut(Duration),
    /// Every hashing slot stayed busy.
    Busy,
}

impl Throttled {
    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Self::LockedOut(left) => left.as_secs_f64().ceil().max(1.0) as u64,
            Self::Busy => 1,
        }
    }
}

pub struct LoginThrottle {
    failures: Mutex<HashMap<Key, Failures>>,
    hashing: tokio::sync::Semaphore,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Address(IpAddr),
}

impl Default for LoginThrottle {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new((cores / 2).max(1))
    }
}

impl LoginThrottle {
    /// At most `concurrent_hashes` password checks at once.
    pub fn new(concurrent_hashes: usize) -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
            hashing: tokio::sync::Semaphore::new(concurrent_hashes.max(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Failures>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn keys(user: &str, address: Option<IpAddr>) -> impl Iterator<Item = Key> {
        std::iter::once(Key::User(user.to_string())).chain(address.map(Key::Address))
    }

    /// Refuses when the user name or the address is locked out.
    pub fn check(
        &self,
        user: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Throttled> {
        let failures = self.lock();
        let longest = Self::keys(user, address)
            .filter_map(|key| failures.get(&key)?.locked_until)
            .filter(|until| *until > now)
            .max();
        match longest {
            Some(until) => Err(Throttled::LockedOut(until - now)),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt against the user name and the address.
    pub fn failed(&self, user: &str, address: Option<IpAddr>, now: Instant) {
        let mut failures = self.lock();
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, f| f.locked_until.is_some_and(|until| until > now));
            if failures.len() >= MAX_KEYS {
                failures.clear();
            }
        }
        for key in Self::keys(user, address) {
            let free = match key {
                Key::User(_) => FREE_FAILURES_PER_USER,
                Key::Address(_) => FREE_FAILURES_PER_ADDRESS,
            };
            let entry = failures.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(entry.last) > FORGET_AFTER {
                entry.count = 0;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
            if entry.count > free {
                let doublings = (entry.count - free - 1).min(20);
                let lockout = FIRST_LOCKOUT
                    .saturating_mul(1 << doublings)
                    .min(MAX_LOCKOUT);
                entry.locked_until = Some(now + lockout);
            }
        }
    }

    /// A correct password: the user name starts over (the address keeps its count, so one
    /// known account does not unlock guessing at others).
    pub fn succeeded(&self, user: &str) {
        self.lock().remove(&Key::User(user.to_string()));
    }

    /// Runs `check` (an Argon2 verification) on the blocking pool when a hashing slot is
    /// free within a few seconds.
    pub async fn hash<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Throttled> {
        let permit = tokio::time::timeout(HASH_QUEUE_WAIT, self.hashing.acquire())
            .await
            .map_err(|_| Throttled::Busy)?
            .map_err(|_| Throttled::Busy)?;
        let result = tokio::task::spawn_blocking(check)
            .await
            .map_err(|_| Throttled::Busy);
        drop(permit);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_locked_out_after_its_free_failures_for_doubling_times() {
        let throttle = LoginThrottle::new(1);
        let start = Instant::now();
        for _ in 0..FREE_FAILURES_PER_USER {
            assert_eq!(throttle.check("alice", None, start), Ok(()));
            throttle.failed("alice", None, start);
        }
        assert_eq!(throttle.check("alice", None, start), Ok(()));
        throttle.failed("alice", None, start);
        assert_eq!(
            throttle.check("alice", None, start),
            Err(Throttled::LockedOut(Duration::from_secs(1)))
        );
        // After the lockout, the next failure locks for twice as long.
        let later = start + Duration::from_secs(1);
        assert_eq!(throttle.check("alice", None, later), Ok(()));
        throttle.failed("alice", None, later);
        assert_eq!(
            throttle.check("alice", None, later),
            Err(Throttled::LockedOut(Duration::from_secs(2)))
        );
        // Another user is not affected; success clears the user.
        assert_eq!(throttle.check("bob", None, later), Ok(()));
        throttle.succeeded("alice");
        assert_eq!(throttle.check("alice", None, later), Ok(()));
    }

    #[test]
    fn an_address_trying_many_names_is_locked_out_and_lockouts_are_capped() {
        let throttle = LoginThrottle::new(1);
        let address = Some("192.0.2.7".parse().unwrap());
        let now = Instant::now();
        for i in 0..=FREE_FAILURES_PER_ADDRESS {
            throttle.failed(&format!("user{i}"), address, now);
        }
        assert!(matches!(
            throttle.check("someone-else", address, now),
            Err(Throttled::LockedOut(_))
        ));
        assert_eq!(throttle.check("someone-else", None, now), Ok(()));
        for _ in 0..100 {
            throttle.failed("x", address, now);
        }
        let Err(Throttled::LockedOut(left)) = throttle.check("y", address, now) else {
            panic!("not locked out");
        };
        assert_eq!(left, MAX_LOCKOUT);
        assert_eq!(Throttled::LockedOut(left).retry_after_secs(), 900);
    }

    #[test]
    fn old_failures_are_forgotten() {
        let throttle = LoginThrottle::new(1);
        let start = Instant::now();
        for _ in 0..FREE_FAILURES_PER_USER {
            throttle.failed("carol", None, start);
        }
        let much_later = start + FORGET_AFTER + Duration::from_secs(1);
        throttle.failed("carol", None, much_later);
        assert_eq!(throttle.check("carol", None, much_later), Ok(()));
    }

    #[tokio::test]
    async fn hashing_runs_one_at_a_time_with_one_slot() {
        let throttle = std::sync::Arc::new(LoginThrottle::new(1));
        let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (throttle, running) = (throttle.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                throttle
                    .hash(move || {
                        let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        now
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(0), "another hash was running");
        }
    }
}
