//! The edge-database files under crashes: processes applying the ledger are killed at
//! random points, and the file must come back exactly at a ledger sequence.

mod crash;
