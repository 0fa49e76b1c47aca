//! Per-request flow: classify → authenticate → authorize → dispatch → log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::State;
use super::headers::{close_hidden_from_hyper, via_names_us};
use super::sessions::Session;
use super::{forward, max_forwards, tunnel};
use crate::auth::{Outcome, Refusal, User};
use crate::body::ProxyBody;
use crate::config::Snapshot;
use crate::error::{Fault, ProxyError};
use crate::policy::{Action, Decision, Query};
use crate::respond::{self, prefers_html};
use crate::server::guard::Phase;
use crate::server::limits::Permit;
use crate::target::{
    Target, authority_port, host_fields_valid, parse_authority, parse_host, split_port, valid_host_field,
    without_userinfo,
};
use crate::telemetry::metrics::{AuthFailure, Outcome as Counted};
use crate::telemetry::{AccessRecord, AuditEvent, AuditOnDrop};

/// The rule name logged when the policy's default decided (one shared
/// allocation instead of one per request).
static DEFAULT_RULE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("default"));

/// Largest body of a request refused by authentication (407, 429, 503) that
/// is read and discarded to keep the connection usable; larger ones close
/// the connection instead.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// Why an HTTP/1.0 CONNECT with an `Upgrade` field is refused.
const CONNECT_NO_UPGRADE: &str = "An HTTP/1.0 CONNECT with an Upgrade field cannot be tunnelled here: send it without Upgrade, or as HTTP/1.1";

/// What the connection knows about its client.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address (from the PROXY header when enabled).
    pub addr: SocketAddr,
    /// This connection's session: bound to the user who authenticates on it,
    /// closed when that user is revoked.
    pub session: Arc<Session>,
    /// Where the connection is in its request cycle (for its timers).
    pub phase: Arc<Phase>,
    /// Whether the client reached us over TLS.
    pub tls: bool,
    /// The connection's slot in the connection limits; a tunnel keeps it.
    pub slot: Arc<Permit>,
    /// `max_header_bytes` as the connection was accepted under (the socket
    /// wrapper counts with it too): a reload changes it for connections
    /// opened afterwards, as it does the other limits. Read from the live
    /// configuration, a lowered limit reached the connections already
    /// open, and a raised one did not.
    pub max_head: usize,
}

/// What a request asks for.
enum Kind {
    Connect(Target),
    /// An absolute-form request; `true` for `https://`.
    Forward(Target, bool),
}

/// A successful dispatch: a response, maybe with a tunnel to run after it.
pub enum Reply {
    /// A plain response; its body carries the access record.
    Response(Response<ProxyBody>),
    /// A response that hands the connection over (CONNECT 200, 101); the job
    /// runs after it and logs when it ends.
    Tunnel(Response<ProxyBody>, tunnel::Job),
}

/// Handles one request. Never fails: errors become authgate's own responses.
pub async fn handle(state: Arc<State>, client: Client, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let snap = state.snapshot.load_full();
    let request_id = state.next_request_id();
    // Read only if authgate answers with an error page itself.
    let accept = req.headers().get(header::ACCEPT).cloned();
    let connect = req.method() == Method::CONNECT;
    // An upgrade asked for (hyper marks it: a CONNECT, an `Upgrade` field
    // in 1.1), held so that a refused one is closed properly (see
    // `ClientUpgrade`).
    let held = req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some()
        .then(|| tunnel::ClientUpgrade::hold(&mut req));
    let upgrade = held.is_some();
    // Past authentication authgate reads no body of a request it answers
    // itself (a refusal by a rule, a DNS or connect failure ...; the
    // authentication step reads small bodies itself, see
    // `drain_small_body`). hyper then reads what is already buffered of the
    // body and closes the connection if that is not all of it: the answer
    // must say so. Without it a large unread body was read as the next
    // head and answered with a 431 for a request never sent, and a small
    // body sent just after its head (or behind `Expect: 100-continue`) met
    // a closed connection after an answer that promised keep-alive.
    let has_body = !http_body::Body::is_end_stream(req.body());
    // RFC 9112 §9.3: "A proxy server MUST NOT maintain a persistent
    // connection with an HTTP/1.0 client" (an HTTP/1.0 proxy in front
    // that passes `Connection: keep-alive` on, not knowing it, waits for
    // the close as the end of the answer). Each answer to one closes
    // (probe 213: two requests were served on one connection).
    let http10 = req.version() == Version::HTTP_10;
    let close_asked = close_hidden_from_hyper(req.headers());
    let mut rec = AccessRecord::new(request_id.clone(), client.addr, req.method().clone(), log_target(&req));
    rec.metrics = Some(state.metrics.clone());
    rec.log = snap.log.access;

    // Boxed: hyper keeps a connection's request future in an allocation the
    // size of this one for the connection's whole life, idle or not; with
    // `process` inline that was 3.7 KiB per keep-alive connection, now it is
    // a few hundred bytes (the box lives only while a request runs).
    let abandoned = LogIfAbandoned { rec: &mut rec, state: &state, client: &client };
    let result = Box::pin(process(&state, &snap, &client, req, abandoned.rec)).await;
    abandoned.defuse();
    // Taken by a tunnel, or refused (see `ClientUpgrade`).
    if let Some(held) = held {
        held.close_when_handed(client.slot.clone());
    }
    let user = rec.user.clone();
    let count = |outcome| state.metrics.request(outcome, user.as_deref());
    match result {
        Ok(Reply::Response(resp)) => {
            count(if rec.outcome == ANSWERED_HERE { Counted::AnsweredHere } else { Counted::Forwarded });
            // The origin's own `Connection` was removed with the other
            // hop-by-hop fields: this one is forward's `close`.
            let mut resp = resp;
            // A `Max-Forwards: 0` answer reads no body either: as for the
            // errors below (it promised keep-alive, then the connection
            // closed; probe 91).
            let body_left = has_body && rec.outcome == ANSWERED_HERE;
            // Nor does it take an upgrade asked for: bytes the client sent
            // ahead for the new protocol would be read as its next request,
            // as after authgate's refusals below (probe 350).
            let upgrade_refused = upgrade && rec.outcome == ANSWERED_HERE;
            if http10
                || close_asked
                || body_left
                || upgrade_refused
                || resp.headers().contains_key(header::CONNECTION)
            {
                close_after(&mut resp, http10, &client.phase);
            }
            let resp = resp.map(|b| b.on_done(client.phase.clone()));
            rec.status = resp.status().as_u16();
            if rec.outcome.is_empty() {
                rec.outcome = "forwarded";
            }
            resp.map(|b| b.with_log(rec))
        }
        Ok(Reply::Tunnel(resp, job)) => {
            // Counted once the answer is out (see `tunnel::spawn`).
            let counted = if connect { Counted::Tunnel } else { Counted::Forwarded };
            rec.status = resp.status().as_u16();
            tunnel::spawn(&state, job, rec, &client, counted);
            resp
        }
        // A client that reset its connection mid-body is gone: no answer
        // can reach it, and none is logged as sent (it was a 400, probe 107).
        Err((err @ ProxyError::BadBody { reset: true }, _)) => {
            count(Counted::Abandoned);
            rec.status = 0;
            rec.outcome = "client_gone";
            rec.finish();
            let ctx = respond::Context { request_id: &request_id, realm: &snap.server.realm, html: false };
            let mut resp = respond::error_response(&err, &ctx);
            close_after(&mut resp, http10, &client.phase);
            resp
        }
        Err((err, close)) => {
            let d = respond::describe(&err);
            count(outcome_of(&err));
            if err.fault() == Fault::Upstream {
                state.metrics.upstream_error(d.proxy_status);
            }
            rec.status = d.status.as_u16();
            rec.outcome = d.code;
            rec.detail = respond::log_detail(&err);
            let html = prefers_html(accept.as_ref());
            let ctx = respond::Context { request_id: &request_id, realm: &snap.server.realm, html };
            let mut resp = respond::error_response(&err, &ctx).map(|b| b.on_done(client.phase.clone()));
            // After a refused CONNECT, bytes the client sent ahead for the
            // tunnel would be read as its next request: close instead. A
            // 407 too: it kept the connection for the retry with
            // credentials, and a request sent ahead for the tunnel, with
            // credentials of its own, went out to its own origin (probe
            // 132). Clients retry a CONNECT on a new connection. The same
            // for an upgrade authgate refuses: a client may send the new
            // protocol's bytes once its request is sent (RFC 9110 §7.8),
            // and a request sent ahead was run after the 407 (probe 165).
            let refused_tunnel = connect || upgrade;
            let authenticating = matches!(
                err,
                ProxyError::ProxyAuthRequired
                    | ProxyError::Throttled { .. }
                    | ProxyError::AuthOverloaded { .. }
            );
            let body_left = has_body && !authenticating;
            if http10 || close || close_asked || err.closes_connection() || refused_tunnel || body_left {
                close_after(&mut resp, http10, &client.phase);
            }
            resp.map(|b| b.with_log(rec))
        }
    }
}

/// Ends the connection after `resp`: says `Connection: close`, and has the
/// close linger (see [`Phase::linger`]). To an HTTP/1.0 client the answer
/// is marked 1.0: hyper answers such a client in 1.0 anyway, and to one
/// marked 1.1 it appended `keep-alive` to our `close` when the client had
/// asked for keep-alive (`Connection: close, keep-alive`).
fn close_after<B>(resp: &mut Response<B>, http10: bool, phase: &Phase) {
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    if http10 {
        *resp.version_mut() = Version::HTTP_10;
    }
    phase.linger();
}

/// Logs a request whose future is dropped before it has an answer: hyper
/// drops it when the client closes or resets its connection (or half-closes
/// it, see `server::serve_http`), and authgate closes connections when their user
/// is revoked or shutdown runs out of time. Without this, such a request
/// would leave no access event at all.
struct LogIfAbandoned<'a> {
    rec: &'a mut AccessRecord,
    state: &'a State,
    client: &'a Client,
}

impl LogIfAbandoned<'_> {
    /// The request has its answer; its record goes on with it.
    fn defuse(self) {
        std::mem::forget(self);
    }
}

impl Drop for LogIfAbandoned<'_> {
    fn drop(&mut self) {
        let rec = &mut *self.rec;
        // No answer went out.
        rec.status = 0;
        rec.outcome = if std::thread::panicking() {
            "internal_error"
        } else if self.client.session.token.is_cancelled() {
            "user_revoked"
        } else if self.state.kill.is_cancelled() {
            "shutdown"
        } else {
            "client_gone"
        };
        self.state.metrics.request(Counted::Abandoned, rec.user.as_deref());
        rec.finish();
    }
}

/// The metrics outcome of an error answered by authgate.
fn outcome_of(err: &ProxyError) -> Counted {
    match err {
        ProxyError::ProxyAuthRequired => Counted::ProxyAuthRequired,
        ProxyError::DeniedByRule { .. } => Counted::Denied,
        ProxyError::DestinationIpProhibited { .. } => Counted::IpProhibited,
        ProxyError::Throttled { .. } => Counted::Throttled,
        ProxyError::AuthOverloaded { .. } | ProxyError::TooManyConnections => Counted::Overloaded,
        ProxyError::Internal => Counted::InternalError,
        e => match e.fault() {
            Fault::Upstream => Counted::UpstreamError,
            _ => Counted::BadRequest,
        },
    }
}

/// The error, and whether the connection must close after it.
type Failure = (ProxyError, bool);

async fn process(
    state: &State,
    snap: &Arc<Snapshot>,
    client: &Client,
    mut req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Reply, Failure> {
    if head_len(&req) > client.max_head {
        rec.set_target(guarded_target(&req));
        return Err((ProxyError::HeadTooLarge, true));
    }
    // RFC 9112 §3.2 and §6.1 first: a head without a valid `Host`, or with
    // bad framing, is a 400 and the connection's end, loop or not (a `Via`
    // made it a 508 on an open connection; probe 158).
    if let Err(e) = well_formed(&req) {
        rec.set_target(guarded_target(&req));
        return Err((e, false));
    }
    // Before the target is read: a request authgate forwarded to its own
    // listener comes back in origin-form, which is no proxy request, and
    // the client is to hear of the loop, not of how to set HTTP_PROXY.
    if via_names_us(req.headers()) {
        rec.set_target(guarded_target(&req));
        return Err((ProxyError::LoopDetected, false));
    }
    let kind = classify(&req, client.tls).map_err(|e| {
        rec.set_target(guarded_target(&req));
        (e, false)
    })?;

    let (user, fresh) = match authenticate(state, snap, client, &req, rec).await {
        Ok(found) => found,
        // A refusal the client answers with a retry on this connection,
        // unless shutdown has begun: the tarpit's 429 goes out then, and
        // hyper, woken by the same signal, could write it before it knew
        // to close the connection, without `Connection: close`.
        Err(err) => {
            let within = snap.limits.header_read_timeout;
            let close = !drain_small_body(state, &client.phase, within, req) || state.stopping.is_cancelled();
            return Err((err, close));
        }
    };
    // Checked against a snapshot that a reload replaced meanwhile: the rest
    // goes by the new one too.
    let snap = fresh.as_ref().unwrap_or(snap);
    rec.user = Some(user.name.clone());

    let target = match &kind {
        Kind::Connect(t) | Kind::Forward(t, _) => t,
    };
    let method = req.method().clone();
    let addrs = authorize(state, snap, &user, &method, target, rec).await.map_err(|e| (e, false))?;

    let reply = match kind {
        Kind::Connect(target) => {
            rec.outcome = "tunnel";
            let addrs = match addrs {
                Some(a) => a,
                None => resolve(state, snap, &target).await.map_err(|e| (e, false))?,
            };
            tunnel::open(snap, addrs, req, rec).await
        }
        Kind::Forward(target, https) => match max_forwards::answer_here(&mut req) {
            Some(resp) => {
                rec.outcome = ANSWERED_HERE;
                Ok(Reply::Response(resp))
            }
            None => {
                let dest = forward::Destination { target, https, checked: addrs };
                forward::forward(state, snap, dest, &user, req, rec).await
            }
        },
    };
    match reply {
        Ok(Reply::Tunnel(resp, mut job)) => {
            job.user = Some(user);
            Ok(Reply::Tunnel(resp, job))
        }
        other => other.map_err(|e| (e, false)),
    }
}

async fn resolve(state: &State, snap: &Snapshot, target: &Target) -> Result<Vec<SocketAddr>, ProxyError> {
    state.connector.resolve_checked(target, &snap.egress, snap.limits.dns_timeout).await
}

/// Applies the access rules. Resolves the target (and runs the egress check)
/// only when a rule needs its addresses; returns those checked addresses so
/// that the connection goes to exactly them.
async fn authorize(
    state: &State,
    snap: &Snapshot,
    user: &User,
    method: &Method,
    target: &Target,
    rec: &mut AccessRecord,
) -> Result<Option<Vec<SocketAddr>>, ProxyError> {
    let mut query = Query { user, method, target, addrs: None };
    let mut checked = None;
    let decision = match snap.policy.decide(&query) {
        Some(d) => d,
        None => {
            let addrs = resolve(state, snap, target).await?;
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            query.addrs = Some(&ips);
            let d = snap.policy.decide(&query).unwrap_or(Decision { action: Action::Deny, rule: None });
            checked = Some(addrs);
            d
        }
    };
    rec.rule = Some(decision.rule.clone().unwrap_or_else(|| DEFAULT_RULE.clone()));
    match decision.action {
        Action::Allow => Ok(checked),
        Action::Deny => Err(ProxyError::DeniedByRule { rule: decision.label() }),
    }
}

/// The access log's outcome (and the metrics') of a `Max-Forwards: 0`
/// request answered by authgate itself.
const ANSWERED_HERE: &str = "answered_here";

/// The tarpit of a login refused by the throttle, its password unchecked:
/// it waits the live `delay` before its 429, which costs a timer, not CPU,
/// and slows a flood to one attempt per connection per delay. Returns how
/// long it held the login (the 429's `Retry-After` counts from the
/// answer), or, if `release`, `None` when a reload turns throttling off
/// meanwhile: the login is then checked after all, as the logins waiting
/// in line for an attempt are (before, it got its 429 when `delay` was
/// over, and only its retry went through). Shutdown does not wait for it.
async fn tarpit(
    state: &State,
    client: &Client,
    rec: &AccessRecord,
    username: Option<&str>,
    release: bool,
) -> Option<Duration> {
    // Audited as the 429 goes out, or as the client leaves during the
    // tarpit (the request dropped): before, one that hung up left no
    // audit line, and a flood that did so none at all.
    let audit = AuditOnDrop(AuditEvent {
        request_id: &rec.request_id,
        client: client.addr,
        username,
        reason: "throttled",
        target: &rec.target,
    });
    let held = tokio::time::Instant::now();
    // (The live `delay`: the attempt may have waited across a reload.)
    let delay = state.snapshot.load().auth.throttle.delay;
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = state.stopping.cancelled() => {}
        _ = state.auth.throttle_turned_off(), if release => {
            audit.cancel();
            return None;
        }
    }
    Some(held.elapsed())
}

/// How many times at most a login is verified while reloads keep changing
/// its user meanwhile; then it is answered as overloaded.
const VERIFICATIONS: usize = 3;

/// Authenticates the request. A reload may land while the password is
/// verified (argon2, and the wait for it, take seconds): the user must
/// then be the same in the live users, or the login is verified again
/// against them (a user removed meanwhile got one more request through,
/// and a tunnel). Either way the request goes on with the live snapshot.
/// A refusal goes by the live users too: when the reload changed the
/// user's entry (hash, `disabled`, `expires`) or added the user, the
/// login is checked again against it (a right password sent as a password
/// reset, an `enable` or an `add` landed got a 407; probe 264).
/// A refusal leaves the request's body to the caller ([`drain_small_body`]).
async fn authenticate(
    state: &State,
    snap: &Arc<Snapshot>,
    client: &Client,
    req: &Request<Incoming>,
    rec: &AccessRecord,
) -> Result<(Arc<User>, Option<Arc<Snapshot>>), ProxyError> {
    let mut values = req.headers().get_all(header::PROXY_AUTHORIZATION).iter();
    let header = match (values.next(), values.next()) {
        (first, None) => first.map(|v| v.as_bytes()),
        // Two credentials: which one counts is ambiguous (a hop in front may
        // read the other), so neither does; the request is refused as with
        // malformed credentials.
        (Some(_), Some(_)) => Some(&b""[..]),
        (None, Some(_)) => None,
    };
    let mut fresh: Option<Arc<Snapshot>> = None;
    let mut verifications = 0;
    let mut released = false;
    let outcome = loop {
        let snap = fresh.as_ref().unwrap_or(snap);
        let auth_req = crate::auth::Request {
            users: &snap.users,
            header,
            ttl: snap.auth.cache_ttl,
            client: client.addr.ip(),
            throttle: &snap.auth.throttle,
            audit: crate::auth::Audit {
                request_id: &rec.request_id,
                client: client.addr,
                target: &rec.target,
            },
        };
        let mut outcome = state.auth.authenticate(auth_req).await;
        verifications += 1;
        if let Outcome::Throttled { retry_after, username } = &mut outcome {
            // Boxed, as the other cold paths: inline, its timers would sit
            // in every request's future.
            match Box::pin(tarpit(state, client, rec, username.as_deref(), !released)).await {
                Some(held) => *retry_after = retry_after.saturating_sub(held),
                // Let through: checked again under the live settings. (Once:
                // a reload that turns throttling on again in between gets
                // the login its 429 after the delay, not a loop.)
                None => {
                    released = true;
                    fresh = Some(arc_swap::Guard::into_inner(state.snapshot.load()));
                    continue;
                }
            }
        }
        if let Outcome::Refused { reason, username: Some(name) } = &outcome
            && matches!(
                reason,
                Refusal::UnknownUser | Refusal::BadPassword | Refusal::Disabled | Refusal::Expired
            )
            && verifications < VERIFICATIONS
        {
            let live = state.snapshot.load();
            if !Arc::ptr_eq(&live.users, &snap.users) {
                let entry = |u: &Arc<User>| (u.credential, u.disabled, u.expires);
                let now = live.users.get(name).map(entry);
                if now.is_some() && now != snap.users.get(name).map(entry) {
                    fresh = Some(arc_swap::Guard::into_inner(live));
                    continue;
                }
            }
        }
        if let Outcome::Ok(user) = &mut outcome {
            let live = state.snapshot.load();
            if !Arc::ptr_eq(&live.users, &snap.users) {
                // (A reload that left this user's password as it was, as
                // most do, costs nothing more: the user as reloaded, new
                // groups and all, goes on.)
                let same = live
                    .users
                    .get(&user.name)
                    .filter(|u| {
                        u.credential == user.credential && u.active_at(std::time::SystemTime::now()).is_ok()
                    })
                    .cloned();
                fresh = Some(arc_swap::Guard::into_inner(live));
                match same {
                    Some(u) => *user = u,
                    None if verifications < VERIFICATIONS => continue,
                    None => break Outcome::Overloaded,
                }
            }
            client.session.bind(user);
        }
        break outcome;
    };
    match outcome {
        Outcome::Ok(user) => Ok((user, fresh.clone())),
        Outcome::Throttled { retry_after, .. } => Err(ProxyError::Throttled { retry_after }),
        Outcome::Overloaded => Err(ProxyError::AuthOverloaded { retry_after: respond::OVERLOAD_RETRY }),
        Outcome::Refused { reason, username } => {
            state.metrics.auth_failure(match reason {
                Refusal::Missing => AuthFailure::Missing,
                Refusal::Malformed => AuthFailure::Malformed,
                _ => AuthFailure::Invalid,
            });
            // No credentials at all is the first step of every challenge
            // (browsers ask without them first), not a failed login: its
            // access line and the `missing` count record it. An audit line
            // as well doubled what a client without credentials could make
            // the log grow by (about 470 bytes per 48-byte request).
            if reason != Refusal::Missing {
                AuditEvent {
                    request_id: &rec.request_id,
                    client: client.addr,
                    username: username.as_deref(),
                    reason: reason.as_str(),
                    target: &rec.target,
                }
                .emit();
            }
            Err(ProxyError::ProxyAuthRequired)
        }
    }
}

/// Reads and discards a small request body refused by the authentication
/// step (407, 429, 503), so that the connection stays in sync for the
/// client's retry with credentials. Returns whether the connection may be
/// kept; a large, unknown-length or `Expect: 100-continue` body is not read
/// (the client may not even send it), and the connection is closed cleanly
/// after the answer instead.
///
/// The body is read in a task of its own while the answer goes out at once:
/// hyper writes the answer and reads the body side by side, and reads the
/// next request once the body has ended. (Read before answering, a body
/// that came slowly held the 407 back, 5 s for one that never came.) A body
/// not read in full `within` (`header_read_timeout`: the client trickles
/// it, or never sends it) is dropped there, and hyper closes the connection
/// after the answer; so does shutdown. Meanwhile the request counts as
/// being served ([`Phase::draining`]).
fn drain_small_body(state: &State, phase: &Arc<Phase>, within: Duration, req: Request<Incoming>) -> bool {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return true;
    }
    if req.headers().contains_key(header::EXPECT) {
        return false;
    }
    match req.body().size_hint().exact() {
        Some(n) if n <= DRAIN_LIMIT => {}
        _ => return false,
    }
    let mut body = req.into_body();
    let stopping = state.stopping.clone();
    // Until the body is read, its bytes are this request's, not the next
    // one's head.
    let draining = phase.draining();
    let phase = phase.clone();
    tokio::spawn(async move {
        // Until the length is reached: hyper ends the body's stream only
        // when it next reads the socket, which may be never (a client that
        // sends its body, then waits for the user to type a password).
        let drain = async {
            while !body.is_end_stream() {
                if !matches!(body.frame().await, Some(Ok(_))) {
                    break;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(within, drain) => {}
            _ = stopping.cancelled() => {}
        }
        phase.drained(draining);
    });
    true
}

/// The size of the request's head as sent, or a little less: two bytes per
/// field for its colon and line end, none for the other line ends, and one
/// less for the target (hyper writes an empty path as `/`).
///
/// The socket wrapper counts a head's bytes as they are read
/// (`server::guard`), but not a head pipelined behind a request: hyper may
/// have read it along with what came before, and it passed an 8 KiB limit
/// by 60 KB. Measured here after parsing, it gets the same 431; only what
/// hyper drops while parsing (empty lines before the request line,
/// whitespace around values) is not seen. A few additions per field.
fn head_len<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target.saturating_sub(1) + " HTTP/1.1".len();
    req.headers().iter().fold(line, |n, (name, value)| n + name.as_str().len() + 2 + value.len())
}

/// Whether the head has valid `Host` fields (the Host sent on is made from
/// the target either way) and a `Transfer-Encoding` that frames its body.
fn well_formed(req: &Request<Incoming>) -> Result<(), ProxyError> {
    let valid = host_fields_valid(req.headers(), req.version(), req.method() == Method::CONNECT);
    // Said as for a target with one: curl copies the target's zone id
    // into `Host`, and the user saw only "could not be parsed" (probe 189).
    if !valid && crate::target::host_field_has_zone(req.headers()) {
        return Err(ProxyError::BadTarget { detail: crate::target::ZONE_ID });
    }
    if !valid || super::headers::transfer_coding_malformed(req.headers()) {
        return Err(ProxyError::MalformedRequest { why: None });
    }
    Ok(())
}

/// What the request asks for. Absolute-form `https://` is forwarded over TLS
/// only when it arrived over TLS: on a plain listener the client's https
/// payload would cross the network in clear, so it is told to use CONNECT.
fn classify(req: &Request<Incoming>, over_tls: bool) -> Result<Kind, ProxyError> {
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        // `Content-Length: 0` is harmless and some clients send it.
        if !http_body::Body::is_end_stream(req.body()) {
            return Err(ProxyError::ConnectWithBody);
        }
        // hyper gives no connection to tunnel over for an HTTP/1.0 CONNECT
        // with an `Upgrade` field (it takes the field for an upgrade, which
        // HTTP/1.0 has not): the 200 went out, the tunnel closed at once,
        // and the line blamed the client (probe 153). Refused before the
        // dial. (RFC 9110 §7.8 has the field ignored; hyper cannot.)
        // (`handle` has moved it into a `ClientUpgrade`.)
        let extensions = req.extensions();
        if extensions.get::<tunnel::ClientUpgrade>().is_none()
            && extensions.get::<hyper::upgrade::OnUpgrade>().is_none()
        {
            return Err(ProxyError::MalformedRequest { why: Some(CONNECT_NO_UPGRADE) });
        }
        // RFC 9112 §3.2.3: CONNECT takes the authority form, host:port and
        // nothing else. hyper also parses `CONNECT http://host:port/`, whose
        // authority would open a tunnel a stricter hop reads differently.
        if uri.scheme().is_some() || uri.path_and_query().is_some() {
            return Err(ProxyError::BadTarget { detail: "CONNECT takes host:port only" });
        }
        let authority = uri.authority().ok_or(ProxyError::BadTarget { detail: "CONNECT needs host:port" })?;
        let target =
            parse_authority(authority.as_str()).map_err(|e| ProxyError::BadTarget { detail: e.0 })?;
        return Ok(Kind::Connect(target));
    }
    match uri.scheme_str() {
        None => Err(ProxyError::OriginForm),
        Some(s) if s.eq_ignore_ascii_case("http") || (over_tls && s.eq_ignore_ascii_case("https")) => {
            let https = s.eq_ignore_ascii_case("https");
            // RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated
            // as an error (`http://www.example.com@evil.example/` misleads
            // the reader; a client sends credentials in header fields).
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(ProxyError::BadTarget { detail: "user:password@ in the target" });
            }
            let host = uri.host().ok_or(ProxyError::BadTarget { detail: "no host" })?;
            let host = parse_host(host).map_err(|e| ProxyError::BadTarget { detail: e.0 })?;
            let authority = uri.authority().map_or("", |a| a.as_str());
            let port = authority_port(authority, if https { 443 } else { 80 })
                .map_err(|e| ProxyError::BadTarget { detail: e.0 })?;
            // A name no TLS connection can be made to is a bad target before
            // the rules run: one with `cidrs` looked it up first (probe 149).
            if https {
                super::upstream_tls::server_name(&host)?;
            }
            Ok(Kind::Forward(Target { host, port }, https))
        }
        Some(s) => Err(ProxyError::UnsupportedScheme {
            scheme: s.chars().take(16).collect::<String>().to_ascii_lowercase(),
        }),
    }
}

/// The target as logged: `host:port` for CONNECT, scheme://authority/path
/// otherwise, without userinfo or query. For a request whose target is
/// refused, [`guarded_target`] replaces it.
fn log_target(req: &Request<Incoming>) -> String {
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        return uri.authority().map(|a| without_userinfo(a.as_str()).to_owned()).unwrap_or_default();
    }
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(auth)) => [scheme, "://", without_userinfo(auth.as_str()), uri.path()].concat(),
        _ => uri.path().to_owned(),
    }
}

/// The target as logged for a request refused before it was classified
/// (a bad target, a bad `Host`, a head too large, a loop): such a target may hold
/// a password cut out of a malformed URL. In `http://alice:pa/ss@host/`
/// the unencoded `/` (or `?`, `#`) ends the authority before the `@`, at
/// `alice:pa`, and the path holds the rest. So:
///
/// - with userinfo: what follows the last `@`, in the path too, since a
///   password may hold `@` and `/` unencoded (`alice:pa@ss/w@host/` read
///   as host `ss`, and `http://ss/w@host/` was logged); but only when the
///   host it begins with is the one the `Host` field names, else `…`: a
///   password may hold `@` then `?` or `#`, and what follows the last `@`
///   in the authority and path is then a piece of it (`alice:p@ssw0rd?x@
///   host/` logged `http://ssw0rd/`, probe 128); the same for an
///   origin-form target that begins with `//`;
/// - an authority that is not a host and a port by their syntax (RFC 9110
///   §7.2): `…`, and one whose port is outside 1-65535: `host:…`, both
///   without the path (probes 82, 84, 85).
///
/// A password whose `/` follows only digits or nothing (`alice:2024/x@host`)
/// makes a valid URL, to host `alice`: that request is forwarded, and
/// logged, as the URL it is. (Only refused targets come here: the checks
/// are off the path of a valid request.)
fn guarded_target(req: &Request<Incoming>) -> String {
    let uri = req.uri();
    // The authority form: CONNECT's, and another method's (`GET host:port`,
    // refused as no proxy request), which was logged as nothing (probe 108).
    if let Some(authority) = uri.authority()
        && (req.method() == Method::CONNECT || uri.scheme().is_none())
    {
        return shown(without_userinfo(authority.as_str())).0.into_owned();
    }
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(auth)) if auth.as_str().contains('@') => {
            after_userinfo(&[scheme, "://"].concat(), &[auth.as_str(), uri.path()].concat(), req.headers())
        }
        (Some(scheme), Some(auth)) => match shown(auth.as_str()) {
            (authority, true) => [scheme, "://", &authority, uri.path()].concat(),
            (authority, false) => [scheme, "://", &authority].concat(),
        },
        // `CONNECT /`, `CONNECT *` and the origin form: the path, which
        // `//user:password@host/` makes an authority in all but name, and
        // `/user:password@host/` (one `/` of `http://` dropped) nearly so:
        // it was logged whole (probe 137).
        _ => match uri.path().strip_prefix("//") {
            Some(rest) => origin_form_authority("//", rest, uri.query(), req.headers()),
            // A user name may hold `/` (`/al/ice:pw@host/`): an `@` or `:`
            // anywhere, not only in the first segment (probe 144).
            None => match uri.path().strip_prefix('/') {
                Some(rest) if rest.contains(['@', ':']) || uri.query().is_some_and(|q| q.contains('@')) => {
                    origin_form_authority("/", rest, uri.query(), req.headers())
                }
                _ => uri.path().to_owned(),
            },
        },
    }
}

/// How [`guarded_target`] logs an origin-form path `prefix rest` (`query`
/// the query after it; `prefix` `//` or `/`): a `?` or `#` in a password
/// ends the path before its `@` (`//alice:s3cr?t@host/` is the path
/// `//alice:s3cr`, probe 129), so the `@` is looked for in the query too;
/// and a path with a `:` (a user and a password, cut short by a `#`, which
/// never arrives; the user's name may hold `/`, probe 144) is `…`.
fn origin_form_authority(prefix: &str, rest: &str, query: Option<&str>, headers: &http::HeaderMap) -> String {
    let full = match query {
        Some(q) => [rest, "?", q].concat(),
        None => rest.to_owned(),
    };
    if full.contains('@') {
        // Without the query, as every target is logged (it was, when the
        // `@` came before it; probe 133). When the last `@` is in the query,
        // what follows the host there is the query's too: the host alone
        // (probe 134).
        let mut logged = after_userinfo(prefix, &full, headers);
        let in_query = full.rfind('@').is_some_and(|at| at > rest.len());
        let end = if in_query {
            logged[prefix.len()..].find('/').map(|i| i + prefix.len())
        } else {
            logged.find('?')
        };
        logged.truncate(end.unwrap_or(logged.len()));
        logged
    } else if rest.contains(':') {
        [prefix, "…"].concat()
    } else {
        [prefix, rest].concat()
    }
}

/// `prefix` and what follows the last `@` of `full` (an authority with
/// userinfo and the path after it), when the host that begins it is the
/// one the `Host` field names; else `prefix…`.
fn after_userinfo(prefix: &str, full: &str, headers: &http::HeaderMap) -> String {
    let after = full.rfind('@').map_or("", |at| &full[at + 1..]);
    let host = after.split('/').next().unwrap_or_default();
    let named = headers.get(header::HOST).is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(host.as_bytes()));
    if named && !host.is_empty() { [prefix, after].concat() } else { [prefix, "…"].concat() }
}

/// An authority (without userinfo) as [`guarded_target`] logs it, and
/// whether it is whole (a host, and a port 1-65535 or none), so that the
/// path may follow.
fn shown(authority: &str) -> (std::borrow::Cow<'_, str>, bool) {
    if !valid_host_field(authority.as_bytes()) {
        return ("…".into(), false);
    }
    match split_port(authority) {
        (host, Some(_)) if authority_port(authority, 80).is_err() => ([host, ":…"].concat().into(), false),
        _ => (authority.into(), true),
    }
}

/// The empty `200` that opens a CONNECT tunnel (hyper writes the reason
/// phrase `OK`).
pub fn connect_established() -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An authority is logged whole when it is a host and a port 1-65535
    /// (or none), its host alone when the port is out of range, and not at
    /// all when it is not a host and a port by their syntax (a port that is
    /// not digits among them).
    #[test]
    fn an_authority_is_shown_as_far_as_it_is_one() {
        for (authority, logged) in [
            ("example.com", "example.com"),
            ("example.com:", "example.com:"),
            ("example.com:8080", "example.com:8080"),
            ("127.0.0.1:38400", "127.0.0.1:38400"),
            ("127.0.0.1:65535", "127.0.0.1:65535"),
            ("127.0.0.1:0008080", "127.0.0.1:0008080"),
            ("[::1]:8080", "[::1]:8080"),
            ("[::1]", "[::1]"),
            ("[fe80::1:2]", "[fe80::1:2]"),
            ("alice:2024", "alice:2024"),
            ("8080", "8080"),
            ("alice:00", "alice:…"),
            ("alice:0", "alice:…"),
            ("alice:65536", "alice:…"),
            ("alice:99999", "alice:…"),
            ("alice:123456", "alice:…"),
            ("alice:99999999999999999999999999", "alice:…"),
            ("[::1]:0", "[::1]:…"),
            ("alice:S3cret", "…"),
            ("alice:S3cret9", "…"),
            ("alice:9S3cret", "…"),
            ("[::1]:ab", "…"),
            ("[::1]80", "…"),
            ("a:b:c", "…"),
            ("alice:x[]SEK", "…"),
            ("alice:[SEK]", "…"),
            ("[alice:SEK]", "…"),
            ("al[ice:SEK]", "…"),
            ("alice:pa$$", "…"),
            ("", ""),
        ] {
            let (shown_as, whole) = shown(authority);
            assert_eq!(shown_as, logged, "{authority}");
            assert_eq!(whole, logged == authority, "{authority}");
        }
    }

    #[test]
    fn the_head_length_is_at_most_what_was_sent() {
        for (raw, target, fields) in [
            (
                "GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\nX-Long: vvvv\r\n\r\n",
                "http://a.example/x?y",
                2,
            ),
            ("GET http://a.example HTTP/1.1\r\nHost:a.example\r\n\r\n", "http://a.example", 1),
            ("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", "a.example:443", 1),
        ] {
            let mut b = Request::builder().method(raw.split(' ').next().unwrap_or("GET")).uri(target);
            for line in raw.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                b = b.header(name, value.trim());
            }
            let req = b.body(()).unwrap_or_default();
            let len = head_len(&req);
            assert!(len <= raw.len(), "{raw:?}: {len}");
            assert!(len + 6 + 2 * fields >= raw.len(), "{raw:?}: {len}");
        }
    }
}
