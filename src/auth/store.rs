//! The users known to authgate, with their password hashes parsed at load.
//!
//! Verification is deliberately uniform: an unknown user is checked against a
//! dummy hash with the same argon2 parameters as real users, and a disabled or
//! expired user's password is still verified, so timing does not tell an
//! attacker which names exist.

use crate::config::{NOT_SHOWN, shown_user};
use foldhash::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use argon2::Params;
use argon2::password_hash::PasswordHashString;

use super::basic::Credentials;
use super::password::{Memory, hash_password, verify_argon2_in};

/// How many bytes of a password bcrypt reads.
const BCRYPT_READS: usize = 72;

/// A stored password hash.
#[derive(Clone)]
pub enum StoredHash {
    /// An argon2 PHC string (argon2id recommended).
    Argon2(PasswordHashString),
    /// A bcrypt hash (`$2b$`, `$2y$`, `$2a$`) imported from htpasswd: a legacy
    /// scheme, verified but never created.
    Bcrypt(String),
}

impl StoredHash {
    fn verify(&self, password: &str, memory: &mut Memory) -> bool {
        match self {
            StoredHash::Argon2(h) => verify_argon2_in(h, password, memory),
            // bcrypt compares in constant time (subtle) internally. Its key
            // is the password and a NUL, repeated: `pw\0pw` passed for `pw`
            // (probe 211), so a password with a NUL never does (no
            // htpasswd tool can have hashed one), checked after bcrypt's
            // work so that it takes the same time.
            StoredHash::Bcrypt(h) => {
                bcrypt::verify(password.as_bytes(), h).unwrap_or(false) && !password.contains('\0')
            }
        }
    }

    /// Whether `password` has bytes past the ones this hash reads (bcrypt
    /// reads 72): every such password that shares those passes, so each
    /// is one of endlessly many that do.
    pub fn ignores_part_of(&self, password: &str) -> bool {
        matches!(self, StoredHash::Bcrypt(_)) && password.len() > BCRYPT_READS
    }

    /// The stored string (for fingerprints and rewriting the file; never log it).
    pub fn as_str(&self) -> &str {
        match self {
            StoredHash::Argon2(h) => h.as_str(),
            StoredHash::Bcrypt(h) => h,
        }
    }

    /// The length in bytes of an argon2 hash's tag when it is none of those
    /// tools write: 32 (`authgate hash-password`, and the defaults of
    /// libargon2, PHP, libsodium, argon2-cffi ...), 16 (passlib), 64. A tag
    /// of another length is most likely a hash cut short (or lengthened) when it was
    /// copied, which never verifies: the user was refused as a wrong
    /// password, and the file passed `check` (probe 118).
    pub fn unusual_tag(&self) -> Option<usize> {
        let StoredHash::Argon2(h) = self else { return None };
        let len = h.password_hash().hash?.len();
        (![16, 32, 64].contains(&len)).then_some(len)
    }

    /// `argon2id`, `argon2i`, `argon2d` or `bcrypt (legacy)`.
    pub fn scheme(&self) -> String {
        match self {
            StoredHash::Argon2(h) => h.password_hash().algorithm.to_string(),
            StoredHash::Bcrypt(_) => "bcrypt (legacy)".into(),
        }
    }

    /// Parses a stored hash: argon2 PHC or bcrypt.
    ///
    /// # Errors
    /// A message (never containing the hash) when it is neither.
    pub fn parse(s: &str) -> Result<StoredHash, String> {
        if s.starts_with("$2b$") || s.starts_with("$2y$") || s.starts_with("$2a$") {
            return match s.parse::<bcrypt::HashParts>() {
                // bcrypt's costs are 4 to 31: the crate parses `$2y$00$`,
                // which then never verifies.
                Ok(parts) if parts.get_cost() < 4 => {
                    Err(format!("bcrypt cost {} does not exist (4 to 31)", parts.get_cost()))
                }
                Ok(parts) if parts.get_cost() > super::password::MAX_BCRYPT_COST => Err(format!(
                    "bcrypt cost {} is beyond what authgate verifies (at most {}); reset this password",
                    parts.get_cost(),
                    super::password::MAX_BCRYPT_COST
                )),
                Ok(_) if !bcrypt_decodes(s) => Err(
                    "not a valid bcrypt hash (its salt or hash is not canonical bcrypt base64, so it never verifies)"
                        .into(),
                ),
                Ok(_) => Ok(StoredHash::Bcrypt(s.to_owned())),
                Err(_) => Err("not a valid bcrypt hash".into()),
            };
        }
        super::password::parse_argon2(s).map(|(h, _)| StoredHash::Argon2(h))
    }
}

/// The scheme and costs of a stored hash.
fn hash_costs(hash: &StoredHash) -> Option<Costs> {
    match hash {
        StoredHash::Argon2(h) => Params::try_from(&h.password_hash()).ok().map(Costs::from),
        StoredHash::Bcrypt(h) => {
            h.parse::<bcrypt::HashParts>().ok().map(|p| Costs::Bcrypt { cost: p.get_cost() })
        }
    }
}

/// Whether a bcrypt string's salt (22 characters) and hash (31) decode as
/// the bcrypt crate decodes them at login: strictly, unused low bits zero.
/// A string that only has the shape (a character changed in copying) was
/// taken, and every password was then refused as wrong (probe 127).
fn bcrypt_decodes(s: &str) -> bool {
    use base64::Engine;
    const BCRYPT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::BCRYPT,
        base64::engine::general_purpose::NO_PAD,
    );
    let Some((_, salt_and_hash)) = s.rsplit_once('$') else { return false };
    let Some((salt, hash)) = salt_and_hash.split_at_checked(22) else { return false };
    BCRYPT_BASE64.decode(salt).is_ok() && BCRYPT_BASE64.decode(hash).is_ok()
}

/// A hash scheme and its costs: what the dummy hash of unknown users is
/// made with, the ones most users have, so that an unknown name costs the
/// time a known one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Costs {
    /// argon2 (any variant: the dummy is argon2id) with these costs.
    Argon2 {
        /// Memory, KiB.
        m: u32,
        /// Passes.
        t: u32,
        /// Lanes.
        p: u32,
    },
    /// bcrypt with this cost (imported from htpasswd): with an argon2
    /// dummy, a file of bcrypt users told each known name from an unknown
    /// one by time, 56 ms against 14 (probe 131).
    Bcrypt {
        /// log2 of the rounds.
        cost: u32,
    },
}

impl Costs {
    /// About how much work one check costs, in argon2 KiB-passes (`m` ×
    /// `t`), so that costs of both schemes compare: one bcrypt round took
    /// the time of about 143 of them here (bcrypt cost 10: 56 ms; argon2
    /// m=19456, t=2: 14.9 ms). Of costs equally common among the users,
    /// the dummy takes the least work: "argon2 before bcrypt" made one
    /// argon2 user at a high cost, beside one bcrypt user, set every
    /// unknown name's cost (probe 133).
    pub fn work(&self) -> u64 {
        match *self {
            Costs::Argon2 { m, t, .. } => u64::from(m) * u64::from(t),
            Costs::Bcrypt { cost } => 143u64 << cost.min(40),
        }
    }
}

impl From<Params> for Costs {
    fn from(p: Params) -> Self {
        Costs::Argon2 { m: p.m_cost(), t: p.t_cost(), p: p.p_cost() }
    }
}

/// One user. `Debug` never shows the hash.
#[derive(Clone)]
pub struct User {
    /// The user's name, NFC-normalised.
    pub name: Arc<str>,
    /// Groups, for access rules.
    pub groups: Vec<Arc<str>>,
    /// A disabled user is refused like a wrong password.
    pub disabled: bool,
    /// After this instant the user is refused like a wrong password.
    pub expires: Option<SystemTime>,
    hash: StoredHash,
    /// Changes whenever anything about the user changes: a reload revokes
    /// the sessions of a user whose fingerprint it changed.
    pub fingerprint: u64,
    /// Changes when the user's name or stored hash does: what a verified
    /// login stands for. The verified-credential cache, and a login whose
    /// verification a reload overtook, go by it, with `disabled` and
    /// `expires` checked apart: a change of groups alone made every
    /// affected user's client run argon2 again (a group added to 50,000
    /// users: 1,500 active ones waited up to 22 s; probe 218).
    pub credential: u64,
    /// `groups` as a set, for a user in more than [`LINEAR_GROUPS`]: rules
    /// ask [`User::in_group`] for each group they name, and a linear search
    /// made a request's rules cost their groups times the user's (a user in
    /// 300 groups, against 1,000 rules of 20: 14× slower than one in 2;
    /// probe 218).
    group_set: Option<foldhash::HashSet<Arc<str>>>,
}

/// Groups up to which a user's are searched in order: comparing lengths
/// first, that is quicker than hashing the name (and binary search, two
/// `memcmp`s for a user in 2 groups, halved the rate of a rule set that
/// asks about 20,000 groups a request).
const LINEAR_GROUPS: usize = 16;

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("disabled", &self.disabled)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl User {
    /// Builds a user; the fingerprint is derived from every field.
    pub fn new(
        name: Arc<str>,
        hash: StoredHash,
        groups: Vec<Arc<str>>,
        disabled: bool,
        expires: Option<SystemTime>,
    ) -> Self {
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        hash.as_str().hash(&mut h);
        let credential = h.finish();
        groups.hash(&mut h);
        disabled.hash(&mut h);
        expires.hash(&mut h);
        let group_set = (groups.len() > LINEAR_GROUPS).then(|| groups.iter().cloned().collect());
        User { name, groups, disabled, expires, hash, fingerprint: h.finish(), credential, group_set }
    }

    /// Whether the user may log in at `now` (not disabled, not expired).
    pub fn active_at(&self, now: SystemTime) -> Result<(), Refusal> {
        if self.disabled {
            return Err(Refusal::Disabled);
        }
        if self.expires.is_some_and(|e| now >= e) {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    /// The scheme and costs of the user's hash.
    pub fn costs(&self) -> Option<Costs> {
        hash_costs(&self.hash)
    }

    /// The user's stored hash.
    pub fn hash(&self) -> &StoredHash {
        &self.hash
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        match &self.group_set {
            Some(set) => set.contains(group),
            None => self.groups.iter().any(|g| &**g == group),
        }
    }
}

/// Why a credential was refused. Never shown to the client (all are 407).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Proxy-Authorization` header.
    Missing,
    /// Not Basic, bad base64, no `:`.
    Malformed,
    /// No such user.
    UnknownUser,
    /// Wrong password.
    BadPassword,
    /// The user is disabled.
    Disabled,
    /// The user's `expires` has passed.
    Expired,
}

impl Refusal {
    /// The word used in the audit log and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::UnknownUser => "unknown_user",
            Refusal::BadPassword => "bad_password",
            Refusal::Disabled => "disabled",
            Refusal::Expired => "expired",
        }
    }
}

/// All users, keyed by name.
pub struct UserStore {
    users: HashMap<Arc<str>, Arc<User>>,
    dummy: StoredHash,
    /// Where the store stands among those built: a later one's is larger.
    serial: u64,
}

impl fmt::Debug for UserStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserStore").field("users", &self.users.len()).finish()
    }
}

impl UserStore {
    /// Builds the store; `costs` are the most common among the users (or
    /// the configured argon2 ones), used for the dummy hash. The dummy of
    /// `previous` (the users in effect, at a reload) is kept when its costs
    /// are the same: making one costs a hash run, seconds and gigabytes
    /// with the largest costs a user may have.
    ///
    /// # Errors
    /// Only if argon2 or bcrypt rejects `costs`, which a validated config
    /// and users file never hold.
    pub fn new(
        users: Vec<User>,
        costs: impl Into<Costs>,
        previous: Option<&UserStore>,
    ) -> Result<Self, String> {
        let costs = costs.into();
        let kept = previous.map(|p| &p.dummy).filter(|d| hash_costs(d) == Some(costs));
        let dummy = match kept {
            Some(d) => d.clone(),
            None => {
                let dummy_password = format!("{:x}", rand_core::RngCore::next_u64(&mut rand_core::OsRng));
                let failed = |e: &dyn std::fmt::Display| {
                    format!(
                        "cannot build the dummy hash unknown names are checked against (the costs most users have): {e}"
                    )
                };
                match costs {
                    Costs::Argon2 { m, t, p } => {
                        let params = Params::new(m, t, p, None).map_err(|e| failed(&e))?;
                        StoredHash::Argon2(hash_password(&dummy_password, params).map_err(|e| failed(&e))?)
                    }
                    Costs::Bcrypt { cost } => {
                        StoredHash::Bcrypt(bcrypt::hash(&dummy_password, cost).map_err(|e| failed(&e))?)
                    }
                }
            }
        };
        let users = users.into_iter().map(|u| (u.name.clone(), Arc::new(u))).collect();
        static BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let serial = BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(UserStore { users, dummy, serial })
    }

    /// Where this store stands among those built: one built later has a
    /// larger serial. (The login cache tells by it a verification made
    /// against users a reload has since replaced; see
    /// [`super::cache::VerifiedCache::forget_users`].)
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Looks a user up by (NFC-normalised) name.
    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.users.get(name)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Iterates over all users.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.users.values()
    }

    /// The users, of those `include` picks, whose hash has an
    /// [unusual tag](StoredHash::unusual_tag) or is [costly](costly), with
    /// the problem and the log message's headline, in name order.
    fn hash_problems(&self, include: impl Fn(&User) -> bool) -> Vec<(&str, String, &'static str)> {
        let mut odd: Vec<(&str, String, &'static str)> = Vec::new();
        for u in self.iter().filter(|u| include(u)) {
            if let Some(len) = u.hash.unusual_tag() {
                odd.push((&u.name, tag_problem(len), "users file: a hash that may never verify"));
            }
            if let Some(problem) = u.costs().and_then(costly) {
                odd.push((&u.name, problem, "users file: a hash that is slow to verify"));
            }
        }
        odd.sort_unstable();
        odd
    }

    /// A warning for each user whose hash has an
    /// [unusual tag](StoredHash::unusual_tag) or is slow to verify (50
    /// times a default hash's work, or 1 GiB), of those `include` picks, in
    /// name order, for a terminal (the name escaped).
    pub fn hash_warnings(&self, include: impl Fn(&User) -> bool) -> Vec<String> {
        self.hash_problems(include)
            .into_iter()
            .map(|(name, problem, _)| match shown_user(name) {
                Some(name) => format!("user `{name}`: {problem}"),
                None => format!("a user {NOT_SHOWN}: {problem}"),
            })
            .collect()
    }

    /// Logs the users [`UserStore::hash_warnings`] names (at the start, for
    /// all users; at a reload, for those added or changed), as `authgate
    /// check` prints them. The name is a field of its own, which the log
    /// format escapes (escaped for a terminal first, it was escaped twice).
    pub fn warn_of_hashes(&self, include: impl Fn(&User) -> bool) {
        for (name, problem, headline) in self.hash_problems(include) {
            match shown_user(name) {
                Some(_) => tracing::warn!(user = name, problem = &*problem, "{headline}"),
                None => tracing::warn!(problem = &*problem, "{headline} {NOT_SHOWN}"),
            }
        }
    }

    /// Verifies credentials. Slow on purpose (argon2): call it on the blocking
    /// pool. Every path costs one hash verification.
    pub fn verify(&self, creds: &Credentials, now: SystemTime) -> Result<Arc<User>, Refusal> {
        self.verify_in(creds, now, &mut Memory::default())
    }

    /// [`UserStore::verify`] with reusable argon2 working memory.
    pub fn verify_in(
        &self,
        creds: &Credentials,
        now: SystemTime,
        memory: &mut Memory,
    ) -> Result<Arc<User>, Refusal> {
        match self.users.get(creds.username.as_str()) {
            None => {
                let _ = self.dummy.verify(&creds.password, memory);
                Err(Refusal::UnknownUser)
            }
            Some(user) => {
                if !user.hash.verify(&creds.password, memory) {
                    return Err(Refusal::BadPassword);
                }
                user.active_at(now)?;
                Ok(user.clone())
            }
        }
    }
}

/// How many times a default hash's work (`m=19456, t=2`: 14.9 ms here) a
/// hash may take before a warning: 0.65–0.7 s here at `m=19456, t=100`,
/// more for a large `m` (`m × t` understates memory: `m=972799, t=2`, just
/// under, took 1.2–1.7 s; probe 319). Within the bounds a
/// hash is loaded with, `m=4194304` took 6 s a login at `t=1` and 39 s at
/// `t=10` (`t` may be 100), and every other uncached login waited behind
/// it (probe 315).
const COSTLY_WORK: u64 = 50;

/// argon2 memory, KiB, past which a warning says so: 1 GiB, which each
/// verification worker then keeps.
const COSTLY_MEMORY: u32 = 1 << 20;

/// Why a hash with `costs` is slow to verify, or `None` when it is not
/// (see [`COSTLY_WORK`], [`COSTLY_MEMORY`]).
fn costly(costs: Costs) -> Option<String> {
    let slow = Slow::of(costs)?;
    Some(format!(
        "its hash ({}) takes about {} times the work of a default one ({}) to verify: every login of \
         this user that the login cache does not hold, with the right password or a wrong one, holds a \
         verification worker that long{}, and other logins wait; `authgate users passwd` writes a hash \
         with the `[auth.argon2]` costs",
        slow.written, slow.times, slow.default, slow.memory
    ))
}

/// Why `[auth.argon2]` makes new hashes slow to verify (as `costly` says
/// of a stored one), or `None`: `check` and the `users` commands that
/// write a hash said nothing of costs they then warned of in each hash
/// (probe 329).
pub fn costly_new_hashes(params: &Params) -> Option<String> {
    let slow = Slow::of(Costs::from(params.clone()))?;
    Some(format!(
        "auth.argon2: new hashes ({}) take about {} times the work of a default one ({}) to verify: \
         each login with such a hash (as `authgate users` writes them) that the login cache does not \
         hold keeps a verification worker that long{}, and other logins wait; lower m_cost or t_cost",
        slow.written, slow.times, slow.default, slow.memory
    ))
}

/// The figures of a warning of slow hashes.
struct Slow {
    /// The costs, as written (`m=…, t=…`, `bcrypt cost …`).
    written: String,
    /// How many times a default hash's work.
    times: u64,
    /// A default hash's costs, as written.
    default: String,
    /// ` and N MiB of memory`, for argon2 of 1 MiB or more; else empty.
    memory: String,
}

impl Slow {
    fn of(costs: Costs) -> Option<Slow> {
        let params = super::password::default_params();
        let times = costs.work() / Costs::from(params.clone()).work().max(1);
        let (written, memory) = match costs {
            Costs::Argon2 { m, t, .. } => (format!("m={m}, t={t}"), Some(m).filter(|&m| m >= 1024)),
            Costs::Bcrypt { cost } => (format!("bcrypt cost {cost}"), None),
        };
        if times < COSTLY_WORK && memory.is_none_or(|m| m < COSTLY_MEMORY) {
            return None;
        }
        Some(Slow {
            written,
            times,
            default: format!("m={}, t={}", params.m_cost(), params.t_cost()),
            memory: memory.map(|m| format!(" and {} MiB of memory", m / 1024)).unwrap_or_default(),
        })
    }
}

/// What an argon2 tag of `len` bytes means, for [`UserStore::hash_warnings`].
fn tag_problem(len: usize) -> String {
    format!(
        "its argon2 hash has a {len}-byte tag where `authgate hash-password` writes 32: \
         a hash cut short or lengthened when it was copied never verifies (one a tool made \
         with a tag of this length does)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[auth.argon2]` costs that make slow hashes are said as a stored
    /// hash's are, at the same thresholds (they were not said at all;
    /// probe 329).
    #[test]
    fn new_hash_costs_are_warned_of_as_stored_ones_are() {
        let params = |m, t| Params::new(m, t, 1, None).unwrap();
        let warned = costly_new_hashes(&params(19_456, 100)).unwrap_or_default();
        assert!(
            warned.starts_with("auth.argon2: new hashes (m=19456, t=100) take about 50 times the work"),
            "{warned}"
        );
        assert!(costly_new_hashes(&params(19_456, 99)).is_none());
        assert!(costly_new_hashes(&params(1 << 20, 1)).is_some_and(|w| w.contains("1024 MiB")));
        assert!(costly_new_hashes(&params((1 << 20) - 1, 1)).is_none());
        assert!(costly_new_hashes(&super::super::password::default_params()).is_none());
    }

    /// A user in few groups or many (a set past `LINEAR_GROUPS`) is in
    /// exactly those; the credential follows the name and hash alone.
    #[test]
    fn groups_few_or_many_and_the_credential() {
        let hash =
            || StoredHash::Bcrypt("$2b$04$abcdefghijklmnopqrstuu5F0G2g0bH3p6vJ1n2bJ4Yk6M0n3q4a".into());
        for n in [0, 2, LINEAR_GROUPS, LINEAR_GROUPS + 1, 300] {
            let groups: Vec<Arc<str>> = (0..n).rev().map(|i| Arc::from(format!("g{i}"))).collect();
            let u = User::new("u".into(), hash(), groups, false, None);
            assert!((0..n).all(|i| u.in_group(&format!("g{i}"))), "{n}");
            assert!(!u.in_group(&format!("g{n}")) && !u.in_group("") && !u.in_group("G0"), "{n}");
        }
        let a = User::new("u".into(), hash(), vec!["a".into()], false, None);
        let b = User::new("u".into(), hash(), vec!["b".into()], true, None);
        assert_eq!(a.credential, b.credential);
        assert_ne!(a.fingerprint, b.fingerprint);
        let c = User::new("v".into(), hash(), vec!["a".into()], false, None);
        assert_ne!(a.credential, c.credential);
    }

    fn phc(d: &StoredHash) -> String {
        match d {
            StoredHash::Argon2(h) => h.to_string(),
            StoredHash::Bcrypt(b) => b.clone(),
        }
    }

    /// A reload keeps the dummy hash of the users in effect when its
    /// parameters are still the ones to use (making one is an argon2 run:
    /// seconds and gigabytes at the largest costs), and makes a new one
    /// when they changed.
    #[test]
    fn a_reload_keeps_the_dummy_when_its_parameters_stay() {
        let small = Params::new(8, 1, 1, None).unwrap();
        let first = UserStore::new(Vec::new(), small.clone(), None).unwrap();
        let again = UserStore::new(Vec::new(), small.clone(), Some(&first)).unwrap();
        assert_eq!(phc(&again.dummy), phc(&first.dummy), "kept");
        let other = UserStore::new(Vec::new(), Params::new(16, 1, 1, None).unwrap(), Some(&first)).unwrap();
        assert_ne!(phc(&other.dummy), phc(&first.dummy));
        assert!(phc(&other.dummy).contains("m=16,t=1,p=1"), "{}", phc(&other.dummy));
        let fresh = UserStore::new(Vec::new(), small, None).unwrap();
        assert_ne!(phc(&fresh.dummy), phc(&first.dummy), "a new salt and password each time");
    }

    /// A dummy of bcrypt costs is a bcrypt hash of that cost, kept by a
    /// reload that keeps the costs; unknown names are checked against it.
    #[test]
    fn a_bcrypt_dummy_for_bcrypt_users() {
        let first = UserStore::new(Vec::new(), Costs::Bcrypt { cost: 4 }, None).unwrap();
        assert!(
            phc(&first.dummy).starts_with("$2") && phc(&first.dummy).contains("$04$"),
            "{}",
            phc(&first.dummy)
        );
        let again = UserStore::new(Vec::new(), Costs::Bcrypt { cost: 4 }, Some(&first)).unwrap();
        assert_eq!(phc(&again.dummy), phc(&first.dummy), "kept");
        let other = UserStore::new(Vec::new(), Costs::Bcrypt { cost: 5 }, Some(&first)).unwrap();
        assert!(phc(&other.dummy).contains("$05$"), "{}", phc(&other.dummy));
    }

    /// A bcrypt string whose salt or hash has unused low bits set (one
    /// character changed in copying) is refused when read: it had the
    /// shape, and then never verified (probe 127). The bcrypt crate's own
    /// test vector for "password" still reads and verifies.
    #[test]
    fn a_bcrypt_string_that_never_verifies_is_refused() {
        let good = "$2a$04$UuTkLRZZ6QofpDOlMz32MuuxEHA43WOemOYHPz6.SjsVsyO1tDU96";
        let parsed = StoredHash::parse(good).unwrap();
        assert!(parsed.verify("password", &mut Memory::default()));
        // bcrypt's key repeats the password and a NUL: these passed.
        for alias in ["password\0password", "password\0password\0password"] {
            assert!(!parsed.verify(alias, &mut Memory::default()), "{alias:?}");
        }
        for bad in [
            "$2a$04$UuTkLRZZ6QofpDOlMz32MvuxEHA43WOemOYHPz6.SjsVsyO1tDU96",
            "$2a$04$UuTkLRZZ6QofpDOlMz32MuuxEHA43WOemOYHPz6.SjsVsyO1tDU97",
        ] {
            let err = StoredHash::parse(bad).err().unwrap_or_default();
            assert!(err.contains("not canonical bcrypt base64") && !err.contains("UuTk"), "{err}");
        }
    }
}
