//! gRPC (tonic) over the instance pool, over named pipes on Windows and Unix
//! domain sockets on Unix: unary and server-streaming calls, more clients
//! than instances, a graceful shutdown in the middle of a stream, a client
//! that vanishes mid-call.
#![cfg(feature = "tonic")]

mod common;

use std::{pin::Pin, time::Duration};

use common::*;
use futures_util::Stream;
use pipeserve::{client::Connector, ConnectionInfo, Server};
use tokio::sync::oneshot;
use tonic::{
    transport::{Channel, Endpoint},
    Request, Response, Status,
};

#[allow(dead_code, unreachable_pub, clippy::all)]
mod echo {
    include!("../proto/pipeserve.echo.rs");
}

use echo::{
    echo_client::EchoClient,
    echo_server::{Echo, EchoServer},
    CountReply, CountRequest, EchoReply, EchoRequest,
};

/// Echo, with pauses: `Echo` sleeps 20 s for a payload of "stall"; `Count`
/// sleeps `PAUSE` between messages.
struct TestEcho;

const PAUSE: Duration = Duration::from_millis(20);

#[tonic::async_trait]
impl Echo for TestEcho {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let client_pid = request
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(ConnectionInfo::client_pid)
            .unwrap_or(0);
        let payload = request.into_inner().payload;
        if payload == b"stall" {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        Ok(Response::new(EchoReply {
            payload,
            client_pid,
        }))
    }

    type CountStream = Pin<Box<dyn Stream<Item = Result<CountReply, Status>> + Send>>;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        let n = request.into_inner().n;
        let replies = futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(PAUSE).await;
            Some((Ok(CountReply { i }), i + 1))
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// A tonic server over a fresh pipe name; `stop` sends the shutdown signal.
struct Grpc {
    name: String,
    handle: pipeserve::Handle,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

fn start(tag: &str, instances: usize) -> Grpc {
    start_with(tag, Server::builder().instances(instances))
}

fn start_with(tag: &str, builder: pipeserve::server::Builder) -> Grpc {
    let name = unique_name(tag);
    let pipe = builder.bind(&name).unwrap();
    let handle = pipe.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(EchoServer::new(TestEcho))
            .serve_with_incoming_shutdown(pipe.into_incoming(), async {
                let _ = stopped.await;
            }),
    );
    Grpc {
        name,
        handle,
        stop: Some(stop),
        task,
    }
}

impl Grpc {
    async fn channel(&self) -> Channel {
        self.try_channel().await.unwrap()
    }

    async fn try_channel(&self) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_static("http://localhost")
            .connect_with_connector(
                Connector::new(&self.name)
                    .unwrap()
                    .connect_timeout(Duration::from_secs(30)),
            )
            .await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        within(30, self.task).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_over_the_pipe_know_the_clients_pid() {
    within(60, async {
        let server = start("grpc-calls", 2);
        let channel = server.channel().await;

        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status.as_str_name(), "SERVING");

        let mut echo = EchoClient::new(channel);
        let payload = payload(3, 100_000).to_vec();
        let reply = echo
            .echo(EchoRequest {
                payload: payload.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.payload, payload);
        assert_eq!(reply.client_pid, std::process::id());

        let mut counted = echo
            .count(CountRequest { n: 50 })
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Some(reply) = counted.message().await.unwrap() {
            seen.push(reply.i);
        }
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        drop(echo);
        server.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_grpc_channel_over_its_share_is_refused_and_its_first_served() {
    within(60, async {
        let server = start_with(
            "grpc-share",
            Server::builder().instances(2).max_connections_per_user(1),
        );
        let echo_once = |channel: Channel| async move {
            EchoClient::new(channel)
                .echo(EchoRequest {
                    payload: b"hi".to_vec(),
                })
                .await
        };
        let first = server.channel().await;
        assert_eq!(
            echo_once(first.clone()).await.unwrap().into_inner().payload,
            b"hi"
        );
        // A second channel of the same user, with a place to spare: refused,
        // at its handshake or its first call.
        let refused = match server.try_channel().await {
            Err(_) => true,
            Ok(second) => echo_once(second).await.is_err(),
        };
        assert!(refused, "a channel over the share was served");
        // At least once: the channel may try to reconnect, refused again.
        assert!(server.handle.stats().refused_per_user >= 1);
        assert!(echo_once(first).await.is_ok(), "the first channel stopped");
        server.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_grpc_clients_than_instances_are_all_served() {
    within(120, async {
        let server = start("grpc-many", 2);
        let clients: Vec<_> = (0..8u8)
            .map(|c| {
                let name = server.name.clone();
                tokio::spawn(async move {
                    // Each its own connection, held for a few calls.
                    let channel = Endpoint::from_static("http://localhost")
                        .connect_with_connector(
                            Connector::new(&name)
                                .unwrap()
                                .connect_timeout(Duration::from_secs(60)),
                        )
                        .await
                        .unwrap();
                    let mut echo = EchoClient::new(channel);
                    for i in 0..3u8 {
                        let reply = echo
                            .echo(EchoRequest {
                                payload: vec![c, i],
                            })
                            .await
                            .unwrap();
                        assert_eq!(reply.into_inner().payload, [c, i]);
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
        server.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_in_the_middle_of_a_stream_loses_no_message() {
    within(60, async {
        let server = start("grpc-drain", 2);
        let mut echo = EchoClient::new(server.channel().await);
        let mut counted = echo
            .count(CountRequest { n: 40 })
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while seen.len() < 5 {
            seen.push(counted.message().await.unwrap().unwrap().i);
        }
        // Shut down with 35 messages to go; the stream finishes first.
        let stopping = tokio::spawn(server.stop());
        while let Some(reply) = counted.message().await.unwrap() {
            seen.push(reply.i);
        }
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
        drop(echo);
        stopping.await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_call_leaves_the_server_serving_others() {
    within(60, async {
        let server = start("grpc-vanish", 1);
        {
            let mut echo = EchoClient::new(server.channel().await);
            let stall = echo.echo(EchoRequest {
                payload: b"stall".to_vec(),
            });
            // Gone before its reply, with its connection.
            assert!(tokio::time::timeout(Duration::from_millis(200), stall)
                .await
                .is_err());
        }
        // The one instance is free again long before the 20 s handler would
        // have ended: the connection went with its client.
        let next = async {
            let mut echo = EchoClient::new(server.channel().await);
            echo.echo(EchoRequest {
                payload: b"next".to_vec(),
            })
            .await
            .unwrap()
        };
        let reply = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("served while the vanished client's call would still run");
        assert_eq!(reply.into_inner().payload, b"next");
        server.stop().await;
    })
    .await
}

#[cfg(windows)]
#[tokio::test]
async fn the_grpc_pipe_grants_only_the_owner_and_system() {
    use std::os::windows::io::AsHandle;

    let server = start("grpc-dacl", 1);
    let address = pipeserve::Address::new(&server.name).unwrap();
    let client = tokio::net::windows::named_pipe::ClientOptions::new()
        .open(address.as_path())
        .unwrap();
    let sddl = pipeserve::test_util::dacl_sddl(client.as_handle()).unwrap();
    // SYSTEM and the server's own user SID (not OW: an elevated owner is
    // BUILTIN\Administrators).
    let me = pipeserve::User::current().unwrap();
    assert_eq!(sddl, format!("D:P(A;;GA;;;SY)(A;;GA;;;{})", me.sid()));
    drop(client);
    server.stop().await;
}
