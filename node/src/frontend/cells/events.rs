//! `POST /api/events`: a typed event with an audience, for the Cells
//! gateway's sessions on every node (docs/cells.md).

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::codec::Audience;
use super::group;
use crate::delivery::{Delivery, Target};
use crate::node::Node;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// `tree`, `meta`, `task`, `idm`, `activity`, or a configured kind.
    pub kind: String,
    /// The event itself, a JSON object passed through.
    pub body: Box<RawValue>,
    pub audience: AudienceRequest,
}

/// Who the event is for.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AudienceRequest {
    #[serde(default)]
    pub workspaces: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub profile: Option<String>,
    /// No frame to this user's sessions (no self-notification).
    #[serde(default)]
    pub exclude_user: Option<String>,
}

/// Why an event was refused: (`code`, message), answered with 400.
pub type Refusal = (&'static str, String);

fn bad(message: impl Into<String>) -> Refusal {
    ("bad_request", message.into())
}

/// Check one id of the audience (the rules of channel names).
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    crate::limits::channel_name(id).map_err(|e| format!("{field}: {e}"))
}

/// A de-duplicated, checked id list.
fn checked(ids: Vec<String>, field: &str) -> Result<Vec<String>, Refusal> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        check_id(field, &id).map_err(bad)?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// A checked event: what [`Checked::delivery`] sends, or what the
/// coalescer holds until its burst is merged.
#[derive(Clone, Debug)]
pub struct Checked {
    pub kind: String,
    /// The body, a JSON object.
    pub body: String,
    pub audience: Audience,
    /// The internal groups the audience names.
    pub groups: Vec<String>,
}

impl Checked {
    /// The delivery: addressed to the audience's groups, with the body as
    /// data and the audience attached.
    pub fn delivery(&self) -> Delivery {
        let mut d = Delivery::new(
            Target::Channels(self.groups.clone()),
            Utf8Bytes::from(self.body.clone()),
        );
        d.audience = Some(self.audience.encode());
        d
    }
}

/// Check a request: its kind, body and audience.
pub fn check(node: &Node, request: EventRequest) -> Result<Checked, Refusal> {
    let EventRequest {
        kind,
        body,
        audience,
    } = request;
    if !node.config.cells.kinds.contains(&kind) {
        return Err((
            "unknown_kind",
            format!(
                "unknown event kind {}; accepted: {} (--cells-event-kinds adds more)",
                serde_json::to_string(&kind).expect("strings serialize"),
                node.config.cells.kinds.join(", ")
            ),
        ));
    }
    if !body.get().starts_with('{') {
        return Err(bad("body must be a JSON object"));
    }
    let workspaces = checked(audience.workspaces, "audience.workspaces")?;
    let users = checked(audience.users, "audience.users")?;
    let roles = checked(audience.roles, "audience.roles")?;
    for (field, value) in [
        ("audience.profile", &audience.profile),
        ("audience.exclude_user", &audience.exclude_user),
    ] {
        if let Some(v) = value {
            check_id(field, v).map_err(bad)?;
        }
    }
    let named = workspaces.len() + users.len() + roles.len() + audience.profile.iter().count();
    if named == 0 {
        return Err(bad(
            "audience must name at least one of workspaces, users, roles or profile",
        ));
    }
    let max = node.config.max_ids_per_message;
    if named > max {
        return Err(bad(format!(
            "audience may name at most {max} ids in all (--max-ids-per-message)"
        )));
    }
    let mut groups: Vec<String> = Vec::with_capacity(named);
    groups.extend(workspaces.iter().map(|w| group("ws", w)));
    groups.extend(users.iter().map(|u| group("user", u)));
    groups.extend(roles.iter().map(|r| group("role", r)));
    groups.extend(audience.profile.iter().map(|p| group("profile", p)));
    let audience = Audience {
        kind: kind.clone(),
        workspaces,
        users,
        roles,
        profile: audience.profile,
        exclude_user: audience.exclude_user,
    };
    Ok(Checked {
        kind,
        body: body.get().to_string(),
        audience,
        groups,
    })
}
