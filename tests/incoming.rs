//! The pool's connections as values (`Server::into_incoming`), over named
//! pipes on Windows and Unix domain sockets on Unix: instances reused after
//! a dropped connection, no reply lost to the drop, no "busy" below
//! capacity, at most `instances` out at once, and shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use pipeserve::{
    server::{Connection, Incoming},
    Client, Server,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves every connection of `incoming` with a length-delimited protocol
/// written by hand: one request frame, then a reply frame of `reply_len`
/// bytes (the request repeated), then the connection is dropped at once,
/// before the client has read the reply. Returns what each connection's
/// info said: (id, instance, client pid).
async fn serve_one_reply_each(
    mut incoming: Incoming,
    reply_len: usize,
) -> Vec<(u64, usize, Option<u32>)> {
    let mut seen = Vec::new();
    while let Some(conn) = incoming.next().await {
        let conn = conn.expect("the stream's items are always Ok");
        let info = conn.info();
        seen.push((info.id(), info.instance(), info.client_pid()));
        tokio::spawn(reply_and_drop(conn, reply_len));
    }
    seen
}

async fn reply_and_drop(mut conn: Connection, reply_len: usize) {
    let Some(req) = read_frame(&mut conn).await else {
        return;
    };
    let reply: Vec<u8> = req.iter().copied().cycle().take(reply_len).collect();
    conn.write_all(&frame(&reply)).await.unwrap();
    // Dropped here, before the client has read the reply.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_no_reply_and_their_instances_serve_again_without_busy() {
    within(120, async {
        let name = unique_name("incoming-reuse");
        let instances = 2;
        let server = Server::builder().instances(instances).bind(&name).unwrap();
        let handle = server.handle();
        // Replies far over the pipe's and socket's buffers: most of each is
        // still unread when its connection is dropped.
        let reply_len = 1 << 20;
        let serving = tokio::spawn(serve_one_reply_each(server.into_incoming(), reply_len));

        // Two churners, below capacity, reconnecting at once, 20 times each.
        let churners: Vec<_> = (0..instances)
            .map(|c| {
                let name = name.clone();
                tokio::spawn(async move {
                    let mut retries = 0;
                    for i in 0..20u8 {
                        let client = Client::connect(&name).await.unwrap();
                        let req = Bytes::from(vec![c as u8, i, 0xAB]);
                        let reply = client.call(req.clone()).await.unwrap();
                        assert_eq!(reply.len(), reply_len, "the reply arrived whole");
                        assert!(
                            reply.chunks(3).all(|c| c == &req[..c.len()]),
                            "the reply is the request repeated"
                        );
                        retries += client.connect_retries();
                    }
                    retries
                })
            })
            .collect();
        for churner in churners {
            assert_eq!(churner.await.unwrap(), 0, "a client found no free instance");
        }
        assert_eq!(handle.stats().connections, 40);
        handle.shutdown();
        let seen = serving.await.unwrap();
        assert_eq!(seen.len(), 40);
        // Unique, counting from 1; two instances may hand theirs out in
        // either order.
        let mut ids: Vec<u64> = seen.iter().map(|s| s.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "ids count up from 1");
        // 40 clients on 2 instances (4 pipe instances on Windows): reused.
        let spares = if cfg!(windows) { 2 } else { 1 };
        assert!(
            seen.iter().all(|s| s.1 < instances * spares),
            "instances {:?}",
            seen.iter().map(|s| s.1).collect::<Vec<_>>()
        );
        assert!(seen.iter().all(|s| s.2 == Some(std::process::id())));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_instances_connections_are_out_and_a_drop_lets_the_next_in() {
    within(60, async {
        let name = unique_name("incoming-cap");
        let server = Server::builder().instances(1).bind(&name).unwrap();
        let mut incoming = server.into_incoming();

        let mut first_client = raw_connect(&name).await;
        let mut first = incoming.accept().await.unwrap();
        // A second client connects (a spare instance on Windows, the backlog
        // on Unix) but is not handed out while the first is.
        let mut second_client = raw_connect(&name).await;
        let early = tokio::time::timeout(Duration::from_millis(300), incoming.accept()).await;
        assert!(
            early.is_err(),
            "a second connection was handed out beyond 1 instance"
        );

        // The first still works both ways.
        first_client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        first.read_exact(&mut buf).await.unwrap();
        first.write_all(b"pong").await.unwrap();
        drop(first);
        first_client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong", "the reply written before the drop arrives");
        // A socket is half-closed at once; a pipe has no half-close, and is
        // disconnected once the client closes (or the linger ends).
        #[cfg(unix)]
        {
            let mut rest = Vec::new();
            first_client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "then the end of the stream");
        }
        drop(first_client);

        // Now the second is handed out.
        let mut second = incoming.accept().await.unwrap();
        second_client.write_all(b"next").await.unwrap();
        second.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"next");
        assert_eq!(second.info().id(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_stream_and_connections_out_live_on() {
    within(60, async {
        let name = unique_name("incoming-shutdown");
        let server = Server::builder().instances(2).bind(&name).unwrap();
        let handle = server.handle();
        let mut incoming = server.into_incoming();
        let mut client = raw_connect(&name).await;
        let mut conn = incoming.accept().await.unwrap();

        handle.shutdown();
        assert!(incoming.accept().await.is_none(), "the stream ended");
        assert!(incoming.next().await.is_none(), "and stays ended");
        drop(incoming);

        // The connection handed out before still carries bytes both ways.
        client.write_all(b"still").await.unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        conn.write_all(&buf).await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still");
        drop(conn);
        drop(client);

        // New clients find nobody.
        let refused = Client::builder()
            .connect_timeout(Duration::from_millis(200))
            .connect(&name)
            .await
            .unwrap_err();
        assert!(refused.is_timeout(), "{refused}");
        assert_eq!(handle.stats().connections, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_accepted_but_not_taken_is_let_go_when_the_stream_is_dropped() {
    within(60, async {
        let name = unique_name("incoming-drop");
        let server = Server::builder().instances(2).bind(&name).unwrap();
        let handle = server.handle();
        let incoming = server.into_incoming();
        let mut client = raw_connect(&name).await;
        // Accepted by an instance and queued for the stream, never taken.
        while handle.stats().connections == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(incoming);
        // The instance gets it back and ends it: EOF on a socket at once; on a
        // pipe, disconnected after the linger.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the client was let go");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        while handle.stats().active > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_listener_of_your_own_hands_out_connections_of_its_stream_type() {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = Server::builder().instances(2).listener(tcp).unwrap();
    // The public types name the I/O, not the listener.
    let mut incoming: Incoming<tokio::net::TcpStream> = server.into_incoming();
    let client = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await.unwrap();
        reply
    });
    let mut conn: Connection<tokio::net::TcpStream> = incoming.accept().await.unwrap();
    let mut req = [0u8; 4];
    conn.read_exact(&mut req).await.unwrap();
    assert_eq!(&req, b"ping");
    conn.write_all(b"pong").await.unwrap();
    assert_eq!(&client.await.unwrap(), b"pong");
    // TCP says no pid; the pool numbered the connection all the same.
    assert_eq!(conn.info().client_pid(), None);
    assert_eq!(conn.info().id(), 1);
    assert_eq!(incoming.handle().stats().connections, 1);
}

/// Instances (Windows: with their spares) waiting for a client once ready.
fn listening_when_ready(instances: u64) -> u64 {
    if cfg!(windows) {
        2 * instances
    } else {
        instances
    }
}

/// `Handle::ready` for framed serving: pending until the server is served
/// (its instances start on the first poll), then complete once every
/// instance waits for a client; a client connecting then is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_completes_once_every_instance_of_a_framed_server_listens() {
    within(60, async {
        let name = unique_name("ready-framed");
        let server = Server::builder().instances(3).bind(&name).unwrap();
        let handle = server.handle();
        let echo =
            tower::service_fn(|req: Bytes| async move { Ok::<_, std::convert::Infallible>(req) });
        let serve = server.serve(echo);
        let early = tokio::time::timeout(Duration::from_millis(100), handle.ready()).await;
        assert!(early.is_err(), "ready before the server was served");
        let serving = tokio::spawn(serve);
        handle.ready().await;
        assert_eq!(handle.stats().listening, listening_when_ready(3));
        let mut io = raw_connect(&name).await;
        io.write_all(&frame(b"hello")).await.unwrap();
        assert_eq!(read_frame(&mut io).await.unwrap(), b"hello");
        drop(io);
        handle.shutdown();
        assert_eq!(serving.await.unwrap().unwrap().requests, 1);
    })
    .await
}

/// `Handle::ready` for connections handed out (and so for tonic and
/// hyper, which serve them): complete once every instance listens, before
/// anyone asks the stream for a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_completes_once_every_instance_listens_before_incoming_is_polled() {
    within(60, async {
        let name = unique_name("ready-incoming");
        let server = Server::builder().instances(3).bind(&name).unwrap();
        let handle = server.handle();
        let incoming = server.into_incoming();
        handle.ready().await;
        assert_eq!(handle.stats().listening, listening_when_ready(3));
        let serving = tokio::spawn(serve_one_reply_each(incoming, 5));
        let mut io = raw_connect(&name).await;
        io.write_all(&frame(b"hello")).await.unwrap();
        assert_eq!(read_frame(&mut io).await.unwrap(), b"hello");
        drop(io);
        handle.shutdown();
        assert_eq!(serving.await.unwrap().len(), 1);
    })
    .await
}
