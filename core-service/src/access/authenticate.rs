//! Checking the credential of each call against the key store.
//!
//! Verified keys are cached for [`CACHE_TTL`], so a busy caller costs no query per call; a
//! revocation takes effect at once on the instance that revoked, and within the TTL on others.
//! A prefix that names no key is cached as such for as long, so that a client sending a wrong
//! key in a loop costs one query per TTL, not one per call. Reads of the key store run at most
//! a quarter of the pool at once ([`LOOKUPS_PER_CONNECTION`]): a flood of made-up keys, each a
//! read, then holds at most that share, and the calls of callers whose keys are cached keep the
//! rest. Last-used times are gathered in memory and written every few seconds, off the request
//! path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::HeaderMap;
use ipnet::IpNet;
use tokio::sync::Semaphore;
use tonic::Status;
use uuid::Uuid;

use super::caller::Caller;
use super::key::KeyHasher;
use super::rules::{Access, Credential, access_for};
use super::store::{self, ApiKeyRow};
use crate::db::{self, DbPool};
use crate::emarsys::EmarsysAuth;

/// How long a verified key is trusted without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Beyond this many cached keys (or unknown prefixes) that part of the cache starts over (a
/// bound, not an expected size).
const CACHE_LIMIT: usize = 10_000;
/// One key-store read at once for every this many pooled connections (at least one).
const LOOKUPS_PER_CONNECTION: usize = 4;

/// Metadata carrying the client address seen by the gateway.
pub const CLIENT_IP_METADATA: &str = "x-switchbord-client-ip";

pub struct Authenticator {
    pool: DbPool,
    hasher: KeyHasher,
    legacy_paths_open: bool,
    /// Peers whose [`CLIENT_IP_METADATA`] is believed.
    trusted_gateways: Vec<IpNet>,
    emarsys: EmarsysAuth,
    cache: Mutex<KeyCache>,
    /// Permits to read the key store; see the module's documentation.
    lookups: Semaphore,
    /// How long a call waits for a permit: as long as the pool lets it wait for a connection.
    lookup_wait: Option<Duration>,
    last_used: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

/// Keys by prefix as last read, the prefixes that named no key, and how many times a key was
/// forgotten: a key read from the database before a revocation forgot it must not be
/// remembered after.
#[derive(Default)]
struct KeyCache {
    /// Shared with the calls that read them: a cached key costs a call no copy.
    keys: HashMap<String, (Arc<ApiKeyRow>, Instant)>,
    /// Apart from `keys`, so that made-up keys, which anyone can send, never push the keys of
    /// real callers out of the cache.
    unknown: HashMap<String, Instant>,
    forgotten: u64,
}

impl Authenticator {
    pub fn new(
        pool: DbPool,
        hasher: KeyHasher,
        legacy_paths_open: bool,
        trusted_gateways: Vec<IpNet>,
        emarsys: EmarsysAuth,
    ) -> Self {
        let lookups = (pool.status().max_size / LOOKUPS_PER_CONNECTION).max(1);
        let lookup_wait = pool.timeouts().wait;
        Self {
            pool,
            hasher,
            legacy_paths_open,
            trusted_gateways,
            emarsys,
            cache: Mutex::new(KeyCache::default()),
            lookups: Semaphore::new(lookups),
            lookup_wait,
            last_used: Mutex::new(HashMap::new()),
        }
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// The caller's address for the audit trail: the one a trusted gateway forwards, else the
    /// peer's (any other caller could name any address).
    fn source_ip(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let peer = peer.map(|ip| ip.to_canonical());
        let from_gateway = peer.is_some_and(|peer| {
            self.trusted_gateways
                .iter()
                .any(|network| network.contains(&peer))
        });
        from_gateway
            .then(|| {
                headers
                    .get(CLIENT_IP_METADATA)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|text| text.parse().ok())
            })
            .flatten()
            .or(peer)
    }

    /// Decides whether the call to `path` with `headers` may proceed, and as whom.
    pub async fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Caller, Status> {
        let source_ip = self.source_ip(headers, peer);
        let rule = match access_for(path) {
            Access::Public | Access::Unknown => return Ok(Caller::anonymous(path, source_ip)),
            Access::NoRule => {
                return Err(Status::permission_denied("this RPC has no access rule"));
            }
            Access::Protected(rule) => rule,
        };
        if rule.credential == Credential::EmarsysSecret {
            self.emarsys.verify(headers)?;
            let mut caller = Caller::anonymous(path, source_ip);
            caller.key_name = Some("emarsys-webhook".to_owned());
            return Ok(caller);
        }
        if rule.credential == Credential::TwentySignature {
            let mut caller = Caller::anonymous(path, source_ip);
            caller.key_name = Some("twenty-webhook".to_owned());
            return Ok(caller);
        }
        let token = match credential(headers) {
            Presented::Token(token) => token,
            // Sent, but no key can read so: a wrong key, not a missing one, even where
            // anonymous callers are let in.
            Presented::Unreadable => return Err(Status::unauthenticated("invalid API key")),
            Presented::Nothing => {
                if rule.legacy_ingestion && self.legacy_paths_open {
                    return Ok(Caller::anonymous(path, source_ip));
                }
                return Err(Status::unauthenticated(
                    "missing API key: send it as X-API-Key or Authorization: Bearer",
                ));
            }
        };
        let key = self.verify(token).await?;
        let role = key
            .role()
            .ok_or_else(|| Status::permission_denied("the API key has no valid role"))?;
        if !rule.allows(role) {
            return Err(Status::permission_denied(format!(
                "role {role} may not call {path}"
            )));
        }
        self.note_use(key.id);
        Ok(Caller {
            key_id: Some(key.id),
            key_name: Some(key.name.clone()),
            role: Some(role),
            rpc: path.to_owned(),
            source_ip,
        })
    }

    async fn verify(&self, token: &str) -> Result<Arc<ApiKeyRow>, Status> {
        let prefix = self.hasher.lookup_prefix(token);
        let key = match self.cached(&prefix) {
            Some(key) => key,
            None => self.fetch(&prefix).await?,
        };
        // A made-up key is told what a wrong secret is told.
        let key = key
            .filter(|key| self.hasher.matches(token, &key.secret_hash))
            .ok_or_else(|| Status::unauthenticated("invalid API key"))?;
        if key.revoked_at.is_some() {
            return Err(Status::unauthenticated("the API key was revoked"));
        }
        if key.expires_at.is_some_and(|expiry| expiry <= Utc::now()) {
            return Err(Status::unauthenticated("the API key has expired"));
        }
        Ok(key)
    }

    /// Reads the key with `prefix` (`None`: there is none) and caches what was read.
    async fn fetch(&self, prefix: &str) -> Result<Option<Arc<ApiKeyRow>>, Status> {
        let unavailable = || Status::unavailable("the key store is unavailable; retry later");
        let _permit = match self.lookup_wait {
            // As the pool does with a wait of 0: take a free permit or none, never time out.
            Some(wait) if wait.is_zero() => {
                self.lookups.try_acquire().map_err(|_| unavailable())?
            }
            Some(wait) => tokio::time::timeout(wait, self.lookups.acquire())
                .await
                .map_err(|_| unavailable())?
                .map_err(|_| unavailable())?,
            None => self.lookups.acquire().await.map_err(|_| unavailable())?,
        };
        let forgotten = self.forgotten();
        let mut connection = db::connection(&self.pool)
            .await
            .map_err(|_| unavailable())?;
        let key = store::find_by_prefix(&mut connection, prefix)
            .await
            .map_err(|_| unavailable())?
            .map(Arc::new);
        self.remember(prefix, key.as_ref(), forgotten);
        Ok(key)
    }

    /// What was last read for `prefix`, if it was read within [`CACHE_TTL`]: `Some(None)` when
    /// no key had that prefix.
    fn cached(&self, prefix: &str) -> Option<Option<Arc<ApiKeyRow>>> {
        let cache = self.cache.lock().ok()?;
        if let Some((key, fetched)) = cache.keys.get(prefix)
            && fetched.elapsed() < CACHE_TTL
        {
            return Some(Some(key.clone()));
        }
        cache
            .unknown
            .get(prefix)
            .is_some_and(|fetched| fetched.elapsed() < CACHE_TTL)
            .then_some(None)
    }

    /// How many times a key was forgotten so far: read before a key is fetched, and given to
    /// [`Authenticator::remember`] with it.
    fn forgotten(&self) -> u64 {
        self.cache.lock().map_or(0, |cache| cache.forgotten)
    }

    /// Caches `key` (`None`: no key has `prefix`), fetched when [`Authenticator::forgotten`]
    /// said `forgotten`, unless a key was forgotten since: the fetch may have read it before its
    /// revocation (or its creation) committed.
    fn remember(&self, prefix: &str, key: Option<&Arc<ApiKeyRow>>, forgotten: u64) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.forgotten != forgotten {
                return;
            }
            let now = Instant::now();
            match key {
                Some(key) => {
                    if cache.keys.len() >= CACHE_LIMIT {
                        cache.keys.clear();
                    }
                    cache.keys.insert(prefix.to_owned(), (key.clone(), now));
                }
                None => {
                    if cache.unknown.len() >= CACHE_LIMIT {
                        cache
                            .unknown
                            .retain(|_, fetched| now.duration_since(*fetched) < CACHE_TTL);
                        // A flood that keeps the map nearly full would otherwise have every
                        // insert scan it, under the lock every call takes.
                        if cache.unknown.len() > CACHE_LIMIT / 2 {
                            cache.unknown.clear();
                        }
                    }
                    cache.unknown.insert(prefix.to_owned(), now);
                }
            }
        }
    }

    /// Drops what is cached for `prefix`, so that a key's revocation, or its creation, applies
    /// here at once.
    pub fn forget(&self, prefix: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.keys.remove(prefix);
            cache.unknown.remove(prefix);
            cache.forgotten += 1;
        }
    }

    fn note_use(&self, key_id: Uuid) {
        if let Ok(mut used) = self.last_used.lock() {
            used.insert(key_id, Utc::now());
        }
    }

    /// Writes the gathered last-used times.
    pub async fn flush_last_used(&self) {
        let used: Vec<(Uuid, DateTime<Utc>)> = match self.last_used.lock() {
            Ok(mut used) => used.drain().collect(),
            Err(_) => return,
        };
        if used.is_empty() {
            return;
        }
        let written = async {
            let mut connection = db::connection(&self.pool).await.ok()?;
            store::touch_last_used(&mut connection, &used).await.ok()
        }
        .await;
        if written.is_none() {
            tracing::warn!(
                keys = used.len(),
                "could not record API key last-used times; kept for the next write"
            );
            self.keep_for_next_flush(used);
        }
    }

    /// Puts back times that could not be written, unless a later use was noted meanwhile.
    fn keep_for_next_flush(&self, used: Vec<(Uuid, DateTime<Utc>)>) {
        if let Ok(mut pending) = self.last_used.lock() {
            for (key_id, at) in used {
                let kept = pending.entry(key_id).or_insert(at);
                *kept = (*kept).max(at);
            }
        }
    }
}

/// What a call presents as its API key.
enum Presented<'h> {
    /// No key: no `X-API-Key` (or an empty one) and no `Authorization: Bearer`.
    Nothing,
    Token(&'h str),
    /// A header that would carry a key but is not visible ASCII, as no key is.
    Unreadable,
}

/// The key sent as `x-api-key` (any case), else as `authorization: Bearer <key>`.
fn credential(headers: &HeaderMap) -> Presented<'_> {
    if let Some(key) = headers.get("x-api-key") {
        match key.to_str().map(str::trim) {
            Ok("") => {}
            Ok(key) => return Presented::Token(key),
            Err(_) => return Presented::Unreadable,
        }
    }
    let Some(authorization) = headers.get(http::header::AUTHORIZATION) else {
        return Presented::Nothing;
    };
    let Ok(authorization) = authorization.to_str() else {
        // Unreadable as a Bearer key; another scheme's (a Digest name with an umlaut) is
        // not a key of ours, as below.
        return if switchbord_api::auth::names_bearer(authorization.as_bytes()) {
            Presented::Unreadable
        } else {
            Presented::Nothing
        };
    };
    match authorization.trim().split_once(char::is_whitespace) {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Presented::Token(token.trim())
        }
        // Another scheme (Basic, sent by some proxies) is not a key of ours.
        _ => Presented::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        // A pool is built without connecting, to a port where nothing listens: a query fails.
        let pool = db::build_pool(
            "postgres://nobody@127.0.0.1:1/none",
            1,
            std::time::Duration::from_secs(5),
        )
        .expect("pool");
        Authenticator::new(
            pool,
            KeyHasher::new(b"pepper-for-tests-0123456789abcdef".to_vec()),
            false,
            Vec::new(),
            EmarsysAuth::new(None),
        )
    }

    fn key(prefix: &str) -> Arc<ApiKeyRow> {
        Arc::new(ApiKeyRow {
            id: Uuid::new_v4(),
            name: "k".to_owned(),
            role: "user".to_owned(),
            prefix: prefix.to_owned(),
            secret_hash: Vec::new(),
            created_at: Utc::now(),
            created_by: None,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        })
    }

    #[test]
    fn a_key_read_before_its_revocation_is_not_cached_after_it() {
        let authenticator = authenticator();
        // A call reads the key from the database...
        let forgotten = authenticator.forgotten();
        // ...while the key is revoked on this instance, which forgets it...
        authenticator.forget("sb_abc");
        // ...and the call, done reading, would cache the row it read.
        authenticator.remember("sb_abc", Some(&key("sb_abc")), forgotten);
        assert!(authenticator.cached("sb_abc").is_none());

        // A read after the revocation is cached as usual.
        let forgotten = authenticator.forgotten();
        authenticator.remember("sb_abc", Some(&key("sb_abc")), forgotten);
        assert!(
            authenticator
                .cached("sb_abc")
                .is_some_and(|key| key.is_some())
        );
    }

    #[test]
    fn made_up_keys_never_push_a_real_key_out_of_the_cache() {
        let authenticator = authenticator();
        let forgotten = authenticator.forgotten();
        authenticator.remember(
            "sbk_000000000001",
            Some(&key("sbk_000000000001")),
            forgotten,
        );
        for n in 0..=CACHE_LIMIT {
            authenticator.remember(&format!("sbk_{n:012x}x"), None, forgotten);
        }
        assert!(
            authenticator
                .cached("sbk_000000000001")
                .is_some_and(|key| key.is_some())
        );
        // The last unknown prefix is remembered as such.
        let last = format!("sbk_{CACHE_LIMIT:012x}x");
        assert!(authenticator.cached(&last).is_some_and(|key| key.is_none()));
    }

    #[tokio::test]
    async fn last_used_times_that_could_not_be_written_are_kept_for_the_next_write() {
        // The pool's database does not exist: the write fails.
        let authenticator = authenticator();
        let (written_before, noted_since) = (Uuid::new_v4(), Uuid::new_v4());
        let earlier = Utc::now() - chrono::Duration::minutes(1);
        authenticator.note_use(written_before);
        authenticator.flush_last_used().await;
        authenticator.note_use(noted_since);
        authenticator.keep_for_next_flush(vec![(noted_since, earlier)]);

        let pending = authenticator.last_used.lock().expect("lock").clone();
        assert!(pending.contains_key(&written_before), "{pending:?}");
        assert!(pending[&noted_since] > earlier, "the later use wins");
    }
}
