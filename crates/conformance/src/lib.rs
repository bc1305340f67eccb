//! The conformance runner behind `portcullis-conformance`; the crate overview is in
//! `main.rs`. It is a library only so that test targets can drive the echo backend and the
//! client. It must not depend on portcullis' library crates: it tests the binary from outside.

// Every public item is documented (STYLE.md); the compiler keeps it that way.
#![warn(missing_docs)]

pub mod actions;
pub mod backends;
pub mod batches;
pub mod case;
pub mod certs;
pub mod checks;
pub mod client;
pub mod echo;
pub mod expect;
pub mod failure;
pub mod grpc;
pub mod grpc_cases;
pub mod grpc_echo;
pub mod manifests;
pub mod mesh;
pub mod mesh_cases;
pub mod mesh_echo;
pub mod mounts;
pub mod process;
pub mod report;
pub mod runner;
pub mod skip;
pub mod status;
pub mod stream_cases;
pub mod tcp_echo;
pub mod tls;
pub mod traffic;
pub mod websocket_cases;
pub mod ws_echo;
