//! Serve requests over Windows named pipes (and Unix domain sockets) with
//! tower services and tokio-util codecs.
//!
//! A pipeserve server pre-creates a pool of pipe instances, so that many
//! clients can connect at once, and runs each instance through the same loop
//! as Microsoft's overlapped named-pipe server sample, in async form: wait for
//! a client, read a request, call your [tower `Service`](tower_service::Service),
//! write the reply, read the next; when the client leaves, disconnect and wait
//! for the next one. On Unix the same API serves a Unix domain socket.
//!
//! # Quick start
//!
//! ```no_run
//! use bytes::Bytes;
//! use pipeserve::{Client, Server};
//! use std::convert::Infallible;
//!
//! # #[tokio::main] async fn main() -> Result<(), pipeserve::Error> {
//! let server = Server::builder().instances(8).bind("myapp")?;
//! let echo = tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) });
//! tokio::spawn(server.serve(echo));
//!
//! let client = Client::connect("myapp").await?;
//! assert_eq!(client.call(Bytes::from("hello")).await?, "hello");
//! # Ok(()) }
//! ```
//!
//! # The protocol
//!
//! - **Names.** A portable name such as `"myapp"` is `\\.\pipe\myapp` on
//!   Windows and a socket in `$XDG_RUNTIME_DIR` (else the temp dir) on Unix;
//!   see [`Address`].
//! - **Instances.** A Windows pipe name has a fixed number of instances; each
//!   serves one client at a time, and a client that finds none listening gets
//!   `ERROR_PIPE_BUSY`. pipeserve creates them all in
//!   [`bind`](server::Builder::bind), twice as many as it serves at once, so
//!   that a client never sees "busy" while a slot is free, even while other
//!   clients connect and disconnect. On Unix, that many tasks accept from one
//!   socket. The [`Client`] retries "busy" and "no such pipe" until its
//!   connect timeout.
//! - **End of a connection.** The client ends a connection by closing its
//!   end (EOF). The server ends one after a bad frame, a service error, a
//!   timeout or a shutdown, and then still waits for the client's EOF (up to
//!   the linger timeout) before disconnecting: `DisconnectNamedPipe` throws
//!   away whatever the client has not read yet.
//! - **Framing.** Frames are length-delimited by default; pipe messages and
//!   lines are built in, and any tokio-util codec plugs in. See [`codec`].
//! - **Order.** Replies are written in request order. Up to
//!   [`pipeline_depth`](server::Builder::pipeline_depth) requests of one
//!   connection are read ahead; the service is called for them one at a time
//!   unless [`concurrent_requests`](server::Builder::concurrent_requests).
//!
//! # Who is on the other end
//!
//! Each connection's [`ConnectionInfo`] says who the client is, from the
//! system and the connection itself rather than the client's word or a pid
//! looked up later: its [`User`] (the connection token's SID on Windows,
//! the peer credentials' uid and gid on Unix), its pid (information only)
//! and, on Windows, its session.
//! [`authorize`](server::Builder::authorize) refuses clients before a byte of
//! theirs reaches a service or they take a place among those served, and on
//! Windows `ConnectionInfo::impersonate` runs a closure as the client.
//! Clients check who runs the server before they write
//! ([`server_identity`](client::Builder::server_identity), their own user by
//! default), so a process of another user that took the name first gets
//! nothing. `docs/security.md` has the threat model.
//!
//! # Connections instead of frames
//!
//! [`Server::into_incoming`] hands out the pool's connections as a
//! [`Stream`](futures_util::Stream) of [`Connection`](server::Connection)s
//! (`AsyncRead + AsyncWrite`, with their [`ConnectionInfo`]), for hyper,
//! tonic or a protocol of your own. The pool keeps its instances listening,
//! and a dropped connection's instance is reused once its client has read
//! everything and closed.
//!
//! # Beyond pipes
//!
//! [`Builder::listener`](server::Builder::listener) serves the same service,
//! framing and limits from any [`Accept`](server::Accept), such as a
//! `TcpListener`, and [`connect_io`](client::Builder::connect_io) gives a
//! client over any stream.
//!
//! # Observability
//!
//! pipeserve logs through `tracing` and never prints: a span per instance
//! (`instance`) and per connection (`conn`: `id`, `instance`, `client_pid`);
//! `trace!` for connects and clean ends, `debug!` for a connection ended by a
//! bad frame, a service error or a timeout (with the reason), `warn!` and
//! `error!` for the server's own trouble (an instance that failed, a panic).
//! [`Handle::stats`] gives the counters: connections, requests, frames
//! rejected, errors by kind, instances listening.
//!
//! # Cancel safety
//!
//! Dropping a [`Serve`](server::Serve) future stops the server at once:
//! every instance task is aborted and every pipe closed (use
//! [`with_graceful_shutdown`](server::Serve::with_graceful_shutdown) or
//! [`Handle::shutdown`] to drain instead). Dropping an
//! [`Incoming`](server::Incoming) stops accepting; connections already
//! handed out live on. Dropping a [`Client::call`] future abandons that
//! reply only.
//!
//! # Features
//!
//! - `tonic`: gRPC over the pool. [`Connection`](server::Connection)
//!   implements tonic's `Connected`, so `serve_with_incoming` takes
//!   [`Server::into_incoming`]; a `client::Connector` for
//!   `Endpoint::connect_with_connector`. See the `pipeserve::tonic` module.
//! - `hyper`: HTTP/1.1 and HTTP/2 over the pool: `pipeserve::hyper::serve`
//!   serves any tower service of HTTP requests (an axum `Router`); a
//!   `client::Connector` for hyper-util's client.
//! - `test-util`: process measurements for pipeserve's own tests and
//!   benchmarks (handles, memory, a child's CPU time). Not a stable API.
//!
//! The default build depends on neither hyper nor tonic.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
// Every `unsafe` lives in `sys/`: `sys/windows/` (pipes, security, tokens;
// its `mod.rs` says which file does what) and one call in `sys/unix.rs` (who
// this process runs as); only those allow it.
#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod codec;
mod error;
#[cfg(feature = "hyper")]
pub mod hyper;
mod identity;
mod name;
mod pipe;
pub mod server;
mod sys;
#[cfg(feature = "test-util")]
pub mod test_util;
#[cfg(feature = "tonic")]
pub mod tonic;

pub use client::Client;
pub use codec::Framing;
pub use error::{BoxError, Error};
pub use identity::User;
pub use name::Address;
pub use server::{ConnectionInfo, Handle, PipeMode, Server, Stats, Summary};
