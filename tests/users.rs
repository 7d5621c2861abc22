//! Serving many users: each user's share of the pool
//! (`max_connections_per_user`), the fair order of clients waiting for a
//! place, and (Unix) who may connect to a bound socket (`socket_mode`,
//! `socket_group`).
//!
//! The share with one user runs everywhere (Wine has one user). The tests
//! with several users need real second uids: on Unix, as root, clients run
//! in child processes (this test binary, re-run as `child_client` under
//! another uid); elsewhere they say so and check what one user can. That
//! the socket is never seen with other permissions while binding is
//! `tests/unix.rs`'s.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use pipeserve::{Client, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_connection_over_its_share_is_refused_at_once_and_served_once_one_closes() {
    within(60, async {
        let server = start_echo(
            "share",
            Server::builder().instances(4).max_connections_per_user(2),
        );
        let (c1, c2) = (
            Client::connect(&server.name).await.unwrap(),
            Client::connect(&server.name).await.unwrap(),
        );
        assert_eq!(c1.call(Bytes::from("one")).await.unwrap(), "one");
        assert_eq!(c2.call(Bytes::from("two")).await.unwrap(), "two");
        // The third, with places to spare: refused, never served.
        let c3 = Client::connect(&server.name).await.unwrap();
        assert!(c3.call(Bytes::from("three")).await.is_err());
        let stats = server.handle.stats();
        assert_eq!((stats.refused, stats.refused_per_user), (1, 1), "{stats:?}");
        assert_eq!(stats.requests, 2, "a refused client was served: {stats:?}");
        // One closes: the user is within its share again.
        drop(c1);
        until_stats(&server.handle, |s| s.active == 1).await;
        let c4 = Client::connect(&server.name).await.unwrap();
        assert_eq!(c4.call(Bytes::from("four")).await.unwrap(), "four");
        assert_eq!(c2.call(Bytes::from("still")).await.unwrap(), "still");
        drop((c2, c3, c4));
        let summary = server.stop().await;
        assert_eq!(summary.stats.refused_per_user, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_holds_for_connections_handed_out_by_into_incoming() {
    within(60, async {
        let name = unique_name("share-incoming");
        let server = Server::builder()
            .instances(2)
            .max_connections_per_user(1)
            .bind(&name)
            .unwrap();
        let handle = server.handle();
        let mut incoming = server.into_incoming();
        let first_client = raw_connect(&name).await;
        let first = incoming.next().await.unwrap().unwrap();
        // The same user again while the first is held: refused, not handed out.
        let mut second = raw_connect(&name).await;
        assert_eq!(
            read_frame(&mut second).await,
            None,
            "refused: closed at once"
        );
        until_stats(&handle, |s| s.refused_per_user == 1).await;
        // Held until its instance lets it go: after its client closes too,
        // once the server has seen it close.
        drop((first, first_client));
        until_stats(&handle, |s| s.active == 0).await;
        let _third_client = raw_connect(&name).await;
        let third = incoming.next().await.unwrap().unwrap();
        assert_eq!(third.info().id(), 3, "the refused client had id 2");
        assert_eq!(handle.stats().connections, 2);
    })
    .await
}

#[test]
fn a_share_of_zero_is_a_config_error() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let err = Server::builder()
        .max_connections_per_user(0)
        .bind(&unique_name("share-zero"))
        .unwrap_err();
    assert!(err.is_config(), "{err}");
}

/// Several users, for real: clients in child processes under other uids.
#[cfg(unix)]
mod unix {
    use std::{
        fs,
        io::{BufRead, BufReader, Read, Write},
        os::unix::{
            fs::{MetadataExt, PermissionsExt},
            net::UnixStream,
            process::CommandExt,
        },
        path::{Path, PathBuf},
        process::{Child, Command, Stdio},
        sync::{Arc, Mutex},
        time::Duration,
    };

    use bytes::Bytes;
    use futures_util::StreamExt;
    use pipeserve::{server::authorize, Client, ConnectionInfo, Server};

    use tokio::io::AsyncWriteExt;

    use super::{
        frame, line_with, raw_connect, read_frame, serve_until_stdin_closes, unique_name,
        until_stats, within,
    };

    /// Two uids and a group that are not root's and not each other's.
    const ALICE: u32 = 64001;
    const BOB: u32 = 64002;
    const STAFF: u32 = 64010;

    /// Whether clients can run as other uids here: as root, with this test
    /// binary reachable by them (not under a `0700` home, say).
    fn as_root() -> bool {
        if pipeserve::User::current().unwrap().uid() != 0 {
            eprintln!("not root: cannot run clients as other uids; skipped");
            return false;
        }
        let exe = std::env::current_exe().unwrap();
        let others_may =
            |path: &Path| fs::metadata(path).is_ok_and(|md| md.permissions().mode() & 0o001 != 0);
        if !exe.ancestors().all(others_may) {
            eprintln!("{} is not reachable by other uids; skipped", exe.display());
            return false;
        }
        true
    }

    /// A directory anyone may enter, for a socket other users reach.
    fn open_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(unique_name(tag));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// This test binary, to run `test` alone as `uid`/`gid`, its stdin and
    /// stdout piped.
    fn child_as(uid: u32, gid: u32, test: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        cmd
    }

    /// What a child client did with its connections.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Report {
        /// Answered.
        served: usize,
        /// Closed by the server without a reply.
        refused: usize,
        /// Neither within the wait (waiting for a place, or just holding).
        waiting: usize,
        /// Connecting failed with `EACCES`.
        denied: usize,
    }

    /// A child process running as `uid`/`gid` with `connections` to `path`,
    /// holding them until dropped.
    struct Clients {
        child: Child,
        /// The rest of its output, read to the end on close.
        stdout: BufReader<std::process::ChildStdout>,
        report: Report,
    }

    impl Clients {
        /// Starts the child; `call`: each connection sends a request and
        /// waits for the reply, else it only connects.
        fn start(uid: u32, gid: u32, path: &Path, connections: usize, call: bool) -> Clients {
            let mut child = child_as(uid, gid, "unix::child_client")
                .env("PIPESERVE_CHILD_PATH", path)
                .env("PIPESERVE_CHILD_CONNECTIONS", connections.to_string())
                .env("PIPESERVE_CHILD_CALL", if call { "1" } else { "0" })
                .spawn()
                .unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let line = line_with((&mut stdout).lines(), "served=");
            let field = |name: &str| -> usize {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let report = Report {
                served: field("served"),
                refused: field("refused"),
                waiting: field("waiting"),
                denied: field("denied"),
            };
            Clients {
                child,
                stdout,
                report,
            }
        }

        /// Closes every connection: the child exits.
        fn close(mut self) {
            drop(self.child.stdin.take());
            let _ = self.stdout.read_to_end(&mut Vec::new());
            assert!(self.child.wait().unwrap().success());
        }
    }

    /// The child half of the tests here: runs only when started by
    /// `Clients::start`, as another uid.
    #[test]
    fn child_client() {
        let Some(path) = std::env::var_os("PIPESERVE_CHILD_PATH") else {
            return;
        };
        let connections: usize = std::env::var("PIPESERVE_CHILD_CONNECTIONS")
            .unwrap()
            .parse()
            .unwrap();
        let call = std::env::var("PIPESERVE_CHILD_CALL").unwrap() == "1";
        let mut report = Report::default();
        let mut held = Vec::new();
        for i in 0..connections {
            let mut stream = match UnixStream::connect(&path) {
                Ok(stream) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    report.denied += 1;
                    continue;
                }
                Err(e) => panic!("connect: {e}"),
            };
            if call {
                let body = format!("request {i}");
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(body.as_bytes());
                let _ = stream.write_all(&frame);
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut reply = vec![0; frame.len()];
                match stream.read_exact(&mut reply) {
                    Ok(()) if reply == frame => report.served += 1,
                    Ok(()) => panic!("a wrong reply: {reply:?}"),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => report.waiting += 1,
                    Err(_) => report.refused += 1, // EOF or reset
                }
            } else {
                report.waiting += 1;
            }
            held.push(stream);
        }
        println!(
            "served={} refused={} waiting={} denied={}",
            report.served, report.refused, report.waiting, report.denied
        );
        // Hold the connections until the parent closes stdin.
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }

    /// The child servers and takeovers of the takeover tests: with
    /// `PIPESERVE_CHILD_SERVE=PATH`, an upgradable echo server on `PATH`
    /// until stdin closes (`serve_until_stdin_closes`); with
    /// `PIPESERVE_CHILD_TAKEOVER=PATH`, a takeover of `PATH` that prints
    /// how it ended.
    #[test]
    fn child_server() {
        let serve = std::env::var("PIPESERVE_CHILD_SERVE").ok();
        let takeover = std::env::var("PIPESERVE_CHILD_TAKEOVER").ok();
        if serve.is_none() && takeover.is_none() {
            return;
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            if let Some(path) = takeover {
                match Server::builder().takeover(true).bind(&path) {
                    Ok(_) => println!("takeover: taken"),
                    Err(e) => println!(
                        "takeover: refused identity={} addr_in_use={}: {e}",
                        e.is_identity(),
                        e.is_addr_in_use()
                    ),
                }
                return;
            }
            let server = Server::builder()
                .upgradable(true)
                .socket_mode(0o666)
                .bind(&serve.unwrap())
                .unwrap();
            let echo =
                tower::service_fn(
                    |req: Bytes| async move { Ok::<_, std::convert::Infallible>(req) },
                );
            serve_until_stdin_closes(server, |server| server.serve(echo)).await;
        });
    }

    /// Runs `child_server` as `uid` with `env`; its stdout as lines.
    fn spawn_server_child(
        uid: u32,
        env: (&str, &Path),
    ) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
        let mut child = child_as(uid, uid, "unix::child_server")
            .env(env.0, env.1)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        (child, lines)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_of_another_users_server_is_refused_both_ways_and_the_server_goes_on() {
        if !as_root() {
            return;
        }
        within(120, async {
            // A directory both may create in, as /tmp: sticky, so neither
            // can rename or remove the other's socket.
            let dir = open_dir("takeover-uids");
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();

            // Alice's server; root (this process) tries to take it over.
            let alices = dir.join("alice.sock");
            // Blocking on the child only off the runtime's threads, so
            // that `within` can still time the test out.
            let a = alices.clone();
            let (mut alice, mut out) = tokio::task::spawn_blocking(move || {
                let (child, mut out) = spawn_server_child(ALICE, ("PIPESERVE_CHILD_SERVE", &a));
                assert!(line_with(&mut out, "listening on ").ends_with("alice.sock"));
                (child, out)
            })
            .await
            .unwrap();
            let before = fs::symlink_metadata(&alices).unwrap();
            let err = Server::builder()
                .takeover(true)
                .bind(alices.to_str().unwrap())
                .unwrap_err();
            assert!(err.is_identity(), "{err}");
            assert!(err.to_string().contains("uid 64001"), "{err}");
            // Alice's server still holds its path and serves.
            let after = fs::symlink_metadata(&alices).unwrap();
            assert_eq!((after.ino(), after.uid()), (before.ino(), ALICE));
            // (pipeserve's `Client` would refuse alice's server: a raw one.)
            let mut me = raw_connect(alices.to_str().unwrap()).await;
            me.write_all(&frame(b"still alice's")).await.unwrap();
            assert_eq!(read_frame(&mut me).await.unwrap(), b"still alice's");
            drop(me);
            let said = tokio::task::spawn_blocking(move || {
                drop(alice.stdin.take());
                let said = line_with(&mut out, "requests=");
                assert!(alice.wait().unwrap().success());
                said
            })
            .await
            .unwrap();
            // The takeover's probe is a connection, never a request.
            assert_eq!(said, "requests=1 refused=0");

            // Root's server; alice tries to take it over.
            let roots = dir.join("root.sock");
            let server = Server::builder()
                .socket_mode(0o666)
                .upgradable(true)
                .bind(roots.to_str().unwrap())
                .unwrap();
            let handle = server.handle();
            let echo =
                tower::service_fn(
                    |req: Bytes| async move { Ok::<_, std::convert::Infallible>(req) },
                );
            let serving = tokio::spawn(server.serve(echo));
            handle.ready().await;
            let before = fs::symlink_metadata(&roots).unwrap();
            let r = roots.clone();
            let said = tokio::task::spawn_blocking(move || {
                let (mut child, mut out) =
                    spawn_server_child(ALICE, ("PIPESERVE_CHILD_TAKEOVER", &r));
                let said = line_with(&mut out, "takeover: ");
                assert!(child.wait().unwrap().success());
                said
            })
            .await
            .unwrap();
            assert!(
                said.starts_with("takeover: refused identity=true addr_in_use=false: ")
                    && said.contains("uid 0"),
                "{said}"
            );
            let after = fs::symlink_metadata(&roots).unwrap();
            assert_eq!((after.ino(), after.uid()), (before.ino(), 0));
            let me = Client::connect(roots.to_str().unwrap()).await.unwrap();
            assert_eq!(
                me.call(Bytes::from("still root's")).await.unwrap(),
                "still root's"
            );
            drop(me);
            handle.shutdown();
            assert_eq!(serving.await.unwrap().unwrap().requests, 1);
            fs::remove_dir_all(&dir).unwrap();
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_holding_twenty_connections_gets_its_share_and_other_users_are_served_at_once() {
        if !as_root() {
            return;
        }
        within(120, async {
            let dir = open_dir("share-uids");
            let path = dir.join("s.sock");
            let server = Server::builder()
                .instances(4)
                .max_connections_per_user(2)
                .socket_mode(0o666)
                .bind(path.to_str().unwrap())
                .unwrap();
            let handle = server.handle();
            let echo =
                tower::service_fn(
                    |req: Bytes| async move { Ok::<_, std::convert::Infallible>(req) },
                );
            let serving = tokio::spawn(server.serve(echo));

            let p = path.clone();
            let alice =
                tokio::task::spawn_blocking(move || Clients::start(ALICE, ALICE, &p, 20, true))
                    .await
                    .unwrap();
            assert_eq!(
                alice.report,
                Report {
                    served: 2,
                    refused: 18,
                    ..Report::default()
                },
                "alice's 20 connections"
            );
            let stats = handle.stats();
            assert_eq!(
                (stats.refused, stats.refused_per_user),
                (18, 18),
                "{stats:?}"
            );
            assert_eq!(
                stats.requests, 2,
                "refused before a byte was served: {stats:?}"
            );
            // While alice holds her share, bob and root are served.
            let p = path.clone();
            let bob = tokio::task::spawn_blocking(move || Clients::start(BOB, BOB, &p, 1, true))
                .await
                .unwrap();
            assert_eq!(
                bob.report,
                Report {
                    served: 1,
                    ..Report::default()
                }
            );
            let me = Client::connect(path.to_str().unwrap()).await.unwrap();
            assert_eq!(me.call(Bytes::from("root")).await.unwrap(), "root");
            // Alice closes hers: she is served again.
            alice.close();
            until_stats(&handle, |s| s.active == 2).await;
            let p = path.clone();
            let again =
                tokio::task::spawn_blocking(move || Clients::start(ALICE, ALICE, &p, 2, true))
                    .await
                    .unwrap();
            assert_eq!(
                again.report,
                Report {
                    served: 2,
                    ..Report::default()
                }
            );
            again.close();
            bob.close();
            drop(me);
            handle.shutdown();
            let summary = serving.await.unwrap().unwrap();
            assert_eq!(summary.stats.refused_per_user, 18);
            fs::remove_dir_all(&dir).unwrap();
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_freed_place_goes_to_the_user_with_fewer_served_before_one_that_waited_longer() {
        if !as_root() {
            return;
        }
        within(120, async {
            let dir = open_dir("fair-uids");
            let path = dir.join("s.sock");
            let server = Server::builder()
                .instances(2)
                .max_connections_per_user(4)
                .socket_mode(0o666)
                .bind(path.to_str().unwrap())
                .unwrap();
            let handle = server.handle();
            let mut incoming = server.into_incoming();
            let uid = |c: &pipeserve::server::Connection| c.info().user().unwrap().uid();
            // Two places and two spare accept slots. Alice: two served (held
            // here), one waiting.
            let p = path.clone();
            let alice =
                tokio::task::spawn_blocking(move || Clients::start(ALICE, ALICE, &p, 3, false))
                    .await
                    .unwrap();
            let a1 = incoming.next().await.unwrap().unwrap();
            let a2 = incoming.next().await.unwrap().unwrap();
            assert_eq!((uid(&a1), uid(&a2)), (ALICE, ALICE));
            until_stats(&handle, |s| s.waiting == 1).await;
            // Then bob, waiting behind alice's third.
            let p = path.clone();
            let bob = tokio::task::spawn_blocking(move || Clients::start(BOB, BOB, &p, 1, false))
                .await
                .unwrap();
            until_stats(&handle, |s| s.waiting == 2).await;
            // Alice still has one served, bob none: bob's turn.
            drop(a1);
            let next = incoming.next().await.unwrap().unwrap();
            assert_eq!(uid(&next), BOB, "a place went to the user with more served");
            // Then alice's third.
            drop(next);
            let next = incoming.next().await.unwrap().unwrap();
            assert_eq!(uid(&next), ALICE);
            drop((a2, next));
            alice.close();
            bob.close();
            fs::remove_dir_all(&dir).unwrap();
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_of_mode_0660_and_a_group_lets_its_members_in_and_keeps_others_out() {
        if !as_root() {
            return;
        }
        within(120, async {
            let dir = open_dir("group-uids");
            let path = dir.join("s.sock");
            let server = Server::builder()
                .socket_mode(0o660)
                .socket_group(STAFF)
                .authorize(authorize::group_gid(STAFF))
                .bind(path.to_str().unwrap())
                .unwrap();
            let md = fs::symlink_metadata(&path).unwrap();
            assert_eq!((md.mode() & 0o7777, md.gid()), (0o660, STAFF));
            // An echo that notes who the server sees.
            let seen = Arc::new(Mutex::new(Vec::new()));
            let make = {
                let seen = seen.clone();
                tower::service_fn(move |info: ConnectionInfo| {
                    let user = info.user().unwrap();
                    seen.lock().unwrap().push((user.uid(), user.gid()));
                    async move {
                        Ok::<_, std::convert::Infallible>(tower::service_fn(
                            |req: Bytes| async move { Ok::<_, std::convert::Infallible>(req) },
                        ))
                    }
                })
            };
            let handle = server.handle();
            let serving = tokio::spawn(server.serve_make(make));
            // A member (primary group STAFF): in, as who it is.
            let p = path.clone();
            let member =
                tokio::task::spawn_blocking(move || Clients::start(ALICE, STAFF, &p, 1, true))
                    .await
                    .unwrap();
            assert_eq!(
                member.report,
                Report {
                    served: 1,
                    ..Report::default()
                }
            );
            assert_eq!(*seen.lock().unwrap(), [(ALICE, Some(STAFF))]);
            // Anyone else: the socket refuses them (EACCES), the server never sees them.
            let p = path.clone();
            let other = tokio::task::spawn_blocking(move || Clients::start(BOB, BOB, &p, 1, true))
                .await
                .unwrap();
            assert_eq!(
                other.report,
                Report {
                    denied: 1,
                    ..Report::default()
                }
            );
            member.close();
            other.close();
            assert_eq!(handle.stats().refused, 0);
            assert_eq!(seen.lock().unwrap().len(), 1);
            handle.shutdown();
            serving.await.unwrap().unwrap();
            fs::remove_dir_all(&dir).unwrap();
        })
        .await
    }
}
