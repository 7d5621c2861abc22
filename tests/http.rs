//! HTTP (hyper, an axum `Router`) over the instance pool, over named pipes on
//! Windows and Unix domain sockets on Unix: HTTP/1.1 and HTTP/2 on the same
//! pipe, more clients than instances, a graceful shutdown with a slow request
//! in flight, a client that vanishes mid-request.
#![cfg(feature = "hyper")]

mod common;

use std::time::Duration;

use axum::{
    body::Bytes,
    routing::{get, post},
    Extension, Json, Router,
};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Version};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use pipeserve::{client::Connector, ConnectionInfo, Server, Summary};
use tokio::{sync::oneshot, task::JoinHandle};

fn app() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/whoami",
            get(|Extension(info): Extension<ConnectionInfo>| async move {
                Json(serde_json::json!({ "pid": info.client_pid(), "id": info.id() }))
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow"
            }),
        )
        .route(
            "/stall",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                "stalled"
            }),
        )
}

struct Http {
    name: String,
    handle: pipeserve::Handle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Summary, pipeserve::Error>>,
}

fn start(tag: &str, instances: usize) -> Http {
    start_with(tag, Server::builder().instances(instances))
}

fn start_with(tag: &str, builder: pipeserve::server::Builder) -> Http {
    let name = unique_name(tag);
    let server = builder.bind(&name).unwrap();
    let handle = server.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        pipeserve::hyper::serve(server.into_incoming(), app()).with_graceful_shutdown(async {
            let _ = stopped.await;
        }),
    );
    Http {
        name,
        handle,
        stop: Some(stop),
        task,
    }
}

impl Http {
    fn client(&self, http2: bool) -> Client<Connector, Full<Bytes>> {
        let connector = Connector::new(&self.name)
            .unwrap()
            .connect_timeout(Duration::from_secs(60));
        Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build(connector)
    }

    async fn stop(mut self) -> Summary {
        let _ = self.stop.take().unwrap().send(());
        within(30, self.task).await.unwrap().unwrap()
    }
}

async fn get_text(
    client: &Client<Connector, Full<Bytes>>,
    path: &str,
) -> (StatusCode, Version, String) {
    let response = client
        .get(format!("http://localhost{path}").parse().unwrap())
        .await
        .unwrap();
    let (status, version) = (response.status(), response.version());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_http_connection_over_its_share_is_refused_and_its_kept_alive_one_served() {
    within(60, async {
        let server = start_with(
            "http-share",
            Server::builder().instances(2).max_connections_per_user(1),
        );
        // One kept-alive connection: the user's share.
        let first = server.client(true);
        assert_eq!(get_text(&first, "/health").await.2, "ok");
        // Another connection of the same user, with a place to spare.
        let second = server.client(true);
        let refused = second.get("http://localhost/health".parse().unwrap()).await;
        assert!(refused.is_err(), "served over its share: {refused:?}");
        assert_eq!(server.handle.stats().refused_per_user, 1);
        // The kept-alive one goes on.
        assert_eq!(get_text(&first, "/health").await.2, "ok");
        // Once it is gone, a new connection is served.
        drop((first, second));
        until_stats(&server.handle, |s| s.active == 0).await;
        assert_eq!(get_text(&server.client(false), "/health").await.2, "ok");
        let summary = server.stop().await;
        assert_eq!((summary.stats.refused, summary.requests), (1, 3));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_answers_http1_and_http2_on_the_same_pipe() {
    within(60, async {
        let server = start("http-versions", 2);
        for http2 in [false, true] {
            let client = server.client(http2);
            let expected = if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            assert_eq!(
                get_text(&client, "/health").await,
                (StatusCode::OK, expected, "ok".to_owned())
            );
            let body = payload(5, 200_000);
            let echo = Request::post("http://localhost/echo")
                .body(Full::new(body.clone()))
                .unwrap();
            let response = client.request(echo).await.unwrap();
            assert_eq!(response.version(), expected);
            assert_eq!(
                response.into_body().collect().await.unwrap().to_bytes(),
                body
            );
            let (status, _, whoami) = get_text(&client, "/whoami").await;
            assert_eq!(status, StatusCode::OK);
            let whoami: serde_json::Value = serde_json::from_str(&whoami).unwrap();
            assert_eq!(whoami["pid"], std::process::id());
        }
        let summary = server.stop().await;
        assert_eq!(summary.requests, 6);
        assert_eq!(summary.cut, 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_http_clients_than_instances_are_all_served() {
    within(120, async {
        let server = start("http-many", 2);
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let client = server.client(c % 2 == 1);
                tokio::spawn(async move {
                    for _ in 0..3 {
                        let (status, _, body) = get_text(&client, "/health").await;
                        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
        let summary = server.stop().await;
        assert_eq!(summary.requests, 24);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_lets_the_slow_request_in_flight_finish() {
    within(60, async {
        let server = start("http-drain", 2);
        let client = server.client(false);
        let slow = tokio::spawn(async move { get_text(&client, "/slow").await });
        while server.handle.stats().requests == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let summary = server.stop().await;
        let (status, _, body) = slow.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"));
        assert_eq!((summary.requests, summary.cut), (1, 0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_request_leaves_the_server_serving_others() {
    within(60, async {
        let server = start("http-vanish", 1);
        {
            let client = server.client(false);
            let stall = get_text(&client, "/stall");
            assert!(tokio::time::timeout(Duration::from_millis(100), stall)
                .await
                .is_err());
        }
        // The one instance is free again long before the 20 s handler
        // would have ended: the connection went with its client.
        let client = server.client(false);
        let (status, _, body) =
            tokio::time::timeout(Duration::from_secs(5), get_text(&client, "/health"))
                .await
                .expect("served while the vanished client's handler would still run");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        drop(client);
        server.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_hyper_service_is_served_too_and_sees_its_connection_info() {
    within(60, async {
        let name = unique_name("http-hyper");
        let server = Server::builder().instances(1).bind(&name).unwrap();
        let handle = server.handle();
        let hello = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let pid = req
                .extensions()
                .get::<ConnectionInfo>()
                .and_then(|i| i.client_pid());
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                format!("hello {pid:?}"),
            ))))
        });
        let serving = tokio::spawn(pipeserve::hyper::serve(
            server.into_incoming(),
            pipeserve::hyper::HyperService(hello),
        ));
        let client: Client<Connector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(Connector::new(&name).unwrap());
        let (status, _, body) = get_text(&client, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("hello Some({})", std::process::id()));
        drop(client);
        handle.shutdown();
        let summary = serving.await.unwrap().unwrap();
        assert_eq!(summary.requests, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_longer_than_the_drain_timeout_is_cut_and_counted_alone() {
    within(60, async {
        let server = start_with(
            "http-cut",
            Server::builder()
                .instances(4)
                .drain_timeout(Duration::from_millis(500)),
        );
        // Two clients done and gone, one stuck in a 20 s handler.
        for _ in 0..2 {
            let client = server.client(false);
            assert_eq!(get_text(&client, "/health").await.0, StatusCode::OK);
        }
        let client = server.client(false);
        let stuck =
            tokio::spawn(
                async move { client.get("http://localhost/stall".parse().unwrap()).await },
            );
        while server.handle.stats().requests < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = std::time::Instant::now();
        let summary = server.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the drain waited for the handler"
        );
        assert_eq!(summary.cut, 1, "{summary:?}");
        assert_eq!(summary.stats.active, 0, "{summary:?}");
        assert!(
            stuck.await.unwrap().is_err(),
            "the cut request got no response"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_serve_future_closes_the_pipe_at_once() {
    within(60, async {
        let name = unique_name("http-drop");
        let server = Server::builder().instances(2).bind(&name).unwrap();
        let serving = tokio::spawn(pipeserve::hyper::serve(server.into_incoming(), app()));
        let client: Client<Connector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(Connector::new(&name).unwrap());
        assert_eq!(get_text(&client, "/health").await.0, StatusCode::OK);
        serving.abort();
        let _ = serving.await;
        // Nobody listens on the name any more.
        let gone = Connector::new(&name)
            .unwrap()
            .connect_timeout(Duration::from_millis(300));
        let fresh: Client<Connector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(gone);
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            fresh.get("http://localhost/health".parse().unwrap()),
        )
        .await
        .expect("the connect gave up");
        assert!(
            refused.is_err(),
            "served after the Serve future was dropped"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_refuses_a_server_run_by_another_user_before_sending_anything() {
    within(60, async {
        let server = start("http-impostor", 1);
        #[cfg(windows)]
        let someone_else = pipeserve::User::parse("S-1-5-18").unwrap();
        #[cfg(unix)]
        let someone_else = {
            let me = pipeserve::User::current().unwrap().uid();
            pipeserve::User::parse(&(if me == 0 { 65534 } else { 0 }).to_string()).unwrap()
        };
        let connector = Connector::new(&server.name)
            .unwrap()
            .server_identity(pipeserve::client::ServerIdentity::User(someone_else));
        let client: Client<Connector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let err = client
            .get("http://localhost/health".parse().unwrap())
            .await
            .unwrap_err();
        let source = std::error::Error::source(&err).expect("the connector's error");
        let refused = source
            .downcast_ref::<pipeserve::Error>()
            .expect("a pipeserve error");
        assert!(refused.is_identity(), "{refused}");
        let summary = server.stop().await;
        assert_eq!(summary.requests, 0, "nothing reached the server");
    })
    .await
}
