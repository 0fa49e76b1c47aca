//! `authgate explain`: why may (or may not) a user reach a target.
//!
//! Pure: it takes the already-resolved addresses (or the DNS error) and
//! renders what the proxy would decide, rule by rule, then the egress check.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use http::Method;

use super::egress::{Egress, Verdict};
use super::rules::{Action, Check, Policy, Query};
use crate::auth::User;
use crate::error::ProxyError;
use crate::target::Target;

/// What `explain` found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Human-readable lines.
    pub text: String,
    /// Whether the proxy would let the request through.
    pub allowed: bool,
}

/// Explains the decision for `user` doing `method` to `target`, given the
/// target's resolved addresses (or why they could not be resolved).
pub fn explain(
    policy: &Policy,
    egress: &Egress,
    user: &User,
    method: &Method,
    target: &Target,
    addrs: Result<&[IpAddr], &ProxyError>,
) -> Report {
    let mut t = String::new();
    let groups: Vec<&str> = user.groups.iter().map(|g| &**g).collect();
    let _ = writeln!(
        t,
        "user     {} (groups: {})",
        user.name,
        if groups.is_empty() { "-".into() } else { groups.join(", ") }
    );
    if let Err(r) = user.active_at(SystemTime::now()) {
        let _ =
            writeln!(t, "         note: this user is {} and gets 407 before any rule applies", r.as_str());
    }
    let _ = writeln!(t, "request  {method} {target}");
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        let _ = writeln!(
            t,
            "         note: methods are case-sensitive (RFC 9110 §9.1): `{method}` is not `{up}`; \
             allow rules listing `{up}` do not match it, deny rules do",
            up = method.as_str().to_ascii_uppercase()
        );
    }
    let query = Query { user, method, target, addrs: addrs.ok() };
    let _ = writeln!(t, "rules    (first match wins)");
    let mut decided = None;
    // A rule that needs the addresses, which did not resolve: the proxy's
    // answer is the lookup's error, not this rule's (probe 99).
    let mut undecided = None;
    let trace = policy.trace(&query);
    // Rule numbers right-aligned to the widest, so the names stay in one
    // column past rule 99 too.
    let width = trace.len().to_string().len().max(2);
    for (i, (name, action, check)) in trace.into_iter().enumerate() {
        let verdict = match (&check, decided.is_some()) {
            (_, true) => "not reached".to_string(),
            (Check::Match, false) => {
                decided = Some((action, Some(name.clone())));
                format!("MATCH -> {}", action.as_str())
            }
            (Check::Miss(why), false) => format!("no match ({why} differs)"),
            (Check::NeedAddrs, false) => {
                decided = Some((Action::Deny, Some(name.clone())));
                undecided = Some(name.clone());
                "cannot decide: needs the destination's addresses, which did not resolve".to_string()
            }
        };
        let _ = writeln!(t, "  {:>width$}. {:<24} {:<5}  {verdict}", i + 1, name, action.as_str());
    }
    let (action, rule) = decided.unwrap_or((policy.default, None));
    // A rule with `cidrs` reached before a decision: the proxy resolves the
    // name and checks the addresses against the egress policy first, and a
    // denied address is its answer (403 `destination_ip_prohibited`).
    let egress_first = policy.decide(&Query { addrs: None, ..query }).is_none()
        && addrs.is_ok_and(|ips| {
            ips.iter().any(|ip| matches!(egress.check_at((*ip, target.port).into()), Verdict::Denied(_)))
        });
    if let Some(rule) = &undecided {
        let _ = writeln!(
            t,
            "decision none: rule {rule} needs the destination's addresses, and the proxy answers the \
             lookup's error (below)"
        );
    } else if egress_first {
        let _ = writeln!(
            t,
            "decision deny by the egress policy, checked before a rule that needs the addresses \
             (403 destination_ip_prohibited)"
        );
    } else {
        let by = rule.map_or("the default".to_string(), |r| format!("rule {r}"));
        let _ = writeln!(t, "decision {} by {by}", action.as_str());
    }

    let active = user.active_at(SystemTime::now()).is_ok();
    let mut allowed = action == Action::Allow && active;
    match addrs {
        Err(e) => {
            // The lookup's error is the proxy's answer only when nothing
            // refused the request before it (a denial is a 403 without a
            // lookup; probe 101).
            let answer = if active && (allowed || undecided.is_some()) {
                let d = crate::respond::describe(e);
                format!("; the proxy answers {} {}", d.status.as_u16(), d.code)
            } else {
                String::new()
            };
            let _ = writeln!(t, "egress   cannot check: {e}{answer}");
            allowed = false;
        }
        Ok(ips) => {
            let _ = writeln!(t, "egress   {} resolves to {} address(es)", target.host, ips.len());
            for ip in ips {
                let v = match egress.check_at((*ip, target.port).into()) {
                    Verdict::Allowed => "allowed".to_string(),
                    Verdict::AllowedByConfig(net) => format!("allowed by egress.allow_cidrs {net}"),
                    Verdict::Denied(why) => {
                        allowed = false;
                        format!("DENIED: {why}")
                    }
                };
                let _ = writeln!(t, "         {ip:<40} {v}");
            }
        }
    }
    let _ = writeln!(t, "result   {}", if allowed { "ALLOWED" } else { "DENIED" });
    Report { text: t, allowed }
}
