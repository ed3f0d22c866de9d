//! Bearer tokens for the virtual users.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

use crate::cli::Auth;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// The user id of conversation `index` (0-based) when tokens are minted: `user-1`, `user-2`, ….
pub fn user_id(index: usize) -> String {
    format!("user-{}", index + 1)
}

/// An HS256 token for `user`, valid for `valid_for` from now.
pub fn mint(secret: &str, user: &str, valid_for: Duration) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let claims = Claims { sub: user, iat: now, exp: now + valid_for.as_secs() };
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .with_context(|| format!("signing a token for {user}"))
}

/// One token (or none) per conversation. Minted tokens stay valid at least an hour,
/// and longer when the run itself is longer than that (`run_length`).
pub fn tokens(
    auth: &Auth,
    conversations: usize,
    run_length: Duration,
) -> anyhow::Result<Vec<Option<String>>> {
    let valid_for = Duration::from_secs(3600).max(run_length + Duration::from_secs(600));
    (0..conversations)
        .map(|i| match auth {
            Auth::None => Ok(None),
            Auth::Token(token) => Ok(Some(token.clone())),
            Auth::Mint(secret) => mint(secret, &user_id(i), valid_for).map(Some),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    use super::*;

    #[derive(serde::Deserialize)]
    struct Read {
        sub: String,
        exp: u64,
        iat: u64,
    }

    #[test]
    fn minted_tokens_name_one_user_per_conversation_and_expire_after_an_hour() {
        let secret = "a-secret-of-at-least-32-bytes-for-hs256";
        let tokens = tokens(&Auth::Mint(secret.into()), 3, Duration::from_secs(60)).expect("tokens");
        let key = DecodingKey::from_secret(secret.as_bytes());
        for (i, token) in tokens.iter().enumerate() {
            let token = token.as_deref().expect("a token");
            let claims =
                decode::<Read>(token, &key, &Validation::new(Algorithm::HS256)).expect("valid").claims;
            assert_eq!(claims.sub, format!("user-{}", i + 1));
            assert_eq!(claims.exp - claims.iat, 3600);
        }
        let long = tokens_for_long_run(secret);
        assert!(long > 3600, "a two-hour run gets tokens that outlive it");
    }

    fn tokens_for_long_run(secret: &str) -> u64 {
        let token = tokens(&Auth::Mint(secret.into()), 1, Duration::from_secs(7200)).expect("tokens");
        let key = DecodingKey::from_secret(secret.as_bytes());
        let claims =
            decode::<Read>(token[0].as_deref().expect("token"), &key, &Validation::new(Algorithm::HS256))
                .expect("valid")
                .claims;
        claims.exp - claims.iat
    }

    #[test]
    fn a_given_token_is_shared_and_no_auth_sends_none() {
        assert_eq!(
            tokens(&Auth::Token("t".into()), 2, Duration::ZERO).unwrap(),
            [Some("t".into()), Some("t".into())]
        );
        assert_eq!(tokens(&Auth::None, 2, Duration::ZERO).unwrap(), [None, None]);
    }
}
