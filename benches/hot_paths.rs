//! Micro-benchmarks of the per-request hot paths (criterion).
//!
//! `cargo bench --bench hot_paths`. These are pure functions: what a request
//! costs in authgate's own code before any socket work.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authgate::auth::basic;
use authgate::auth::cache::VerifiedCache;
use authgate::auth::store::{StoredHash, User};
use authgate::policy::rules::{Action, HostPattern, Policy, Query, Rule};
use authgate::proxy::headers::{add_via, check_switch, strip_hop_by_hop, transfer_coding_malformed};
use authgate::target::parse_authority;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "registry.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("proxy-authorization", "Basic YmVuY2g6YmVuY2gtUGE1NXdvcmQ="),
        ("proxy-connection", "keep-alive"),
        ("connection", "keep-alive"),
        ("accept-encoding", "gzip, deflate"),
        ("authorization", "Bearer abc.def.ghi"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
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

fn bench(c: &mut Criterion) {
    let header = b"Basic YmVuY2g6YmVuY2gtUGE1NXdvcmQ=";
    c.bench_function("basic_parse", |b| b.iter(|| basic::parse(black_box(header))));

    let cache = VerifiedCache::new();
    let now = Instant::now();
    let from = std::net::Ipv4Addr::LOCALHOST.into();
    cache.insert(header, ("bench".into(), 42, from), Duration::from_secs(300), now);
    c.bench_function("verified_cache_hit", |b| {
        b.iter(|| cache.get(black_box(header), from, now, Duration::from_secs(300)))
    });

    let template = headers();
    c.bench_function("header_rewrite", |b| {
        b.iter_batched(
            || template.clone(),
            |mut h| {
                let _ = strip_hop_by_hop(&mut h, false);
                add_via(&mut h, Version::HTTP_11);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });

    // Ten rules; the request matches the last allow rule.
    let mut rules = Vec::new();
    for i in 0..8 {
        let mut r = rule(&format!("deny-{i}"), Action::Deny);
        r.ports = Some(vec![(1000 + i, 1000 + i)]);
        rules.push(r);
    }
    let mut team = rule("team-registries", Action::Allow);
    team.groups = Some(vec!["eng".into()]);
    team.hosts =
        Some(vec![HostPattern::Exact("crates.io".into()), HostPattern::Suffix(".example.com".into())]);
    team.ports = Some(vec![(443, 443)]);
    rules.push(team);
    rules.push(rule("rest", Action::Deny));
    let policy = Policy { default: Action::Deny, rules };
    let params = argon2::Params::new(8, 1, 1, None).expect("valid params");
    let hash = authgate::auth::password::hash_password("x", params).expect("hash");
    let user = User::new("bench".into(), StoredHash::Argon2(hash), vec![Arc::from("eng")], false, None);
    let target = parse_authority("registry.example.com:443").expect("target");
    c.bench_function("rule_match_10_rules", |b| {
        b.iter(|| {
            policy.decide(black_box(&Query {
                user: &user,
                method: &Method::CONNECT,
                target: &target,
                addrs: None,
            }))
        })
    });

    c.bench_function("target_parse", |b| b.iter(|| parse_authority(black_box("registry.example.com:443"))));
}

/// The verified cache's worst insert beside what always comes before an
/// insert, an argon2 verification with the default parameters: a full
/// cache of which one entry has expired is scanned whole (under the write
/// lock) to drop it, and that can happen at every insert. Slow benches:
/// `cargo bench --bench hot_paths -- slow`.
fn full_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("slow");
    group.sample_size(10);
    let from = std::net::Ipv4Addr::LOCALHOST.into();
    let now = Instant::now();
    let later = now + Duration::from_secs(1);
    let ttl = Duration::from_secs(300);
    // 65,536 entries (the cap), one of them expired by `later`.
    let full = || {
        let cache = VerifiedCache::new();
        cache.insert(b"Basic expired", ("bench".into(), 42, from), Duration::from_millis(1), now);
        let mut header = Vec::with_capacity(32);
        while cache.len() < 65_536 {
            header.clear();
            header.extend_from_slice(format!("Basic {}", cache.len()).as_bytes());
            // A user each: one user has a few entries at most.
            cache.insert(&header, (format!("u{}", cache.len()).into(), 42, from), ttl, now);
        }
        cache
    };
    group.bench_function("verified_cache_insert_full_one_expired", |b| {
        b.iter_batched_ref(
            full,
            |cache| cache.insert(black_box(b"Basic new"), ("bench".into(), 42, from), ttl, later),
            criterion::BatchSize::PerIteration,
        )
    });
    let stored =
        authgate::auth::password::hash_password("bench-Pa55word", authgate::auth::password::default_params())
            .expect("hash");
    group.bench_function("argon2_verify_default_params", |b| {
        b.iter(|| authgate::auth::password::verify_argon2(&stored, black_box("bench-Pa55word")))
    });
    group.finish();
}

/// Rule sets of a company's size (probe 218): 1,000 allow rules of 20
/// groups each before the one that matches, for a user in 300 groups; and
/// 5,000 deny rules of 10 host patterns before the last, for a target
/// written as a NAT64 address (a deny rule also matches the IPv4 host it
/// names). `cargo bench --bench hot_paths -- scale`.
fn scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale");
    let params = argon2::Params::new(8, 1, 1, None).expect("valid params");
    let hash = authgate::auth::password::hash_password("x", params).expect("hash");
    let mut groups: Vec<Arc<str>> = (0..299).map(|i| Arc::from(format!("ad-group-{i:04}"))).collect();
    groups.push("staff".into());
    let user = User::new("bench".into(), StoredHash::Argon2(hash), groups, false, None);
    let mut rules: Vec<Rule> = (0..1000)
        .map(|i| {
            let mut r = rule(&format!("r{i}"), Action::Allow);
            r.groups = Some((0..20).map(|j| Arc::from(format!("rg{i}-{j}"))).collect());
            r
        })
        .collect();
    let mut last = rule("staff", Action::Allow);
    last.groups = Some(vec!["staff".into()]);
    rules.push(last);
    let policy = Policy { default: Action::Deny, rules };
    let target = parse_authority("registry.example.com:443").expect("target");
    let query = Query { user: &user, method: &Method::CONNECT, target: &target, addrs: None };
    group.bench_function("rule_match_1000_rules_of_20_groups_user_in_300", |b| {
        b.iter(|| policy.decide(black_box(&query)))
    });
    let mut rules: Vec<Rule> = (0..5000)
        .map(|i| {
            let mut r = rule(&format!("d{i}"), Action::Deny);
            r.hosts = Some((0..10).map(|j| HostPattern::Exact(format!("h{i}-{j}.example"))).collect());
            r
        })
        .collect();
    rules.push(rule("rest", Action::Deny));
    let policy = Policy { default: Action::Deny, rules };
    let target = parse_authority("[64:ff9b::7f00:1]:443").expect("target");
    let query = Query { user: &user, method: &Method::CONNECT, target: &target, addrs: None };
    group.bench_function("rule_match_5000_deny_rules_of_10_hosts_nat64_target", |b| {
        b.iter(|| policy.decide(black_box(&query)))
    });
    group.finish();
}

/// Heads an attacker may send within the default 64 KiB head (and the
/// 256 KiB an origin's response head may have), on the functions that read
/// them (probe 221): a 101 whose `Upgrade` names one of 7,000 offers 27,000
/// times; a `Connection` of 5,000 tokens beside 95 fields; a
/// `Transfer-Encoding` of 10,000 codings. `cargo bench --bench hot_paths --
/// hostile`.
fn hostile(c: &mut Criterion) {
    let mut group = c.benchmark_group("hostile");
    // Before the fix a check_switch took 3.3 s.
    group.sample_size(10);
    let offers: Vec<String> = (0..7000).map(|i| format!("p{i:06}")).collect();
    let offered = HeaderValue::from_str(&offers.join(", ")).expect("value");
    let mut response = HeaderMap::new();
    response.insert("upgrade", HeaderValue::from_str(&vec!["p006999"; 27_000].join(", ")).expect("value"));
    group.bench_function("check_switch_7000_offers_27000_answers", |b| {
        b.iter(|| check_switch(black_box(&offered), black_box(&response)))
    });
    let tokens: Vec<String> = (0..5000).map(|i| format!("x-t-{i:05}")).collect();
    let mut many = HeaderMap::new();
    many.insert("connection", HeaderValue::from_str(&tokens.join(",")).expect("value"));
    for i in 0..95 {
        many.insert(
            HeaderName::from_bytes(format!("x-f-{i:05}").as_bytes()).expect("name"),
            HeaderValue::from_static("1"),
        );
    }
    strip_bench(&mut group, "strip_hop_by_hop_5000_connection_tokens_95_fields", &many);
    let mut coded = HeaderMap::new();
    coded.insert(
        "transfer-encoding",
        HeaderValue::from_str(&("gzip, ".repeat(10_000) + "chunked")).expect("value"),
    );
    group.bench_function("transfer_coding_malformed_10000_codings", |b| {
        b.iter(|| transfer_coding_malformed(black_box(&coded)))
    });
    strip_bench(&mut group, "strip_hop_by_hop_10000_codings", &coded);
    group.finish();
}

/// Times `strip_hop_by_hop` of a copy of `template` (the copy untimed).
fn strip_bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    template: &HeaderMap,
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            || template.clone(),
            |mut h| {
                let _ = strip_hop_by_hop(&mut h, false);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench, full_cache, scale, hostile);
criterion_main!(benches);
