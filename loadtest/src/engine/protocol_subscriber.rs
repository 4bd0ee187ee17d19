//! Subscribers that speak Phoenix, Socket.IO or the Cells gateway: connect
//! on the protocol's path, join (or subscribe), then read deliveries while
//! answering pings and sending heartbeats. The framing is in
//! [`crate::protocol`]; this module moves the bytes and records metrics the
//! way native subscribers do.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::wait::{Turns, Woke};
use super::{Ctx, End, CONNECT_TIMEOUT};
use crate::client::{self, now_micros, Frame, Ws};
use crate::protocol::{cells_claims, Protocol, Session};
use crate::scenario::Subscribers;

/// An HS256 token with these claims.
fn token(secret: &str, claims: &serde_json::Value) -> Result<String, String> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

async fn send(ws: &mut Ws, frame: String) -> bool {
    ws.send(Message::Text(Utf8Bytes::from(frame))).await.is_ok()
}

/// Connect subscriber `j` to `channels` (names) and wait until its joins
/// are acknowledged. Records `ws_connecting`, `ws_sessions` and the
/// `subscribe acknowledged` check.
pub(super) async fn open(
    ctx: &Ctx,
    subs: &Subscribers,
    j: u64,
    channels: Vec<String>,
) -> Option<(Ws, Session)> {
    let jwt = match subs.protocol {
        Protocol::Cells => {
            let secret = ctx.scenario().jwt_secret.as_deref().unwrap_or_default();
            let user = format!("{}-u{j}", subs.channel_prefix);
            let exp = now_micros() / 1_000_000 + 86_400;
            match token(secret, &cells_claims(&user, &channels, exp)) {
                Ok(t) => Some(t),
                Err(e) => {
                    ctx.connect_failed("token", &e);
                    return None;
                }
            }
        }
        _ => None,
    };
    let mut session = Session::new(subs.protocol, subs.protocol_options(), channels, jwt);
    let started = Instant::now();
    let source = client::source_ip(j, ctx.spec.source_ips);
    let attempt = async {
        let mut ws = client::connect_path(ctx.url(j), &session.path(), source)
            .await
            .map_err(|e| (e.code.to_string(), e.detail))?;
        let connecting = started.elapsed();
        for frame in session.start() {
            if !send(&mut ws, frame).await {
                return Err(("ws_write".to_string(), "send failed".to_string()));
            }
        }
        while !session.is_ready() {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let read = session.read(&t);
                    if let Frame::Error(code) = read.frame {
                        return Err((code.to_string(), t.to_string()));
                    }
                    for frame in read.send {
                        if !send(&mut ws, frame).await {
                            return Err(("ws_write".to_string(), "send failed".to_string()));
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                    return Err((code.to_string(), "closed while joining".to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(("read".to_string(), e.to_string())),
                None => return Err(("eof".to_string(), "closed while joining".to_string())),
            }
        }
        Ok((ws, connecting))
    };
    let outcome = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await;
    let ok = matches!(outcome, Ok(Ok(_)));
    ctx.rec.other(|m| m.check("subscribe acknowledged", ok));
    match outcome {
        Ok(Ok((ws, connecting))) => {
            ctx.rec.other(|m| {
                m.trend("ws_connecting")
                    .record_micros(connecting.as_micros() as u64);
                m.add("ws_sessions", 1);
                m.check("connection frame received", true);
            });
            ctx.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some((ws, session))
        }
        Ok(Err((code, detail))) => {
            ctx.connect_failed(&code, &detail);
            None
        }
        Err(_) => {
            ctx.connect_failed("connect_timeout", "timed out joining");
            None
        }
    }
}

/// Read a protocol subscriber until `stop`, recording deliveries, answering
/// pings and sending heartbeats.
pub(super) async fn read_loop(
    ctx: &Ctx,
    ws: &mut Ws,
    session: &mut Session,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let period = session
        .heartbeat_period()
        .unwrap_or(Duration::from_secs(86_400 * 365));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    if *stop.borrow() {
        return End::Stopped;
    }
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let mut turns = Turns::default();
    loop {
        let woke = turns
            .next(ws, stopped.as_mut(), |cx| heartbeat.poll_tick(cx))
            .await;
        match woke {
            Woke::Stop => return End::Stopped,
            Woke::Other(_) => {
                if let Some(frame) = session.heartbeat() {
                    if !send(ws, frame).await {
                        ctx.rec.other(|m| m.error("ws_write"));
                        return End::Closed;
                    }
                    ctx.rec.other(|m| m.add("ws_msgs_sent", 1));
                }
            }
            Woke::Frame(msg) => match msg {
                Some(Ok(Message::Text(t))) => {
                    let read = session.read(&t);
                    match read.frame {
                        Frame::Delivery(sent) => {
                            ctx.rec.delivery(now_micros().saturating_sub(sent))
                        }
                        Frame::Error(code) => {
                            ctx.rec.received();
                            ctx.rec.other(|m| m.error(code));
                        }
                        _ => ctx.rec.received(),
                    }
                    for frame in read.send {
                        if !send(ws, frame).await {
                            ctx.rec.other(|m| m.error("ws_write"));
                            return End::Closed;
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                    ctx.rec.other(|m| m.error(&code.to_string()));
                    return End::Closed;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => {
                    ctx.rec.other(|m| m.error("ws_read"));
                    return End::Closed;
                }
                None => {
                    ctx.rec.other(|m| m.error("eof"));
                    return End::Closed;
                }
            },
        }
    }
}
