//! Message pipes over thousands of clients: nothing of them stays behind.
//! Alone in its test binary, since handles and memory are the process's:
//! other tests' servers would move them.
#![cfg(all(windows, feature = "test-util"))]

mod common;

use std::time::Duration;

use common::*;
use pipeserve::{codec::Framing, Client, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_leave_handles_and_memory_flat() {
    use pipeserve::test_util::{open_handles, resident_memory};
    within(300, async {
        let server = start_echo(
            "msg-cycles",
            Server::builder().instances(2).framing(Framing::Message),
        );
        let cycle = |i: usize| {
            let name = server.name.clone();
            async move {
                let client = Client::builder()
                    .framing(Framing::Message)
                    .connect(&name)
                    .await
                    .unwrap();
                let req = payload(i as u8, [1, 5000, 70_000][i % 3]);
                assert!(client.call(req.clone()).await.unwrap() == req);
            }
        };
        // Warm up: every instance has served, the runtime has its threads.
        for i in 0..500 {
            cycle(i).await;
        }
        let (handles, memory) = (open_handles().unwrap(), resident_memory().unwrap());
        for i in 500..5000 {
            cycle(i).await;
        }
        // Let the last disconnects land.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (handles_after, memory_after) = (open_handles().unwrap(), resident_memory().unwrap());
        eprintln!(
            "after 500 cycles: {handles} handles, {} KiB; after 5000: {handles_after}, {} KiB",
            memory / 1024,
            memory_after / 1024
        );
        assert!(
            handles_after <= handles + 8,
            "handles grew: {handles} -> {handles_after}"
        );
        assert!(
            memory_after <= memory + 4 * 1024 * 1024,
            "memory grew: {memory} -> {memory_after}"
        );
        assert_eq!(server.stop().await.connections, 5000);
    })
    .await
}
