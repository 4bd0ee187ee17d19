//! Client-driven joins: a configured event (Flamenco's `/subscription`)
//! whose payload `{op, type, id}` names rooms to join or leave, read as the
//! configured table says, with its answers in the same order of checks as
//! Flamenco's handler: an id that is present but malformed, then the type
//! (and its missing id), then the operation.

use serde_json::Value;

use crate::config::socketio::{IdFormat, JoinEvent};

/// Join or leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Join,
    Leave,
}

/// What a join event asks for: the rooms, or the answer refusing it.
pub fn rooms(event: &JoinEvent, payload: Option<&Value>) -> Result<(Op, Vec<String>), String> {
    let field = |name: &str| payload.and_then(|p| p.get(name)).filter(|v| !v.is_null());
    let text = |name: &str| field(name).and_then(Value::as_str);
    let id = match field(&event.id_field) {
        None => None,
        Some(Value::String(s)) if valid_id(event.id_format, s) => Some(s.as_str()),
        Some(_) => return Err(event.invalid_id.clone()),
    };
    let Some(kind) = text(&event.type_field).and_then(|t| event.types.get(t)) else {
        return Err(event.unknown_type.clone());
    };
    if kind.needs_id() && id.is_none() {
        return Err(kind.missing_id.clone());
    }
    let op = match text(&event.op_field) {
        Some(op) if op == event.subscribe => Op::Join,
        Some(op) if op == event.unsubscribe => Op::Leave,
        _ => return Err(event.invalid_op.clone()),
    };
    let rooms = kind
        .rooms
        .iter()
        .map(|r| r.replace("{id}", id.unwrap_or_default()))
        .collect();
    Ok((op, rooms))
}

fn valid_id(format: IdFormat, id: &str) -> bool {
    match format {
        IdFormat::Uuid => uuid::Uuid::try_parse(id).is_ok(),
        IdFormat::Any => !id.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::socketio::{
        JoinEventFile, JoinTypeFile, SocketIo, SocketIoCli, SocketIoFile,
    };
    use serde_json::json;

    /// Flamenco's table, as docs/socketio.md configures it.
    fn flamenco() -> JoinEvent {
        let t = |room: &str, missing: Option<&str>| JoinTypeFile {
            rooms: vec![room.to_string()],
            missing_id: missing.map(str::to_string),
        };
        let file = SocketIoFile {
            join_events: vec![JoinEventFile {
                event: "/subscription".into(),
                id_field: Some("uuid".into()),
                invalid_id: Some("invalid UUID, ignoring request".into()),
                unknown_type: Some("unknown subscription type, ignoring request".into()),
                invalid_op: Some("invalid subscription operation, ignoring request".into()),
                types: [
                    ("allJobs", t("Jobs", None)),
                    (
                        "job",
                        t("job-{id}", Some("operation on job requires a UUID")),
                    ),
                    (
                        "tasklog",
                        t("tasklog-{id}", Some("operation on task requires a UUID")),
                    ),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        SocketIo::resolve(&SocketIoCli::default(), &file)
            .unwrap()
            .join_events
            .remove(0)
    }

    #[test]
    fn flamenco_answers_in_its_order() {
        let e = flamenco();
        let u = "fa48930a-105c-4125-a7f7-0aa1651dcd57";
        let ask = |v: Value| rooms(&e, Some(&v));
        assert_eq!(
            ask(json!({"op": "subscribe", "type": "job", "uuid": u})),
            Ok((Op::Join, vec![format!("job-{u}")]))
        );
        assert_eq!(
            ask(json!({"op": "unsubscribe", "type": "allJobs"})),
            Ok((Op::Leave, vec!["Jobs".to_string()]))
        );
        // A bad id wins over everything else, even an unknown type.
        assert_eq!(
            ask(json!({"op": "bogus", "type": "bogus", "uuid": "nope"})),
            Err("invalid UUID, ignoring request".into())
        );
        assert_eq!(
            ask(json!({"op": "subscribe", "type": "job"})),
            Err("operation on job requires a UUID".into())
        );
        assert_eq!(
            ask(json!({"op": "subscribe", "type": "tasklog", "uuid": null})),
            Err("operation on task requires a UUID".into())
        );
        assert_eq!(
            ask(json!({"op": "subscribe", "type": "allTheThings"})),
            Err("unknown subscription type, ignoring request".into())
        );
        assert_eq!(
            ask(json!({"op": "join", "type": "allJobs"})),
            Err("invalid subscription operation, ignoring request".into())
        );
        assert_eq!(
            rooms(&e, None),
            Err("unknown subscription type, ignoring request".into())
        );
        assert_eq!(
            ask(json!({"op": "subscribe", "type": "job", "uuid": 7})),
            Err("invalid UUID, ignoring request".into())
        );
    }
}
