//! pipeserve: serve requests over Windows named pipes (and Unix sockets)
//! with tower services and tokio-util codecs.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod codec;
mod error;
mod name;
pub mod server;
mod sys;

pub use client::Client;
pub use error::{BoxError, Error};
pub use name::Address;
pub use server::{ConnectionInfo, PipeMode, Server, Summary};

/// Whether this process runs under Wine, which does not enforce some pipe
/// semantics (`first_pipe_instance`). For tests.
#[cfg(windows)]
#[doc(hidden)]
pub fn running_under_wine() -> bool {
    sys::running_under_wine()
}
