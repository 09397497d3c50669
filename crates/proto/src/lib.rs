//! `edgefn-proto`: the types the control plane, the runner and the CLI exchange or persist
//! — API requests and responses, the error body, POP selectors — and pure checks on them.
//! No I/O.

pub mod artifact;
pub mod selector;

pub use artifact::{GuestKind, inspect};
pub use selector::{Selector, SelectorError};
