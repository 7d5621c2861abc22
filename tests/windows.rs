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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_frames_up_to_4095_bytes_round_trip_on_a_fresh_and_a_reused_instance() {
    within(60, async {
        let server = message_server("msg-sizes");
        // The first client of a new instance: mio's first read is 4 KiB.
        let first = message_client(&server.name).await;
        let big = payload(1, 4095);
        assert_eq!(first.call(big.clone()).await.unwrap(), big);
        for size in [1, 100, 4094, 4095] {
            let req = payload(size as u8, size);
            assert_eq!(first.call(req.clone()).await.unwrap(), req);
        }
        drop(first);
        // The same instance, reused.
        let second = message_client(&server.name).await;
        assert_eq!(second.call(big.clone()).await.unwrap(), big);
        drop(second);
        assert_eq!(server.stop().await.connections, 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_4096_bytes_or_more_is_too_large_on_a_fresh_and_a_reused_instance() {
    within(60, async {
        for size in [4096, 5000, 100_000] {
            let server = message_server("msg-over");
            // Fresh instance, first read.
            let client = message_client(&server.name).await;
            let err = client.call(payload(3, size)).await.unwrap_err();
            assert!(err.is_closed(), "{size} bytes on a fresh instance: {err}");
            drop(client);
            // Reused instance: a good call first, then the long one.
            let client = message_client(&server.name).await;
            assert_eq!(client.call(Bytes::from("ok")).await.unwrap(), "ok");
            let err = client.call(payload(4, size)).await.unwrap_err();
            assert!(err.is_closed(), "{size} bytes on a reused instance: {err}");
            drop(client);
            // And the instance serves the next client.
            let client = message_client(&server.name).await;
            assert_eq!(client.call(Bytes::from("after")).await.unwrap(), "after");
            drop(client);
            server.stop().await;
        }
    })
    .await
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
async fn impersonating_before_anything_was_read_is_refused_by_windows() {
    within(60, async {
        let name = unique_name("imp-early");
        let server = Server::builder().instances(1).bind(&name).unwrap();
        let mut incoming = server.into_incoming();
        let _client = ClientOptions::new()
            .open(pipeserve::Address::new(&name).unwrap().as_path())
            .unwrap();
        let conn = incoming.accept().await.unwrap();
        let early = conn.info().impersonate(|| ());
        eprintln!("impersonating before a read: {early:?}");
        if pipeserve::test_util::running_under_wine() && early.is_ok() {
            eprintln!("skipped: Wine allows impersonation before a read");
            return;
        }
        let err = early.unwrap_err();
        assert!(
            err.to_string().contains("before anything was read"),
            "{err}"
        );
    })
    .await
}
