//! JWT verification: arbitrary text never verifies (and never panics); a
//! claims object signed with the right key verifies exactly when its claims
//! are valid (non-empty string `sub`, integer `exp` in the future, `nbf`
//! absent or not in the future, `channels` absent or a list of strings).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pubmesh_node::auth::Authenticator;
use serde_json::Value;

const SECRET: &str = "fuzz-secret";

fn auth() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| Authenticator::new(Some(SECRET), None).expect("auth"))
}

fn should_accept(claims: &Value, now: u64) -> Option<bool> {
    // Within 2 s of now the clock may tick between the two checks.
    let near = |t: u64| t.abs_diff(now) <= 2;
    if claims["exp"].as_u64().is_some_and(near) || claims["nbf"].as_u64().is_some_and(near) {
        return None;
    }
    let sub = claims["sub"].as_str().is_some_and(|s| !s.is_empty());
    let exp = claims["exp"].as_u64().is_some_and(|e| e > now);
    let nbf = match claims.get("nbf") {
        None => true,
        Some(v) => v.as_u64().is_some_and(|n| n <= now),
    };
    let channels = match claims.get("channels") {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    };
    Some(sub && exp && nbf && channels)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        // Raw text as a token: nothing unsigned or forged verifies.
        if let Ok(id) = auth().verify(text) {
            panic!("{text:?} verified as {id:?}");
        }
        return;
    }
    // Text as claims, signed with the right key; the times are made relative
    // to now (`exp`/`nbf` given as offsets) when they are integers.
    let Ok(Value::Object(mut claims)) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let now = jsonwebtoken::get_current_timestamp();
    for key in ["exp", "nbf"] {
        if let Some(offset) = claims.get(key).and_then(Value::as_i64) {
            let t = (now as i64).saturating_add(offset);
            if t >= 0 {
                claims.insert(key.into(), Value::from(t));
            }
        }
    }
    let claims = Value::Object(claims);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let result = auth().verify(&token);
    if let Some(expected) = should_accept(&claims, now) {
        assert_eq!(result.is_ok(), expected, "{claims} → {result:?}");
    }
});
