//! The Phoenix Channels front-end at `/socket/websocket`: the official
//! `phoenix` JavaScript client (and its Swift, Kotlin and Dart ports) join
//! topics, which are mesh channels, push events (published to the topic)
//! and receive broadcasts and Presence (docs/phoenix.md).
//!
//! - [`wire`]: the v1 and v2 frame formats;
//! - [`codec`]: deliveries as Phoenix broadcasts and presence diffs;
//! - [`session`]: one socket's protocol state, over the node's operations.

pub mod codec;
pub mod hook;
pub mod longpoll;
pub mod recover;
pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::StatusCode;

use self::codec::PhoenixCodec;
use self::session::{reasons, PhoenixSession, FRONTEND};
use self::wire::Vsn;
use crate::codec::Codec;
use crate::frontend::Frontend;
use crate::http_error::HttpError;
use crate::node::Node;
use crate::transport;

/// The Phoenix Channels protocol.
pub struct Phoenix;

impl Phoenix {
    fn codec_for(node: &Node, vsn: Vsn) -> Arc<dyn Codec> {
        let sent = node
            .metrics
            .frontend
            .messages_out
            .with_label_values(&[FRONTEND]);
        Arc::new(PhoenixCodec::new(vsn, sent))
    }
}

/// The codecs of the two serializers.
#[derive(Clone)]
struct Codecs {
    v1: Arc<dyn Codec>,
    v2: Arc<dyn Codec>,
}

impl Frontend for Phoenix {
    fn name(&self) -> &'static str {
        FRONTEND
    }

    fn codec(&self, node: &Node) -> Arc<dyn Codec> {
        Phoenix::codec_for(node, Vsn::V2)
    }

    fn routes(&self, node: &Arc<Node>) -> Router<Arc<Node>> {
        node.metrics.frontend.init(FRONTEND, reasons::ALL);
        let codecs = Codecs {
            v1: Phoenix::codec_for(node, Vsn::V1),
            v2: self.codec(node),
        };
        let pollers = Arc::new(longpoll::Pollers::default());
        let (poll_codecs, post_pollers) = (codecs.clone(), pollers.clone());
        Router::new()
            .route(
                "/socket/websocket",
                get(move |state, query, request| websocket(state, query, request, codecs.clone())),
            )
            .route(
                "/socket/longpoll",
                get(
                    move |State(node): State<Arc<Node>>,
                          Query(query): Query<Vec<(String, String)>>,
                          request: Request| {
                        let (codecs, pollers) = (poll_codecs.clone(), pollers.clone());
                        async move {
                            let vsn = query
                                .iter()
                                .find(|(k, _)| k == "vsn")
                                .map(|(_, v)| v.as_str());
                            let vsn = match Vsn::from_param(vsn) {
                                Ok(vsn) => vsn,
                                Err(e) => {
                                    return HttpError::bad_request(e.to_string()).into_response()
                                }
                            };
                            let codec = match vsn {
                                Vsn::V1 => codecs.v1,
                                Vsn::V2 => codecs.v2,
                            };
                            let address = transport::Accepted::address_of(&request);
                            let headers = request.headers().clone();
                            longpoll::get(node, pollers, query, headers, codec, vsn, address).await
                        }
                    },
                )
                .post(
                    move |State(node): State<Arc<Node>>,
                          Query(query): Query<Vec<(String, String)>>,
                          body: axum::body::Body| {
                        longpoll::post(node, post_pollers.clone(), query, body)
                    },
                ),
            )
    }
}

/// `GET /socket/websocket?vsn=…&token=…`: admit, check the connect params,
/// upgrade and run a Phoenix session.
async fn websocket(
    State(node): State<Arc<Node>>,
    Query(params): Query<HashMap<String, String>>,
    mut request: Request,
    codecs: Codecs,
) -> Response {
    let (admission, reply) = match super::admit_upgrade(&node, &request) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let vsn = match Vsn::from_param(params.get("vsn").map(String::as_str)) {
        Ok(vsn) => vsn,
        Err(e) => return HttpError::bad_request(e.to_string()).into_response(),
    };
    let identity = match super::connect_identity(&node, params.get("token"), request.headers()) {
        Ok(identity) => identity,
        Err(message) => {
            node.metrics
                .frontend
                .error(FRONTEND, reasons::CONNECT_REFUSED);
            return HttpError::new(StatusCode::FORBIDDEN, "unauthorized", message).into_response();
        }
    };
    let codec = match vsn {
        Vsn::V1 => codecs.v1,
        Vsn::V2 => codecs.v2,
    };
    let address = transport::Accepted::address_of(&request);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let max = node.config.max_message_size;
        let Some(socket) = super::upgraded(&node, on_upgrade, max).await else {
            return;
        };
        let conn = node.open(admission, identity, codec, None, |_| None).await;
        let settings = transport::Settings {
            tick: Some(PhoenixSession::tick(node.config.phoenix.heartbeat_timeout)),
            // Phoenix clients prove they are alive with heartbeats.
            liveness: None,
            ..super::socket_settings(&node, address)
        };
        let session = PhoenixSession::new(node.clone(), conn.clone(), vsn);
        transport::run(socket, &conn.outbox, session, settings).await;
    });
    reply.map(|()| axum::body::Body::empty())
}
