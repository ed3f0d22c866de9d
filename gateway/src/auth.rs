//! Who is calling: JWT bearer tokens (HS256 shared secret, or RS256 with a public key
//! or a JWKS file whose key the token's `kid` names).
//!
//! The user id is the token's `sub`. `exp` is required, and `nbf` (not before) is
//! checked when present, both with `JWT_LEEWAY_SECS` (60) of tolerance for clocks that
//! disagree: a token valid only from an hour later is refused, not accepted as it was
//! before `nbf` was checked. Browsers' `EventSource` cannot
//! set headers, so a token may also come as the `access_token` query parameter (on
//! `/stream`); prefer the header elsewhere, since URLs end up in access logs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::request::Parts,
};
use jsonwebtoken::{
    decode, decode_header,
    jwk::{AlgorithmParameters, JwkSet},
    Algorithm, DecodingKey, Validation,
};
use platform::{
    settings::{Env, SettingsError},
    sync::lock,
};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::error::ApiError;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The token's subject; every conversation and memory is scoped to it.
    pub id: String,
}

/// The user every request acts as when `AUTH=disabled`.
pub const ANONYMOUS: &str = "anonymous";

/// Longest user id accepted: it is part of every event and Qdrant payload.
const MAX_USER_ID_LEN: usize = 256;

/// Checks bearer tokens.
pub enum Authenticator {
    /// No checks: every caller is [`ANONYMOUS`]. Local development only.
    Disabled,
    /// JWT with fixed keys and validation rules.
    Jwt {
        /// Verification key(s).
        keys: Keys,
        /// Algorithm, expiry, issuer and audience rules.
        validation: Box<Validation>,
        /// Tokens already verified, so a client's next request skips the signature.
        verified: Verified,
    },
}

/// The keys tokens are verified with.
pub enum Keys {
    /// One key for every token.
    One(Box<DecodingKey>),
    /// A JWKS: the token's `kid` header picks the key (so keys can rotate).
    ByKeyId(HashMap<String, DecodingKey>),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Required (`validation`), so present once a token is decoded.
    exp: u64,
    nbf: Option<u64>,
}

/// Most tokens remembered as verified; past it the cache starts over (a client sends
/// the same token for an hour, so a few thousand users at a time fit).
const MAX_VERIFIED: usize = 10_000;

/// Longer tokens are verified every time rather than remembered.
const MAX_VERIFIED_TOKEN_LEN: usize = 4096;

/// Tokens whose signature and claims were checked, by their exact text, with the
/// seconds (Unix time) within which they stay usable. A token's text fixes its
/// claims and the keys never change while the process runs, so only time can make a
/// verified token unusable: each entry keeps `exp` and `nbf` with the leeway applied,
/// as `jsonwebtoken` applies them. The signature check and the JSON parsing of header
/// and claims were ~3 µs of a ~45 µs `POST /chat` (docs/PERFORMANCE.md, issue 18).
#[derive(Default)]
pub struct Verified {
    tokens: Mutex<HashMap<String, Usable>>,
}

#[derive(Clone)]
struct Usable {
    user: String,
    from: u64,
    until: u64,
}

impl Verified {
    fn user(&self, token: &str, now: u64) -> Option<User> {
        let mut tokens = lock(&self.tokens);
        let usable = tokens.get(token)?;
        if usable.from <= now && now <= usable.until {
            return Some(User { id: usable.user.clone() });
        }
        tokens.remove(token);
        None
    }

    fn remember(&self, token: &str, usable: Usable) {
        if token.len() > MAX_VERIFIED_TOKEN_LEN {
            return;
        }
        let mut tokens = lock(&self.tokens);
        if tokens.len() >= MAX_VERIFIED {
            tokens.clear();
        }
        tokens.insert(token.to_owned(), usable);
    }
}

/// Seconds since the Unix epoch, as `jsonwebtoken` checks `exp` and `nbf`.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Authenticator {
    /// Reads `AUTH`, `JWT_ALGORITHM`, `JWT_SECRET[_FILE]`, `JWT_PUBLIC_KEY_FILE` or
    /// `JWT_JWKS_FILE`, `JWT_ISSUER`, `JWT_AUDIENCE` and `JWT_LEEWAY_SECS`.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        if env.one_of("AUTH", &["jwt", "disabled"], "jwt")? == "disabled" {
            return Ok(Self::Disabled);
        }
        let algorithm = env.one_of("JWT_ALGORITHM", &["hs256", "rs256"], "hs256")?;
        let (keys, mut validation) = if algorithm == "hs256" {
            let secret = env.required_secret("JWT_SECRET", "the HS256 key that signs user tokens")?;
            if secret.expose_secret().len() < 32 {
                return Err(SettingsError::invalid("JWT_SECRET", "(hidden)", "must be at least 32 bytes"));
            }
            let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
            (Keys::One(Box::new(key)), Validation::new(Algorithm::HS256))
        } else if let Some(path) = env.optional("JWT_JWKS_FILE") {
            (Keys::ByKeyId(read_jwks(&path)?), Validation::new(Algorithm::RS256))
        } else {
            let path = env.required(
                "JWT_PUBLIC_KEY_FILE",
                "PEM file with the RS256 public key (or set JWT_JWKS_FILE to a JWKS file)",
            )?;
            let pem = std::fs::read(&path)
                .map_err(|e| SettingsError::invalid("JWT_PUBLIC_KEY_FILE", &path, e.to_string()))?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                SettingsError::invalid(
                    "JWT_PUBLIC_KEY_FILE",
                    &path,
                    format!("not an RSA public key in PEM form: {e}"),
                )
            })?;
            (Keys::One(Box::new(key)), Validation::new(Algorithm::RS256))
        };
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = env.parse_or("JWT_LEEWAY_SECS", 60)?;
        if validation.leeway > 300 {
            return Err(SettingsError::invalid(
                "JWT_LEEWAY_SECS",
                &validation.leeway.to_string(),
                "at most 300: a larger tolerance keeps expired tokens valid for minutes",
            ));
        }
        if let Some(issuer) = env.optional("JWT_ISSUER") {
            validation.set_issuer(&[issuer]);
        }
        match env.optional("JWT_AUDIENCE") {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Self::Jwt { keys, validation: Box::new(validation), verified: Verified::default() })
    }

    /// True when tokens are not checked.
    pub fn is_disabled(&self) -> bool {
        matches!(self, Self::Disabled)
    }

    /// The user a token belongs to, or a 401 saying why not.
    pub fn authenticate(&self, token: Option<&str>) -> Result<User, ApiError> {
        let (keys, validation, verified) = match self {
            Self::Disabled => return Ok(User { id: ANONYMOUS.into() }),
            Self::Jwt { keys, validation, verified } => (keys, validation, verified),
        };
        let token = token.ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
        if let Some(user) = verified.user(token, unix_now()) {
            return Ok(user);
        }
        let key = match keys {
            Keys::One(key) => key,
            Keys::ByKeyId(keys) => {
                let header = decode_header(token)
                    .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
                let kid =
                    header.kid.ok_or_else(|| ApiError::unauthorized("invalid token: no key id (kid)"))?;
                keys.get(&kid).ok_or_else(|| ApiError::unauthorized("invalid token: unknown key id (kid)"))?
            }
        };
        let data = decode::<Claims>(token, key, validation)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        let Claims { sub: id, exp, nbf } = data.claims;
        if id.is_empty() || id.len() > MAX_USER_ID_LEN || id.chars().any(char::is_control) {
            return Err(ApiError::unauthorized("invalid token: unusable subject"));
        }
        // The same bounds as `jsonwebtoken`'s checks (with the same leeway), which this
        // token passed just now; nbf is checked when present (`validate_nbf`).
        let usable = Usable {
            user: id.clone(),
            from: nbf.map_or(0, |nbf| nbf.saturating_sub(validation.leeway)),
            until: exp.saturating_add(validation.leeway),
        };
        verified.remember(token, usable);
        Ok(User { id })
    }
}

/// The RSA keys of a JWKS file by `kid`; other key types are skipped.
fn read_jwks(path: &str) -> Result<HashMap<String, DecodingKey>, SettingsError> {
    let text =
        std::fs::read(path).map_err(|e| SettingsError::invalid("JWT_JWKS_FILE", path, e.to_string()))?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| SettingsError::invalid("JWT_JWKS_FILE", path, format!("not a JWKS: {e}")))?;
    let mut keys = HashMap::new();
    for jwk in set.keys.iter().filter(|k| matches!(k.algorithm, AlgorithmParameters::RSA(_))) {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| SettingsError::invalid("JWT_JWKS_FILE", path, "an RSA key has no kid"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            SettingsError::invalid("JWT_JWKS_FILE", path, format!("key {kid} is unusable: {e}"))
        })?;
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(SettingsError::invalid("JWT_JWKS_FILE", path, "holds no RSA key"));
    }
    Ok(keys)
}

/// The bearer token of a request: the `Authorization` header, else `access_token`.
fn token_of(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    let query = axum::extract::Query::<TokenQuery>::try_from_uri(&parts.uri).ok()?;
    query.0.access_token
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// Any state that holds the authenticator (axum's `FromRef`) can authenticate requests.
impl<S> FromRequestParts<S> for User
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Arc::<Authenticator>::from_ref(state).authenticate(token_of(parts).as_deref())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "auth-tests-secret-auth-tests-secret-0123";

    fn now() -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }

    fn token(claims: serde_json::Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("token")
    }

    fn auth(leeway: Option<&str>) -> Authenticator {
        let mut pairs = vec![("JWT_SECRET", SECRET)];
        if let Some(l) = leeway {
            pairs.push(("JWT_LEEWAY_SECS", l));
        }
        Authenticator::from_env(&Env::from_pairs(pairs)).expect("valid settings")
    }

    fn refusal(auth: &Authenticator, token: &str) -> Option<String> {
        auth.authenticate(Some(token)).err().map(|e| format!("{e:?}"))
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_beyond_the_leeway() {
        let later = token(json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}));
        let refused = refusal(&auth(None), &later).expect("a token valid only from an hour later is refused");
        assert!(refused.contains("ImmatureSignature"), "{refused}");
        let almost = token(json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 30}));
        assert_eq!(refusal(&auth(None), &almost), None, "30 s early is within the 60 s leeway");
        assert!(refusal(&auth(Some("0")), &almost).is_some(), "and not within a 0 s leeway");
    }

    #[test]
    fn expiry_has_the_documented_leeway() {
        let just_expired = token(json!({"sub": "alice", "exp": now() - 30}));
        assert_eq!(refusal(&auth(None), &just_expired), None, "30 s late is within the default 60 s");
        assert!(refusal(&auth(Some("0")), &just_expired).is_some(), "JWT_LEEWAY_SECS=0 refuses it");
        let long_expired = token(json!({"sub": "alice", "exp": now() - 120}));
        assert!(refusal(&auth(None), &long_expired).is_some());
    }

    #[test]
    fn a_remembered_token_is_used_only_within_its_bounds() {
        let auth = auth(None);
        let good = token(json!({"sub": "alice", "exp": now() + 3600}));
        assert_eq!(auth.authenticate(Some(&good)).map(|u| u.id).ok().as_deref(), Some("alice"));
        assert_eq!(
            auth.authenticate(Some(&good)).map(|u| u.id).ok().as_deref(),
            Some("alice"),
            "from memory"
        );
        // Another signature on the same claims is checked, not matched by its claims.
        let forged = format!("{}x", &good[..good.len() - 1]);
        assert!(refusal(&auth, &forged).is_some());
        let Authenticator::Jwt { verified, .. } = &auth else { panic!("jwt") };
        let usable = |from, until| Usable { user: "bob".into(), from, until };
        verified.remember("t", usable(100, 200));
        assert_eq!(verified.user("t", 99), None, "not yet: forgotten");
        verified.remember("t", usable(100, 200));
        assert_eq!(verified.user("t", 150).map(|u| u.id).as_deref(), Some("bob"));
        assert_eq!(verified.user("t", 201), None, "expired");
        assert_eq!(verified.user("t", 150), None, "and forgotten");
    }

    #[test]
    fn a_leeway_over_five_minutes_is_refused_with_its_name() {
        let env = Env::from_pairs([("JWT_SECRET", SECRET), ("JWT_LEEWAY_SECS", "3600")]);
        let err = Authenticator::from_env(&env).err().expect("refused");
        assert!(err.to_string().contains("JWT_LEEWAY_SECS"), "{err}");
    }
}
