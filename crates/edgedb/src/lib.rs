//! The SQLite databases an edge node holds for its projects' functions. The control plane
//! keeps their schema in a forward-only ledger of changes; this crate is everything that
//! touches the files themselves, shared by the three places that do:
//!
//! - [`schema`]: the schema fingerprint (SHA-256 of the normalized `sqlite_schema`), the
//!   ledger's chain hash, and where a file stands (`_edgefn_schema`, `user_version`);
//! - [`change`]: what a schema change may contain (the migration authorizer) and the
//!   control plane's dry run of the ledger plus a new change on an in-memory database;
//! - [`apply`]: a node applying the changes it has not applied, each in its own
//!   `BEGIN IMMEDIATE` transaction that commits only at a ledger sequence with the
//!   ledger's fingerprint;
//! - [`repair`]: an operator's answer to a file that left the ledger — rebuilt from it
//!   (the old file kept) or its schema accepted;
//! - [`guest`]: functions reading and writing rows — never the schema — under an
//!   authorizer, result limits, a page quota and the request's deadline.
//!
//! The files are ordinary SQLite files (WAL mode) that `sqlite3`, libSQL and Turso tools
//! open.

pub mod apply;
pub mod change;
pub mod guest;
pub mod repair;
pub mod schema;

/// The SQLite binding, for tools and tests that open the files themselves.
pub use rusqlite;

pub use apply::{
    Applied, ApplyError, LedgerChange, apply_changes, build_ledger, open_node_database,
};
pub use change::{ChangeError, ChangeErrorKind, DryRun, dry_run};
pub use guest::{
    DatabasePool, Executed, GuestDatabase, GuestError, GuestLimits, Rows, Statement, Value,
};
pub use repair::Repaired;
pub use schema::{FileStatus, chain_hash, fingerprint, sha256_hex, status};
