//! Hostile and faulty clients, service failures and graceful shutdown, over
//! named pipes on Windows and Unix domain sockets on Unix.

mod common;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use pipeserve::{test_util, BoxError, Client, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Notify,
};

/// Reads until the server ends the connection; fails the test if it does
/// not within `secs`.
async fn until_closed(io: &mut (impl tokio::io::AsyncRead + Unpin), secs: u64) {
    let mut buf = [0u8; 4096];
    within(secs, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_length_prefix_closes_only_its_connection() {
    within(60, async {
        let server = start_echo(
            "4gib",
            Server::builder()
                .instances(2)
                .linger(Duration::from_millis(100)),
        );
        let good = Client::connect(&server.name).await.unwrap();
        let mut bad = raw_connect(&server.name).await;
        bad.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        until_closed(&mut bad, 10).await;
        assert_eq!(good.call(Bytes::from("fine")).await.unwrap(), "fine");
        drop(good);
        let summary = server.stop().await;
        assert_eq!(summary.stats.frames_rejected, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_says_nothing_is_closed_after_the_idle_timeout() {
    within(60, async {
        let server = start_echo(
            "idle",
            Server::builder()
                .instances(1)
                .idle_timeout(Some(Duration::from_millis(200)))
                .linger(Duration::from_millis(100)),
        );
        let mut silent = raw_connect(&server.name).await;
        until_closed(&mut silent, 10).await;
        // The instance is free again.
        let client = Client::connect(&server.name).await.unwrap();
        assert_eq!(client.call(Bytes::from("hi")).await.unwrap(), "hi");
        drop(client);
        let summary = server.stop().await;
        assert_eq!(summary.stats.timeouts, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_at_the_write_timeout() {
    within(60, async {
        let server = start_echo(
            "never-reads",
            Server::builder()
                .instances(2)
                .pipeline_depth(4)
                .write_timeout(Some(Duration::from_millis(300))),
        );
        let good = Client::connect(&server.name).await.unwrap();
        let mut greedy = raw_connect(&server.name).await;
        // 64 MiB of requests whose echoes it never reads: the server stops
        // reading once its pipeline is full, so the writes block, and the
        // connection is cut when the write timeout passes.
        let frame = frame(&payload(1, 256 * 1024));
        let mut written = 0usize;
        let pushed = within(30, async {
            for _ in 0..256 {
                if greedy.write_all(&frame).await.is_err() {
                    return false;
                }
                written += frame.len();
            }
            true
        })
        .await;
        assert!(
            !pushed,
            "the server took all 64 MiB from a client that never reads"
        );
        assert!(
            written < 32 << 20,
            "the server accepted {written} bytes before cutting"
        );
        assert_eq!(good.call(Bytes::from("served")).await.unwrap(), "served");
        drop(good);
        let summary = server.stop().await;
        assert_eq!(summary.stats.timeouts, 1);
    })
    .await
}

fn failing_service(
) -> impl tower::Service<Bytes, Response = Bytes, Error = BoxError, Future = impl Send> + Clone {
    tower::service_fn(|req: Bytes| async move {
        match &req[..] {
            b"fail" => Err::<Bytes, BoxError>("the service failed".into()),
            b"boom" => panic!("the service panicked"),
            _ => Ok(req),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_error_closes_the_connection_after_the_replies_before_it() {
    within(60, async {
        let server = start(
            "svc-error",
            Server::builder()
                .instances(1)
                .linger(Duration::from_millis(100)),
            failing_service(),
        );
        let mut raw = raw_connect(&server.name).await;
        let mut reqs = Vec::new();
        for r in ["a", "fail", "b"] {
            reqs.extend_from_slice(&frame(r.as_bytes()));
        }
        raw.write_all(&reqs).await.unwrap();
        assert_eq!(read_frame(&mut raw).await.as_deref(), Some(&b"a"[..]));
        assert_eq!(
            read_frame(&mut raw).await,
            None,
            "no reply after the failed one"
        );
        drop(raw);
        let summary = server.stop().await;
        assert_eq!(summary.requests, 1);
        assert_eq!(summary.stats.service_errors, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_error_reply_a_service_error_becomes_a_reply_and_the_connection_goes_on() {
    within(60, async {
        let builder = Server::builder()
            .instances(1)
            .error_reply(|e| Bytes::from(format!("error: {e}")));
        let server = start("error-reply", builder, failing_service());
        let client = Client::connect(&server.name).await.unwrap();
        assert_eq!(client.call(Bytes::from("a")).await.unwrap(), "a");
        assert_eq!(
            client.call(Bytes::from("fail")).await.unwrap(),
            "error: the service failed"
        );
        assert_eq!(client.call(Bytes::from("b")).await.unwrap(), "b");
        drop(client);
        let summary = server.stop().await;
        assert_eq!(summary.requests, 3);
        assert_eq!(summary.stats.service_errors, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_set_after_codec_answers_in_that_codec() {
    within(60, async {
        // Setting it before `codec` does not compile (see the doctest of
        // `Builder::codec`); after it, it is typed by the codec's replies.
        let name = unique_name("error-reply-codec");
        let server = Server::builder()
            .instances(1)
            .codec(tokio_util::codec::LinesCodec::new_with_max_length(64))
            .error_reply(|e| format!("error: {e}"))
            .bind(&name)
            .unwrap();
        let handle = server.handle();
        let svc = tower::service_fn(|line: String| async move {
            match line.as_str() {
                "fail" => Err::<String, BoxError>("no such thing".into()),
                _ => Ok(line.to_uppercase()),
            }
        });
        let serving = tokio::spawn(server.serve(svc));
        let client = Client::builder()
            .codec(tokio_util::codec::LinesCodec::new())
            .connect(&name)
            .await
            .unwrap();
        assert_eq!(client.call("a".to_owned()).await.unwrap(), "A");
        assert_eq!(
            client.call("fail".to_owned()).await.unwrap(),
            "error: no such thing"
        );
        assert_eq!(client.call("b".to_owned()).await.unwrap(), "B");
        drop(client);
        handle.shutdown();
        let summary = serving.await.unwrap().unwrap();
        assert_eq!((summary.requests, summary.stats.service_errors), (3, 1));
    })
    .await
}

#[tokio::test]
async fn a_pipeline_depth_of_0_is_a_config_error_on_client_and_server_alike() {
    let name = unique_name("depth-0");
    let server_err = Server::builder().pipeline_depth(0).bind(&name).unwrap_err();
    let client_err = Client::builder()
        .pipeline_depth(0)
        .connect(&name)
        .await
        .unwrap_err();
    let (io, _peer) = tokio::io::duplex(64);
    let io_err = Client::builder()
        .pipeline_depth(0)
        .connect_io(io)
        .unwrap_err();
    for err in [&server_err, &client_err, &io_err] {
        assert!(err.is_config(), "{err}");
        assert_eq!(err.to_string(), server_err.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_panic_ends_that_connection_and_the_instance_serves_the_next_client() {
    within(60, async {
        let server = start("panic", Server::builder().instances(1), failing_service());
        let first = Client::connect(&server.name).await.unwrap();
        assert_eq!(first.call(Bytes::from("a")).await.unwrap(), "a");
        let err = first.call(Bytes::from("boom")).await.unwrap_err();
        assert!(err.is_closed(), "{err}");
        for i in 0..3 {
            let next = Client::connect(&server.name).await.unwrap();
            let req = Bytes::from(format!("next {i}"));
            assert_eq!(next.call(req.clone()).await.unwrap(), req);
        }
        let summary = server.stop().await;
        assert_eq!(summary.stats.panics, 1);
        assert_eq!(summary.connections, 4);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_garbage_grow_neither_handles_nor_memory_and_a_good_client_is_served_throughout()
{
    within(300, async {
        let server = start_echo(
            "churn",
            Server::builder()
                .instances(4)
                .max_frame_len(4096)
                .linger(Duration::from_millis(50)),
        );
        let handle_name = server.name.clone();

        // A well-behaved client calling all along.
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let good = {
            let (stop, served, name) = (stop.clone(), served.clone(), server.name.clone());
            tokio::spawn(async move {
                let client = Client::connect(&name).await.unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let req = Bytes::from(i.to_string());
                    assert_eq!(
                        client.call(req.clone()).await.unwrap(),
                        req,
                        "good client, call {i}"
                    );
                    served.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        };

        // Connect, maybe send garbage or half a frame, close.
        let cycle = |i: usize| {
            let name = handle_name.clone();
            async move {
                let mut c = raw_connect(&name).await;
                match i % 4 {
                    0 => {}
                    1 => drop(c.write_all(&payload(i as u8, 64)).await),
                    2 => drop(c.write_all(&frame(&payload(i as u8, 3000))[..100]).await),
                    _ => {
                        let _ = c.write_all(&frame(b"x")).await;
                        let _ = read_frame(&mut c).await;
                    }
                }
            }
        };
        // Every churned connection has ended: only the good one is open.
        let settle = || async {
            within(30, async {
                while server.handle.stats().active > 1 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
        };

        for i in 0..200 {
            cycle(i).await;
        }
        settle().await;
        let handles_before = test_util::open_handles();
        let memory_before = test_util::resident_memory();
        let served_before = served.load(Ordering::Relaxed);

        for i in 0..2000 {
            cycle(i).await;
        }
        settle().await;
        let handles_after = test_util::open_handles();
        let memory_after = test_util::resident_memory();
        let served_during = served.load(Ordering::Relaxed) - served_before;

        stop.store(true, Ordering::Relaxed);
        good.await.unwrap();
        let summary = server.stop().await;

        assert!(
            served_during > 0,
            "the good client was not served during the churn"
        );
        assert!(summary.connections >= 2201, "{summary:?}");
        match (handles_before, handles_after) {
            (Some(before), Some(after)) => {
                eprintln!("open handles: {before} before, {after} after 2000 cycles");
                assert!(
                    after <= before + 16,
                    "handles grew from {before} to {after}"
                );
            }
            _ => eprintln!("skipped the handle count: not available here"),
        }
        match (memory_before, memory_after) {
            (Some(before), Some(after)) => {
                eprintln!("resident memory: {before} before, {after} after 2000 cycles");
                assert!(
                    after <= before + (16 << 20),
                    "memory grew from {before} to {after}"
                );
            }
            _ => eprintln!("skipped the memory check: not available here"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_request_in_flight_and_its_reply_arrives_whole() {
    within(60, async {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let svc = {
            let (entered, release) = (entered.clone(), release.clone());
            tower::service_fn(move |req: Bytes| {
                let (entered, release) = (entered.clone(), release.clone());
                async move {
                    entered.notify_one();
                    release.notified().await;
                    Ok::<_, Infallible>(Bytes::from(req.repeat(1024)))
                }
            })
        };
        let name = unique_name("drain");
        let server = Server::builder().instances(2).bind(&name).unwrap();
        let handle = server.handle();
        let serving = tokio::spawn(server.serve(svc));

        let client = Client::connect(&name).await.unwrap();
        let call = tokio::spawn(async move { client.call(Bytes::from(vec![7u8; 1024])).await });
        entered.notified().await;
        handle.shutdown();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !serving.is_finished(),
            "the server finished before the reply was written"
        );
        release.notify_one();

        let reply = call.await.unwrap().unwrap();
        assert_eq!(reply.len(), 1 << 20);
        assert!(reply.iter().all(|&b| b == 7), "the reply arrived whole");
        let summary = within(20, serving).await.unwrap().unwrap();
        assert_eq!((summary.requests, summary.cut), (1, 0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_reading_but_answers_every_request_already_read() {
    within(60, async {
        let entered = Arc::new(Notify::new());
        let svc = {
            let entered = entered.clone();
            tower::service_fn(move |req: Bytes| {
                let entered = entered.clone();
                async move {
                    entered.notify_one();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, Infallible>(req)
                }
            })
        };
        let name = unique_name("drain-read");
        let server = Server::builder().instances(1).bind(&name).unwrap();
        let handle = server.handle();
        let serving = tokio::spawn(server.serve(svc));

        let mut raw = raw_connect(&name).await;
        let mut reqs = Vec::new();
        for i in 0..5u8 {
            reqs.extend_from_slice(&frame(&[i; 10]));
        }
        raw.write_all(&reqs).await.unwrap();
        entered.notified().await;
        handle.shutdown();
        // All five were read before the signal (one write, pipeline depth
        // 16): every one is answered, in order, then the connection ends.
        for i in 0..5u8 {
            assert_eq!(
                read_frame(&mut raw).await.as_deref(),
                Some(&[i; 10][..]),
                "reply {i}"
            );
        }
        drop(raw);
        let summary = within(20, serving).await.unwrap().unwrap();
        assert_eq!((summary.requests, summary.cut), (5, 0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_what_is_still_open_at_the_drain_deadline_and_says_so() {
    within(60, async {
        let entered = Arc::new(Notify::new());
        let svc = {
            let entered = entered.clone();
            tower::service_fn(move |_: Bytes| {
                let entered = entered.clone();
                async move {
                    entered.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<_, Infallible>(Bytes::new())
                }
            })
        };
        let name = unique_name("cut");
        let server = Server::builder()
            .instances(2)
            .drain_timeout(Duration::from_millis(300))
            .bind(&name)
            .unwrap();
        let handle = server.handle();
        let serving = tokio::spawn(server.serve(svc));
        let client = Client::connect(&name).await.unwrap();
        let stuck = tokio::spawn(async move { client.call(Bytes::from("forever")).await });
        within(10, entered.notified()).await;
        handle.shutdown();
        let summary = within(10, serving).await.unwrap().unwrap();
        assert_eq!(
            (summary.connections, summary.requests, summary.cut),
            (1, 0, 1)
        );
        assert!(stuck.await.unwrap().unwrap_err().is_closed());
        // Nobody listens any more.
        let err = Client::builder()
            .connect_timeout(Duration::from_millis(200))
            .connect(&name)
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
    })
    .await
}
