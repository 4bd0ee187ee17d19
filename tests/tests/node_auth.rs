//! JWT authentication: HS256, RS256 and ES256 tokens, expired, forged and
//! unsigned ones, and `--require-auth`.

use std::process::{Command, Stdio};

use pubmesh_tests::harness::{eventually, hs256, patience, temp_dir, Client, Node, ANONYMOUS};
use serde_json::json;

const SECRET: &str = "auth-secret";

#[tokio::test]
async fn a_valid_token_sets_root_id_from_sub() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let token = hs256(SECRET, "n::672b35cec309e5ef8469c372", 300);
    let header = Client::connect_with_token(&node.ws(""), &token).await;
    assert_eq!(header.root_id(), "n::672b35cec309e5ef8469c372");
    let query = node.client(&format!("token={token}")).await;
    assert_eq!(query.root_id(), "n::672b35cec309e5ef8469c372");
}

#[tokio::test]
async fn expired_forged_and_unsigned_tokens_give_an_anonymous_socket() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let expired = hs256(SECRET, "n::late", -120);
    let forged = hs256("some-other-secret", "n::mallory", 300);
    // {"alg":"none"} header, claims {"sub":"n::root","exp":9999999999}, no signature.
    let unsigned =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJuOjpyb290IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    for token in [expired.as_str(), forged.as_str(), unsigned, "garbage"] {
        let c = Client::connect_with_token(&node.ws(""), token).await;
        assert_eq!(
            c.root_id(),
            ANONYMOUS,
            "token {token} must not authenticate"
        );
    }
}

#[tokio::test]
async fn require_auth_closes_sockets_without_a_valid_token() {
    let node = Node::start(&["--jwt-secret", SECRET, "--require-auth"]).await;
    let mut anonymous = Client::connect_raw(&node.ws(""), None)
        .await
        .expect("upgrade");
    assert_eq!(anonymous.expect_close().await.map(|c| c.0), Some(4001));
    let expired = hs256(SECRET, "n::late", -120);
    let mut late = Client::connect_raw(&node.ws(""), Some(&expired))
        .await
        .expect("upgrade");
    assert_eq!(late.expect_close().await.map(|c| c.0), Some(4001));

    let good = hs256(SECRET, "n::ok", 300);
    let mut ok = Client::connect_with_token(&node.ws(""), &good).await;
    assert_eq!(ok.root_id(), "n::ok");
    // Switching to a bad token under --require-auth closes the socket.
    ok.send(json!({"type": "change_user", "token": "Bearer nope"}))
        .await;
    assert_eq!(ok.expect_close().await.map(|c| c.0), Some(4001));
}

#[tokio::test]
async fn a_token_that_expires_while_connected_makes_the_socket_anonymous() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let short = hs256(SECRET, "n::brief", 2);
    let mut c = Client::connect_with_token(&node.ws(""), &short).await;
    assert_eq!(c.root_id(), "n::brief");
    let frame = c.recv_until(|f| f["type"] == "connection").await;
    assert_eq!(frame["data"]["root_id"], ANONYMOUS);
}

#[tokio::test]
async fn under_require_auth_an_expiring_token_closes_the_socket_with_4001() {
    let node = Node::start(&["--jwt-secret", SECRET, "--require-auth"]).await;
    let short = hs256(SECRET, "n::brief", 2);
    let mut c = Client::connect_with_token(&node.ws(""), &short).await;
    assert_eq!(c.root_id(), "n::brief");
    let long = hs256(SECRET, "n::stays", 300);
    let mut stays = node.client(&format!("token={long}")).await;
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(4001));
    stays.send(json!({"type": "connection"})).await;
    assert_eq!(stays.recv().await["data"]["root_id"], "n::stays");
}

#[tokio::test]
async fn change_user_renews_identity_before_expiry() {
    let node = Node::start(&["--jwt-secret", SECRET, "--require-auth"]).await;
    let short = hs256(SECRET, "n::renew", 2);
    let mut c = Client::connect_with_token(&node.ws(""), &short).await;
    let fresh = hs256(SECRET, "n::renew", 300);
    c.send(json!({"type": "change_user", "token": format!("Bearer {fresh}"), "ref": 1}))
        .await;
    let frame = c.recv().await;
    assert_eq!(frame["ref"], 1);
    assert_eq!(frame["data"]["root_id"], "n::renew");
    // Past the first token's expiry the socket is still open and still the user.
    eventually("the first token to expire", patience(10), || async {
        (jsonwebtoken::get_current_timestamp() >= expiry(&short) + 2).then_some(())
    })
    .await;
    c.send(json!({"type": "connection"})).await;
    assert_eq!(c.recv().await["data"]["root_id"], "n::renew");
}

/// The `exp` claim of a token made by `hs256`.
fn expiry(token: &str) -> u64 {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .expect("own token");
    data.claims["exp"].as_u64().expect("exp")
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl {args:?}");
}

async fn public_key_round_trip(alg: jsonwebtoken::Algorithm, genkey: &[&str]) {
    let dir = temp_dir("keys");
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let mut args = genkey.to_vec();
    let private_s = private.to_str().expect("utf8 path");
    args.extend(["-out", private_s]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().expect("utf8"),
    ]);
    let pem = std::fs::read(&private).expect("private key");
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
    }
    .expect("encoding key");
    let exp = jsonwebtoken::get_current_timestamp() + 300;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &json!({"sub": "n::pk-user", "exp": exp}),
        &key,
    )
    .expect("token");
    let node = Node::start(&["--jwt-public-key", public.to_str().expect("utf8")]).await;
    let c = Client::connect_with_token(&node.ws(""), &token).await;
    assert_eq!(c.root_id(), "n::pk-user");
    // An HS256 token signed with the public key's bytes must not pass.
    let confused = hs256(
        &String::from_utf8_lossy(&std::fs::read(&public).expect("pem")),
        "n::x",
        300,
    );
    let c = Client::connect_with_token(&node.ws(""), &confused).await;
    assert_eq!(c.root_id(), ANONYMOUS);
}

#[tokio::test]
async fn rs256_tokens_verify_with_a_public_key() {
    public_key_round_trip(
        jsonwebtoken::Algorithm::RS256,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
    )
    .await;
}

#[tokio::test]
async fn es256_tokens_verify_with_a_public_key() {
    public_key_round_trip(
        jsonwebtoken::Algorithm::ES256,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    )
    .await;
}
