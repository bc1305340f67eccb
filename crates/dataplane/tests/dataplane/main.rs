//! The data plane over real sockets: a gateway on `127.0.0.1:0`, in-process echo upstreams
//! (HTTP, gRPC-shaped h2c, WebSocket, TCP/TLS ones for connection-level routes, and HTTPS ones
//! for BackendTLSPolicy),
//! and hand-built `ir::Config`s. One test binary, so the support code is compiled once.

mod backend_tls;
mod client_validation;
mod cors;
mod filters;
mod grpc;
mod https;
mod lifecycle;
mod passthrough;
mod retry;
mod routing;
mod support;
mod tcp;
mod terminate;
mod websocket;
