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
//!   clients connect and disconnect. The [`Client`] retries "busy" and "no
//!   such pipe" until its connect timeout.
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
//! Dropping a `serve*` future stops the server at once: every instance task
//! is aborted and every pipe closed (use `serve_with_shutdown` to drain
//! instead). Dropping a [`Client::call`] future abandons that reply only.
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
pub use server::{ConnectionInfo, Handle, PipeMode, Server, Stats, Summary};

/// Process measurements for pipeserve's own tests; not a stable API.
#[doc(hidden)]
pub mod test_support {
    /// Whether this process runs under Wine, which does not enforce some pipe
    /// semantics (`first_pipe_instance`).
    pub fn running_under_wine() -> bool {
        #[cfg(windows)]
        return crate::sys::running_under_wine();
        #[cfg(not(windows))]
        false
    }

    /// Open file descriptors (Unix) or handles (Windows) of this process.
    pub fn open_handles() -> Option<u64> {
        #[cfg(windows)]
        return crate::sys::process_handle_count().map(u64::from);
        #[cfg(target_os = "linux")]
        return std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        #[cfg(not(any(windows, target_os = "linux")))]
        None
    }

    /// The resident memory (working set on Windows) of this process, in bytes.
    pub fn resident_memory() -> Option<u64> {
        #[cfg(windows)]
        return crate::sys::working_set();
        #[cfg(target_os = "linux")]
        return std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            });
        #[cfg(not(any(windows, target_os = "linux")))]
        None
    }

    /// CPU time and memory of a child process (for benchmarks that run the
    /// server in a child).
    #[derive(Clone, Copy, Debug)]
    pub struct Usage {
        /// User + kernel CPU time.
        pub cpu: std::time::Duration,
        /// Resident memory (working set) now, in bytes.
        pub rss: u64,
        /// Peak resident memory (working set), in bytes.
        pub peak_rss: u64,
    }

    /// What `child` has used so far; `None` where the system does not say.
    pub fn child_usage(child: &std::process::Child) -> Option<Usage> {
        #[cfg(windows)]
        return crate::sys::child_usage(child).map(|(cpu, rss, peak_rss)| Usage {
            cpu,
            rss,
            peak_rss,
        });
        #[cfg(target_os = "linux")]
        return linux_usage(child.id());
        #[cfg(not(any(windows, target_os = "linux")))]
        {
            let _ = child;
            None
        }
    }

    #[cfg(target_os = "linux")]
    fn linux_usage(pid: u32) -> Option<Usage> {
        // utime and stime are fields 14 and 15 of /proc/PID/stat, in clock
        // ticks of USER_HZ (100 on Linux), after the parenthesised name.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
        };
        Some(Usage {
            cpu: std::time::Duration::from_millis(ticks * 10),
            rss: kib("VmRSS:")?,
            peak_rss: kib("VmHWM:")?,
        })
    }

    /// The DACL of the pipe behind `handle`, as SDDL.
    #[cfg(windows)]
    pub fn dacl_sddl(handle: std::os::windows::io::BorrowedHandle<'_>) -> std::io::Result<String> {
        crate::sys::dacl_sddl(handle)
    }
}
