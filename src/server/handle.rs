//! Controlling a running server from elsewhere.

use std::{fmt, sync::Arc};

use super::{pool::Shared, Stats};

/// Controls a running server from elsewhere in the application: shut it
/// down, read its counters. Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// # async fn run(server: pipeserve::Server, svc: tower::util::BoxCloneService<bytes::Bytes, bytes::Bytes, std::convert::Infallible>) {
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve(svc));
/// // ... later, from anywhere:
/// println!("{:?}", handle.stats());
/// handle.shutdown();
/// let summary = serving.await.unwrap().unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct Handle {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// Starts a graceful shutdown, as the signal of
    /// [`with_graceful_shutdown`](super::Serve::with_graceful_shutdown) does;
    /// also for a server served without one. For an
    /// [`Incoming`](super::Incoming), ends the stream.
    pub fn shutdown(&self) {
        self.shared.shutdown_request().cancel();
    }

    /// The server's counters now.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Completes once every pipe instance (Unix: accept slot) of the server
    /// is listening: from then on a client is served without waiting for
    /// the server to start. At once if it already is; never if the server
    /// is never served (framed serving starts its instances on its first
    /// poll, [`into_incoming`](super::Server::into_incoming) at once). The
    /// moment to tell a service manager the server is up, or to print its
    /// address for whoever waits on it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(server: pipeserve::Server, svc: tower::util::BoxCloneService<bytes::Bytes, bytes::Bytes, std::convert::Infallible>) {
    /// let (handle, address) = (server.handle(), server.local_addr().clone());
    /// let serving = tokio::spawn(server.serve(svc));
    /// handle.ready().await;
    /// println!("listening on {address}");
    /// # }
    /// ```
    pub async fn ready(&self) {
        self.shared.ready().await
    }
}
