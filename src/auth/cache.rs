//! Verified-credential cache: a client pays for argon2 once, not per request.
//!
//! Keyed by a keyed BLAKE2s MAC under a random per-process key: of the Basic
//! token in one canonical spelling, of the credentials' normal form when they
//! were sent in another spelling, or of any other value as sent; never by
//! the password: a memory dump shows neither passwords nor anything that
//! can be checked offline without the key.
//! BLAKE2s puts the key in a block of its own ahead of the message, so the
//! state after that block is computed once and each MAC costs the message's
//! blocks only (one for any usual header: half the work). An entry
//! names the user and the user's
//! [`credential`](crate::auth::store::User::credential) at verification
//! time; a lookup only counts when the current snapshot still has that user
//! with the same credential, active, so the entries of a user removed,
//! disabled, expired or given a new password stop counting the moment a new
//! snapshot is live (a change of groups alone keeps them: the rules read the
//! user as it is now).

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use blake2::Blake2sVarCore;
use blake2::digest::core_api::{Block, Buffer, UpdateCore, VariableOutputCore};
use foldhash::HashMap;
use rand_core::RngCore;

use super::basic::Credentials;

/// Most entries kept; past this, expired entries are swept, then the
/// eighth nearest to expiring is dropped (those clients verify again), so
/// memory stays bounded under attack. It was cleared whole: every client
/// then verified again at once, and in a shared NAT whose address someone
/// else's wrong passwords had throttled, a logged-in user got 429 with the
/// right password (probe 211).
const MAX_ENTRIES: usize = 65_536;

/// Most entries one user has: one password has two at most (its UTF-8 NFC
/// spelling and its normal form, see [`VerifiedCache::credentials_key`]).
/// A login past this is verified as usual, but not cached: a bcrypt hash
/// passes endless spellings of one password (bytes past the 72nd), and one
/// such account filled the cache with them (probe 211).
const PER_USER: u16 = 8;

type Key = [u8; 32];

/// The cache key of credentials sent in another spelling than their normal
/// form, see [`VerifiedCache::credentials_key`]. Made once per attempt: the
/// credentials (and their password) are not kept for it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CredentialsKey(Key);

struct Entry {
    user: Arc<str>,
    credential: u64,
    /// When the credentials were verified.
    verified: Instant,
    /// Until when the `cache_ttl` of that time trusts them.
    until: Instant,
    /// The addresses the credentials are known from (their throttle units,
    /// see [`super::throttle::client_key`]): first the one that verified
    /// them, then the others where a hit counted, least recent first.
    by: [Option<IpAddr>; ADDRESSES],
}

/// Addresses an entry knows its credentials from: a user who logs in from
/// a few places (office, VPN, home) keeps the fast path at each.
const ADDRESSES: usize = 4;

/// Credentials verified: who as, that user's credential then, and the
/// address (throttle unit) that verified them.
pub type Hit = (Arc<str>, u64, IpAddr);

/// A cache hit: who the credentials were verified as, that user's
/// credential then, and whether the asking address is one they are known
/// from.
pub type Found = (Arc<str>, u64, bool);

/// The cache. Cheap to share behind an `Arc`.
pub struct VerifiedCache {
    /// BLAKE2s (32-byte key, 32-byte output) after the key block.
    keyed: Blake2sVarCore,
    entries: RwLock<Entries>,
}

/// The entries, and how many each user has.
#[derive(Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    per_user: HashMap<Arc<str>, u16>,
    /// The serial of the users ([`crate::auth::store::UserStore::serial`])
    /// for which a reload last forgot logins: a login verified against
    /// users older than those is not cached.
    floor: u64,
}

impl Entries {
    /// Drops the entries `gone` picks, keeping the counts per user in step.
    fn drop_where(&mut self, mut gone: impl FnMut(&Entry) -> bool) {
        let per_user = &mut self.per_user;
        self.map.retain(|_, e| {
            let drop = gone(e);
            if drop && let Some(n) = per_user.get_mut(&e.user) {
                *n = n.saturating_sub(1);
            }
            !drop
        });
        per_user.retain(|_, n| *n > 0);
    }

    /// Makes room for an entry of `user`, verified `now` with `credential`:
    /// whether there is room.
    fn room_for(&mut self, user: &Arc<str>, credential: u64, now: Instant) -> bool {
        if self.per_user.get(user).is_some_and(|&n| n >= PER_USER) {
            // Rare (an account with many spellings): its entries that can
            // no longer count go first.
            self.drop_where(|e| e.user == *user && (e.until <= now || e.credential != credential));
            if self.per_user.get(user).is_some_and(|&n| n >= PER_USER) {
                return false;
            }
        }
        if self.map.len() >= MAX_ENTRIES {
            self.drop_where(|e| e.until <= now);
        }
        if self.map.len() >= MAX_ENTRIES {
            let mut until: Vec<Instant> = self.map.values().map(|e| e.until).collect();
            let (_, &mut last, _) = until.select_nth_unstable(MAX_ENTRIES / 8);
            self.drop_where(|e| e.until <= last);
        }
        true
    }
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self::new()
    }
}

impl VerifiedCache {
    /// An empty cache with a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut key);
        Self::with_key(&key)
    }

    fn with_key(key: &[u8; 32]) -> Self {
        // Keyed BLAKE2s (RFC 7693 2.5): the key length goes into the
        // parameter block and the key, zero-padded, is the first block.
        let mut block = Block::<Blake2sVarCore>::default();
        block[..32].copy_from_slice(key);
        let mut keyed = Blake2sVarCore::new_with_params(&[], &[], 32, 32);
        keyed.update_blocks(std::slice::from_ref(&block));
        VerifiedCache { keyed, entries: RwLock::new(Entries::default()) }
    }

    /// The key of a header: the MAC of its Basic token in one spelling
    /// (see [`crate::auth::basic::canonical_token`]), so that the ways of
    /// writing one login share one entry; other headers as they are.
    fn key(&self, header: &[u8]) -> Key {
        match crate::auth::basic::canonical_token(header) {
            Some(token) => self.mac_parts(&[b"basic ", token]),
            None => self.mac(header),
        }
    }

    /// Keyed BLAKE2s-256 of `msg`: the same value as `Blake2sMac256`
    /// under this cache's key (a test checks), from the precomputed state.
    fn mac(&self, msg: &[u8]) -> Key {
        self.mac_parts(&[msg])
    }

    /// [`VerifiedCache::mac`] of the concatenation of `parts`.
    fn mac_parts(&self, parts: &[&[u8]]) -> Key {
        let mut core = self.keyed.clone();
        let mut buffer = Buffer::<Blake2sVarCore>::default();
        // With no message the key block would have been the last block;
        // a header is never empty (the caller only looks up present ones),
        // and an empty one still gets a fixed, distinct input.
        const NUL: &[&[u8]] = &[b"\0"];
        let parts = if parts.iter().all(|p| p.is_empty()) { NUL } else { parts };
        for part in parts {
            buffer.digest_blocks(part, |blocks| core.update_blocks(blocks));
        }
        let mut out = Default::default();
        core.finalize_variable_core(&mut buffer, &mut out);
        out.into()
    }

    /// The key of credentials sent in another spelling than their normal
    /// form ([`Credentials::respelled`]): the MAC of the normal form, so that
    /// all its spellings share one entry. (Keyed on the header, each
    /// spelling of a password with accents was an entry and an argon2 run
    /// of its own, and one user could fill the cache.) The prefix holds a
    /// NUL, which no header value can, so it never equals a header's key.
    pub fn credentials_key(&self, creds: &Credentials) -> CredentialsKey {
        CredentialsKey(self.mac_parts(&[
            b"normal\0",
            creds.username.as_bytes(),
            b":",
            creds.password.as_bytes(),
        ]))
    }

    /// The user a header value was verified for, with that user's credential
    /// at the time, if the entry has not expired; and whether `from` (a
    /// throttle unit) is an address the credentials are known from.
    ///
    /// An entry counts for the shorter of the `cache_ttl` it was made under
    /// and `ttl`, the one in force: lowered by a reload (`"0s"` in an
    /// emergency), the new one applies to the entries already made too.
    pub fn get(&self, header: &[u8], from: IpAddr, now: Instant, ttl: Duration) -> Option<Found> {
        self.get_key(&self.key(header), from, now, ttl)
    }

    /// [`VerifiedCache::get`] for respelled credentials, by their normal form.
    pub fn get_credentials(
        &self,
        key: &CredentialsKey,
        from: IpAddr,
        now: Instant,
        ttl: Duration,
    ) -> Option<Found> {
        self.get_key(&key.0, from, now, ttl)
    }

    /// A hit from one of the other known addresses that is not the most
    /// recent one makes it so ([`VerifiedCache::touch`]): the write lock is
    /// taken only when a user's addresses take turns.
    fn get_key(&self, key: &Key, from: IpAddr, now: Instant, ttl: Duration) -> Option<Found> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let e = entries
            .map
            .get(key)
            .filter(|e| e.until > now && now.saturating_duration_since(e.verified) < ttl)?;
        let at = e.by.iter().position(|a| *a == Some(from));
        let found = (e.user.clone(), e.credential, at.is_some());
        drop(entries);
        if at.is_some_and(|i| i != 0 && i != ADDRESSES - 1) {
            self.touch(key, from);
        }
        Some(found)
    }

    /// Makes `from`, one of the other addresses an entry knows, its most
    /// recent: the entry keeps the addresses of the last hits, not the
    /// first ones (a user's everyday address, learnt first, was the one
    /// forgotten when a fourth came; probe 266).
    fn touch(&self, key: &Key, from: IpAddr) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.map.get_mut(key)
            && let Some(i) = e.by.iter().skip(1).position(|a| *a == Some(from))
        {
            e.by[1 + i..].rotate_left(1);
        }
    }

    /// Records that the credentials of `header` came from `from` too (a hit
    /// that counted there), in place of the least recent address other
    /// than the one that verified them.
    ///
    /// `normal` is the key of respelled credentials, which are cached by
    /// it (see [`VerifiedCache::insert_credentials`]); otherwise the entry
    /// is the header's.
    pub fn vouch(&self, header: &[u8], normal: Option<&CredentialsKey>, from: IpAddr) {
        match normal {
            Some(key) => self.vouch_key(&key.0, from),
            None => self.vouch_key(&self.key(header), from),
        }
    }

    fn vouch_key(&self, key: &Key, from: IpAddr) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.map.get_mut(key)
            && !e.by.contains(&Some(from))
        {
            // Slot 0 keeps the address that verified them; the least
            // recent other one goes.
            e.by[1..].rotate_left(1);
            e.by[ADDRESSES - 1] = Some(from);
        }
    }

    /// Remembers that `header` verified as `user`, from `by`, for `ttl`.
    pub fn insert(&self, header: &[u8], verified: Hit, ttl: Duration, now: Instant) {
        self.insert_key(self.key(header), verified, ttl, now, u64::MAX);
    }

    /// [`VerifiedCache::insert`] for respelled credentials, by their normal
    /// form.
    pub fn insert_credentials(&self, key: &CredentialsKey, verified: Hit, ttl: Duration, now: Instant) {
        self.insert_key(key.0, verified, ttl, now, u64::MAX);
    }

    /// [`VerifiedCache::insert`], or [`VerifiedCache::insert_credentials`]
    /// when `normal` is given, of a login verified against the users of
    /// serial `users`: not made when a reload has forgotten logins since
    /// those users were read. (Made after a removal's forgetting, a login
    /// of a user removed while argon2 ran for it counted again once the
    /// user was back with the same hash; probe 270.)
    pub fn insert_verified(
        &self,
        header: &[u8],
        normal: Option<&CredentialsKey>,
        verified: Hit,
        ttl: Duration,
        now: Instant,
        users: u64,
    ) {
        let key = normal.map_or_else(|| self.key(header), |k| k.0);
        self.insert_key(key, verified, ttl, now, users);
    }

    fn insert_key(&self, key: Key, (user, credential, by): Hit, ttl: Duration, now: Instant, users: u64) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if users < entries.floor {
            return;
        }
        let new = !entries.map.contains_key(&key);
        if new && !entries.room_for(&user, credential, now) {
            return;
        }
        let mut known = [None; ADDRESSES];
        known[0] = Some(by);
        if new {
            *entries.per_user.entry(user.clone()).or_default() += 1;
        }
        let entry = Entry { user, credential, verified: now, until: now + ttl, by: known };
        entries.map.insert(key, entry);
    }

    /// Drops every entry of the users `gone` says (the snapshot check
    /// already ignores them; this frees the memory), in one pass: a pass
    /// per user, each under the write lock, made a reload that changed
    /// 60,000 users with as many logins cached take 15 s of CPU, with logins
    /// waiting on the lock and the next reload on this one (probe 112).
    ///
    /// `since` is the serial of the users in force from now on: a login
    /// verified against older ones is no longer cached (it may be of a user
    /// `gone` says, and its entry would outlive this pass).
    pub fn forget_users(&self, since: u64, gone: impl Fn(&str) -> bool) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.floor = entries.floor.max(since);
        entries.drop_where(|e| gone(&e.user));
    }

    /// Number of entries (for metrics and tests).
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    /// The address credentials are verified from in these tests.
    const HERE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    /// The `cache_ttl` in force when the tests look an entry up.
    const TTL: Duration = Duration::from_secs(300);
    use super::*;

    /// A `cache_ttl` lowered by a reload applies to the entries made before
    /// it: `"0s"` (an admin's emergency stop) made no difference to a login
    /// already cached, trusted for up to the old five minutes.
    #[test]
    fn an_entry_counts_for_the_shorter_of_its_ttl_and_the_one_in_force() {
        let c = VerifiedCache::new();
        let t0 = Instant::now();
        c.insert(b"Basic abc", ("alice".into(), 7, HERE), Duration::from_secs(300), t0);
        let hit = |at: u64, ttl: u64| {
            c.get(b"Basic abc", HERE, t0 + Duration::from_secs(at), Duration::from_secs(ttl)).is_some()
        };
        assert!(hit(0, 300) && hit(299, 300) && !hit(300, 300));
        assert!(!hit(0, 0), "0s trusts nothing");
        assert!(hit(59, 60) && !hit(60, 60), "a lowered ttl counts from the verification");
        assert!(!hit(300, 600), "a raised one does not lengthen the entry");
    }

    #[test]
    fn hit_until_ttl_then_miss() {
        let c = VerifiedCache::new();
        let t0 = Instant::now();
        c.insert(b"Basic abc", ("alice".into(), 7, HERE), Duration::from_secs(60), t0);
        assert_eq!(
            c.get(b"Basic abc", HERE, t0, TTL).map(|(u, f, known)| (u.to_string(), f, known)),
            Some(("alice".into(), 7, true))
        );
        assert!(c.get(b"Basic abd", HERE, t0, TTL).is_none());
        assert!(c.get(b"Basic abc", HERE, t0 + Duration::from_secs(61), TTL).is_none());
    }

    /// 10.0.0.`n`.
    fn at(n: u8) -> std::net::IpAddr {
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n))
    }

    /// A cache with alice's `Basic abc` verified from [`HERE`] at `t0`.
    fn alice_cached(t0: Instant) -> VerifiedCache {
        let c = VerifiedCache::new();
        c.insert(b"Basic abc", ("alice".into(), 7, HERE), Duration::from_secs(60), t0);
        c
    }

    #[test]
    fn an_entry_knows_the_verifying_address_and_the_last_others() {
        let t0 = Instant::now();
        let c = alice_cached(t0);
        let known = |from| c.get(b"Basic abc", from, t0, TTL).map(|(_, _, known)| known);
        assert_eq!(known(at(1)), Some(false));
        for n in 1..=5 {
            c.vouch(b"Basic abc", None, at(n));
            c.vouch(b"Basic abc", None, at(n));
        }
        // The verifying address and the last three others.
        assert_eq!(known(HERE), Some(true));
        assert_eq!(
            [1, 2, 3, 4, 5].map(|n| known(at(n))),
            [Some(false), Some(false), Some(true), Some(true), Some(true)]
        );
        c.vouch(b"Basic zzz", None, at(9));
        assert!(c.get(b"Basic zzz", at(9), t0, TTL).is_none(), "vouching adds no entry");
    }

    /// The others an entry knows are those of the last hits: a hit from
    /// one it knows makes that one the most recent, so a new address
    /// replaces one not used for longer (probe 266).
    #[test]
    fn a_hit_keeps_its_address_known() {
        let t0 = Instant::now();
        let c = alice_cached(t0);
        let known = |from| c.get(b"Basic abc", from, t0, TTL).map(|(_, _, known)| known);
        for n in 1..=3 {
            c.vouch(b"Basic abc", None, at(n));
        }
        // 1 used again (and 2), then a fourth address: 3 goes.
        assert_eq!(known(at(1)), Some(true));
        assert_eq!(known(at(2)), Some(true));
        c.vouch(b"Basic abc", None, at(4));
        assert_eq!([1, 2, 3, 4].map(|n| known(at(n))), [Some(true), Some(true), Some(false), Some(true)]);
        // The verifying address is never the one to go.
        for n in 5..=9 {
            c.vouch(b"Basic abc", None, at(n));
        }
        assert_eq!(known(HERE), Some(true));
        assert_eq!([6, 7, 8, 9].map(|n| known(at(n))), [Some(false), Some(true), Some(true), Some(true)]);
    }

    #[test]
    fn zero_ttl_caches_nothing_and_forget_removes() {
        let c = VerifiedCache::new();
        let t0 = Instant::now();
        c.insert(b"x", ("a".into(), 1, HERE), Duration::ZERO, t0);
        assert!(c.is_empty());
        c.insert(b"x", ("a".into(), 1, HERE), Duration::from_secs(1), t0);
        c.insert(b"y", ("b".into(), 1, HERE), Duration::from_secs(1), t0);
        c.forget_users(0, |u| u == "a");
        assert_eq!(c.len(), 1);
    }

    /// One user's logins take at most [`PER_USER`] entries: a bcrypt
    /// account (endless spellings of one password) filled the cache, which
    /// was then cleared for everyone (probe 211). Entries that can no longer
    /// count (expired, or of the user's old credential) make room.
    #[test]
    fn one_user_has_a_few_entries_at_most() {
        let c = VerifiedCache::new();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        for i in 0..100 {
            c.insert(format!("Basic m{i}").as_bytes(), ("mallory".into(), 1, HERE), ttl, t0);
        }
        assert_eq!(c.len(), usize::from(PER_USER));
        assert!(c.get(b"Basic m0", HERE, t0, TTL).is_some(), "the first ones stay");
        assert!(c.get(b"Basic m99", HERE, t0, TTL).is_none(), "the last ones are not cached");
        c.insert(b"Basic bob", ("bob".into(), 1, HERE), ttl, t0);
        assert!(c.get(b"Basic bob", HERE, t0, TTL).is_some(), "another user is");
        c.insert(b"Basic m0", ("mallory".into(), 1, HERE), ttl, t0 + Duration::from_secs(1));
        assert_eq!(c.len(), usize::from(PER_USER) + 1, "an entry verified again is not one more");
        // A new password (credential), then the old ones' time is up.
        c.insert(b"Basic new", ("mallory".into(), 2, HERE), ttl, t0);
        assert!(c.get(b"Basic new", HERE, t0, TTL).is_some(), "the old credential's entries made room");
        assert_eq!(c.len(), 2);
        let later = t0 + ttl;
        for i in 0..usize::from(PER_USER) {
            c.insert(format!("Basic n{i}").as_bytes(), ("mallory".into(), 2, HERE), ttl, later);
        }
        assert!(c.get(b"Basic n7", HERE, later, TTL).is_some(), "expired entries made room");
    }

    /// A full cache drops the eighth of its entries nearest to expiring,
    /// not all of them (every client then verified again at once).
    #[test]
    fn a_full_cache_drops_the_entries_nearest_to_expiring() {
        let c = VerifiedCache::new();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(300);
        let header = |i: usize| format!("Basic {i}");
        for i in 0..MAX_ENTRIES {
            let at = t0 + Duration::from_millis(i as u64);
            c.insert(header(i).as_bytes(), (format!("u{i}").into(), 1, HERE), ttl, at);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        let now = t0 + Duration::from_secs(70);
        c.insert(b"Basic one more", ("late".into(), 1, HERE), ttl, now);
        let left = c.len();
        assert!((MAX_ENTRIES - MAX_ENTRIES / 8 - 1..MAX_ENTRIES).contains(&left), "{left} left");
        let hit = |i: usize| c.get(header(i).as_bytes(), HERE, now, TTL).is_some();
        assert!(!hit(0) && !hit(MAX_ENTRIES / 8 - 1), "the oldest went");
        assert!(hit(MAX_ENTRIES / 8 + 1) && hit(MAX_ENTRIES - 1), "the others stay");
        assert!(c.get(b"Basic one more", HERE, now, TTL).is_some());
    }

    #[test]
    fn mac_is_keyed_blake2s_256() {
        use blake2::Blake2sMac256;
        use blake2::digest::{KeyInit, Mac};
        let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let c = VerifiedCache::with_key(&key);
        // One byte, a usual header, and the lengths around block edges.
        for len in [1, 30, 63, 64, 65, 127, 128, 129, 300] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            let mut reference = <Blake2sMac256 as KeyInit>::new_from_slice(&key).unwrap();
            reference.update(&msg);
            assert_eq!(c.mac(&msg), <[u8; 32]>::from(reference.finalize().into_bytes()), "length {len}");
        }
        assert_ne!(c.mac(b""), c.mac(b"x"));
    }

    #[test]
    fn the_spellings_of_one_basic_login_share_an_entry() {
        let c = VerifiedCache::new();
        let t0 = Instant::now();
        c.insert(b"Basic YWxpY2U6YTE=", ("alice".into(), 7, HERE), Duration::from_secs(60), t0);
        for same in [
            &b"basic YWxpY2U6YTE="[..],
            b"BASIC YWxpY2U6YTE",
            b"Basic   YWxpY2U6YTE=",
            b"bAsIc \tYWxpY2U6YTE= ",
        ] {
            assert!(c.get(same, HERE, t0, TTL).is_some(), "{}", String::from_utf8_lossy(same));
            c.insert(same, ("alice".into(), 7, HERE), Duration::from_secs(60), t0);
        }
        assert_eq!(c.len(), 1, "one entry for all of them");
        // Another login, another scheme, and spellings `parse` refuses.
        for other in [
            &b"Basic YWxpY2U6YTI="[..],
            b"Bearer YWxpY2U6YTE=",
            b"BasicYWxpY2U6YTE=",
            b"Basic YWxpY2U6YTE==",
            b"Basic\tYWxpY2U6YTE=",
        ] {
            assert!(c.get(other, HERE, t0, TTL).is_none(), "{}", String::from_utf8_lossy(other));
        }
        // Multi-part input is the MAC of the concatenation.
        assert_eq!(c.mac_parts(&[b"basic ", b"abc"]), c.mac(b"basic abc"));
    }

    #[test]
    fn different_processes_use_different_keys() {
        assert_ne!(VerifiedCache::new().mac(b"x"), VerifiedCache::new().mac(b"x"));
    }
}
