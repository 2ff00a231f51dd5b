//! The proposer's half of access control: new tokens get their accessor id and secret here, from the operating
//! system's random source, before the command that stores them is proposed (the state machine never draws
//! anything, so every server applies the same token). The secret leaves this node only in the answer to the
//! request that created it; the command carries its SHA-256.

use std::time::Duration;

use kairos_model::Timestamp;
use kairos_model::acl::{Token, TokenType, secret_hash, uuid_from_bytes};

/// What a client asked for; [`mint`] turns it into a token and its secret.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub name: String,
    pub token_type: TokenType,
    pub policies: Vec<String>,
    /// The token expires this long after its creation.
    pub ttl: Option<Duration>,
}

/// A new token and its secret (to be shown once).
pub fn mint(request: TokenRequest, now: Timestamp) -> (Token, String) {
    let secret = uuid_from_bytes(rand::random());
    let expiration_time = request.ttl.and_then(|ttl| expires_at(now, ttl));
    let token = Token {
        accessor_id: uuid_from_bytes(rand::random()),
        secret_hash: secret_hash(&secret),
        name: request.name,
        token_type: request.token_type,
        policies: request.policies,
        create_time: now,
        expiration_time,
    };
    (token, secret)
}

/// When a token created (or renewed) at `now` with this time to live expires; `None` past the end of time.
pub fn expires_at(now: Timestamp, ttl: Duration) -> Option<Timestamp> {
    let ttl = jiff::SignedDuration::try_from(ttl).ok()?;
    now.checked_add(ttl).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_gets_its_own_ids_and_only_the_hash_of_its_secret() {
        let request = TokenRequest {
            name: "ci".into(),
            token_type: TokenType::Client,
            policies: vec!["readonly".into()],
            ttl: Some(Duration::from_secs(60)),
        };
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (a, secret_a) = mint(request.clone(), now);
        let (b, secret_b) = mint(request, now);
        assert_ne!((&a.accessor_id, &secret_a), (&b.accessor_id, &secret_b));
        assert_eq!(a.secret_hash, secret_hash(&secret_a));
        assert!(!serde_json::to_string(&a).unwrap().contains(&secret_a), "the stored record holds no secret");
        assert_eq!(a.expiration_time, Some("2026-01-01T00:01:00Z".parse().unwrap()));
    }
}
