//! `edgefn-proto`: the types the control plane, the runner and the CLI exchange or persist
//! — API requests and responses, the error body, POP selectors, the route table — and pure
//! checks on them. No I/O.

pub mod api;
pub mod artifact;
pub mod router;
pub mod selector;
pub mod sync;

pub use artifact::{GuestKind, inspect};
pub use selector::{Selector, SelectorError};
