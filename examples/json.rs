//! Typed requests and replies: a JSON codec over the length-delimited
//! framing, and a server and a client that speak it.
//!
//! ```text
//! cargo run --example json
//! ```
//!
//! Each frame is a 4-byte big-endian length, then a JSON document. The
//! server decodes `Request`s and encodes `Response`s; the client the other
//! way round, with the same codec type, its parameters swapped.

use std::{convert::Infallible, io, marker::PhantomData};

use bytes::{Bytes, BytesMut};
use pipeserve::{Client, Server};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// JSON documents in length-delimited frames: decodes `In`, encodes `Out`.
struct Json<In, Out> {
    frames: LengthDelimitedCodec,
    types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Json<In, Out> {
    fn new() -> Self {
        Json {
            frames: LengthDelimitedCodec::builder()
                .max_frame_length(64 * 1024)
                .new_codec(),
            types: PhantomData,
        }
    }
}

impl<In, Out> Clone for Json<In, Out> {
    fn clone(&self) -> Self {
        Json::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for Json<In, Out> {
    type Item = In;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<In>> {
        match self.frames.decode(src)? {
            Some(frame) => serde_json::from_slice(&frame)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for Json<In, Out> {
    type Error = io::Error;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> io::Result<()> {
        let json = serde_json::to_vec(&item)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.frames.encode(Bytes::from(json), dst)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Add { a: i64, b: i64 },
    Greet { name: String },
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Response {
    Sum(i64),
    Greeting(String),
    Error(String),
}

async fn handle(req: Request) -> Result<Response, Infallible> {
    Ok(match req {
        Request::Add { a, b } => match a.checked_add(b) {
            Some(sum) => Response::Sum(sum),
            None => Response::Error("overflow".into()),
        },
        Request::Greet { name } => Response::Greeting(format!("hello, {name}")),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = "pipeserve-json-example";
    let server = Server::builder()
        .codec(Json::<Request, Response>::new())
        .bind(name)?;
    let control = server.handle();
    let serving = tokio::spawn(server.serve(tower::service_fn(handle)));

    let client = Client::builder()
        .codec(Json::<Response, Request>::new())
        .connect(name)
        .await?;
    for req in [
        Request::Add { a: 2, b: 40 },
        Request::Greet {
            name: "pipe".into(),
        },
        Request::Add { a: i64::MAX, b: 1 },
    ] {
        let shown = format!("{req:?}");
        let reply = client.call(req).await?;
        println!("{shown} -> {reply:?}");
    }
    assert_eq!(
        client.call(Request::Add { a: 1, b: 1 }).await?,
        Response::Sum(2)
    );

    drop(client);
    control.shutdown();
    serving.await??;
    Ok(())
}
