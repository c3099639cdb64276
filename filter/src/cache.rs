//! Token caches, per root context (per worker, per policy): verified tokens (their identity,
//! until `exp`) and recently failed tokens (their deny reason), both bounded in entries, the
//! first also in bytes, oldest evicted first.
//!
//! Both are keyed by one 64-bit hash of the token, computed once per request: foldhash (the
//! hasher `hashbrown` uses by default; a few hundred instructions for a 1.5 KB token where
//! SipHash-1-3 took ≈ 5×) seeded per cache from the host's random source (`random_get`, through
//! std's `RandomState`), so neither the seeds nor any hash value is ever visible outside the VM.
//!
//! Why a fast, non-cryptographic hash is enough here:
//! - A verified entry keeps the whole token and answers only when the token is byte-for-byte
//!   equal: a collision — however it came about — is a miss (the token is verified), never
//!   someone else's identity. An attacker who could aim collisions would only evict entries
//!   (costing verifications), and only with tokens that verify.
//! - A failed entry keeps only the key and refuses, never admits. A collision there would make
//!   a good token be refused for [`FAILURE_TTL_SECS`]: to aim one, an attacker must know the
//!   victim's token (which is worse by itself) *and* the per-cache seeds, which never leave
//!   the VM; a chance collision among the [`MAX_FAILURES`] remembered keys has odds of about
//!   `MAX_FAILURES / 2^64` per token. The verified cache is consulted first, so a token
//!   verified before is never refused by a failed entry of the same key.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::SharedSeed;
use foldhash::fast::FoldHasher;
use std::rc::Rc;

use claimgate_core::DenyReason;
use claimgate_core::engine::Identity;

/// Most verified tokens kept.
pub const MAX_ENTRIES: usize = 10_000;
/// Most bytes of verified tokens and identities kept (estimated): room for [`MAX_ENTRIES`]
/// tokens of up to ≈ 2 KB with their identities (Keycloak and Entra access tokens are 1–2 KB).
/// At 16 MiB, 10,000 distinct 1.4 KB tokens (≈ 1.8 KB an entry) did not fit and a workload
/// cycling through them missed on every request.
pub const MAX_BYTES: usize = 24 * 1024 * 1024;
/// Most failed tokens remembered.
pub const MAX_FAILURES: usize = 4_096;
/// How long a failure is remembered.
pub const FAILURE_TTL_SECS: u64 = 300;
/// How long a token without `exp` stays verified.
pub const NO_EXPIRY_TTL_SECS: u64 = 300;

/// A token's key in both caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey(u64);

/// The key is already a keyed hash: used as is.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (TokenKey derives Hash over one u64); fold anything else.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type KeyMap<V> = HashMap<TokenKey, V, BuildHasherDefault<PassThrough>>;

struct Verified {
    token: Box<str>,
    identity: Rc<Identity>,
    valid_until: u64,
    bytes: usize,
}

struct Failed {
    reason: DenyReason,
    until: u64,
}

/// What the caches know about a token.
#[derive(Debug)]
pub enum Lookup {
    /// Verified before and still valid.
    Verified(Rc<Identity>),
    /// Failed recently, for this reason.
    Failed(DenyReason),
    /// Unknown: verify it.
    Miss,
}

/// The seeds of a cache's key hash, drawn from the host's random source.
struct KeySeeds {
    per_cache: u64,
    shared: SharedSeed,
}

impl Default for KeySeeds {
    fn default() -> KeySeeds {
        // std's `RandomState` is keyed from WASI `random_get` (the host's random source); its
        // SipHash of two constants gives two independent random words.
        let random = RandomState::new();
        KeySeeds {
            per_cache: random.hash_one(1u8),
            shared: SharedSeed::from_u64(random.hash_one(2u8)),
        }
    }
}

/// The two caches.
#[derive(Default)]
pub struct TokenCache {
    seeds: KeySeeds,
    verified: KeyMap<Verified>,
    verified_order: VecDeque<TokenKey>,
    verified_bytes: usize,
    failed: KeyMap<Failed>,
    failed_order: VecDeque<TokenKey>,
}

impl TokenCache {
    /// The key of a token (one pass over it).
    pub fn key(&self, token: &str) -> TokenKey {
        let mut hasher = FoldHasher::with_seed(self.seeds.per_cache, &self.seeds.shared);
        hasher.write(token.as_bytes());
        TokenKey(hasher.finish())
    }

    /// Looks a token up.
    pub fn lookup(&self, key: TokenKey, token: &str, now: u64) -> Lookup {
        if let Some(entry) = self.verified.get(&key)
            && &*entry.token == token
            && now <= entry.valid_until
        {
            return Lookup::Verified(entry.identity.clone());
        }
        match self.failed.get(&key) {
            Some(entry) if now <= entry.until => Lookup::Failed(entry.reason.clone()),
            _ => Lookup::Miss,
        }
    }

    /// Remembers a verified token until `exp` plus the issuer's skew.
    pub fn remember_verified(
        &mut self,
        key: TokenKey,
        token: &str,
        identity: Rc<Identity>,
        skew: u64,
        now: u64,
    ) {
        let valid_until = identity
            .exp
            .map_or(now.saturating_add(NO_EXPIRY_TTL_SECS), |exp| {
                exp.saturating_add(skew)
            });
        let bytes = token.len()
            + identity.roles.iter().map(String::len).sum::<usize>()
            + identity.scopes.iter().map(String::len).sum::<usize>()
            + identity.subject.len()
            + identity
                .claim_values
                .iter()
                .flatten()
                .map(String::len)
                .sum::<usize>()
            + 256;
        if bytes > MAX_BYTES {
            return;
        }
        if let Some(old) = self.verified.remove(&key) {
            self.verified_bytes = self.verified_bytes.saturating_sub(old.bytes);
            self.verified_order.retain(|k| *k != key);
        }
        while self.verified.len() >= MAX_ENTRIES || self.verified_bytes + bytes > MAX_BYTES {
            let Some(oldest) = self.verified_order.pop_front() else {
                break;
            };
            if let Some(old) = self.verified.remove(&oldest) {
                self.verified_bytes = self.verified_bytes.saturating_sub(old.bytes);
            }
        }
        self.verified.insert(
            key,
            Verified {
                token: token.into(),
                identity,
                valid_until,
                bytes,
            },
        );
        self.verified_order.push_back(key);
        self.verified_bytes += bytes;
    }

    /// Remembers a failed token, unless its reason can change on its own soon (a token not
    /// valid yet, keys not fetched yet).
    pub fn remember_failure(&mut self, key: TokenKey, reason: &DenyReason, now: u64) {
        if matches!(
            reason,
            DenyReason::NotYetValid { .. } | DenyReason::KeysUnavailable { .. }
        ) {
            return;
        }
        if self.failed.contains_key(&key) {
            return;
        }
        while self.failed.len() >= MAX_FAILURES {
            let Some(oldest) = self.failed_order.pop_front() else {
                break;
            };
            self.failed.remove(&oldest);
        }
        self.failed.insert(
            key,
            Failed {
                reason: reason.clone(),
                until: now.saturating_add(FAILURE_TTL_SECS),
            },
        );
        self.failed_order.push_back(key);
    }

    /// Forgets every verified token (a key they may have been verified with is withdrawn).
    pub fn clear_verified(&mut self) {
        self.verified.clear();
        self.verified_order.clear();
        self.verified_bytes = 0;
    }

    /// Forgets every failure (keys changed: a token may verify now).
    pub fn clear_failures(&mut self) {
        self.failed.clear();
        self.failed_order.clear();
    }

    #[cfg(test)]
    /// Entries held: (verified, failed).
    pub fn len(&self) -> (usize, usize) {
        (self.verified.len(), self.failed.len())
    }

    #[cfg(test)]
    /// Estimated bytes of verified entries.
    pub fn verified_bytes(&self) -> usize {
        self.verified_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(exp: Option<u64>) -> Rc<Identity> {
        Rc::new(Identity {
            issuer_index: 0,
            issuer: "idp".into(),
            subject: "alice".into(),
            client: None,
            roles: vec!["r".into()],
            scopes: vec![],
            exp,
            token_id: None,
            overage: None,
            role_bits: vec![],
            claim_values: vec![],
            upstream: Default::default(),
        })
    }

    #[test]
    fn verified_until_exp_plus_skew() {
        let mut cache = TokenCache::default();
        let key = cache.key("a.b.c");
        cache.remember_verified(key, "a.b.c", identity(Some(1_000)), 60, 900);
        assert!(matches!(
            cache.lookup(key, "a.b.c", 1_060),
            Lookup::Verified(_)
        ));
        assert!(matches!(cache.lookup(key, "a.b.c", 1_061), Lookup::Miss));
    }

    #[test]
    fn a_colliding_key_never_returns_another_identity() {
        let mut cache = TokenCache::default();
        let key = cache.key("a.b.c");
        cache.remember_verified(key, "a.b.c", identity(None), 0, 0);
        // Same key, different token (as a collision would be): a miss.
        assert!(matches!(cache.lookup(key, "x.y.z", 1), Lookup::Miss));
    }

    #[test]
    fn bounded_in_entries_oldest_first() {
        let mut cache = TokenCache::default();
        for i in 0..MAX_ENTRIES + 10 {
            let token = format!("t.{i}.s");
            let key = cache.key(&token);
            cache.remember_verified(key, &token, identity(None), 0, 0);
        }
        assert_eq!(cache.len().0, MAX_ENTRIES);
        let first = cache.key("t.0.s");
        assert!(matches!(cache.lookup(first, "t.0.s", 1), Lookup::Miss));
        let last = format!("t.{}.s", MAX_ENTRIES + 9);
        assert!(matches!(
            cache.lookup(cache.key(&last), &last, 1),
            Lookup::Verified(_)
        ));
    }

    /// A realistic token (≈ 1.4 KB, as Keycloak issues) and its identity: 10,000 of them stay
    /// cached (at 16 MiB, the oldest were evicted and a cycling workload always missed).
    #[test]
    fn ten_thousand_realistic_tokens_all_stay_cached() {
        let mut cache = TokenCache::default();
        let realistic = |i: usize| {
            Rc::new(Identity {
                subject: format!("f3b2c1d0-{i:04x}-4e5f-8a9b-0c1d2e3f4a5b"),
                roles: [
                    "default-roles-ml",
                    "ml-scorer",
                    "offline_access",
                    "uma_authorization",
                ]
                .map(str::to_owned)
                .to_vec(),
                ..(*identity(Some(2_000))).clone()
            })
        };
        let tokens: Vec<String> = (0..MAX_ENTRIES)
            .map(|i| format!("{i:08}.{}", "x".repeat(1_406)))
            .collect();
        for (i, token) in tokens.iter().enumerate() {
            cache.remember_verified(cache.key(token), token, realistic(i), 0, 1);
        }
        let hits = tokens
            .iter()
            .filter(|t| matches!(cache.lookup(cache.key(t), t, 2), Lookup::Verified(_)))
            .count();
        assert_eq!(hits, MAX_ENTRIES, "{} bytes", cache.verified_bytes());
    }

    #[test]
    #[ignore = "timing, run by hand: cargo test --release -p claimgate-filter key_speed -- --ignored --nocapture"]
    fn key_speed() {
        let cache = TokenCache::default();
        let token = "x".repeat(1_415);
        let sip = RandomState::new();
        let rounds = 200_000u32;
        let started = std::time::Instant::now();
        let mut sink = 0u64;
        for _ in 0..rounds {
            sink ^= sip.hash_one(std::hint::black_box(token.as_str()));
        }
        let siphash = started.elapsed() / rounds;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            sink ^= cache.key(std::hint::black_box(&token)).0;
        }
        let fold = started.elapsed() / rounds;
        println!("1415-byte token: SipHash-1-3 {siphash:?}, foldhash {fold:?} ({sink})");
    }

    #[test]
    fn bounded_in_bytes() {
        let mut cache = TokenCache::default();
        let big = "x".repeat(16 * 1024);
        for i in 0..2_000 {
            let token = format!("{big}.{i}");
            let key = cache.key(&token);
            cache.remember_verified(key, &token, identity(None), 0, 0);
        }
        assert!(cache.verified_bytes() <= MAX_BYTES);
        assert!(cache.len().0 < 2_000);
    }

    #[test]
    fn failures_bounded_expire_and_skip_transient_reasons() {
        let mut cache = TokenCache::default();
        for i in 0..MAX_FAILURES + 100 {
            let token = format!("junk{i}");
            cache.remember_failure(cache.key(&token), &DenyReason::BadSignature, 0);
        }
        assert_eq!(cache.len().1, MAX_FAILURES);
        let key = cache.key("junk4000");
        assert!(matches!(
            cache.lookup(key, "junk4000", FAILURE_TTL_SECS),
            Lookup::Failed(DenyReason::BadSignature)
        ));
        assert!(matches!(
            cache.lookup(key, "junk4000", FAILURE_TTL_SECS + 1),
            Lookup::Miss
        ));
        let transient = cache.key("early");
        let reason = DenyReason::NotYetValid {
            claim: "nbf",
            at: 10,
            now: 0,
            skew: 0,
        };
        cache.remember_failure(transient, &reason, 0);
        cache.remember_failure(
            transient,
            &DenyReason::KeysUnavailable { issuer: "i".into() },
            0,
        );
        assert!(matches!(cache.lookup(transient, "early", 1), Lookup::Miss));
        cache.clear_failures();
        assert_eq!(cache.len().1, 0);
    }

    #[test]
    fn two_caches_hash_differently() {
        // Random keys per cache: an attacker cannot precompute colliding tokens.
        let keys: std::collections::HashSet<TokenKey> =
            (0..8).map(|_| TokenCache::default().key("same")).collect();
        assert!(keys.len() > 1);
    }
}
