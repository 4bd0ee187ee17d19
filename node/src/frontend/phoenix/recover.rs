//! History recovery on rejoin, for Phoenix and chain topics that are
//! history channels (docs/phoenix.md, "Recovery on rejoin").
//!
//! Every publication delivered on such a topic carries its position as the
//! frame's `ref`, the string `"<epoch>:<offset>"` (broadcasts have no ref
//! otherwise, and the official client hands it to `channel.on` callbacks
//! as their second argument). A join whose params carry the last one,
//! `{"since": "<epoch>:<offset>"}` (or the native protocol's
//! `{"offset": N, "epoch": "…"}`), gets exactly the publications it missed,
//! in order, after its reply and before live ones; the reply's response
//! says `{"position": …, "recovered": true|false}`. chain broadcasts have
//! no ref: there the position is a fifth element (docs/chain.md).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::delivery::Position;
use crate::node::Joined;

/// A position as a frame's ref: `"<epoch>:<offset>"`.
pub fn format(p: &Position) -> String {
    format!("{}:{}", p.epoch, p.offset)
}

/// A `"<epoch>:<offset>"` string back as a position.
pub fn parse(text: &str) -> Option<Position> {
    let (epoch, offset) = text.rsplit_once(':')?;
    let offset = offset.parse().ok()?;
    Some(Position {
        offset,
        epoch: epoch.to_string(),
    })
}

/// Why a join's `since` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSince;

/// The `since` of join params (a JSON object's text): `None` when absent
/// or null.
pub fn since(params: &str) -> Result<Option<Position>, BadSince> {
    #[derive(Deserialize)]
    struct Params {
        #[serde(default)]
        since: Option<Value>,
    }
    let params: Params = serde_json::from_str(params).map_err(|_| BadSince)?;
    match params.since {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse(&s).map(Some).ok_or(BadSince),
        Some(v @ Value::Object(_)) => serde_json::from_value(v).map(Some).map_err(|_| BadSince),
        Some(_) => Err(BadSince),
    }
}

/// The join reply's response for `topic`: `{"position", "recovered"}` on a
/// history channel (`recovered` only when the join gave `since`), `{}`
/// otherwise.
pub fn join_response(joined: &Joined, topic: &str) -> Box<RawValue> {
    let v = match joined.positions.iter().find(|(c, _, _)| c == topic) {
        Some((_, top, Some(recovered))) => json!({"position": format(top), "recovered": recovered}),
        Some((_, top, None)) => json!({"position": format(top)}),
        None => json!({}),
    };
    serde_json::value::to_raw_value(&v).expect("a join response serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_since_takes_both_shapes() {
        let p = Position {
            offset: 17,
            epoch: "ab12cd34".into(),
        };
        assert_eq!(format(&p), "ab12cd34:17");
        assert_eq!(parse("ab12cd34:17"), Some(p.clone()));
        assert_eq!(parse(":0").map(|p| p.offset), Some(0));
        assert_eq!(parse("nope"), None);
        assert_eq!(parse("a:-1"), None);
        assert_eq!(since(r#"{"since":"ab12cd34:17"}"#), Ok(Some(p.clone())));
        assert_eq!(
            since(r#"{"since":{"offset":17,"epoch":"ab12cd34"},"x":1}"#),
            Ok(Some(p))
        );
        assert_eq!(since(r#"{"token":"t"}"#), Ok(None));
        assert_eq!(since(r#"{"since":null}"#), Ok(None));
        assert_eq!(since(r#"{"since":5}"#), Err(BadSince));
        assert_eq!(since(r#"{"since":"x"}"#), Err(BadSince));
        assert_eq!(since(r#"{"since":{"offset":"1"}}"#), Err(BadSince));
    }

    #[test]
    fn join_responses_say_position_and_recovery() {
        let top = Position {
            offset: 3,
            epoch: "e".into(),
        };
        let joined = |r| Joined {
            channels: vec!["t".into()],
            positions: vec![("t".into(), top.clone(), r)],
        };
        assert_eq!(
            join_response(&joined(Some(false)), "t").get(),
            r#"{"position":"e:3","recovered":false}"#
        );
        assert_eq!(
            join_response(&joined(None), "t").get(),
            r#"{"position":"e:3"}"#
        );
        assert_eq!(join_response(&joined(None), "u").get(), "{}");
    }
}
