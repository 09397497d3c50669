//! Control-plane tests: the API through `router(state)` without a server (tower `oneshot`),
//! against SQLite and against the PostgreSQL server of this machine.

mod api;
mod artifacts;
mod audit;
mod authz;
mod concurrency;
mod conformance;
mod domains;
mod fixture;
mod mtls;
mod oidc;
mod precompiled;
mod properties;
mod startup;
mod sync;
mod tokens;
