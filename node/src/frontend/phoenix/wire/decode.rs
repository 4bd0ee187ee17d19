//! Decoding text frames: v2 JSON arrays and v1 JSON objects, strictly.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{DecodeError, Message, Payload, Ref};

fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::Json(e.to_string())
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn decode_ref(raw: Option<&RawValue>, name: &'static str) -> Result<Option<Ref>, DecodeError> {
    match raw {
        None => Ok(None),
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| DecodeError::BadRef(name)),
    }
}

fn decode_string(raw: &RawValue, err: DecodeError) -> Result<String, DecodeError> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| err)
}

pub(super) fn decode_v2(text: &str) -> Result<Message, DecodeError> {
    let items: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(_) if is_json(text) => return Err(DecodeError::NotArray),
        Err(e) => return Err(json_error(e)),
    };
    let [join_ref, reference, topic, event, payload] = items[..] else {
        return Err(DecodeError::Arity(items.len()));
    };
    Ok(Message {
        join_ref: decode_ref(Some(join_ref), "join_ref")?,
        reference: decode_ref(Some(reference), "ref")?,
        topic: decode_string(topic, DecodeError::TopicNotString)?,
        event: decode_string(event, DecodeError::EventNotString)?,
        payload: Payload::Json(payload.to_owned()),
    })
}

pub(super) fn decode_v1(text: &str) -> Result<Message, DecodeError> {
    #[derive(Deserialize)]
    struct V1<'a> {
        #[serde(borrow)]
        topic: Option<&'a RawValue>,
        #[serde(borrow)]
        event: Option<&'a RawValue>,
        #[serde(borrow)]
        payload: Option<&'a RawValue>,
        // `ref` must be present (it may be null), as Phoenix requires.
        #[serde(borrow, rename = "ref", default, deserialize_with = "present")]
        reference: Option<Option<&'a RawValue>>,
        #[serde(borrow)]
        join_ref: Option<&'a RawValue>,
    }
    fn present<'de, D>(d: D) -> Result<Option<Option<&'de RawValue>>, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        let raw = <&'de RawValue>::deserialize(d)?;
        Ok(Some((raw.get() != "null").then_some(raw)))
    }
    // serde would also read a struct from an array: objects only.
    if !text.trim_start().starts_with('{') {
        return Err(if is_json(text) {
            DecodeError::NotObject
        } else {
            DecodeError::Json("expected a JSON object".into())
        });
    }
    let v: V1<'_> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if is_json(text) => return Err(DecodeError::NotObject),
        Err(e) => return Err(json_error(e)),
    };
    let topic = v.topic.ok_or(DecodeError::MissingField("topic"))?;
    let event = v.event.ok_or(DecodeError::MissingField("event"))?;
    let payload = v.payload.ok_or(DecodeError::MissingField("payload"))?;
    let reference = v.reference.ok_or(DecodeError::MissingField("ref"))?;
    Ok(Message {
        join_ref: decode_ref(v.join_ref, "join_ref")?,
        reference: decode_ref(reference, "ref")?,
        topic: decode_string(topic, DecodeError::TopicNotString)?,
        event: decode_string(event, DecodeError::EventNotString)?,
        payload: Payload::Json(payload.to_owned()),
    })
}
