//! Spoofing by pid reuse (Windows, played under Wine): a client connects,
//! writes a request and exits before the server serves it; its process id
//! then goes to another process. The server's rules and
//! `ConnectionInfo::user` must describe the connection, never that process.
//!
//! Wine runs every process as one user, so the process that takes the pid
//! differs by its token instead: Administrators is deny-only in it
//! (`CreateRestrictedToken`), and the server admits only clients in that
//! group (`authorize::group_sid`). Judged by a lookup of the pid, the
//! request is refused; judged by the connection, it is served. (Wine's
//! `ImpersonateNamedPipeClient` gives the server its own process token, so
//! under Wine this shows that the rule never saw the newcomer, not that it
//! saw the client's own token: real Windows gives the client's.)
//!
//! The helper processes are this test binary, run with one test and a
//! marker argument.
#![cfg(windows)]

mod common;

use std::{
    convert::Infallible,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use common::*;
use pipeserve::{
    server::authorize::{self, Authorize},
    test_util::{os_thread_id, spawn_without_group, Restricted},
    Address, ConnectionInfo, Server,
};

const ADMINISTRATORS: &str = "S-1-5-32-544";
const HOLD: &str = "pipeserve-marker-hold";

/// Helper: stays alive (holding its pid) until killed.
#[test]
fn hold_a_pid() {
    if std::env::args().any(|a| a == HOLD) {
        std::thread::sleep(Duration::from_secs(120));
    }
}

/// Helper: connects to the pipe named by its `pipe=` argument, writes one
/// length-delimited request and exits.
#[test]
fn connect_write_and_exit() {
    let Some(name) = std::env::args().find_map(|a| a.strip_prefix("pipe=").map(str::to_owned))
    else {
        return;
    };
    let path = Address::new(&name).unwrap().as_path().to_owned();
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    pipe.write_all(&frame(b"from the client that left"))
        .unwrap();
}

/// The id the next thread gets.
fn next_id() -> u32 {
    std::thread::spawn(os_thread_id).join().unwrap()
}

/// Starts a process with `spawn` once `target`, an id just freed, is the
/// one Wine hands out next. Wine reuses ids first in, first out once its
/// table is full and 256 are free: threads that start and end one after
/// another walk the free ids in a cycle, and the id before `target` in that
/// cycle says that `target` is next. Anything else that starts a thread
/// meanwhile shifts the cycle; then it is learned again.
fn take_pid(target: u32, spawn: impl Fn() -> Restricted) -> Restricted {
    let (mut before, mut last) = (None, 0);
    for _ in 0..50_000 {
        if before == Some(last) {
            let process = spawn();
            if process.pid() == target {
                return process;
            }
            drop(process);
            before = None;
        }
        let id = next_id();
        if id == target {
            before = Some(last);
        }
        last = id;
    }
    panic!("Wine never handed out id {target} again");
}

#[test]
fn a_client_whose_pid_went_to_another_process_is_judged_by_its_connection() {
    if !pipeserve::test_util::running_under_wine() {
        // Real Windows reuses ids in no order a test can steer.
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = unique_name("pid-reuse");
    let server = runtime.block_on(async {
        Server::builder()
            .instances(1)
            .authorize(authorize::group_sid(ADMINISTRATORS))
            .bind(&name)
            .unwrap()
    });

    // The client connects to the bound pipe, writes, and is gone.
    let exe = std::env::current_exe().unwrap();
    let mut client = std::process::Command::new(&exe)
        .args(["--exact", "connect_write_and_exit", "--nocapture"])
        .arg(format!("pipe={name}"))
        .spawn()
        .unwrap();
    let client_pid = client.id();
    assert!(client.wait().unwrap().success());
    drop(client);

    // Its pid goes to a process that is no administrator.
    let holder = format!(
        "\"{}\" --exact hold_a_pid --nocapture {HOLD}",
        exe.display()
    );
    let newcomer = take_pid(client_pid, || {
        spawn_without_group(&holder, ADMINISTRATORS).unwrap()
    });

    // Only now does the server serve.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let summary = runtime.block_on(within(60, {
        let seen = seen.clone();
        async move {
            let handle = server.handle();
            let record = seen.clone();
            let make = tower::service_fn(move |info: ConnectionInfo| {
                let seen = record.clone();
                async move {
                    Ok::<_, Infallible>(tower::service_fn(move |req: Bytes| {
                        let (seen, info) = (seen.clone(), info.clone());
                        async move {
                            // What the service is told of its client.
                            let admin = authorize::group_sid(ADMINISTRATORS).check(&info).await;
                            seen.lock().unwrap().push((
                                req.clone(),
                                info.client_pid(),
                                admin.is_ok(),
                            ));
                            Ok::<_, Infallible>(req)
                        }
                    }))
                }
            });
            let serving = tokio::spawn(server.serve_make(make));
            while seen.lock().unwrap().is_empty() && handle.stats().refused == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            handle.shutdown();
            serving.await.unwrap().unwrap()
        }
    }));
    drop(newcomer);
    assert_eq!(
        summary.stats.refused, 0,
        "the client was judged by the process that took its pid"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (req, pid, admin) = &seen[0];
    assert_eq!(req, "from the client that left");
    // The pid is what the client had: information only.
    assert_eq!(*pid, Some(client_pid));
    assert!(admin, "info.user() described the process that took the pid");
}
