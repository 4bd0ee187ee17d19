//! Identity: who a connection is, and what follows when that changes.
//!
//! A connection's identity changes when it sends a new token (`change_user`)
//! and when its token expires. Either way every membership is checked again
//! against the channel rules: the connection leaves each channel its new
//! identity may not be in, and its codec tells it (`Notice::Revoked`); a
//! native connection whose own `channel_id` is no longer allowed (it cannot
//! leave that one) is closed with 4001.

use std::sync::Arc;

use super::{MeshError, Node};
use crate::codec::Notice;
use crate::conn::{Conn, Identity};
use crate::outbox::CloseReason;
use crate::policy::{self, ChannelOptions, Claims};

impl Node {
    /// Who a token says the connection is (anonymous when it is missing or
    /// invalid).
    pub fn identify(&self, token: Option<&str>) -> Identity {
        if let Some(token) = token {
            match self.auth.verify(token) {
                Ok(id) => {
                    return Identity {
                        root_id: id.user_id,
                        token: Some(crate::auth::strip_bearer(token).to_string()),
                        expires_at: Some(id.expires_at),
                        channels: id.channels,
                        info: id.info,
                    }
                }
                Err(e) => tracing::debug!(error = %e, "token rejected; socket is anonymous"),
            }
        }
        Identity {
            root_id: self.config.anonymous_id.clone(),
            token: None,
            expires_at: None,
            channels: None,
            info: None,
        }
    }

    /// May a connection with this identity subscribe to `channel`?
    pub fn may_subscribe_as(
        &self,
        identity: &Identity,
        channel: &str,
    ) -> Result<ChannelOptions, MeshError> {
        let options = self.config.namespaces.options(channel);
        let claims = Claims {
            authenticated: identity.expires_at.is_some(),
            channels: identity.channels.as_deref(),
        };
        policy::may_subscribe(&options, claims, channel).map_err(|m| {
            self.metrics.errors.with_label_values(&["forbidden"]).inc();
            MeshError::Forbidden(m)
        })?;
        Ok(options)
    }

    /// Take a new identity (a fresh token, or none), then leave the channels
    /// it may not be in. Under `--require-auth` a connection left without a
    /// valid token is closed with 4001 and [`MeshError::Unauthorized`]
    /// returned.
    pub async fn reauthenticate(
        &self,
        conn: &Arc<Conn>,
        identity: Identity,
    ) -> Result<(), MeshError> {
        let authenticated = identity.expires_at.is_some();
        if let Some(change) = self.hub.change_identity(conn, identity, |_| true) {
            self.interest(change);
        }
        if self.config.require_auth && !authenticated {
            conn.outbox.close(CloseReason::Unauthorized);
            return Err(MeshError::Unauthorized);
        }
        self.revalidate(conn).await;
        self.identity_interest(conn).await
    }

    /// Wait until the topics `conn` is in by its identity, its user's and
    /// its home channel, are subscribed cluster-wide
    /// ([`crate::relay::Relay::interest_applied`], as for a join): a
    /// publish made anywhere after this returns reaches the connection.
    /// Fails with [`MeshError::Unavailable`] when they were not within
    /// `--relay-join-timeout-ms`.
    pub(super) async fn connection_interest(&self, conn: &Conn) -> Result<(), MeshError> {
        let users = [conn.root_id().to_string()];
        let home: Vec<String> = conn.home.iter().map(|h| h.to_string()).collect();
        self.relay
            .interest_applied(&home, &users)
            .await
            .map_err(|e| {
                tracing::warn!(client_id = %conn.client_id, error = %e, "connection not subscribed in time");
                MeshError::Unavailable(e.to_string())
            })
    }

    /// [`Node::connection_interest`] after a change of identity: a
    /// connection whose new user is not subscribed in time is closed with
    /// 1013 (try again later), as at connect; it cannot keep an identity
    /// whose deliveries may not reach it.
    async fn identity_interest(&self, conn: &Conn) -> Result<(), MeshError> {
        let result = self.connection_interest(conn).await;
        if result.is_err() {
            conn.outbox.close(CloseReason::Unavailable);
        }
        result
    }

    /// The connection's token expired (at `now`, seconds since the epoch):
    /// under `--require-auth` close it with 4001; otherwise make it
    /// anonymous, leave the channels an anonymous connection may not be in,
    /// and tell it. Nothing happens if it renewed its token meanwhile.
    pub(super) async fn expire_identity(&self, conn: &Arc<Conn>, now: u64) {
        let expired =
            |state: &crate::conn::ConnState| state.authenticated && state.expires_at <= now;
        if self.config.require_auth {
            if expired(&conn.state.lock()) {
                conn.outbox.close(CloseReason::Unauthorized);
            }
            return;
        }
        let Some(change) = self.hub.change_identity(conn, self.identify(None), expired) else {
            return;
        };
        self.interest(change);
        self.revalidate(conn).await;
        // The notice is the connection frame with the anonymous user: sent
        // once that user's topic is subscribed cluster-wide.
        if self.identity_interest(conn).await.is_err() {
            return;
        }
        let frames = conn.with_info(|info| conn.codec.notice(info, Notice::TokenExpired));
        for frame in frames.iter() {
            self.send(conn, frame.clone());
        }
    }

    /// Check every membership of `conn` against its current identity and
    /// leave the channels it may no longer be in: unsubscribe, stop their
    /// positions (and any recovery), tell the connection, leave presence.
    async fn revalidate(&self, conn: &Arc<Conn>) {
        if self.config.namespaces.is_plain() {
            return;
        }
        let (mut refused, home_refused) = {
            let state = conn.state.lock();
            let claims = Claims {
                authenticated: state.authenticated,
                channels: state.allowed_channels.as_deref(),
            };
            let mut refused: Vec<(String, ChannelOptions)> = Vec::new();
            let mut home_refused = false;
            for c in &state.channels {
                let options = self.config.namespaces.options(c);
                if policy::may_subscribe(&options, claims, c).is_ok() {
                    continue;
                }
                if conn.home.as_deref() == Some(&**c) {
                    home_refused = true;
                } else {
                    refused.push((c.to_string(), options));
                }
            }
            (refused, home_refused)
        };
        if home_refused {
            // A native connection cannot leave its own channel.
            conn.outbox.close(CloseReason::Unauthorized);
            return;
        }
        if refused.is_empty() {
            return;
        }
        refused.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<String> = refused.iter().map(|(c, _)| c.clone()).collect();
        let change = self.hub.unsubscribe(conn, &names);
        self.interest(change);
        {
            let mut state = conn.state.lock();
            for c in &names {
                if let Some(mut pos) = state.positioned.remove(c.as_str()) {
                    self.hub.end_recovery(conn, &mut pos);
                }
            }
        }
        self.metrics
            .subscriptions_revoked
            .inc_by(names.len() as u64);
        let notice = Notice::Revoked { channels: &names };
        for frame in conn
            .with_info(|info| conn.codec.notice(info, notice))
            .iter()
        {
            self.send(conn, frame.clone());
        }
        for (c, options) in &refused {
            self.presence_leave(conn, c, options).await;
        }
    }
}
