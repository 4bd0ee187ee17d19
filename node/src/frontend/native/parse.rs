//! Reading native client frames: every field unparsed at first, then checked
//! by the handler of the frame's type so errors can name the field.

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::node::MeshError;

/// Longest `ref` echoed back, in bytes of JSON.
pub const MAX_REF_LEN: usize = 64;
pub use crate::limits::MAX_ID_LEN;

/// Every field a client frame may carry, unparsed.
#[derive(Deserialize)]
pub struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    pub reference: Option<&'a RawValue>,
    #[serde(borrow)]
    pub channel_ids: Option<&'a RawValue>,
    #[serde(borrow)]
    pub root_ids: Option<&'a RawValue>,
    #[serde(borrow)]
    pub client_ids: Option<&'a RawValue>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub token: Option<&'a RawValue>,
    #[serde(borrow)]
    pub walker: Option<&'a RawValue>,
    #[serde(borrow)]
    pub context: Option<&'a RawValue>,
    #[serde(borrow)]
    pub node: Option<&'a RawValue>,
    #[serde(borrow)]
    pub response: Option<&'a RawValue>,
    #[serde(borrow)]
    pub positioned: Option<&'a RawValue>,
    #[serde(borrow)]
    pub since: Option<&'a RawValue>,
    #[serde(borrow)]
    pub channel_id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub limit: Option<&'a RawValue>,
    #[serde(borrow)]
    pub idempotency_key: Option<&'a RawValue>,
}

/// A rejected frame: message and code.
pub struct Reject(pub String, pub &'static str);

impl From<MeshError> for Reject {
    fn from(e: MeshError) -> Self {
        Reject(e.to_string(), e.code())
    }
}

pub fn bad(message: impl Into<String>) -> Reject {
    Reject(message.into(), "bad_request")
}

/// A `ref` is a number, or a string of at most [`MAX_REF_LEN`] bytes.
pub fn valid_ref(r: &RawValue) -> bool {
    let text = r.get();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).is_ok_and(|s| s.len() <= MAX_REF_LEN)
    } else {
        text.len() <= MAX_REF_LEN && serde_json::from_str::<serde_json::Number>(text).is_ok()
    }
}

pub fn ids(field: Option<&RawValue>, name: &str, max: usize) -> Result<Vec<String>, Reject> {
    let raw = field.ok_or_else(|| bad(format!("{name} is required")))?;
    let list: Vec<String> = serde_json::from_str(raw.get())
        .map_err(|_| bad(format!("{name} must be a list of strings")))?;
    crate::limits::id_list(list, name, max).map_err(bad)
}

/// `data` must be a JSON object (as in jac-cloud); it is delivered verbatim.
pub fn data(field: Option<&RawValue>) -> Result<Utf8Bytes, Reject> {
    let raw = field.ok_or_else(|| bad("data is required"))?;
    if !raw.get().starts_with('{') {
        return Err(bad("data must be an object"));
    }
    Ok(Utf8Bytes::from(raw.get().to_string()))
}

/// The optional `idempotency_key` of a publish frame.
pub fn idempotency_key(field: Option<&RawValue>) -> Result<Option<String>, Reject> {
    match field {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => crate::idempotency::key_from_json(raw.get())
            .map(Some)
            .map_err(bad),
    }
}

pub fn boolean(field: Option<&RawValue>, name: &str) -> Result<bool, Reject> {
    match field {
        None => Ok(false),
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|_| bad(format!("{name} must be a boolean")))
        }
    }
}

pub fn string(field: Option<&RawValue>, name: &str) -> Result<Option<String>, Reject> {
    match field {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|_| bad(format!("{name} must be a string"))),
    }
}
