//! Upgrading without a gap: a successor takes over a running server's name
//! and the old server drains, while clients keep connecting. On both
//! systems: every request answered, no connect finds the name missing.
//! Refused takeovers: of a name nobody serves, and (Windows) of a server
//! that did not opt in. Another user's server is refused in
//! `tests/users.rs`, which has second uids.

mod common;

use std::{
    convert::Infallible,
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::{frame, read_frame, unique_name, within};
use pipeserve::{Server, Summary};
use tokio::{io::AsyncWriteExt, task::JoinHandle};

fn echo() -> impl pipeserve::server::FrameService<Bytes, Bytes> + Clone {
    tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) })
}

/// One generation of the server: serving until its handle shuts it down.
struct Generation {
    handle: pipeserve::Handle,
    task: JoinHandle<Result<Summary, pipeserve::Error>>,
}

fn serve(server: Server) -> Generation {
    let handle = server.handle();
    let task = tokio::spawn(server.serve(echo()));
    Generation { handle, task }
}

/// What the looping clients saw.
#[derive(Default)]
struct Seen {
    sent: AtomicU64,
    answered: AtomicU64,
    /// A connect that found no server on the name.
    not_found: AtomicU64,
    /// A connect that failed otherwise, or a request never answered.
    failed: AtomicU64,
    /// Windows: every instance busy for a moment (a client waits for one,
    /// as `WaitNamedPipe` does); Unix: a full backlog. Not a failure.
    busy: AtomicU64,
    /// Windows: a connect to an instance the old server closed as the
    /// client connected: the request's write fails with `ERROR_NO_DATA`
    /// (nothing of it reached a server). The old server connects to its
    /// own instances before closing them so that this never happens.
    closed_unread: AtomicU64,
}

/// One connect attempt, no retry: what a client finds on the name now.
async fn connect_once(
    address: &pipeserve::Address,
) -> io::Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> {
    #[cfg(windows)]
    return tokio::net::windows::named_pipe::ClientOptions::new().open(address.as_path());
    #[cfg(unix)]
    return tokio::net::UnixStream::connect(address.as_path()).await;
}

fn is_busy(e: &io::Error) -> bool {
    #[cfg(windows)]
    return e.raw_os_error() == Some(231); // ERROR_PIPE_BUSY
    #[cfg(unix)]
    return e.kind() == io::ErrorKind::WouldBlock;
}

/// Connect, one request, its reply, close; again until `stop`.
async fn client_loop(address: pipeserve::Address, id: u64, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut io = match connect_once(&address).await {
            Ok(io) => io,
            Err(e) if is_busy(&e) => {
                seen.busy.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eprintln!("client {id}: not found: {e}");
                seen.not_found.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            Err(e) => {
                eprintln!("client {id}: connect failed: {e}");
                seen.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        n += 1;
        let request = format!("client {id} request {n}");
        let wrote = io.write_all(&frame(request.as_bytes())).await;
        if matches!(&wrote, Err(e) if cfg!(windows) && e.raw_os_error() == Some(232)) {
            seen.closed_unread.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        seen.sent.fetch_add(1, Ordering::Relaxed);
        let reply = match wrote {
            Ok(()) => tokio::time::timeout(Duration::from_secs(20), read_frame(&mut io))
                .await
                .ok()
                .flatten(),
            Err(e) => {
                eprintln!("client {id}: writing request {n} failed: {e}");
                None
            }
        };
        match reply {
            Some(reply) if reply == request.as_bytes() => {
                seen.answered.fetch_add(1, Ordering::Relaxed);
            }
            Some(reply) => panic!("client {id}: a wrong reply {reply:?} to {request:?}"),
            None => {
                eprintln!("client {id}: request {n} not answered");
                seen.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_looping_through_five_takeovers_see_nothing_but_replies() {
    within(240, async {
        let name = unique_name("takeover");
        let address = pipeserve::Address::new(&name).unwrap();
        let builder = || Server::builder().instances(8);
        let mut current = serve(builder().upgradable(true).bind(&name).unwrap());
        current.handle.ready().await;

        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..8)
            .map(|id| tokio::spawn(client_loop(address.clone(), id, seen.clone(), stop.clone())))
            .collect();

        let mut summaries = Vec::new();
        for generation in 1..=5 {
            // Let the clients run on this generation for a while.
            let before = seen.answered.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            while seen.answered.load(Ordering::Relaxed) < before + 200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let successor = builder()
                .takeover(true)
                .bind(&name)
                .unwrap_or_else(|e| panic!("takeover {generation}: {e}"));
            let next = serve(successor);
            next.handle.ready().await;
            let old = std::mem::replace(&mut current, next);
            old.handle.shutdown();
            let summary = old.task.await.unwrap().unwrap();
            assert_eq!(
                summary.cut,
                0,
                "generation {}: nobody is cut",
                generation - 1
            );
            summaries.push(summary);
        }
        // And the last one serves for a while too.
        let before = seen.answered.load(Ordering::Relaxed);
        while seen.answered.load(Ordering::Relaxed) < before + 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.unwrap();
        }
        current.handle.shutdown();
        summaries.push(current.task.await.unwrap().unwrap());

        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (sent, answered) = (load(&seen.sent), load(&seen.answered));
        eprintln!(
            "sent {sent}, answered {answered}, busy {}, closed unread {}, per generation {:?}",
            load(&seen.busy),
            load(&seen.closed_unread),
            summaries.iter().map(|s| s.requests).collect::<Vec<_>>()
        );
        assert_eq!(load(&seen.not_found), 0, "a connect found no server");
        assert_eq!(load(&seen.failed), 0, "a connect or a request failed");
        assert_eq!(answered, sent);
        assert_eq!(
            load(&seen.closed_unread),
            0,
            "a client's instance was closed under it"
        );
        assert!(
            summaries.iter().all(|s| s.requests >= 200),
            "every generation served"
        );
        let served: u64 = summaries.iter().map(|s| s.requests).sum();
        assert_eq!(
            served, sent,
            "the generations' replies add up to the requests"
        );
    })
    .await
}

#[tokio::test]
async fn taking_over_a_name_nobody_serves_is_refused_as_in_use() {
    within(30, async {
        let name = unique_name("takeover-nobody");
        let err = Server::builder().takeover(true).bind(&name).unwrap_err();
        assert!(err.is_addr_in_use(), "{err}");
        assert!(err.to_string().contains("take over"), "{err}");
        // Nor was anything left behind: a plain server binds the name.
        let server = Server::builder().bind(&name).unwrap();
        drop(server);
    })
    .await
}

#[tokio::test]
async fn a_reply_in_flight_on_the_old_server_is_written_while_the_successor_serves() {
    within(60, async {
        let name = unique_name("takeover-drain");
        // The old version answers "slow" after a while: its reply is in
        // flight across the takeover.
        let slow = tower::service_fn(|req: Bytes| async move {
            if &req[..] == b"slow" {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok::<_, Infallible>(req)
        });
        let old_server = Server::builder().upgradable(true).bind(&name).unwrap();
        let old = Generation {
            handle: old_server.handle(),
            task: tokio::spawn(old_server.serve(slow)),
        };
        old.handle.ready().await;
        let mut held = common::raw_connect(&name).await;
        held.write_all(&frame(b"slow")).await.unwrap();

        let new = serve(Server::builder().takeover(true).bind(&name).unwrap());
        new.handle.ready().await;
        old.handle.shutdown();
        // Once the old server listens no more (on Windows a client reaches
        // either server until then), new clients reach the successor...
        common::until_stats(&old.handle, |s| s.listening == 0).await;
        let mut fresh = common::raw_connect(&name).await;
        fresh.write_all(&frame(b"fresh")).await.unwrap();
        assert_eq!(read_frame(&mut fresh).await.unwrap(), b"fresh");
        drop(fresh);
        // ...while the old server still owes its reply: it writes it, then
        // ends the connection: its client reconnects to the successor.
        assert_eq!(read_frame(&mut held).await.unwrap(), b"slow");
        assert_eq!(
            read_frame(&mut held).await,
            None,
            "the old server closed it"
        );
        drop(held);
        let summary = old.task.await.unwrap().unwrap();
        assert_eq!((summary.requests, summary.cut), (1, 0));
        new.handle.shutdown();
        assert_eq!(new.task.await.unwrap().unwrap().requests, 1);
    })
    .await
}

/// On Windows the successor needs room beside the old server's instances,
/// which a server makes only if it opted in.
#[cfg(windows)]
#[tokio::test]
async fn taking_over_a_server_that_is_not_upgradable_is_refused_as_in_use() {
    within(30, async {
        let name = unique_name("takeover-closed");
        let old = serve(Server::builder().instances(2).bind(&name).unwrap());
        old.handle.ready().await;
        let err = Server::builder()
            .instances(2)
            .takeover(true)
            .bind(&name)
            .unwrap_err();
        assert!(err.is_addr_in_use(), "{err}");
        assert!(err.to_string().contains("upgradable"), "{err}");
        // The old server is untouched.
        let mut io = common::raw_connect(&name).await;
        io.write_all(&frame(b"still here")).await.unwrap();
        assert_eq!(read_frame(&mut io).await.unwrap(), b"still here");
        drop(io);
        old.handle.shutdown();
        old.task.await.unwrap().unwrap();
    })
    .await
}
