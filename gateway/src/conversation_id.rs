//! Conversation ids that prove who owns them.
//!
//! Any gateway replica must be able to tell, without shared storage, whether a
//! conversation belongs to the caller: a client's stream can land on a replica that
//! never saw the conversation's first message. So a conversation id is a UUID (v8)
//! whose first half is random and whose second half is an HMAC-SHA256 tag of the
//! owner's user id and that random half, keyed with `CONVERSATION_KEY`, which every
//! replica shares. Someone else's id, a forged id or a made-up one fails the check,
//! and the gateway answers 404 as for a conversation that does not exist.

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Issues and checks owner-bound conversation ids.
#[derive(Clone)]
pub struct ConversationIds {
    key: SecretString,
}

impl ConversationIds {
    /// Uses `key` (at least 32 bytes) to sign conversation ids.
    pub fn new(key: SecretString) -> Self {
        Self { key }
    }

    /// A new conversation id owned by `user_id`.
    pub fn issue(&self, user_id: &str) -> Uuid {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes[..8]);
        // Version 8 ("custom") in the high nibble of byte 6, within the random half.
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        let tag = self.tag(user_id, &bytes[..8]);
        bytes[8..].copy_from_slice(&tag);
        Uuid::from_bytes(with_variant(bytes))
    }

    /// True when `id` was issued by this key to `user_id`.
    pub fn is_owned_by(&self, id: &Uuid, user_id: &str) -> bool {
        let bytes = *id.as_bytes();
        if bytes[6] >> 4 != 8 {
            return false;
        }
        let mut expected = bytes;
        expected[8..].copy_from_slice(&self.tag(user_id, &bytes[..8]));
        let expected = with_variant(expected);
        // Constant-time comparison: the tag is a secret-derived value.
        expected[8..].iter().zip(&bytes[8..]).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    fn tag(&self, user_id: &str, random: &[u8]) -> [u8; 8] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(&(user_id.len() as u64).to_be_bytes());
        mac.update(user_id.as_bytes());
        mac.update(random);
        let digest = mac.finalize().into_bytes();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&digest[..8]);
        tag
    }
}

/// Sets the RFC 9562 variant bits (10xx) in byte 8.
fn with_variant(mut bytes: [u8; 16]) -> [u8; 16] {
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(key: &str) -> ConversationIds {
        ConversationIds::new(SecretString::from(key.to_string()))
    }

    #[test]
    fn issued_ids_are_v8_uuids_owned_by_their_user_only() {
        let ids = ids("k".repeat(32).as_str());
        let id = ids.issue("alice");
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert!(ids.is_owned_by(&id, "alice"));
        assert!(!ids.is_owned_by(&id, "bob"));
        assert!(!ids.is_owned_by(&id, "alice "));
        assert_ne!(ids.issue("alice"), id);
    }

    #[test]
    fn other_keys_and_made_up_ids_are_refused() {
        let a = ids("a".repeat(32).as_str());
        let b = ids("b".repeat(32).as_str());
        let id = a.issue("alice");
        assert!(!b.is_owned_by(&id, "alice"));
        assert!(!a.is_owned_by(&Uuid::new_v4(), "alice"));
        assert!(!a.is_owned_by(&Uuid::nil(), "alice"));
        let mut tampered = *id.as_bytes();
        tampered[15] ^= 1;
        assert!(!a.is_owned_by(&Uuid::from_bytes(tampered), "alice"));
    }

    #[test]
    fn user_ids_cannot_be_shifted_into_the_random_half() {
        // Length-prefixing the user id keeps "ab"+"c…" and "a"+"bc…" apart.
        let ids = ids("k".repeat(32).as_str());
        let id = ids.issue("ab");
        assert!(!ids.is_owned_by(&id, "a"));
    }
}
