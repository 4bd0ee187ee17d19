//! Polling session ids that name their owner node: `<owner>.<nonce>.<signature>`,
//! the owner's advertised URL (base64url) and a random nonce, signed with
//! HMAC-SHA256 under the API key every node of a cluster shares.

use base64::Engine as _;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Characters of the signature kept in a sid (128 bits).
const SIGNATURE_LEN: usize = 22;

/// The sid of a new session owned by `owner` (its advertised URL).
pub fn new_sid(owner: &str, key: &str) -> String {
    let body = format!(
        "{}.{}",
        B64.encode(owner.as_bytes()),
        uuid::Uuid::new_v4().simple()
    );
    let signature = sign(&body, key);
    format!("{body}.{signature}")
}

fn sign(body: &str, key: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(key.as_bytes());
    let mut s = jsonwebtoken::crypto::sign(body.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("HMAC signs any message");
    s.truncate(SIGNATURE_LEN);
    s
}

/// The owner a sid names, if its signature is valid.
pub fn owner(sid: &str, key: &str) -> Option<String> {
    let (body, signature) = sid.rsplit_once('.')?;
    let expected = sign(body, key);
    // Compare every byte, whatever the first difference.
    let same = expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return None;
    }
    let (owner, _) = body.split_once('.')?;
    String::from_utf8(B64.decode(owner).ok()?).ok()
}
