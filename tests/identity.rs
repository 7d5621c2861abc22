//! Who is on the other end, over named pipes on Windows and Unix domain
//! sockets on Unix: the server learns the client's pid, user and session;
//! authorize rules refuse clients before a frame is read; a client refuses a
//! server run by another user; impersonation (Windows).
//!
//! Wine and these CI machines run every process as one user, so "another
//! user" is played by expecting one that differs: `S-1-5-18` (LocalSystem)
//! on Windows, a uid that is not ours on Unix.

mod common;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use common::*;
use pipeserve::{client::ServerIdentity, server::authorize, Client, ConnectionInfo, Server, User};

/// A user that is not this process's.
fn someone_else() -> User {
    #[cfg(windows)]
    return User::parse("S-1-5-18").unwrap();
    #[cfg(unix)]
    {
        let me = User::current().unwrap().uid();
        User::parse(&(if me == 0 { 65534 } else { 0 }).to_string()).unwrap()
    }
}

/// An echo service that counts the frames it sees.
fn counting_echo(
    seen: Arc<AtomicU64>,
) -> impl tower::Service<Bytes, Response = Bytes, Error = Infallible, Future: Send> + Clone + Send {
    tower::service_fn(move |req: Bytes| {
        seen.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, Infallible>(req) }
    })
}

/// What a server whose service answers every request with `reply(info)`
/// tells one client of `client`'s making: what the server knows of it.
async fn told(
    tag: &str,
    server: pipeserve::server::Builder,
    client: pipeserve::client::Builder,
    reply: impl Fn(&ConnectionInfo) -> String + Clone + Send + Sync + 'static,
) -> String {
    let name = unique_name(tag);
    let server = server.bind(&name).unwrap();
    let make = tower::service_fn(move |info: ConnectionInfo| {
        let reply = reply.clone();
        async move {
            Ok::<_, Infallible>(tower::service_fn(move |_: Bytes| {
                let told = reply(&info);
                async move { Ok::<_, Infallible>(Bytes::from(told)) }
            }))
        }
    });
    let serving = tokio::spawn(server.serve_make(make));
    let client = client.connect(&name).await.unwrap();
    let reply = client.call(Bytes::from("who am i")).await.unwrap();
    serving.abort();
    String::from_utf8(reply.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sees_the_clients_pid_user_and_session() {
    within(60, async {
        let reply = told("id-info", Server::builder(), Client::builder(), |info| {
            format!(
                "{:?}|{}|{:?}",
                info.client_pid(),
                info.user().map(|u| u.to_string()).unwrap_or_default(),
                info.session_id()
            )
        })
        .await;
        let parts: Vec<&str> = reply.split('|').collect();
        assert_eq!(parts[0], format!("Some({})", std::process::id()), "{reply}");
        assert_eq!(parts[1], User::current().unwrap().to_string(), "{reply}");
        if cfg!(windows) {
            assert!(parts[2].starts_with("Some("), "a session id: {reply}");
        } else {
            assert_eq!(parts[2], "None", "{reply}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_is_closed_before_any_frame_is_read_counted_and_others_are_served() {
    within(60, async {
        let refuse = Arc::new(AtomicBool::new(true));
        let rule = {
            let refuse = refuse.clone();
            move |info: ConnectionInfo| {
                let refuse = refuse.load(Ordering::SeqCst);
                async move {
                    match refuse {
                        true => Err(format!("not now, client {:?}", info.client_pid())),
                        false => Ok(()),
                    }
                }
            }
        };
        let seen = Arc::new(AtomicU64::new(0));
        let server = start(
            "id-refuse",
            Server::builder()
                .instances(1)
                .authorize(authorize::same_user())
                .authorize(rule),
            counting_echo(seen.clone()),
        );
        let refused = Client::connect(&server.name).await.unwrap();
        let err = refused.call(Bytes::from("let me in")).await.unwrap_err();
        assert!(err.is_closed(), "{err}");

        refuse.store(false, Ordering::SeqCst);
        let served = Client::connect(&server.name).await.unwrap();
        assert_eq!(served.call(Bytes::from("hi")).await.unwrap(), "hi");
        drop(served);
        let summary = server.stop().await;
        assert_eq!(
            seen.load(Ordering::Relaxed),
            1,
            "the refused frame was never read"
        );
        assert_eq!(summary.stats.refused, 1);
        assert_eq!((summary.connections, summary.requests), (1, 1));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_rule_refuses_everyone_else() {
    within(60, async {
        let seen = Arc::new(AtomicU64::new(0));
        let server = start(
            "id-user-rule",
            Server::builder().authorize(authorize::user(someone_else())),
            counting_echo(seen.clone()),
        );
        for _ in 0..3 {
            let client = Client::connect(&server.name).await.unwrap();
            assert!(client.call(Bytes::from("x")).await.unwrap_err().is_closed());
        }
        let summary = server.stop().await;
        assert_eq!(seen.load(Ordering::Relaxed), 0);
        assert_eq!((summary.stats.refused, summary.connections), (3, 0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_rule_lets_in_a_member_and_refuses_a_non_member() {
    within(60, async {
        #[cfg(windows)]
        let (member, other) = (
            // Every logged-on process's token holds Everyone.
            authorize::group_sid("S-1-1-0"),
            authorize::group_sid("S-1-5-32-547"),
        );
        #[cfg(unix)]
        let (member, other) = {
            let gid = User::current().unwrap().gid().unwrap();
            (
                authorize::group_gid(gid),
                authorize::group_gid(gid.wrapping_add(4242)),
            )
        };
        let allowed = start_echo("id-group-in", Server::builder().authorize(member));
        let client = Client::connect(&allowed.name).await.unwrap();
        assert_eq!(client.call(Bytes::from("in")).await.unwrap(), "in");
        drop(client);
        assert_eq!(allowed.stop().await.stats.refused, 0);

        let refused = start_echo("id-group-out", Server::builder().authorize(other));
        let client = Client::connect(&refused.name).await.unwrap();
        assert!(client
            .call(Bytes::from("out"))
            .await
            .unwrap_err()
            .is_closed());
        assert_eq!(refused.stop().await.stats.refused, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_expecting_another_server_user_fails_closed_and_writes_nothing() {
    within(60, async {
        let seen = Arc::new(AtomicU64::new(0));
        let server = start(
            "id-impostor",
            Server::builder(),
            counting_echo(seen.clone()),
        );
        let err = Client::builder()
            .server_identity(ServerIdentity::User(someone_else()))
            .connect(&server.name)
            .await
            .unwrap_err();
        assert!(err.is_identity(), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");

        // The real owner is accepted, by default and when named.
        let client = Client::connect(&server.name).await.unwrap();
        assert_eq!(client.call(Bytes::from("a")).await.unwrap(), "a");
        let named = Client::builder()
            .server_identity(ServerIdentity::User(User::current().unwrap()))
            .connect(&server.name)
            .await
            .unwrap();
        assert_eq!(named.call(Bytes::from("b")).await.unwrap(), "b");
        drop((client, named));
        let summary = server.stop().await;
        assert_eq!(
            seen.load(Ordering::Relaxed),
            2,
            "the impostor check wrote nothing"
        );
        assert_eq!(summary.requests, 2);
    })
    .await
}

#[cfg(windows)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_an_impersonation_the_thread_is_the_client_and_after_it_is_not() {
    use pipeserve::test_util::thread_user;

    within(60, async {
        let client = Client::builder().impersonation(true);
        let reply = told("id-impersonate", Server::builder(), client, |info| {
            let (inside, nested, still) = info
                .impersonate(|| {
                    // Nested, it acts as the client too, and gives the outer
                    // one back as it was.
                    let nested = info.impersonate(thread_user).unwrap();
                    (thread_user(), nested, thread_user())
                })
                .unwrap();
            let after = thread_user();
            format!("{inside:?}|{nested:?}|{still:?}|{after:?}")
        })
        .await;
        let me = format!("Some({:?})", User::current().unwrap().sid());
        assert_eq!(reply, format!("{me}|{me}|{me}|None"));
    })
    .await
}

#[cfg(windows)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonating_after_the_connection_ended_is_a_clear_error() {
    within(60, async {
        let name = unique_name("id-impersonate-late");
        let server = Server::builder().instances(1).bind(&name).unwrap();
        let mut incoming = server.into_incoming();
        let client = raw_connect(&name).await;
        let conn = incoming.accept().await.unwrap();
        let info = conn.info().clone();
        drop(conn);
        drop(client);
        // Once the pool has the pipe back, no one can act through it.
        let err = loop {
            match info.impersonate(|| ()) {
                Err(e) if e.to_string().contains("ended") => break e,
                _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert!(err.is_io(), "{err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_never_answers_holds_no_place_and_its_client_is_refused_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    within(60, async {
        // The rule never answers for the first client and lets in the next.
        let calls = Arc::new(AtomicU64::new(0));
        let asked = Arc::new(tokio::sync::Notify::new());
        let rule = {
            let (calls, asked) = (calls.clone(), asked.clone());
            move |_: ConnectionInfo| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                asked.notify_one();
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok::<(), Infallible>(())
                }
            }
        };
        let seen = Arc::new(AtomicU64::new(0));
        let server = start(
            "id-hung-rule",
            Server::builder()
                .instances(1)
                .authorize_timeout(std::time::Duration::from_secs(2))
                .authorize(rule),
            counting_echo(seen.clone()),
        );
        let mut hung = raw_connect(&server.name).await;
        hung.write_all(&frame(b"judge me")).await.unwrap();
        asked.notified().await;

        // With the rule still out for the first client, the one instance
        // serves the second.
        let served = Client::connect(&server.name).await.unwrap();
        assert_eq!(served.call(Bytes::from("hi")).await.unwrap(), "hi");
        assert_eq!(
            server.handle.stats().refused,
            0,
            "the second was served only once the first was refused"
        );
        drop(served);

        // The first is refused at the deadline: closed, nothing answered.
        let mut rest = Vec::new();
        let _ = hung.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{rest:?}");
        let summary = server.stop().await;
        assert_eq!(
            seen.load(Ordering::Relaxed),
            1,
            "only the second's frame was read"
        );
        assert_eq!(
            (summary.stats.refused, summary.stats.authorize_timeouts),
            (1, 1)
        );
        assert_eq!((summary.connections, summary.requests), (1, 1));
    })
    .await
}

#[cfg(windows)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acting_as_the_client_inside_another_apis_impersonation_leaves_the_thread_as_found() {
    use pipeserve::test_util::{impersonate_self, revert_to_self, thread_impersonation_level};

    within(60, async {
        let client = Client::builder().impersonation(true);
        let reply = told("id-impersonate-other", Server::builder(), client, |info| {
            // Another API made this thread act as the process, at
            // identification level.
            impersonate_self().unwrap();
            let before = thread_impersonation_level();
            let inside = info.impersonate(thread_impersonation_level).unwrap();
            let after = thread_impersonation_level();
            revert_to_self();
            format!("{before:?}|{inside:?}|{after:?}")
        })
        .await;
        // Identification (1) before and after; the client's impersonation
        // level (2) inside.
        assert_eq!(reply, "Some(1)|Some(2)|Some(1)");
    })
    .await
}

#[cfg(windows)]
#[test]
fn dropping_a_connection_inside_its_own_impersonation_does_not_hang() {
    use pipeserve::test_util::thread_user;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (conn, client) = runtime.block_on(within(30, async {
        let name = unique_name("id-impersonate-drop");
        let server = Server::builder().instances(1).bind(&name).unwrap();
        let mut incoming = server.into_incoming();
        let mut client = raw_connect(&name).await;
        client.write_all(b"x").await.unwrap();
        let mut conn = incoming.accept().await.unwrap();
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.unwrap();
        (conn, client)
    }));
    // With the server's runtime gone, nothing takes the connection back:
    // dropping it closes the pipe right there, inside the closure.
    drop(runtime);
    let info = conn.info().clone();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(info.impersonate(move || {
            drop(conn);
            thread_user()
        }));
    });
    let ran_as = finished
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the drop hung inside the impersonation")
        .unwrap();
    // It ran to its end as the client.
    assert_eq!(ran_as.as_deref(), Some(User::current().unwrap().sid()));
    drop(client);
}

#[cfg(windows)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_client_of_a_server_open_to_remote_ones_keeps_its_pid_and_user() {
    within(60, async {
        let server = Server::builder().reject_remote_clients(false);
        let reply = told("id-remote-ok", server, Client::builder(), |info| {
            format!(
                "{}|{:?}|{}",
                info.is_remote(),
                info.client_pid(),
                info.user().map(|u| u.to_string()).unwrap_or_default(),
            )
        })
        .await;
        let me = User::current().unwrap();
        assert_eq!(reply, format!("false|Some({})|{me}", std::process::id()));
    })
    .await
}
