//! The chain and its verification, without a database: every kind of tampering is caught
//! at the first record it touched.

use proptest::prelude::*;

use super::*;
use super::{Checkpoint, Vouched};

fn entries(count: usize) -> Vec<(i64, Entry)> {
    (0..count)
        .map(|i| {
            (
                1_700_000_000_000 + i as i64,
                Entry::new("user:alice", "route.update", format!("rt_{i}"))
                    .project("shop")
                    .details(serde_json::json!({ "before": { "priority": i }, "after": { "priority": i + 1 } })),
            )
        })
        .collect()
}

fn vouch_all(records: &[StoredRecord]) -> Vouched {
    let mut vouched = Vouched::default();
    if let (Some(first), Some(last)) = (records.first(), records.last()) {
        vouched.add(
            "test",
            &Checkpoint {
                iss: "edgefn".into(),
                aud: "edgefn-audit".into(),
                iat: 0,
                from_seq: first.seq,
                seq: last.seq,
                head_hash: last.hash.clone(),
                hashes: records.iter().map(|r| r.hash.clone()).collect(),
            },
        );
    }
    vouched
}

#[test]
fn an_untouched_chain_verifies() {
    let records = chain(&entries(5), 0, GENESIS_HASH.into());
    let result = verify(records.clone(), &vouch_all(&records));
    assert!(result.ok, "{result:?}");
    assert_eq!((result.records, result.checkpointed_through), (5, 5));
    assert!(verify(Vec::new(), &Vouched::default()).ok);
}

#[test]
fn hashes_cover_every_field() {
    let record = chain(&entries(1), 0, GENESIS_HASH.into()).remove(0);
    let variants: [fn(&mut StoredRecord); 8] = [
        |r| r.at += 1,
        |r| r.actor.push('x'),
        |r| r.project = None,
        |r| r.project = Some(String::new()),
        |r| r.action.push('x'),
        |r| r.target.push('x'),
        |r| r.details.push(' '),
        |r| r.seq += 1,
    ];
    for change in variants {
        let mut changed = record.clone();
        change(&mut changed);
        assert_ne!(changed.expected_hash(), record.hash);
    }
}

/// A way to tamper with a copy of the log, and the first record it should be blamed on.
#[derive(Clone, Debug)]
enum Tamper {
    Edit(usize),
    Delete(usize),
    Swap(usize, usize),
    TruncateFrom(usize),
    RewriteFrom(usize),
}

fn apply(tamper: &Tamper, records: &mut Vec<StoredRecord>) -> u64 {
    match *tamper {
        Tamper::Edit(i) => {
            records[i].actor = "user:mallory".into();
            records[i].seq
        }
        Tamper::Delete(i) => records.remove(i).seq,
        Tamper::Swap(i, j) => {
            let (a, b) = (records[i].clone(), records[j].clone());
            records[i] = StoredRecord { seq: a.seq, ..b };
            records[j] = StoredRecord { seq: b.seq, ..a };
            records[i].seq
        }
        Tamper::TruncateFrom(i) => {
            let seq = records[i].seq;
            records.truncate(i);
            seq
        }
        Tamper::RewriteFrom(i) => {
            // A forger who recomputes every hash after their edit.
            let prev = records[i].prev_hash.clone();
            let mut forged: Vec<(i64, Entry)> = records[i..]
                .iter()
                .map(|r| {
                    (
                        r.at,
                        Entry::new("user:mallory", "route.update", r.target.clone())
                            .details(serde_json::json!({ "forged": true })),
                    )
                })
                .collect();
            forged[0].1.target.push_str("-forged");
            let seq = records[i].seq;
            let rewritten = chain(&forged, seq - 1, prev);
            records.truncate(i);
            records.extend(rewritten);
            seq
        }
    }
}

fn tamper() -> impl Strategy<Value = (usize, Tamper)> {
    (2usize..40).prop_flat_map(|len| {
        (
            Just(len),
            prop_oneof![
                (0..len).prop_map(Tamper::Edit),
                (0..len).prop_map(Tamper::Delete),
                (0..len - 1)
                    .prop_flat_map(move |i| (Just(i), i + 1..len))
                    .prop_map(|(i, j)| Tamper::Swap(i, j)),
                (0..len).prop_map(Tamper::TruncateFrom),
                (0..len).prop_map(Tamper::RewriteFrom),
            ],
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_tampering_is_caught_at_the_first_record_touched((len, tamper) in tamper()) {
        let mut records = chain(&entries(len), 0, GENESIS_HASH.into());
        let vouched = vouch_all(&records);
        let first_bad = apply(&tamper, &mut records);
        let result = verify(records, &vouched);
        prop_assert!(!result.ok, "{:?} went unnoticed", tamper);
        prop_assert_eq!(result.first_bad_seq, Some(first_bad), "{:?}: {}", tamper, result.message);
    }
}

#[test]
fn a_rewrite_after_the_last_checkpoint_is_the_window_checkpoints_leave() {
    let records = chain(&entries(6), 0, GENESIS_HASH.into());
    let vouched = vouch_all(&records[..4]);
    let mut tampered = records.clone();
    apply(&Tamper::RewriteFrom(4), &mut tampered);
    // Not checkpointed yet, so not detectable; the checkpoint writer refuses to vouch for
    // records that do not extend what it vouched for before.
    assert!(verify(tampered, &vouched).ok);
    let mut tampered = records;
    apply(&Tamper::RewriteFrom(3), &mut tampered);
    assert_eq!(verify(tampered, &vouched).first_bad_seq, Some(4));
}

#[test]
fn an_inconsistent_checkpoint_is_reported() {
    let records = chain(&entries(3), 0, GENESIS_HASH.into());
    let mut vouched = Vouched::default();
    vouched.add(
        "bad",
        &Checkpoint {
            iss: "edgefn".into(),
            aud: "edgefn-audit".into(),
            iat: 0,
            from_seq: 1,
            seq: 3,
            head_hash: records[2].hash.clone(),
            hashes: vec![records[0].hash.clone()],
        },
    );
    let result = verify(records, &vouched);
    assert!(!result.ok);
    assert!(
        result.message.contains("inconsistent"),
        "{}",
        result.message
    );
}

#[test]
fn a_refusal_record_is_bounded_whatever_the_caller_sent() {
    let huge = "\"\\x".repeat(100_000);
    let entry = Entry::new(
        &format!("user:{huge}"),
        "auth.refused",
        format!("GET /{huge}"),
    )
    .details(serde_json::json!({ "name": huge, "peer": "127.0.0.1:1" }));
    let bounded = entry.bounded();
    let size = bounded.actor.len()
        + bounded.target.len()
        + bounded.details.to_string().len()
        + bounded.action.len();
    assert!(size + 200 <= super::MAX_REFUSAL_BYTES, "{size}");
    assert!(bounded.actor.starts_with("user:\"\\x"));
    // Small entries are kept as they are.
    let small = Entry::new("user:bob", "auth.refused", "POST /api/v1/login")
        .details(serde_json::json!({ "reason": "wrong user name or password" }));
    assert_eq!(small.bounded().details, small.details);
    assert_eq!(super::truncate("héllo", 2), "h");
}
