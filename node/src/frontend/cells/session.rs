//! One `/ws/event` socket: `subscribe` (sent again to refresh the claims),
//! `unsubscribe`, and the errors that close it as Cells does.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::codec::{tag, Claims};
use super::events::check_id;
use super::wire::{error_frame, Control, ControlError, EMPTY_JWT_EVENT};
use super::{group, FAMILY};
use crate::config::cells::Cells as Settings;
use crate::conn::{Conn, Identity};
use crate::node::{MeshError, Node};
use crate::outbox::CloseReason;
use crate::transport::{Flow, Session};

/// The Cells protocol state of one socket.
pub struct CellsSession {
    node: Arc<Node>,
    conn: Arc<Conn>,
}

/// A refusal: the metric code, the error text and the close reason.
pub(super) struct Refusal(pub &'static str, pub String, pub CloseReason);

/// A session's verified token: its claims, every claim as sent, and its
/// expiry (seconds since the epoch).
pub(super) struct Verified {
    pub claims: Claims,
    pub all: Map<String, Value>,
    pub expires_at: u64,
}

/// Verify `jwt`, read the session's claims as configured, and make it the
/// connection's identity, with the Cells user as its user id when
/// `user_is_root` (`/ws/chat`, whose room members are Cells users), else
/// the token's subject (`/ws/event`). Shared by `/ws/event` and `/ws/chat`.
pub(super) async fn authenticate(
    node: &Node,
    conn: &Arc<Conn>,
    jwt: &str,
    user_is_root: bool,
) -> Result<Verified, Refusal> {
    let (id, all) = node
        .auth
        .verify_claims(jwt)
        .map_err(|e| Refusal("bad_jwt", e.to_string(), CloseReason::Unauthorized))?;
    let claims = read_claims(&node.config.cells, &all, &id.user_id)
        .map_err(|e| Refusal("bad_claims", e, CloseReason::BadFrame))?;
    let expires_at = id.expires_at;
    let identity = Identity {
        root_id: if user_is_root {
            claims.user.clone()
        } else {
            id.user_id
        },
        token: Some(crate::auth::strip_bearer(jwt).to_string()),
        expires_at: Some(id.expires_at),
        channels: id.channels,
        info: id.info,
    };
    if let Err(e) = node.reauthenticate(conn, identity).await {
        return Err(Refusal("bad_jwt", e.to_string(), CloseReason::Unauthorized));
    }
    Ok(Verified {
        claims,
        all,
        expires_at,
    })
}

/// A list claim: an array of strings, or one comma separated string (as
/// Cells' own tokens carry roles); absent is empty.
pub(super) fn claim_list(all: &Map<String, Value>, name: &str) -> Result<Vec<String>, String> {
    Ok(match all.get(name) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("claim {name:?} must list strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => Err(format!(
            "claim {name:?} must be an array of strings or a comma separated string"
        ))?,
    })
}

/// Count a close the server made for a frame too big or over the rate
/// (`family`: the front-end's metric label), and end the connection.
pub(super) fn closed(node: &Arc<Node>, conn: &Arc<Conn>, family: &str, by: Option<CloseReason>) {
    match by {
        Some(CloseReason::TooBig) => node.metrics.frontend.error(family, "too_big"),
        Some(CloseReason::RateLimited) => node.metrics.frontend.error(family, "rate_limited"),
        _ => {}
    }
    node.metrics
        .frontend
        .connections
        .with_label_values(&[family])
        .dec();
    node.close(conn, by);
}

/// The session's claims, read from the token's claims as configured.
fn read_claims(settings: &Settings, all: &Map<String, Value>, sub: &str) -> Result<Claims, String> {
    let text = |name: &str| -> Result<Option<String>, String> {
        match all.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("claim {name:?} must be a string")),
        }
    };
    let list = |name: &str| -> Result<HashSet<String>, String> {
        let items = claim_list(all, name)?;
        for item in &items {
            check_id(&format!("claim {name:?}"), item)?;
        }
        Ok(items.into_iter().collect())
    };
    let user = text(&settings.user_claim)?
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| sub.to_string());
    check_id("user", &user)?;
    let profile = text(&settings.profile_claim)?.unwrap_or_default();
    if !profile.is_empty() {
        check_id("profile", &profile)?;
    }
    Ok(Claims {
        user,
        profile,
        roles: list(&settings.roles_claim)?,
        workspaces: list(&settings.workspaces_claim)?,
    })
}

/// The internal groups a session with these claims joins.
fn groups(claims: &Claims) -> Vec<String> {
    let mut out = Vec::with_capacity(2 + claims.roles.len() + claims.workspaces.len());
    out.push(group("user", &claims.user));
    if !claims.profile.is_empty() {
        out.push(group("profile", &claims.profile));
    }
    out.extend(claims.roles.iter().map(|r| group("role", r)));
    out.extend(claims.workspaces.iter().map(|w| group("ws", w)));
    out
}

impl CellsSession {
    pub fn new(node: Arc<Node>, conn: Arc<Conn>) -> Self {
        node.metrics
            .frontend
            .connections
            .with_label_values(&[FAMILY])
            .inc();
        CellsSession { node, conn }
    }

    fn count_frame(&self) {
        self.node
            .metrics
            .frontend
            .messages_in
            .with_label_values(&[FAMILY])
            .inc();
    }

    fn error(&self, code: &str) {
        self.node.metrics.frontend.error(FAMILY, code);
    }

    /// Send `{"@type":"error","jwt":"","error":…}` as a text frame, forget
    /// the claims, and close.
    async fn refuse(&mut self, Refusal(code, text, reason): Refusal) -> Flow {
        self.error(code);
        self.node
            .send(&self.conn, Utf8Bytes::from(error_frame(&text)));
        let _ = self.node.set_groups(&self.conn, FAMILY, &[], None).await;
        Flow::Close(reason)
    }

    async fn subscribe(&mut self, jwt: &str) -> Result<(), Refusal> {
        let Verified {
            claims, expires_at, ..
        } = authenticate(&self.node, &self.conn, jwt, false).await?;
        let groups = groups(&claims);
        self.node
            .set_groups(&self.conn, FAMILY, &groups, Some(tag(claims, expires_at)))
            .await
            .map_err(|e| match e {
                MeshError::TooManyChannels(n) => Refusal(
                    "too_many_groups",
                    format!(
                        "the token names more than {n} workspaces, roles, profile and user \
                         together (--max-channels-per-connection)"
                    ),
                    CloseReason::BadFrame,
                ),
                MeshError::RateLimited(m) => Refusal("rate_limited", m, CloseReason::RateLimited),
                e => Refusal("bad_request", e.to_string(), CloseReason::BadFrame),
            })
    }

    async fn handle(&mut self, text: &str) -> Flow {
        match Control::decode(text) {
            Err(ControlError::Json(e)) => {
                self.count_frame();
                self.refuse(Refusal("bad_json", e, CloseReason::BadFrame))
                    .await
            }
            Err(ControlError::EmptyJwt) => {
                self.count_frame();
                let text = EMPTY_JWT_EVENT.to_string();
                self.refuse(Refusal("empty_jwt", text, CloseReason::Unauthorized))
                    .await
            }
            Ok(Control::Subscribe { jwt }) => {
                self.count_frame();
                match self.subscribe(&jwt).await {
                    Ok(()) => Flow::Continue,
                    Err(refusal) => self.refuse(refusal).await,
                }
            }
            Ok(Control::Unsubscribe) => {
                self.count_frame();
                let _ = self.node.set_groups(&self.conn, FAMILY, &[], None).await;
                Flow::Continue
            }
            // Cells ignores any other `@type` on /ws/event.
            Ok(Control::Other(_)) => {
                self.count_frame();
                Flow::Continue
            }
        }
    }
}

impl Session for CellsSession {
    async fn on_text(&mut self, text: Utf8Bytes) -> Flow {
        self.handle(&text).await
    }

    async fn on_binary(&mut self, _data: Bytes) -> Flow {
        self.count_frame();
        let text = "binary frames are not supported; send JSON text".to_string();
        self.refuse(Refusal("bad_json", text, CloseReason::BadFrame))
            .await
    }

    async fn on_close(&mut self, closed_by_server: Option<CloseReason>) {
        closed(&self.node, &self.conn, FAMILY, closed_by_server);
    }
}
