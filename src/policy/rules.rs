//! Access rules: which authenticated user may reach which destination.
//!
//! Rules are evaluated in file order; the first rule whose every condition
//! matches decides; when none matches, `[policy] default` decides. Within a
//! condition, any listed value matches (OR); across conditions all must match
//! (AND). A condition that is absent matches everything.
//!
//! `cidrs` need the target's addresses: an *allow* rule matches only when every
//! address is inside its ranges, a *deny* rule when any address is (the safe
//! reading for each).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::Method;

use super::cidr_set::CidrSet;
use crate::auth::User;
use crate::target::{Host, Target};

/// What a rule (or the default) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the request through (to the egress check).
    Allow,
    /// Answer 403.
    Deny,
}

impl Action {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// A host pattern: `*`, `*.suffix`, or an exact name (ASCII/punycode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Every host.
    Any,
    /// Any strict subdomain of the suffix (stored with its leading dot).
    Suffix(String),
    /// Exactly this host.
    Exact(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// Whether `b` may be in a method (RFC 9110 §9.1: a `token`, whose
/// characters §5.6.2 lists): what a rule's `methods` and `explain
/// --method` accept, as the proxy does on the wire (`M2` and `GET.X` are
/// methods).
pub fn is_method_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One `[[rules]]` entry, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name, shown in 403 `details`, logs and `explain`.
    pub name: Arc<str>,
    /// What a match does.
    pub action: Action,
    /// Users this rule is for (with `groups`: either matches).
    pub users: Option<Vec<Arc<str>>>,
    /// Groups this rule is for.
    pub groups: Option<Vec<Arc<str>>>,
    /// Destination hosts.
    pub hosts: Option<Vec<HostPattern>>,
    /// Destination ports, as inclusive ranges.
    pub ports: Option<Vec<(u16, u16)>>,
    /// Request methods (`CONNECT`, `GET`, ...).
    pub methods: Option<Vec<Method>>,
    /// Destination address ranges.
    pub cidrs: Option<CidrSet>,
}

/// The question a rule answers.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Who asks.
    pub user: &'a User,
    /// With which method.
    pub method: &'a Method,
    /// For which destination.
    pub target: &'a Target,
    /// The destination's addresses, once resolved.
    pub addrs: Option<&'a [IpAddr]>,
}

/// How one rule relates to a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Every condition matches.
    Match,
    /// This condition does not match.
    Miss(&'static str),
    /// The rule has `cidrs` and the addresses are not known yet.
    NeedAddrs,
}

/// The query's host as host patterns read it, worked out once per decision
/// when a rule first needs it: formatted per rule, and for a deny rule per
/// pattern the IPv4 host an IPv6 target names (NAT64, 6to4), 5,000 deny
/// rules of 10 patterns made 50,000 strings a request (a 20th of the rate
/// for a name; probe 218).
#[derive(Default)]
struct HostTexts<'a> {
    host: std::cell::OnceCell<Cow<'a, str>>,
    embedded: std::cell::OnceCell<Option<String>>,
}

impl<'a> HostTexts<'a> {
    fn host(&self, host: &'a Host) -> &str {
        self.host.get_or_init(|| host_text(host))
    }

    fn embedded(&self, host: &Host) -> Option<&str> {
        self.embedded.get_or_init(|| embedded(host).map(|v4| v4.to_string())).as_deref()
    }
}

impl Rule {
    /// Checks the conditions in a fixed order (cheap ones first).
    pub fn check(&self, q: &Query<'_>) -> Check {
        self.check_with(q, &HostTexts::default())
    }

    /// [`Rule::check`], with the host's texts of this decision.
    fn check_with<'a>(&self, q: &Query<'a>, texts: &HostTexts<'a>) -> Check {
        let who = match (&self.users, &self.groups) {
            (None, None) => true,
            (users, groups) => {
                users.as_ref().is_some_and(|u| u.contains(&q.user.name))
                    || groups.as_ref().is_some_and(|g| g.iter().any(|g| q.user.in_group(g)))
            }
        };
        if !who {
            return Check::Miss("user/group");
        }
        // Methods are case-sensitive (RFC 9110 §9.1), but an origin may
        // take `post` for POST: a deny rule reads them in any case (the
        // safe reading, as for `cidrs`), an allow rule only as listed. A
        // deny rule for POST let `post` through (probe 116).
        if let Some(methods) = &self.methods
            && !methods.iter().any(|m| {
                m == q.method
                    || (self.action == Action::Deny && m.as_str().eq_ignore_ascii_case(q.method.as_str()))
            })
        {
            return Check::Miss("method");
        }
        if let Some(ports) = &self.ports
            && !ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&q.target.port))
        {
            return Check::Miss("port");
        }
        if let Some(hosts) = &self.hosts
            && !hosts.iter().any(|p| matches!(p, HostPattern::Any))
        {
            let host = texts.host(&q.target.host);
            let hit = hosts.iter().any(|p| p.matches(host))
                || (self.action == Action::Deny
                    && texts.embedded(&q.target.host).is_some_and(|v4| hosts.iter().any(|p| p.matches(v4))));
            if !hit {
                return Check::Miss("host");
            }
        }
        if let Some(cidrs) = &self.cidrs {
            let Some(addrs) = q.addrs else {
                return Check::NeedAddrs;
            };
            let inside = |ip: IpAddr| cidrs.holds(ip);
            // The address dialled; for a deny rule also the IPv4 host an
            // IPv6 form names through a translator (NAT64, 6to4), so that
            // no spelling gets past it. An allow rule opens only what it
            // lists.
            let hit = match self.action {
                Action::Allow => {
                    !addrs.is_empty() && addrs.iter().all(|ip| inside(crate::policy::egress::canonical(*ip)))
                }
                Action::Deny => addrs.iter().any(|ip| {
                    let ip = crate::policy::egress::canonical(*ip);
                    inside(ip) || crate::policy::egress::embedded_v4(ip).is_some_and(|v4| inside(v4.into()))
                }),
            };
            if !hit {
                return Check::Miss("cidr");
            }
        }
        Check::Match
    }
}

/// The host as patterns see it; an address is formatted only once a rule
/// that has patterns other than `*` asks, and once per decision (see
/// `HostTexts`; formatting one per rule per request was 1.6k instructions
/// each). An IPv4-mapped address (`[::ffff:10.1.2.3]`) is
/// that IPv4 address, as for `cidrs` and the egress checks: a connection to
/// it reaches that host, and it must not slip past a rule for it.
fn host_text(host: &Host) -> Cow<'_, str> {
    match host {
        Host::Name(n) => Cow::Borrowed(n),
        Host::Ip(ip) => Cow::Owned(crate::policy::egress::canonical(*ip).to_string()),
    }
}

/// The IPv4 host a target address names through a translator or relay
/// (see [`crate::policy::egress::embedded_v4`]): deny rules match it too.
fn embedded(host: &Host) -> Option<std::net::Ipv4Addr> {
    match host {
        Host::Ip(ip) => crate::policy::egress::embedded_v4(*ip),
        Host::Name(_) => None,
    }
}

/// The rules plus the default.
#[derive(Debug, Clone)]
pub struct Policy {
    /// What happens when no rule matches.
    pub default: Action,
    /// Rules in file order.
    pub rules: Vec<Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { default: Action::Allow, rules: Vec::new() }
    }
}

/// The outcome of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// The deciding rule; `None` for the default.
    pub rule: Option<Arc<str>>,
}

impl Decision {
    /// `rule NAME` or `default`, as shown in `Proxy-Status` details.
    pub fn label(&self) -> String {
        match &self.rule {
            Some(r) => format!("rule {r}"),
            None => "default".into(),
        }
    }
}

impl Policy {
    /// Decides a query; `None` when a rule needs the addresses first.
    pub fn decide(&self, q: &Query<'_>) -> Option<Decision> {
        let texts = HostTexts::default();
        for rule in &self.rules {
            match rule.check_with(q, &texts) {
                Check::Match => return Some(Decision { action: rule.action, rule: Some(rule.name.clone()) }),
                Check::Miss(_) => {}
                Check::NeedAddrs => return None,
            }
        }
        Some(Decision { action: self.default, rule: None })
    }

    /// Every rule's check, in order, for `explain`.
    pub fn trace(&self, q: &Query<'_>) -> Vec<(Arc<str>, Action, Check)> {
        let texts = HostTexts::default();
        self.rules.iter().map(|r| (r.name.clone(), r.action, r.check_with(q, &texts))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::store::StoredHash;
    use crate::target::parse_authority;

    fn user(name: &str, groups: &[&str]) -> User {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let hash = crate::auth::password::hash_password("x", params).unwrap();
        User::new(
            name.into(),
            StoredHash::Argon2(hash),
            groups.iter().map(|g| Arc::from(*g)).collect(),
            false,
            None,
        )
    }

    fn rule(name: &str, action: Action) -> Rule {
        Rule {
            name: name.into(),
            action,
            users: None,
            groups: None,
            hosts: None,
            ports: None,
            methods: None,
            cidrs: None,
        }
    }

    fn pat(s: &str) -> HostPattern {
        crate::config::host_pattern(s).unwrap()
    }

    /// The example from the README: no SMTP for anyone, registries for eng.
    fn policy() -> Policy {
        let mut no_smtp = rule("no-smtp", Action::Deny);
        no_smtp.ports = Some(vec![(25, 25), (465, 465), (587, 587)]);
        let mut eng = rule("eng-registries", Action::Allow);
        eng.groups = Some(vec!["eng".into()]);
        eng.hosts = Some(vec![pat("crates.io"), pat("*.crates.io"), pat("*.github.com")]);
        eng.ports = Some(vec![(443, 443), (8000, 8999)]);
        eng.methods = Some(vec![Method::CONNECT, Method::GET]);
        let mut alice = rule("alice-anything-https", Action::Allow);
        alice.users = Some(vec!["alice".into()]);
        alice.ports = Some(vec![(443, 443)]);
        let mut lab = rule("lab-net", Action::Allow);
        lab.cidrs = Some(CidrSet::new(vec!["203.0.113.0/24".parse().unwrap()]));
        let mut bad_net = rule("no-bad-net", Action::Deny);
        bad_net.cidrs = Some(CidrSet::new(vec!["198.51.100.0/24".parse().unwrap()]));
        Policy { default: Action::Deny, rules: vec![no_smtp, eng, alice, bad_net, lab] }
    }

    #[test]
    fn table() {
        let eng = user("bob", &["eng"]);
        let alice = user("alice", &[]);
        let other = user("carol", &["staff"]);
        let lab_ip = ["203.0.113.5".parse().unwrap()];
        let mixed = ["203.0.113.5".parse().unwrap(), "8.8.8.8".parse().unwrap()];
        let bad = ["198.51.100.1".parse().unwrap(), "8.8.8.8".parse().unwrap()];
        #[rustfmt::skip]
        type Case<'a> = (&'a User, Method, &'a str, Option<&'a [IpAddr]>, Option<Option<&'a str>>, Action);
        let cases: &[Case<'_>] = &[
            // (user, method, target, addrs, Some(deciding rule) or None = needs addrs, action)
            (&eng, Method::CONNECT, "crates.io:443", None, Some(Some("eng-registries")), Action::Allow),
            (&eng, Method::CONNECT, "CRATES.IO.:443", None, Some(Some("eng-registries")), Action::Allow),
            (&eng, Method::GET, "static.crates.io:8080", None, Some(Some("eng-registries")), Action::Allow),
            (&eng, Method::GET, "api.github.com:8999", None, Some(Some("eng-registries")), Action::Allow),
            (&eng, Method::POST, "crates.io:443", None, None, Action::Deny), // method differs -> later rules -> cidrs need addrs
            (&eng, Method::CONNECT, "github.com:443", None, None, Action::Deny), // *.github.com is subdomains only
            (&eng, Method::CONNECT, "crates.io:9000", None, None, Action::Deny),
            (&eng, Method::CONNECT, "evilcrates.io:443", None, None, Action::Deny),
            (&eng, Method::CONNECT, "crates.io:25", None, Some(Some("no-smtp")), Action::Deny), // order: deny first
            (
                &alice,
                Method::CONNECT,
                "anything.example:443",
                None,
                Some(Some("alice-anything-https")),
                Action::Allow,
            ),
            (&alice, Method::CONNECT, "smtp.example:587", None, Some(Some("no-smtp")), Action::Deny),
            (&other, Method::CONNECT, "crates.io:443", Some(&[]), Some(None), Action::Deny), // default
            (&other, Method::CONNECT, "x.example:443", Some(&lab_ip), Some(Some("lab-net")), Action::Allow),
            (&other, Method::CONNECT, "x.example:443", Some(&mixed), Some(None), Action::Deny), // allow needs all
            (&other, Method::CONNECT, "x.example:443", Some(&bad), Some(Some("no-bad-net")), Action::Deny), // deny needs any
        ];
        let p = policy();
        for (u, m, t, addrs, want_rule, want_action) in cases {
            let target = parse_authority(t).unwrap();
            let q = Query { user: u, method: m, target: &target, addrs: *addrs };
            let got = p.decide(&q);
            match want_rule {
                None => assert!(got.is_none(), "{} {m} {t}: expected to need addresses, got {got:?}", u.name),
                Some(rule) => {
                    let got = got.unwrap_or_else(|| panic!("{} {m} {t}: needs addrs", u.name));
                    assert_eq!(got.rule.as_deref(), *rule, "{} {m} {t}", u.name);
                    assert_eq!(got.action, *want_action, "{} {m} {t}", u.name);
                }
            }
        }
    }

    #[test]
    fn default_applies_when_nothing_matches() {
        let allow_all = Policy::default();
        let u = user("x", &[]);
        let t = parse_authority("example.com:443").unwrap();
        let d = allow_all.decide(&Query { user: &u, method: &Method::GET, target: &t, addrs: None }).unwrap();
        assert_eq!((d.action, d.rule.clone(), d.label()), (Action::Allow, None, "default".to_string()));
    }

    #[test]
    fn ip_literal_targets_match_exact_ip_patterns_and_star() {
        let mut r = rule("ip", Action::Allow);
        r.hosts = Some(vec![pat("192.0.2.7")]);
        let u = user("x", &[]);
        let t = parse_authority("3221225991:80").unwrap(); // 192.0.2.7 in decimal
        assert_eq!(r.check(&Query { user: &u, method: &Method::GET, target: &t, addrs: None }), Check::Match);
        let other = parse_authority("192.0.2.8:80").unwrap();
        let q = Query { user: &u, method: &Method::GET, target: &other, addrs: None };
        assert_eq!(r.check(&q), Check::Miss("host"));
        r.hosts = Some(vec![pat("*")]);
        assert_eq!(r.check(&Query { user: &u, method: &Method::GET, target: &t, addrs: None }), Check::Match);
        r.hosts = Some(vec![pat("*.example.com"), pat("*")]);
        assert_eq!(r.check(&q), Check::Match);
    }

    /// An IPv6 form that names an IPv4 host through a translator or relay
    /// (NAT64, 6to4, IPv4-compatible, IPv4-translated) is dialled as IPv6: an allow rule for
    /// the IPv4 host does not open it, a deny rule for that host holds for
    /// it. A mapped address (`::ffff:`) is the IPv4 address for both.
    #[test]
    fn translator_forms_match_deny_rules_of_their_ipv4_host_but_not_allow_rules() {
        let u = user("x", &[]);
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        let check = |r: &Rule, target: &str| {
            let t = parse_authority(&format!("[{target}]:80")).unwrap();
            let addrs = ip(target);
            r.check(&Query { user: &u, method: &Method::GET, target: &t, addrs: Some(&addrs) })
        };
        for (kind, set) in [("cidrs", true), ("hosts", false)] {
            let mut allow = rule("allow", Action::Allow);
            let mut deny = rule("deny", Action::Deny);
            if set {
                allow.cidrs = Some(CidrSet::new(vec!["127.0.0.0/8".parse().unwrap()]));
                deny.cidrs = Some(CidrSet::new(vec!["127.0.0.0/8".parse().unwrap()]));
            } else {
                allow.hosts = Some(vec![pat("127.0.0.1")]);
                deny.hosts = Some(vec![pat("127.0.0.1")]);
            }
            for v6 in ["::127.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b::127.0.0.1", "2002:7f00:1::1"] {
                assert_ne!(check(&allow, v6), Check::Match, "{kind}: allow {v6}");
                assert_eq!(check(&deny, v6), Check::Match, "{kind}: deny {v6}");
            }
            assert_eq!(check(&allow, "::ffff:127.0.0.1"), Check::Match, "{kind}");
            assert_eq!(check(&deny, "::ffff:127.0.0.1"), Check::Match, "{kind}");
        }
    }
}
