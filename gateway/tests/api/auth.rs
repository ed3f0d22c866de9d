//! Who reaches what: other users get 404 and see nothing; RS256 tokens checked against a PEM
//! key and against the JWKS key their `kid` names.

use serde_json::json;
use testkit::kafka::Kafka;
use uuid::Uuid;

use crate::common::{post_chat, token, Gateway};

#[tokio::test(flavor = "multi_thread")]
async fn other_users_get_404_and_see_nothing() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let (_, body) = post_chat(&client, &gateway, &token("alice"), json!({"text": "secret plans"})).await;
    let conversation_id = body["conversation_id"].as_str().unwrap();
    let mallory = token("mallory");

    let response = client
        .get(gateway.url(&format!("/stream?conversation_id={conversation_id}")))
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (status, error) =
        post_chat(&client, &gateway, &mallory, json!({"conversation_id": conversation_id, "text": "me too"}))
            .await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "unknown_conversation");
    // A made-up conversation id is just as unknown.
    let (status, _) =
        post_chat(&client, &gateway, &mallory, json!({"conversation_id": Uuid::new_v4(), "text": "x"})).await;
    assert_eq!(status, 404);
}

/// Runs openssl (the test's key factory); panics when it fails.
fn openssl(args: &[&str]) -> String {
    let output = std::process::Command::new("openssl").args(args).output().expect("openssl");
    assert!(output.status.success(), "openssl {args:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A new RSA key pair in `dir`: (private PEM path, public PEM path).
fn rsa_key_pair(dir: &std::path::Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.pem")).to_str().expect("path").to_string();
    let public = dir.join(format!("{name}.pub.pem")).to_str().expect("path").to_string();
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &private]);
    openssl(&["pkey", "-in", &private, "-pubout", "-out", &public]);
    (private, public)
}

/// An RS256 token for `user` signed with the private key at `private`, with `kid`.
fn rs256_token(private: &str, kid: Option<&str>, user: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(
        &header,
        &json!({"sub": user, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(private).unwrap()).expect("private key"),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_tokens_are_checked_against_the_public_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (private, public) = rsa_key_pair(dir.path(), "key");
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[("JWT_ALGORITHM", "rs256"), ("JWT_PUBLIC_KEY_FILE", &public)]);
    let signed = rs256_token(&private, None, "carol");
    let client = reqwest::Client::new();
    let (status, body) = post_chat(&client, &gateway, &signed, json!({"text": "hi"})).await;
    assert_eq!(status, 202, "{body}");
    // An HS256 token (here signed with the old shared secret) is refused.
    let (status, _) = post_chat(&client, &gateway, &token("carol"), json!({"text": "hi"})).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_tokens_are_checked_against_the_jwks_key_their_kid_names() {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_key, _) = rsa_key_pair(dir.path(), "old");
    let (new_key, _) = rsa_key_pair(dir.path(), "new");
    // The JWKS an identity provider publishes: each key's modulus and exponent.
    let jwk = |private: &str, kid: &str| {
        let modulus = openssl(&["rsa", "-in", private, "-noout", "-modulus"]);
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"})
    };
    let jwks = dir.path().join("jwks.json");
    let ec = json!({"kty": "EC", "crv": "P-256", "kid": "ec", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
    std::fs::write(&jwks, json!({"keys": [jwk(&old_key, "2025"), ec, jwk(&new_key, "2026")]}).to_string())
        .expect("jwks");

    let kafka = Kafka::start(2).await;
    let gateway =
        Gateway::start(&kafka, &[("JWT_ALGORITHM", "rs256"), ("JWT_JWKS_FILE", jwks.to_str().unwrap())]);
    let client = reqwest::Client::new();
    for (token, expected, why) in [
        (rs256_token(&new_key, Some("2026"), "dave"), 202, "the current key"),
        (rs256_token(&old_key, Some("2025"), "dave"), 202, "the previous key, still published"),
        (rs256_token(&old_key, Some("2026"), "dave"), 401, "signed by another key than its kid names"),
        (rs256_token(&new_key, Some("2027"), "dave"), 401, "an unknown kid"),
        (rs256_token(&new_key, None, "dave"), 401, "no kid"),
        (token("dave"), 401, "HS256"),
    ] {
        let (status, body) = post_chat(&client, &gateway, &token, json!({"text": "hi"})).await;
        assert_eq!(status, expected, "{why}: {body}");
        if expected == 401 {
            assert!(
                body["error"]["message"].as_str().is_some_and(|m| m.starts_with("invalid token")),
                "{body}"
            );
        }
    }
}
