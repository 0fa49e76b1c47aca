//! `[policy]` and `[[rules]]` → validated [`Policy`], collecting every problem.
//!
//! A rule that can never match is an error: an empty list, an inverted port
//! range, a malformed host pattern or CIDR, a duplicate name.

use std::collections::HashSet;
use std::sync::Arc;

use http::Method;
use toml::Spanned;

use super::error::{Collector, quoted};
use super::raw::{RawPolicy, RawPort, RawRule};
use super::validate::parse_cidr;
use crate::policy::egress::canonical;
use crate::policy::rules::{Action, HostPattern, Policy, Rule, is_method_char};
use crate::target::{Host, parse_host};

/// Validates the policy section and rules.
pub fn policy(c: &mut Collector<'_>, raw: &RawPolicy, rules: &[Spanned<RawRule>]) -> Policy {
    let mut p = Policy::default();
    if let Some(d) = &raw.default {
        match action(d.get_ref()) {
            Some(a) => p.default = a,
            None => c.at(d.span(), "policy.default: must be \"allow\" or \"deny\""),
        }
    }
    let mut names = HashSet::new();
    for r in rules {
        let raw = r.get_ref();
        // Checked whatever else is wrong with either rule: every problem is
        // reported in one go.
        let name = raw.name.get_ref().as_str();
        let fresh = !valid_name(name) || names.insert(name);
        if !fresh {
            c.at(raw.name.span(), format!("rule `{name}`: duplicate rule name"));
        }
        if let Some(rule) = rule(c, raw)
            && fresh
        {
            p.rules.push(rule);
        }
    }
    p
}

/// A rule name: 1-64 characters from A-Z a-z 0-9 - _ . (it is logged and
/// shown by `explain`).
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
}

fn action(s: &str) -> Option<Action> {
    match s {
        "allow" => Some(Action::Allow),
        "deny" => Some(Action::Deny),
        _ => None,
    }
}

/// Checks a non-empty list, mapping each item; problems name the rule.
fn list<T, U>(
    c: &mut Collector<'_>,
    rule: &str,
    key: &str,
    raw: &Option<Spanned<Vec<Spanned<T>>>>,
    mut f: impl FnMut(&T) -> Result<U, String>,
) -> Result<Option<Vec<U>>, ()> {
    let Some(items) = raw else { return Ok(None) };
    if items.get_ref().is_empty() {
        c.at(items.span(), format!("rule `{rule}`: `{key}` is empty, so the rule can never match; remove the key to match everything"));
        return Err(());
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items.get_ref() {
        match f(item.get_ref()) {
            Ok(v) => out.push(v),
            Err(m) => {
                c.at(item.span(), format!("rule `{rule}`: {key}: {m}"));
                ok = false;
            }
        }
    }
    if ok { Ok(Some(out)) } else { Err(()) }
}

/// `*` in `users` or `groups`: names there are matched exactly, so
/// `users = ["*"]` (written as `hosts = ["*"]` is) matched only a user
/// named `*` and left every other user to the next rule, silently. Only
/// `*` itself: a name with a `*` in it (`ops*`) is one the users file
/// takes, and a rule must be able to name it (probe 119).
fn no_wildcard(s: &str) -> Result<(), String> {
    if s.trim() == "*" {
        return Err("`*` is not a wildcard in users or groups (names match exactly); leave out both \
                    `users` and `groups` to match every authenticated user"
            .into());
    }
    Ok(())
}

fn rule(c: &mut Collector<'_>, r: &RawRule) -> Option<Rule> {
    let name = r.name.get_ref().as_str();
    let mut ok = true;
    if !valid_name(name) {
        c.at(r.name.span(), "rule name: 1-64 characters from A-Z a-z 0-9 - _ .");
        ok = false;
    }
    // The rule's other problems name it, but not a bad name: it may be
    // anything pasted there, a password too (probe 101).
    let name = if valid_name(name) { name } else { "(bad name)" };
    let act = action(r.action.get_ref());
    if act.is_none() {
        c.at(r.action.span(), format!("rule `{name}`: action must be \"allow\" or \"deny\""));
        ok = false;
    }
    // Names no user or group can have would make the rule never match (the
    // users file's own checks: non-empty, printable, no `:` or spaces ...).
    let shown = |s: &str, m: String| format!("`{}`: {m}", crate::telemetry::sanitize_username(s));
    let users = list(c, name, "users", &r.users, |s| {
        no_wildcard(s)?;
        // Checked in NFC, as the users file checks a name: one of 40
        // characters as typed and 80 in NFC loaded here (probe 332).
        let user = crate::auth::basic::nfc(s);
        super::check_name(&user)
            .map_err(|m| super::refused_name(s, &m, crate::telemetry::sanitize_username))?;
        Ok(Arc::from(user.as_str()))
    });
    let groups = list(c, name, "groups", &r.groups, |s| {
        no_wildcard(s)?;
        let group = crate::auth::basic::nfc(s);
        super::check_group(&group).map_err(|m| {
            // Not quoted when it may be a passphrase, as in the users file.
            if super::may_hold_a_password(s) { format!("{m} {}", super::NOT_SHOWN) } else { shown(s, m) }
        })?;
        Ok(Arc::<str>::from(group))
    });
    let hosts = list(c, name, "hosts", &r.hosts, |s| host_pattern(s));
    let ports = list(c, name, "ports", &r.ports, port_range);
    let methods = list(c, name, "methods", &r.methods, |s| {
        // `*` is a token, so it loaded as the method `*`: a deny rule for
        // "every method" written so denied nothing, silently (probe 380);
        // so did `.*`, `**`, `ANY` and `ALL` (probe 385), no method any
        // registry knows.
        let wildcard = s.contains('*') || ["ANY", "ALL"].iter().any(|w| s.trim().eq_ignore_ascii_case(w));
        if wildcard {
            return Err(format!(
                "{} is not a wildcard in methods (a method matches exactly); leave out `methods` to match \
                 every method",
                quoted(s)
            ));
        }
        let up = s.to_ascii_uppercase();
        if up.is_empty() || !up.bytes().all(is_method_char) {
            return Err(format!("{} is not an HTTP method", quoted(s)));
        }
        Method::from_bytes(up.as_bytes()).map_err(|_| "not an HTTP method".to_string())
    });
    let cidrs = list(c, name, "cidrs", &r.cidrs, |s| parse_cidr(s));
    // An allow rule with no condition at all lets every request through:
    // what `[policy] default = "allow"` says, and the shape of a rule cut
    // short while its file is written (`action = "allow"`, its `users` line
    // not yet there), which a reload then took, opening the proxy to every
    // user until the rest arrived (probe 112).
    let unconditional = r.users.is_none()
        && r.groups.is_none()
        && r.hosts.is_none()
        && r.ports.is_none()
        && r.methods.is_none()
        && r.cidrs.is_none();
    if act == Some(Action::Allow) && unconditional {
        c.at(
            r.action.span(),
            format!(
                "rule `{name}` allows every request (it has no users, groups, hosts, ports, methods \
                 or cidrs); to allow everything that no rule denies, write [policy] default = \"allow\""
            ),
        );
        ok = false;
    }
    let (Ok(users), Ok(groups), Ok(hosts), Ok(ports), Ok(methods), Ok(cidrs), true, Some(action)) =
        (users, groups, hosts, ports, methods, cidrs, ok, act)
    else {
        return None;
    };
    let cidrs = cidrs.map(crate::policy::cidr_set::CidrSet::new);
    Some(Rule { name: name.into(), action, users, groups, hosts, ports, methods, cidrs })
}

/// Parses `*`, `*.example.com`, or an exact host; Unicode names become
/// punycode, case and a trailing dot are ignored.
///
/// Spaces and more than one trailing dot are refused, as in a target:
/// ` a.test.. ` was read as `a.test` (probe 138).
pub fn host_pattern(raw: &str) -> Result<HostPattern, String> {
    let s = raw;
    if s == "*" {
        return Ok(HostPattern::Any);
    }
    let (wild, rest) = match s.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, s),
    };
    // A bare IPv6 address (`::1`), which the host syntax below would read as
    // host:port.
    if !wild && let Ok(v6) = rest.parse::<std::net::Ipv6Addr>() {
        return Ok(HostPattern::Exact(canonical(v6.into()).to_string()));
    }
    if rest.contains('*') {
        return Err(format!("{}: `*` is only allowed as `*` or a leading `*.`", quoted(s)));
    }
    // A name already in ASCII is taken as a target's is (the proxy asks
    // for `xn--zz.test`, which IDNA refuses: a rule could not name it;
    // probe 101); one in Unicode becomes its ASCII form.
    // (`parse_host` drops one trailing dot.)
    let name = rest;
    let ascii = if name.is_ascii() {
        std::borrow::Cow::Borrowed(name)
    } else {
        idna::domain_to_ascii(name).map_err(|_| format!("{} is not a valid host name", quoted(s)))?.into()
    };
    let host = match parse_host(&ascii) {
        Ok(Host::Name(n)) => n,
        // As targets are matched: an IPv4-mapped address (`::ffff:a.b.c.d`)
        // is that IPv4 address; other IPv6 forms stay IPv6.
        Ok(Host::Ip(ip)) if !wild => {
            if let Some(refusal) = padded_ipv4(&ascii, Some(ip)) {
                return Err(refusal);
            }
            canonical(ip).to_string()
        }
        // (`08.0.0.1`, no address to a host, is one without its zero.)
        _ => {
            let padded = (!wild).then(|| padded_ipv4(&ascii, None)).flatten();
            return Err(padded.unwrap_or_else(|| format!("{} is not a valid host pattern", quoted(s))));
        }
    };
    Ok(if wild { HostPattern::Suffix(format!(".{host}")) } else { HostPattern::Exact(host) })
}

/// Why an IPv4 address in `hosts` written with a leading zero in a number
/// (`127.0.0.010`) is refused, as the same spelling is in a CIDR:
/// `hosts` read it as a target is read, as `inet_aton` does (127.0.0.8),
/// with no word at load, so an address pasted from a list with padded
/// numbers named another host (probe 382). `ip` is the host's reading,
/// `None` when a host reads no address there (`08` is no octal number).
fn padded_ipv4(written: &str, ip: Option<std::net::IpAddr>) -> Option<String> {
    let written = written.strip_suffix('.').unwrap_or(written);
    let numbers = written.split('.');
    let padded = |n: &str| n.len() > 1 && n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
    if ip.is_some_and(|ip| !ip.is_ipv4()) || !numbers.clone().any(padded) {
        return None;
    }
    // The decimal reading: the zeros dropped, read again (`0999.1` is none).
    let unpadded: Vec<&str> = numbers
        .map(|n| if padded(n) { n.trim_start_matches('0') } else { n })
        .map(|n| if n.is_empty() { "0" } else { n })
        .collect();
    let decimal = match parse_host(&unpadded.join(".")) {
        Ok(Host::Ip(decimal @ std::net::IpAddr::V4(_))) => Some(decimal.to_string()),
        _ => None,
    };
    let shown: String = written.chars().take(60).collect();
    super::validate::leading_zero(&shown, ip.map(|ip| ip.to_string()), decimal)
}

fn port_range(p: &RawPort) -> Result<(u16, u16), String> {
    let one = |n: i64| {
        u16::try_from(n).ok().filter(|&n| n != 0).ok_or_else(|| format!("{n} is not a port (1-65535)"))
    };
    match p {
        RawPort::Num(n) => one(*n).map(|n| (n, n)),
        RawPort::Range(s) => {
            let (lo, hi) = s
                .split_once('-')
                .ok_or_else(|| format!("{} is not a port range like \"8000-8999\"", quoted(s)))?;
            // Digits only: ` 80 - 90 ` and `+100` were read (probe 138).
            let number =
                |n: &str, what: &str| {
                    n.bytes().all(|b| b.is_ascii_digit()).then(|| n.parse::<i64>().ok()).flatten().ok_or_else(
                        || format!("{} is not a port range like \"8000-8999\" ({what})", quoted(s)),
                    )
                };
            let lo = one(number(lo, "bad start")?)?;
            let hi = one(number(hi, "bad end")?)?;
            if lo > hi {
                return Err(format!("range {lo}-{hi} is inverted, so it can never match"));
            }
            Ok((lo, hi))
        }
        RawPort::Other(v) => {
            // Named as the other config errors name a value (see
            // `toml_terms::toml_kind`): "a array" read wrong (probe 281), and
            // "a float", "a datetime", "a table" differed from them (probe 292).
            let kind = match v {
                toml::Value::Float(_) => "a floating-point number",
                toml::Value::Boolean(_) => "a boolean",
                toml::Value::Datetime(_) => "a date or time",
                toml::Value::Array(_) => "an array",
                toml::Value::Table(_) => "an inline table",
                toml::Value::String(_) => "a string",
                toml::Value::Integer(_) => "an integer",
            };
            Err(format!("{kind} is not a port: write a whole number (443) or a range such as \"8000-8999\""))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!(host_pattern("*"), Ok(HostPattern::Any));
        assert_eq!(host_pattern("*.Crates.IO."), Ok(HostPattern::Suffix(".crates.io".into())));
        assert_eq!(host_pattern("bücher.de"), Ok(HostPattern::Exact("xn--bcher-kva.de".into())));
        assert_eq!(host_pattern("10.0.0.1"), Ok(HostPattern::Exact("10.0.0.1".into())));
        // ASCII names as the proxy asks for them, also those IDNA refuses.
        assert_eq!(host_pattern("XN--ZZ.test"), Ok(HostPattern::Exact("xn--zz.test".into())));
        assert_eq!(host_pattern("My_Host.test."), Ok(HostPattern::Exact("my_host.test".into())));
        for bad in [
            "foo*.com",
            "*.",
            "**",
            "a..b",
            "*.*.com",
            "",
            " a.test",
            "a.test ",
            "a.test..",
            "*.a.test..",
            " * ",
        ] {
            assert!(host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(port_range(&RawPort::Num(443)), Ok((443, 443)));
        assert_eq!(port_range(&RawPort::Range("8000-8999".into())), Ok((8000, 8999)));
        assert!(port_range(&RawPort::Range("9000-8000".into())).is_err());
        assert!(port_range(&RawPort::Num(0)).is_err());
        assert_eq!(
            port_range(&RawPort::Other(toml::Value::Float(443.0))),
            Err("a floating-point number is not a port: write a whole number (443) or a range such as \"8000-8999\"".into())
        );
        assert_eq!(
            port_range(&RawPort::Other(toml::Value::Array(vec![toml::Value::Integer(80)]))),
            Err("an array is not a port: write a whole number (443) or a range such as \"8000-8999\"".into())
        );
        assert!(port_range(&RawPort::Num(70000)).is_err());
        assert!(port_range(&RawPort::Range("x".into())).is_err());
        for bad in [" 80 - 90 ", "80 -90", "+100-110", "100-+110", "-5-10", "80-", "0x50-0x60"] {
            assert!(port_range(&RawPort::Range(bad.into())).is_err(), "{bad}");
        }
    }
}
