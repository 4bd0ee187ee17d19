//! Client authentication: JWTs signed with an HS256 shared secret or checked
//! with an RS256 / ES256 public key. `sub` becomes the socket's `root_id`; `exp`
//! is required and enforced, and so is `nbf` when present (no leeway for either). Unsigned (`alg: none`) tokens never verify.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Why a token was not accepted. The socket then becomes anonymous (or is
/// closed with 4001 under `--require-auth`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("no JWT key is configured")]
    NoKey,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// Seconds since the epoch after which the token is no longer valid.
    pub expires_at: u64,
    /// The `channels` claim: channel names or `prefix*` patterns this token
    /// may subscribe to in namespaces with `subscribe = "claim"`.
    pub channels: Option<Vec<String>>,
    /// The `info` claim as JSON text, shown in presence.
    pub info: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Checked by the validation; declared so a malformed value is refused.
    #[serde(default)]
    #[allow(dead_code)]
    nbf: Option<u64>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

/// Verifies tokens with the configured keys.
pub struct Authenticator {
    secret: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use JWT public key {path}: {message}")]
pub struct KeyError {
    path: String,
    message: String,
}

impl Authenticator {
    pub fn new(secret: Option<&str>, public_key: Option<&Path>) -> Result<Self, KeyError> {
        let public = match public_key {
            None => None,
            Some(path) => {
                let err = |message: String| KeyError {
                    path: path.display().to_string(),
                    message,
                };
                let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                let text = String::from_utf8_lossy(&pem);
                let (key, alg) = if text.contains("BEGIN EC PUBLIC KEY")
                    || DecodingKey::from_rsa_pem(&pem).is_err()
                {
                    (DecodingKey::from_ec_pem(&pem), Algorithm::ES256)
                } else {
                    (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256)
                };
                Some((key.map_err(|e| err(e.to_string()))?, alg))
            }
        };
        Ok(Authenticator {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
        })
    }

    /// True when at least one key is configured.
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || self.public.is_some()
    }

    /// Verify a token given bare or as `Bearer <token>`.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let claims: Claims = self.decode(token)?;
        identity(claims)
    }

    /// Verify a token and return every claim too, for front-ends that read
    /// claims of their own (the Cells gateway's user, profile, roles and
    /// workspaces).
    pub fn verify_claims(
        &self,
        token: &str,
    ) -> Result<(Identity, serde_json::Map<String, serde_json::Value>), AuthError> {
        let all: serde_json::Map<String, serde_json::Value> = self.decode(token)?;
        // Through text: `info` is kept as raw JSON, which a `Value` cannot give.
        let text = serde_json::to_string(&all).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims: Claims =
            serde_json::from_str(&text).map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok((identity(claims)?, all))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        let token = strip_bearer(token);
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref(),
            alg => match &self.public {
                Some((key, expected)) if *expected == alg => Some(key),
                _ => return Err(AuthError::Algorithm(format!("{alg:?}"))),
            },
        };
        let Some(key) = key else {
            return Err(if self.enabled() {
                AuthError::Algorithm(format!("{:?}", header.alg))
            } else {
                AuthError::NoKey
            });
        };
        let mut validation = Validation::new(header.alg);
        // The same leeway (none) for `exp` and `nbf`: a token is used only
        // inside the window its issuer gave it.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<T>(token, key, &validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        Ok(data.claims)
    }
}

fn identity(claims: Claims) -> Result<Identity, AuthError> {
    if claims.sub.is_empty() {
        return Err(AuthError::Invalid("empty sub".into()));
    }
    Ok(Identity {
        user_id: claims.sub,
        expires_at: claims.exp,
        channels: claims.channels,
        info: claims.info.map(|raw| raw.get().to_string()),
    })
}

/// `"Bearer abc"` (any case) → `"abc"`; a bare token is returned as is.
pub fn strip_bearer(value: &str) -> &str {
    let value = value.trim();
    match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => value[7..].trim(),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(secret: &str, sub: &str, exp: u64) -> String {
        encode(
            &Header::default(),
            &C { sub, exp },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn accepts_a_valid_hs256_token_with_or_without_bearer() {
        let auth = Authenticator::new(Some("s3cret"), None).expect("auth");
        let token = hs("s3cret", "n::abc", now() + 60);
        assert_eq!(auth.verify(&token).expect("valid").user_id, "n::abc");
        let bearer = format!("Bearer {token}");
        assert_eq!(auth.verify(&bearer).expect("valid").user_id, "n::abc");
    }

    #[test]
    fn rejects_expired_forged_and_unsigned_tokens() {
        let auth = Authenticator::new(Some("s3cret"), None).expect("auth");
        assert!(matches!(
            auth.verify(&hs("s3cret", "u", now() - 10)),
            Err(AuthError::Expired)
        ));
        assert!(auth.verify(&hs("other", "u", now() + 60)).is_err());
        // alg none: header {"alg":"none","typ":"JWT"}, claims, empty signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(auth.verify(none).is_err());
        assert!(matches!(auth.verify(""), Err(AuthError::Missing)));
    }

    #[test]
    fn a_token_not_yet_valid_is_refused_until_its_nbf() {
        #[derive(Serialize)]
        struct N<'a> {
            sub: &'a str,
            exp: u64,
            nbf: u64,
        }
        let auth = Authenticator::new(Some("s3cret"), None).expect("auth");
        let token = |nbf: u64| {
            encode(
                &Header::default(),
                &N {
                    sub: "u",
                    exp: now() + 600,
                    nbf,
                },
                &EncodingKey::from_secret(b"s3cret"),
            )
            .expect("encode")
        };
        assert!(matches!(
            auth.verify(&token(now() + 300)),
            Err(AuthError::NotYetValid)
        ));
        // Zero leeway, as for `exp`: one second early is still too early.
        assert!(matches!(
            auth.verify(&token(now() + 2)),
            Err(AuthError::NotYetValid)
        ));
        assert_eq!(auth.verify(&token(now() - 1)).expect("valid").user_id, "u");
        // An `nbf` that is not a NumericDate is not ignored.
        let odd = encode(
            &Header::default(),
            &serde_json::json!({"sub": "u", "exp": now() + 600, "nbf": "soon"}),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .expect("encode");
        assert!(auth.verify(&odd).is_err());
    }

    #[test]
    fn strip_bearer_handles_case_and_spaces() {
        assert_eq!(strip_bearer("bearer  x "), "x");
        assert_eq!(strip_bearer("BEARER y"), "y");
        assert_eq!(strip_bearer("z"), "z");
    }
}
