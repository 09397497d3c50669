//! `edgefn-proto`: the types the control plane, the runner and the CLI exchange or persist
//! — API requests and responses, the error body, roles and tokens, audit records, POP
//! selectors, the route table — and pure checks on them. No I/O.

pub mod api;
pub mod artifact;
pub mod audit;
pub mod backoff;
pub mod identity;
pub mod integer;
pub mod router;
pub mod selector;
pub mod sync;

/// The gRPC service of node sync (`proto/sync.proto`): revision notices pushed to nodes.
pub mod grpc {
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::allow_attributes_without_reason,
        reason = "generated code"
    )]
    tonic::include_proto!("edgefn.sync.v1");
}

pub use artifact::{GuestKind, inspect};
pub use selector::{Selector, SelectorError};
