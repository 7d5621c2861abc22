//! Windows-only behaviour: message framing on message-mode pipes.
#![cfg(windows)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use pipeserve::{codec::Framing, Client, PipeMode, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::windows::named_pipe::{ClientOptions, PipeMode as TokioPipeMode},
};

fn message_server(tag: &str) -> Running {
    start_echo(
        tag,
        Server::builder()
            .instances(1)
            .framing(Framing::Message)
            .linger(Duration::from_millis(200)),
    )
}

async fn message_client(name: &str) -> Client {
    Client::builder()
        .framing(Framing::Message)
        .connect(name)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_carried_a_large_reply_is_replaced_and_the_next_clients_are_served() {
    within(60, async {
        // One instance (and its spare): every client after the first two
        // reaches an instance replaced after a 1 MiB reply.
        let server = start_echo(
            "large-replaced",
            Server::builder()
                .instances(1)
                .linger(Duration::from_millis(200)),
        );
        for round in 0..4u8 {
            let client = Client::builder().connect(&server.name).await.unwrap();
            let big = payload(round, 1 << 20);
            assert_eq!(
                client.call(big.clone()).await.unwrap(),
                big,
                "client {round}"
            );
            let small = payload(round, 10);
            assert_eq!(client.call(small.clone()).await.unwrap(), small);
        }
        let summary = server.stop().await;
        assert_eq!(summary.connections, 4);
        assert_eq!(summary.stats.instance_failures, 0);
    })
    .await
}

/// The sizes around mio's read sizes (4 KiB first, up to 64 KiB after) and
/// beyond, and the empty message.
const SIZES: [usize; 9] = [0, 1, 4095, 4096, 4097, 65535, 65536, 65537, 1 << 20];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_any_size_are_one_frame_each_on_fresh_and_reused_instances() {
    within(120, async {
        for size in SIZES {
            // Two instances (one and its spare), three clients one after the
            // other: the first message of the first client is the first read
            // of a new instance; at least one later client has a reused one.
            let server = message_server("msg-sizes");
            for client in 0..3u8 {
                let c = message_client(&server.name).await;
                let req = payload(client, size);
                let reply = c.call(req.clone()).await.unwrap();
                assert!(
                    reply == req,
                    "{size} bytes, client {client}: {} back",
                    reply.len()
                );
                // And after a message of another size, on the same connection.
                let next = payload(client, 4097 - size.min(4097));
                assert!(
                    c.call(next.clone()).await.unwrap() == next,
                    "{size} then {}",
                    next.len()
                );
            }
            let summary = server.stop().await;
            assert_eq!(summary.connections, 3, "{size} bytes");
            assert_eq!(summary.requests, 6, "{size} bytes");
            assert_eq!(summary.stats.frames_rejected, 0);
            assert_eq!(summary.stats.io_errors, 0);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_messages_of_every_size_in_any_order() {
    within(60, async {
        let server = message_server("msg-mixed");
        let client = message_client(&server.name).await;
        for (i, size) in SIZES.iter().chain(SIZES.iter().rev()).enumerate() {
            let req = payload(i as u8, *size);
            assert!(
                client.call(req.clone()).await.unwrap() == req,
                "{size} bytes"
            );
        }
        drop(client);
        let summary = server.stop().await;
        assert_eq!(summary.requests, 18);
        assert_eq!(summary.stats.io_errors, 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_ends_its_connection_and_the_next_client_is_served() {
    within(120, async {
        // Over a limit of 64 KiB, known from the first read and the pipe's
        // count of the rest; over a limit of 100, within the first read.
        for (max, size) in [
            (65536, 65537),
            (65536, 1 << 20),
            (65536, 10 << 20),
            (100, 101),
            (100, 4000),
        ] {
            let server = start_echo(
                "msg-over",
                Server::builder()
                    .instances(1)
                    .framing(Framing::Message)
                    .max_frame_len(max)
                    .linger(Duration::from_millis(200)),
            );
            // Fresh instance, first read.
            let client = message_client(&server.name).await;
            let err = client.call(payload(3, size)).await.unwrap_err();
            assert!(err.is_closed(), "{size} bytes on a fresh instance: {err}");
            drop(client);
            // Reused instance: a good call first, then the long one.
            let client = message_client(&server.name).await;
            let ok = payload(4, max);
            assert!(client.call(ok.clone()).await.unwrap() == ok);
            let err = client.call(payload(4, size)).await.unwrap_err();
            assert!(err.is_closed(), "{size} bytes on a reused instance: {err}");
            drop(client);
            // And the next client is served.
            let client = message_client(&server.name).await;
            assert_eq!(client.call(Bytes::from("after")).await.unwrap(), "after");
            drop(client);
            let summary = server.stop().await;
            assert_eq!(summary.stats.frames_rejected, 2, "{size} bytes");
            assert_eq!(summary.stats.io_errors, 0, "{size} bytes");
            assert_eq!(summary.connections, 3);
        }
    })
    .await
}

/// A tokio client of a message-mode pipe, retrying while the instance is
/// busy.
async fn raw_message_client(name: &str) -> tokio::net::windows::named_pipe::NamedPipeClient {
    let address = pipeserve::Address::new(name).unwrap();
    loop {
        match ClientOptions::new()
            .pipe_mode(TokioPipeMode::Message)
            .open(address.as_path())
        {
            Err(e) if e.raw_os_error() == Some(231) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            pipe => break pipe.unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_waits_for_its_client_to_read_is_written_whole_once_it_does() {
    within(60, async {
        // A 4 KiB pipe buffer: a larger reply waits until the client reads,
        // which is when the server first has to wait for a write.
        let server = start_echo(
            "msg-slow-reader",
            Server::builder()
                .instances(1)
                .framing(Framing::Message)
                .out_buffer_size(4096)
                .linger(Duration::from_millis(200)),
        );
        let mut pipe = raw_message_client(&server.name).await;
        for round in 0..4u8 {
            let request = payload(round, 256 * 1024);
            pipe.write_all(&request).await.unwrap();
            // The reply's write is in flight, and stays so until we read.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut reply = vec![0u8; request.len()];
            pipe.read_exact(&mut reply).await.unwrap();
            assert!(reply == request, "round {round}: the reply differs");
            // Then a small one, which fits at once.
            pipe.write_all(b"small").await.unwrap();
            let mut small = [0u8; 5];
            pipe.read_exact(&mut small).await.unwrap();
            assert_eq!(&small, b"small");
        }
        drop(pipe);
        let summary = server.stop().await;
        assert_eq!(summary.stats.timeouts, 0);
        assert_eq!(summary.stats.requests, 8);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_client_that_never_reads_is_cut_at_the_write_timeout() {
    within(60, async {
        let server = start_echo(
            "msg-never-reads",
            Server::builder()
                .instances(2)
                .framing(Framing::Message)
                .out_buffer_size(4096)
                .write_timeout(Some(Duration::from_millis(300)))
                .linger(Duration::from_millis(200)),
        );
        let good = message_client(&server.name).await;
        let mut greedy = raw_message_client(&server.name).await;
        // 64 MiB of messages whose echoes it never reads: the server's
        // reply write waits, it reads no more, and the connection is cut.
        let message = payload(3, 256 * 1024);
        let pushed = within(30, async {
            for _ in 0..256 {
                if greedy.write_all(&message).await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(
            !pushed,
            "the server took all 64 MiB from a client that never reads"
        );
        assert_eq!(good.call(Bytes::from("served")).await.unwrap(), "served");
        drop((good, greedy));
        let summary = server.stop().await;
        assert_eq!(summary.stats.timeouts, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_before_their_replies_lose_nothing_for_the_others() {
    within(60, async {
        // A small pipe buffer: a 1 MiB write waits for the server to read.
        let server = start_echo(
            "msg-vanish",
            Server::builder()
                .instances(2)
                .framing(Framing::Message)
                .in_buffer_size(4096)
                .linger(Duration::from_millis(200)),
        );
        let steady = message_client(&server.name).await;
        assert_eq!(steady.call(Bytes::from("before")).await.unwrap(), "before");
        for wait_ms in [0, 1, 20] {
            // The instance of the last one may still be waiting for its EOF.
            let mut pipe = raw_message_client(&server.name).await;
            // A 1 MiB message handed to an overlapped write, then the handle
            // goes away before the reply (mio keeps the handle until its
            // write is done, and Wine takes a message whole: the server
            // reads all of it, and its reply finds the client gone).
            let _ = pipe.write(&payload(9, 1 << 20)).await;
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            drop(pipe);
        }
        // The other client, and the next ones, are served.
        assert_eq!(steady.call(Bytes::from("during")).await.unwrap(), "during");
        let next = message_client(&server.name).await;
        let big = payload(1, 1 << 20);
        assert!(next.call(big.clone()).await.unwrap() == big);
        drop((steady, next));
        let summary = server.stop().await;
        assert_eq!(summary.connections, 5);
        assert_eq!(summary.stats.instance_failures, 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_reads_in_flight_ends_and_the_clients_see_the_end() {
    within(60, async {
        let server = start_echo(
            "msg-shutdown",
            Server::builder()
                .instances(2)
                .framing(Framing::Message)
                .linger(Duration::from_millis(200)),
        );
        // Connected and served once, then idle: the server has a read in
        // flight on each, and connects in flight on the other instances.
        let a = message_client(&server.name).await;
        let b = message_client(&server.name).await;
        assert_eq!(a.call(Bytes::from("a")).await.unwrap(), "a");
        assert_eq!(b.call(Bytes::from("b")).await.unwrap(), "b");
        let summary = server.stop().await;
        assert_eq!(summary.connections, 2);
        assert_eq!(summary.requests, 2);
        assert_eq!(summary.stats.io_errors, 0);
        let err = a.call(Bytes::from("after")).await.unwrap_err();
        assert!(err.is_closed(), "{err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_dropped_with_reads_in_flight_after_the_drain_deadline_free_their_name() {
    within(60, async {
        // A service that never answers and a linger longer than the drain:
        // the connections are dropped with their reads (and the spares with
        // their connects) in flight.
        let builder = || {
            Server::builder()
                .instances(2)
                .framing(Framing::Message)
                .linger(Duration::from_secs(30))
                .drain_timeout(Duration::from_millis(100))
        };
        let server = start(
            "msg-drop",
            builder(),
            tower::service_fn(|_: Bytes| {
                std::future::pending::<Result<Bytes, std::convert::Infallible>>()
            }),
        );
        let name = server.name.clone();
        let a = message_client(&name).await;
        let b = message_client(&name).await;
        let calls = tokio::spawn(async move {
            let (ra, rb) = tokio::join!(a.call(Bytes::from("a")), b.call(Bytes::from("b")));
            (ra.unwrap_err(), rb.unwrap_err())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let summary = server.stop().await;
        assert_eq!(summary.connections, 2);
        let (ea, eb) = calls.await.unwrap();
        assert!(ea.is_closed() && eb.is_closed(), "{ea}; {eb}");
        // Every instance's handle is closed: the name is free for a new
        // server's first instance, and it serves.
        let again = start_echo("msg-drop-again", builder());
        let client = message_client(&again.name).await;
        assert_eq!(client.call(Bytes::from("x")).await.unwrap(), "x");
        drop(client);
        again.stop().await;
        let server = Server::builder()
            .framing(Framing::Message)
            .bind(&name)
            .expect("the name is free again");
        drop(server);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_connect_and_close_at_once_end_like_any_client() {
    within(60, async {
        let server = message_server("msg-came-went");
        let address = pipeserve::Address::new(&server.name).unwrap();
        let mut gone = 0;
        while gone < 20 {
            // The server's first read finds the pipe closing (it fails at
            // once, or the connect found the client gone already).
            match ClientOptions::new()
                .pipe_mode(TokioPipeMode::Message)
                .open(address.as_path())
            {
                Ok(pipe) => {
                    drop(pipe);
                    gone += 1;
                }
                Err(e) if e.raw_os_error() == Some(231) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        let client = message_client(&server.name).await;
        assert_eq!(client.call(Bytes::from("after")).await.unwrap(), "after");
        drop(client);
        let summary = server.stop().await;
        assert_eq!(summary.requests, 1);
        assert_eq!(
            summary.stats.io_errors, 0,
            "a client gone is an end, not an error"
        );
        assert_eq!(summary.stats.instance_failures, 0);
    })
    .await
}

/// Windows cancels a thread's pending I/O when it exits, unless the handle
/// is on a completion port; tokio's threads do exit (a worker that ran
/// `block_in_place` joins the blocking pool, which lets idle threads go).
#[test]
fn reads_and_connects_in_flight_outlive_the_thread_that_started_them() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(10))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(within(60, async {
        let server = start(
            "msg-thread-exit",
            Server::builder().instances(2).framing(Framing::Message),
            tower::service_fn(|req: Bytes| async move {
                // This thread hands its worker on and, after the reply and
                // the next read it starts, idles out of the blocking pool.
                tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(20)));
                Ok::<_, std::convert::Infallible>(req)
            }),
        );
        let clients = [
            message_client(&server.name).await,
            message_client(&server.name).await,
        ];
        for round in 0..3u8 {
            for (i, client) in clients.iter().enumerate() {
                let req = payload(round + i as u8, 100);
                assert_eq!(
                    client.call(req.clone()).await.unwrap(),
                    req,
                    "round {round}"
                );
            }
            // Long enough for the threads that started the reads to exit.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // A third client, once the others are gone, on an instance whose
        // connect was started by a thread that is gone by now.
        drop(clients);
        let late = message_client(&server.name).await;
        assert_eq!(late.call(Bytes::from("late")).await.unwrap(), "late");
        drop(late);
        let summary = server.stop().await;
        assert_eq!(summary.requests, 7);
        assert_eq!(summary.stats.io_errors, 0);
        assert_eq!(summary.stats.instance_failures, 0);
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_one_frame_and_each_reply_one_message() {
    within(60, async {
        let server = message_server("msg-boundaries");
        let address = pipeserve::Address::new(&server.name).unwrap();
        let mut pipe = ClientOptions::new()
            .pipe_mode(TokioPipeMode::Message)
            .open(address.as_path())
            .unwrap();
        // Three messages back to back: never merged into one frame.
        for m in ["one", "two", "three"] {
            pipe.write_all(m.as_bytes()).await.unwrap();
        }
        let mut buf = vec![0u8; 4096];
        for m in ["one", "two", "three"] {
            let n = pipe.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], m.as_bytes(), "one read, one whole reply message");
        }
        drop(pipe);
        server.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_delimited_framing_is_exact_on_a_message_mode_pipe() {
    within(60, async {
        let server = start_echo(
            "len-in-msg",
            Server::builder().instances(1).pipe_mode(PipeMode::Message),
        );
        let client = Client::connect(&server.name).await.unwrap();
        for size in [0, 4095, 4096, 65537, 100_000, 1 << 20] {
            let req = payload(5, size);
            assert!(
                client.call(req.clone()).await.unwrap() == req,
                "{size} bytes"
            );
        }
        drop(client);
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn message_framing_with_byte_mode_is_a_config_error() {
    let err = Server::builder()
        .framing(Framing::Message)
        .pipe_mode(PipeMode::Byte)
        .bind(&unique_name("msg-byte"))
        .unwrap_err();
    assert!(err.is_config(), "{err}");
}

#[tokio::test]
async fn the_pipe_grants_only_the_owner_and_system_by_default() {
    use std::os::windows::io::AsHandle;
    let name = unique_name("dacl");
    let _server = Server::builder().bind(&name).unwrap();
    let address = pipeserve::Address::new(&name).unwrap();
    let client = ClientOptions::new().open(address.as_path()).unwrap();
    let sddl = pipeserve::test_util::dacl_sddl(client.as_handle()).unwrap();
    // SYSTEM and the server's own user SID (not OW: an elevated owner is
    // BUILTIN\Administrators).
    let me = pipeserve::User::current().unwrap();
    assert_eq!(sddl, format!("D:P(A;;GA;;;SY)(A;;GA;;;{})", me.sid()));
}

#[tokio::test]
async fn a_custom_sddl_is_the_pipes_dacl() {
    use std::os::windows::io::AsHandle;
    let name = unique_name("dacl-custom");
    let _server = Server::builder()
        .sddl(Some("D:P(A;;GA;;;SY)(A;;GA;;;OW)(A;;0x12018b;;;AU)"))
        .bind(&name)
        .unwrap();
    let address = pipeserve::Address::new(&name).unwrap();
    let client = ClientOptions::new().open(address.as_path()).unwrap();
    let sddl = pipeserve::test_util::dacl_sddl(client.as_handle()).unwrap();
    assert!(
        sddl.starts_with("D:P(A;;GA;;;SY)(A;;GA;;;OW)(A;;"),
        "{sddl}"
    );
    assert!(sddl.ends_with(";;;AU)"), "{sddl}");
}

/// The DACL and the mandatory label of a pipe served by `builder`, read
/// back through a client's handle.
fn descriptor_of(tag: &str, builder: pipeserve::server::Builder) -> (String, String) {
    use std::os::windows::io::AsHandle;
    let name = unique_name(tag);
    let _server = builder.bind(&name).unwrap();
    let address = pipeserve::Address::new(&name).unwrap();
    let client = ClientOptions::new().open(address.as_path()).unwrap();
    (
        pipeserve::test_util::dacl_sddl(client.as_handle()).unwrap(),
        pipeserve::test_util::label_sddl(client.as_handle()).unwrap(),
    )
}

#[tokio::test]
async fn each_access_preset_writes_its_dacl_and_label_and_no_one_else_may_create_instances() {
    use pipeserve::server::Allow;
    let me = pipeserve::User::current().unwrap();
    let owner = format!("D:P(A;;GA;;;{})", me.sid());
    // What a client may do: FILE_GENERIC_READ | FILE_WRITE_DATA |
    // FILE_WRITE_ATTRIBUTES, without FILE_CREATE_PIPE_INSTANCE (0x4).
    let client = "(A;;0x12018b;;;";
    let low = "S:(ML;;NW;;;LW)";
    // (preset, the SID as SDDL writes it (alias or string), label)
    let cases = [
        (Allow::System, "SY", ""),
        (Allow::Administrators, "BA", ""),
        (Allow::AuthenticatedUsers, "AU", ""),
        (Allow::InteractiveUsers, "IU", ""),
        (
            Allow::Sid("S-1-5-21-1-2-3-1001".into()),
            "S-1-5-21-1-2-3-1001",
            "",
        ),
        (Allow::AppContainers, "AC", low),
    ];
    for (allow, sid, label) in cases {
        let tag = format!("preset-{allow}").replace(['-', ' '], "");
        let (dacl, got_label) = descriptor_of(&tag, Server::builder().allow(allow.clone()));
        // A reader may print a well-known SID as its alias or its string.
        let as_string = match sid {
            "SY" => "S-1-5-18",
            "BA" => "S-1-5-32-544",
            "AU" => "S-1-5-11",
            "IU" => "S-1-5-4",
            "AC" => "S-1-15-2-1",
            other => other,
        };
        assert!(
            dacl == format!("{owner}{client}{sid})")
                || dacl == format!("{owner}{client}{as_string})"),
            "{allow}: {dacl}"
        );
        assert_eq!(got_label, label, "{allow}");
    }
    // Low integrity is a label, not an entry.
    let (dacl, label) = descriptor_of("preset-low", Server::builder().allow(Allow::LowIntegrity));
    assert_eq!((dacl.as_str(), label.as_str()), (owner.as_str(), low));
    // Several: each once, in order, and one label.
    let (dacl, label) = descriptor_of(
        "preset-many",
        Server::builder()
            .allow(Allow::InteractiveUsers)
            .allow(Allow::LowIntegrity)
            .allow(Allow::InteractiveUsers)
            .allow(Allow::AppContainers),
    );
    assert!(dacl.starts_with(&owner), "{dacl}");
    assert_eq!(dacl.matches(client).count(), 2, "{dacl}");
    assert_eq!(dacl.matches("GA").count(), 1, "{dacl}");
    assert_eq!(label, low);
    // Without presets the default is as it was: SYSTEM and the server's user.
    let (dacl, label) = descriptor_of("preset-none", Server::builder());
    assert_eq!(dacl, format!("D:P(A;;GA;;;SY)(A;;GA;;;{})", me.sid()));
    assert_eq!(label, "");
}

#[tokio::test]
async fn presets_with_sddl_or_a_malformed_sid_are_config_errors() {
    use pipeserve::server::Allow;
    let err = Server::builder()
        .sddl(Some("D:P(A;;GA;;;OW)"))
        .allow(Allow::AuthenticatedUsers)
        .bind(&unique_name("preset-sddl"))
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("sddl and allow"), "{err}");
    let err = Server::builder()
        .allow(Allow::Sid("S-1-1-0)(A;;GA;;;WD".into()))
        .bind(&unique_name("preset-inject"))
        .unwrap_err();
    assert!(err.is_config(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_named_under_local_is_served_as_appcontainers_reach_it() {
    within(60, async {
        let name = format!(r"\\.\pipe\LOCAL\{}", unique_name("local"));
        let server = Server::builder()
            .allow(pipeserve::server::Allow::AppContainers)
            .bind(&name)
            .unwrap();
        assert_eq!(server.local_addr().to_string(), name);
        let handle = server.handle();
        let serving = tokio::spawn(server.serve(tower::service_fn(|req: Bytes| async move {
            Ok::<_, std::convert::Infallible>(req)
        })));
        let client = Client::connect(&name).await.unwrap();
        assert_eq!(client.call(Bytes::from("local")).await.unwrap(), "local");
        drop(client);
        handle.shutdown();
        serving.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn an_invalid_sddl_is_a_config_error() {
    let err = Server::builder()
        .sddl(Some("this is not sddl"))
        .bind(&unique_name("dacl-bad"))
        .unwrap_err();
    assert!(err.is_config(), "{err}");
}

#[tokio::test]
async fn dot_components_and_remote_hosts_are_refused_in_pipe_paths() {
    // Windows resolves `.` and `..` in `\\.\` paths: a name could reach
    // outside the pipe namespace. A host name reaches another machine.
    for bad in [
        r"\\.\pipe\..\x",
        r"\\.\pipe\a\.\b",
        r"\\otherhost\pipe\x",
        "..",
    ] {
        let err = Server::builder().bind(bad).unwrap_err();
        assert!(err.is_config(), "{bad}: {err}");
        let err = Client::connect(bad).await.unwrap_err();
        assert!(err.is_config(), "{bad}: {err}");
    }
    // A client may ask for a remote pipe, but not with a server identity
    // check it cannot make.
    let err = Client::builder()
        .allow_remote(true)
        .connect(r"\\otherhost\pipe\x")
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("identity"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonating_before_anything_was_read_works_or_is_a_clear_error() {
    within(60, async {
        let name = unique_name("imp-early");
        let server = Server::builder().instances(1).bind(&name).unwrap();
        let mut incoming = server.into_incoming();
        let _client = ClientOptions::new()
            .open(pipeserve::Address::new(&name).unwrap().as_path())
            .unwrap();
        let conn = incoming.accept().await.unwrap();
        // Windows captures a client's context when it opens the pipe (static
        // tracking, as here) or with each write (dynamic tracking): before a
        // read, acting as it works, or is refused with ERROR_CANNOT_IMPERSONATE
        // (Wine always allows it).
        match conn.info().impersonate(|| ()) {
            Ok(()) => eprintln!("impersonating before a read: allowed"),
            Err(err) => assert!(
                err.to_string().contains("before anything was read"),
                "{err}"
            ),
        }
    })
    .await
}
