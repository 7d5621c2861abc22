//! A daemon under systemd (the `systemd` feature): the readiness protocol
//! (`READY=1` once every instance listens, `STOPPING=1` when a graceful
//! shutdown begins, sent to `NOTIFY_SOCKET`) and socket activation (a
//! listening socket passed as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID`).
//!
//! Both are per process (the environment, fd 3), so each server runs in a
//! child process: this test binary re-run as one of the `child_*` tests,
//! which do nothing unless started so. The child is given what systemd
//! gives a service: a datagram socket to notify, or a socket on fd 3 and
//! `LISTEN_PID` set to its own pid (by `sh`, which then `exec`s it, as
//! systemd sets it between fork and exec).
#![cfg(all(unix, feature = "systemd"))]

mod common;

use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::{
            fs::PermissionsExt,
            net::{UnixDatagram, UnixListener, UnixStream},
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use common::{line_with, unique_name};
use pipeserve::{server::authorize, ConnectionInfo, Server, User};

/// A uid that is neither root's nor the test's, for a refused client.
const STRANGER: u32 = 64003;

/// Runs `test` on a thread of its own and fails if it takes over `secs`
/// (a child that never answers must not hang the run). Its children are
/// left to the pipes: they end when this process does.
fn within(secs: u64, test: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        test();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => thread.join().unwrap(),
        // The test panicked: its panic, as the test's.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(thread.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("test did not finish within {secs} s")
        }
    }
}

/// Whether processes of other uids can run this test binary (not under a
/// `0700` home, say).
fn others_may_run_me() -> bool {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .all(|path| std::fs::metadata(path).is_ok_and(|md| md.permissions().mode() & 0o001 != 0))
}

/// A fresh directory for a test's sockets.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(tag));
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// This test binary, to run `test` alone as a child.
fn child(test: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd
}

/// `cmd`, with `listener` as its fd 3 and `LISTEN_FDS=1`, `LISTEN_PID` its
/// own pid, as systemd starts a socket-activated service.
fn activated(cmd: Command, listener: RawFd) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "pipeserve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            sh.env(key, value);
        }
    }
    // Safety: between fork and exec only async-signal-safe calls: dup2
    // and fcntl on descriptors this process owns; `listener` outlives the
    // spawn (the caller holds it).
    unsafe {
        sh.pre_exec(move || {
            if listener == 3 {
                // dup2 onto itself keeps close-on-exec: clear it.
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(listener, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    sh
}

/// Closes the child's stdin (its signal to shut down) and waits for it;
/// the rest of its output.
fn finish(mut child: Child, mut stdout: BufReader<ChildStdout>) -> String {
    drop(child.stdin.take());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "the child failed: {rest}");
    rest
}

/// One length-prefixed request, its reply (`None`: closed without one,
/// perhaps before the request could be written).
fn call(path: &Path, body: &str) -> Option<String> {
    let mut stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    stream.write_all(&frame).ok()?;
    let mut len = [0; 4];
    stream.read_exact(&mut len).ok()?;
    let mut reply = vec![0; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).unwrap();
    Some(String::from_utf8(reply).unwrap())
}

/// Runs a server child's body: a runtime, `bind`, and serving until stdin
/// closes (see `common::serve_until_stdin_closes`), with a service that
/// replies with who the server sees; a failed bind is printed.
fn serve_until_stdin_closes(bind: impl FnOnce() -> Result<Server, pipeserve::Error>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = match bind() {
            Ok(server) => server,
            Err(e) => {
                println!(
                    "bind failed: {e} (bind={} config={})",
                    e.is_bind(),
                    e.is_config()
                );
                return;
            }
        };
        // Replies with who the server sees, from the connection.
        let make = tower::service_fn(|info: ConnectionInfo| async move {
            let who = format!(
                "uid={} pid={}",
                info.user().map_or(u32::MAX, |u| u.uid()),
                info.client_pid().unwrap_or(0)
            );
            Ok::<_, Infallible>(tower::service_fn(move |req: Bytes| {
                let reply = format!("{who}: {}", String::from_utf8_lossy(&req));
                async move { Ok::<_, Infallible>(Bytes::from(reply)) }
            }))
        });
        common::serve_until_stdin_closes(server, |server| server.serve_make(make)).await;
    });
}

/// The child of the readiness test: notifies `NOTIFY_SOCKET`.
#[test]
fn child_notifying_server() {
    let Ok(path) = std::env::var("PIPESERVE_CHILD_SOCKET") else {
        return;
    };
    serve_until_stdin_closes(|| {
        Server::builder()
            .instances(4)
            .systemd_notify(true)
            .bind(&path)
    });
}

/// The child of the activation tests: serves the socket it was passed,
/// letting in only `PIPESERVE_CHILD_ALLOW`.
#[test]
fn child_activated_server() {
    let Ok(allow) = std::env::var("PIPESERVE_CHILD_ALLOW") else {
        return;
    };
    serve_until_stdin_closes(|| {
        Server::builder()
            .instances(2)
            .authorize(authorize::user(User::parse(&allow).unwrap()))
            .bind_systemd()
    });
}

/// The datagrams systemd would read from its notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        NotifySocket { socket, path }
    }

    fn next(&self) -> String {
        let mut buf = [0; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn nothing_more(&self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0; 4096];
        let extra = self.socket.recv(&mut buf).map(|n| buf[..n].to_vec());
        assert!(extra.is_err(), "one more notification: {extra:?}");
    }
}

#[test]
fn systemd_hears_ready_once_every_instance_listens_and_stopping_at_shutdown() {
    within(60, || {
        let dir = scratch("notify");
        let notify = NotifySocket::new(&dir);
        let socket = dir.join("s.sock");
        let mut child = child("child_notifying_server")
            .env("NOTIFY_SOCKET", &notify.path)
            .env("PIPESERVE_CHILD_SOCKET", &socket)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());

        let ready = notify.next();
        assert_eq!(
            ready,
            format!("READY=1\nSTATUS=listening on {}\n", socket.display())
        );
        // Ready means served now: no connect waits for the server to start.
        let reply = call(&socket, "hello").expect("served once READY=1 was sent");
        assert!(reply.ends_with(": hello"), "{reply}");
        assert_eq!(
            line_with((&mut stdout).lines(), "listening on "),
            format!("listening on {}", socket.display())
        );

        let rest = finish(child, stdout);
        assert_eq!(notify.next(), "STOPPING=1\n");
        notify.nothing_more();
        assert!(rest.contains("requests=1 refused=0"), "{rest}");
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn a_socket_passed_as_systemd_does_is_served_with_peer_credentials_and_rules_and_left_in_place() {
    within(60, || {
        let dir = scratch("activated");
        // Reachable by a client of another uid (root's tests below).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("s.sock");
        // systemd's side: it binds and listens, the service never does.
        let listener = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let me = User::current().unwrap().uid();
        let mut cmd = child("child_activated_server");
        cmd.env("PIPESERVE_CHILD_ALLOW", me.to_string());
        let mut child = activated(cmd, listener.as_raw_fd()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        assert_eq!(
            line_with((&mut stdout).lines(), "listening on "),
            format!("listening on {}", path.display())
        );
        // The child serves systemd's socket: the one the test holds.
        drop(listener);

        // The client's uid and pid as the kernel says, through the rule.
        let reply = call(&path, "hello").expect("the allowed user is served");
        assert_eq!(reply, format!("uid={me} pid={}: hello", std::process::id()));
        // Another uid: refused by the rule, never served.
        let stranger_refused = if me == 0 && others_may_run_me() {
            let mut client = Command::new(std::env::current_exe().unwrap());
            let out = client
                .args(["--exact", "child_client", "--nocapture"])
                .env("PIPESERVE_CHILD_CONNECT", &path)
                .uid(STRANGER)
                .gid(STRANGER)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(said.contains("client: refused"), "{said}{err}");
            true
        } else {
            eprintln!("not root, or this binary is out of other uids' reach: no client of another uid; that part skipped");
            false
        };

        let rest = finish(child, stdout);
        let refused = usize::from(stranger_refused);
        assert!(
            rest.contains(&format!("requests=1 refused={refused}")),
            "{rest}"
        );
        // The socket is systemd's: left in place at shutdown.
        assert!(std::fs::symlink_metadata(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

/// A client in a child process (of another uid): `served` or `refused`.
#[test]
fn child_client() {
    let Some(path) = std::env::var_os("PIPESERVE_CHILD_CONNECT") else {
        return;
    };
    match call(Path::new(&path), "stranger") {
        Some(reply) => println!("client: served: {reply}"),
        None => println!("client: refused"),
    }
}

#[test]
fn passed_sockets_for_another_process_or_not_listening_are_refused() {
    within(60, || {
        let dir = scratch("activated-not");
        // LISTEN_PID names another process: nothing was passed to this one.
        let listener = UnixListener::bind(dir.join("s.sock")).unwrap();
        let mut cmd = child("child_activated_server");
        cmd.env("PIPESERVE_CHILD_ALLOW", "0")
            .env("LISTEN_PID", "1")
            .env("LISTEN_FDS", "1");
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.contains("bind failed: ")
                && out.contains("systemd passed no socket")
                && out.contains("(bind=true config=false)"),
            "{out}"
        );
        // A socket that does not listen (bound, never listened on): a clear
        // configuration error, not served.
        let not_listening = UnixDatagram::bind(dir.join("d.sock")).unwrap();
        let mut cmd = child("child_activated_server");
        cmd.env("PIPESERVE_CHILD_ALLOW", "0");
        let out = activated(cmd, not_listening.as_raw_fd())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.contains("bind failed: ")
                && out.contains("not listening")
                && out.contains("(bind=false config=true)"),
            "{out}"
        );
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}
