//! Unix-only behaviour: the socket file's permissions and lifecycle.
#![cfg(unix)]

mod common;

use std::{
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use pipeserve::{server::Builder, Address, Client, Server};

fn socket_path(name: &str) -> PathBuf {
    Address::new(name).unwrap().as_path().to_owned()
}

/// Binds a server made by `builder` at a path of a fresh directory 50
/// times, while a watcher stats the path as fast as it can; fails on any
/// sighting of it with a mode (or, if given, a group) other than asked,
/// on a socket that outlived its server, and on anything left in the
/// directory (a staging directory).
fn never_seen_otherwise(tag: &str, mode: u32, gid: Option<u32>, builder: impl Fn() -> Builder) {
    let dir = scratch_dir(tag);
    let path = dir.join("s.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let wanted = move |md: &fs::Metadata| {
        md.permissions().mode() & 0o7777 == mode && gid.is_none_or(|gid| md.gid() == gid)
    };
    let watcher = {
        let (path, stop, seen) = (path.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(md) = fs::symlink_metadata(&path) {
                    seen.fetch_add(1, Ordering::Relaxed);
                    if !wanted(&md) {
                        bad.push((md.permissions().mode() & 0o7777, md.gid()));
                    }
                }
            }
            bad
        })
    };
    for _ in 0..50 {
        let sightings = seen.load(Ordering::Relaxed);
        let server = builder().bind(path.to_str().unwrap()).unwrap();
        // Not vacuous: the watcher saw this socket at least once.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::Relaxed) == sightings {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher never saw the socket"
            );
            std::thread::yield_now();
        }
        let md = fs::symlink_metadata(&path).unwrap();
        assert!(md.file_type().is_socket());
        assert!(
            wanted(&md),
            "mode {:o}, gid {}",
            md.permissions().mode(),
            md.gid()
        );
        drop(server);
        assert!(!path.exists(), "the socket file outlived its server");
    }
    stop.store(true, Ordering::Relaxed);
    let bad = watcher.join().unwrap();
    assert!(
        bad.is_empty(),
        "saw the socket {} times with other permissions, first mode {:o} gid {}",
        bad.len(),
        bad[0].0,
        bad[0].1
    );
    let left: Vec<_> = fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    fs::remove_dir(&dir).unwrap();
}

#[tokio::test]
async fn the_socket_is_never_seen_with_looser_permissions_than_0600() {
    never_seen_otherwise("perms", 0o600, None, Server::builder);
}

#[tokio::test]
async fn a_socket_given_a_mode_and_group_is_never_seen_with_others_while_binding() {
    // A group that is not root's: only root may give a file to it.
    const STAFF: u32 = 64010;
    if pipeserve::User::current().unwrap().uid() != 0 {
        eprintln!("not root: cannot give the socket another group; skipped");
        return;
    }
    never_seen_otherwise("perms-group", 0o660, Some(STAFF), || {
        Server::builder().socket_mode(0o660).socket_group(STAFF)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced() {
    within(30, async {
        let name = unique_name("stale");
        let path = socket_path(&name);
        // A dead server's socket: bound, then the listener closed, the file left.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        // Dead once connecting is refused: a child process that another test
        // forked meanwhile holds the listener until it execs.
        let refused = || {
            std::os::unix::net::UnixStream::connect(&path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        };
        while !refused() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let server = start_echo_on(&name);
        let client = Client::connect(&name).await.unwrap();
        assert_eq!(client.call(Bytes::from("fresh")).await.unwrap(), "fresh");
        drop(client);
        server.stop().await;
        assert!(!path.exists(), "the socket file is removed on shutdown");
    })
    .await
}

fn start_echo_on(name: &str) -> Running {
    let server = Server::builder().bind(name).unwrap();
    let handle = server.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let svc = tower::service_fn(|req: Bytes| async move { Ok::<_, std::convert::Infallible>(req) });
    let task = tokio::spawn(server.serve(svc).with_graceful_shutdown(async {
        let _ = stopped.await;
    }));
    Running::new(name.to_owned(), handle, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_servers_socket_is_never_stolen() {
    within(30, async {
        let name = unique_name("live");
        let server = start_echo_on(&name);
        let err = Server::builder().bind(&name).unwrap_err();
        assert!(err.is_addr_in_use(), "{err}");
        // The first server still has its socket and serves.
        let client = Client::connect(&name).await.unwrap();
        assert_eq!(client.call(Bytes::from("mine")).await.unwrap(), "mine");
        drop(client);
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_never_deleted() {
    let name = unique_name("not-a-socket");
    let path = socket_path(&name);
    fs::write(&path, b"precious").unwrap();
    let err = Server::builder().bind(&name).unwrap_err();
    assert!(err.is_addr_in_use(), "{err}");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"precious");
    fs::remove_file(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_the_socket_file_at_once_while_connections_drain() {
    within(30, async {
        let name = unique_name("unlink");
        let path = socket_path(&name);
        let svc = tower::service_fn(|req: Bytes| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>(req)
        });
        let server = Server::builder().bind(&name).unwrap();
        let handle = server.handle();
        let serving = tokio::spawn(server.serve(svc));
        let client = Client::connect(&name).await.unwrap();
        let call = tokio::spawn(async move { client.call(Bytes::from("slow")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.shutdown();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !path.exists(),
            "new clients can still find the socket during the drain"
        );
        assert_eq!(call.await.unwrap().unwrap(), "slow");
        serving.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn message_framing_on_unix_is_a_config_error() {
    let err = Server::builder()
        .framing(pipeserve::codec::Framing::Message)
        .bind(&unique_name("msg-unix"))
        .unwrap_err();
    assert!(err.is_config(), "{err}");
}

/// The child half of the test below: a server whose process has no file
/// descriptor left, so `accept` fails with EMFILE until it frees some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_child() {
    if std::env::var_os("PIPESERVE_EMFILE_CHILD").is_none() {
        return; // only runs as the child of the test below
    }
    let name = unique_name("emfile");
    let server = Server::builder().instances(2).bind(&name).unwrap();
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(tower::service_fn(|req: Bytes| async move {
        Ok::<_, std::convert::Infallible>(req)
    })));
    println!("listening on {}", Address::new(&name).unwrap());
    // Use up every descriptor.
    let mut hog = Vec::new();
    while let Ok(f) = fs::File::open("/dev/null") {
        hog.push(f);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failures_while_out = handle.stats().instance_failures;
    hog.truncate(hog.len().saturating_sub(16));
    // The parent's request gets served now.
    within(20, async {
        while handle.stats().requests < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    println!(
        "failures={failures_while_out} served={}",
        handle.stats().requests
    );
    handle.shutdown();
    serving.await.unwrap().unwrap();
}

#[test]
fn accept_failures_are_retried_with_backoff_and_never_end_the_server() {
    use std::io::{BufRead, BufReader, Read, Write};
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" --exact emfile_child --nocapture --test-threads=1"#)
        .arg(&exe)
        .env("PIPESERVE_EMFILE_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let path = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended before listening"
        );
        // The harness prints "test emfile_child ... " before the line.
        if let Some(at) = line.find("listening on ") {
            break PathBuf::from(line[at + "listening on ".len()..].trim());
        }
    };
    // Connect while the server is out of descriptors: the connection waits
    // in the backlog, the server's accept fails until it frees some.
    std::thread::sleep(Duration::from_millis(300));
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(b"\0\0\0\x05hello").unwrap();
    let mut reply = [0u8; 9];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\0\0\0\x05hello");
    drop(stream);

    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "the child failed:\n{rest}");
    let at = rest.find("failures=").expect("the child's report") + "failures=".len();
    let failures: u64 = rest[at..].split(' ').next().unwrap().parse().unwrap();
    // Two slots, backoff from 10 ms doubling: a handful of retries in 1.2 s,
    // not a busy loop.
    assert!(
        (1..=20).contains(&failures),
        "accept failures while out of descriptors: {failures}"
    );
}

/// A fresh directory for a test, under the temp dir.
fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(tag));
    fs::create_dir(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_directory_another_user_can_change_is_refused_and_nothing_is_created_in_it() {
    // Another user's directory, and a shared one without the sticky bit: in
    // either, they could swap the private staging directory for a symlink
    // between the steps that reach it by path.
    let theirs = scratch_dir("strict-theirs");
    let shared = scratch_dir("strict-shared");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let sticky = scratch_dir("strict-sticky");
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    let as_root = pipeserve::User::current().unwrap().uid() == 0;
    if as_root {
        // Played for real where the machine allows: a second uid owns it.
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    }
    let mut refused = vec![&shared];
    if as_root {
        refused.push(&theirs);
    } else {
        eprintln!("not root: cannot give a directory to another uid; checking the shared one only");
    }
    for dir in refused {
        let path = dir.join("s.sock");
        let err = Server::builder().bind(path.to_str().unwrap()).unwrap_err();
        assert!(err.is_bind(), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");
        assert_eq!(
            fs::read_dir(dir).unwrap().count(),
            0,
            "something was created in {}",
            dir.display()
        );
    }
    // Through a symlink the check is on the real directory: a link in a
    // good place to a shared one is refused too.
    let link = sticky.join("link");
    std::os::unix::fs::symlink(&shared, &link).unwrap();
    let err = Server::builder()
        .bind(link.join("s.sock").to_str().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("refusing"), "{err}");
    assert_eq!(fs::read_dir(&shared).unwrap().count(), 0);
    // A sticky shared directory (as /tmp) is fine: nobody can rename or
    // delete what we create there.
    let path = sticky.join("s.sock");
    let server = Server::builder().bind(path.to_str().unwrap()).unwrap();
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    drop(server);
    // And a shared directory whose writers you trust, when asked.
    let path = shared.join("s.sock");
    let server = Server::builder()
        .strict_socket_dir(false)
        .bind(path.to_str().unwrap())
        .unwrap();
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    drop(server);
    for dir in [theirs, shared, sticky] {
        let _ = fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn binding_over_a_live_socket_with_a_full_backlog_fails_at_once() {
    within(20, async {
        // Someone else's live socket whose backlog is full: a blocking
        // probe would hang `bind` for good.
        let dir = scratch_dir("backlog");
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut queued = Vec::new();
        loop {
            let socket = tokio::net::UnixSocket::new_stream().unwrap();
            match tokio::time::timeout(Duration::from_millis(50), socket.connect(&path)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break,
                Ok(Err(e)) => panic!("filling the backlog: {e}"),
            }
            assert!(queued.len() < 10_000, "the backlog never filled");
        }
        let started = std::time::Instant::now();
        let err = Server::builder().bind(path.to_str().unwrap()).unwrap_err();
        assert!(err.is_addr_in_use(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop((listener, queued));
        let _ = fs::remove_dir_all(dir);
    })
    .await
}
