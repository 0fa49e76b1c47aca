//! Absolute-form `http://` requests (and `https://` ones received on a TLS
//! listener): rewrite, send upstream, stream back.
//!
//! RFC 9112 §3.2.2: the proxy replaces `Host` with the target URI's authority
//! and sends origin-form upstream. Bodies stream both ways frame by frame. The
//! origin's response passes through untouched (401 and 403 included) except
//! hop-by-hop fields and `Via`; an origin 407 is never passed on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, StatusCode, Version};
use hyper::body::Incoming;

use super::State;
use super::connect::Connector;
use super::headers::{
    Codings, add_via, check_switch, close_hidden_from_hyper, single_content_length, strip_hop_by_hop,
    wants_upgrade,
};
use super::pool::{Exchange, Interims, Sent};
use super::service::Reply;
use super::tunnel::{Job, Upstream};
use super::upstream_tls::{self, UpstreamIo};
use crate::auth::store::User;
use crate::body::{CONTINUE_WAIT, Continue, ProxyBody, RequestBody, Upload, UploadState};
use crate::config::Snapshot;
use crate::error::{BadAnswer, ProxyError};
use crate::target::Target;
use crate::telemetry::AccessRecord;

/// Where a forwarded request goes.
pub struct Destination {
    /// The origin.
    pub target: Target,
    /// Spoken to over TLS (an `https://` target).
    pub https: bool,
    /// The addresses the rules step resolved and egress-checked, if it did.
    pub checked: Option<Vec<SocketAddr>>,
}

/// Forwards one absolute-form request to `dest`; `user` sends it, and its
/// origin connection serves that account only (see
/// [`Key`](super::pool::Key)). Notes in `rec` the origin address that
/// answered.
///
/// # Errors
/// DNS, egress, connect and upstream protocol failures, and an origin 407.
pub async fn forward(
    state: &State,
    snap: &Snapshot,
    dest: Destination,
    user: &User,
    req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Reply, ProxyError> {
    let Destination { target, https, checked } = dest;
    // RFC 9110 §7.8: an Upgrade in an HTTP/1.0 request MUST be ignored (it
    // is dropped with the other hop-by-hop fields), and a 1.0 client cannot
    // be sent the 101 an upgrade needs.
    let upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
    // Taken only for a 101: an upgrade declined stays for `handle` to close
    // (see `ClientUpgrade`).
    let client_upgrade = if upgrade { super::tunnel::ClientUpgrade::of(&req) } else { None };
    let (mut parts, body) = req.into_parts();
    let from_http10 = parts.version == Version::HTTP_10;

    // The authority has no userinfo: `classify` refused that.
    let host = parts.uri.authority().ok_or(ProxyError::BadTarget { detail: "no host" })?;
    let host = HeaderValue::from_str(&crate::target::host_field(host.as_str()))
        .map_err(|_| ProxyError::BadTarget { detail: "bad host" })?;
    // RFC 9112 §3.2.1: an empty path is sent as `/`. A target whose path
    // is empty but that has a fragment (`http://host#top`) has an empty
    // path and query here, not none, and went out as `GET  HTTP/1.1`
    // (probe 128).
    let path = match parts.uri.path_and_query() {
        Some(pq) if pq.path() != "/" || pq.query().is_some() => pq.clone(),
        _ => PathAndQuery::from_static("/"),
    };
    parts.uri = Uri::from(path);

    // RFC 9112 §6.1: `chunked` once and last. hyper decoded one `chunked`
    // of `chunked, chunked`; passed on, the origin would decode only that.
    if strip_hop_by_hop(&mut parts.headers, upgrade) == Codings::Malformed {
        return Err(ProxyError::MalformedRequest { why: None });
    }
    // hyper has checked the request's length; one written `010` goes on as `10`.
    if !single_content_length(&mut parts.headers) {
        return Err(ProxyError::MalformedRequest { why: None });
    }
    // The offers a 101 is checked against: the request's fields are gone by then.
    let offered = if upgrade { parts.headers.get(header::UPGRADE).cloned() } else { None };
    // RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request
    // MUST be ignored; sent on in the HTTP/1.1 request made of it, the
    // origin would act on it.
    // Every spelling: one that was not the first field (`Expect: foo`,
    // then `Expect: 100-continue`), or a member of a list, went on (probe 303).
    if from_http10 {
        drop_100_continue(&mut parts.headers);
    }
    let has_body = !http_body::Body::is_end_stream(&body);
    // hyper's client sends a body of unknown length (the client's was
    // chunked) on a GET, HEAD or CONNECT only when the field asks for it;
    // without, a GET's chunked body was dropped.
    if has_body && http_body::Body::size_hint(&body).exact().is_none() {
        // A coding kept under `chunked` (`gzip`) is already there; hyper
        // then adds `chunked` itself.
        parts.headers.entry(header::TRANSFER_ENCODING).or_insert(HeaderValue::from_static("chunked"));
    }
    parts.headers.insert(header::HOST, host);
    if snap.server.via {
        add_via(&mut parts.headers, parts.version);
    }
    parts.version = Version::HTTP_11;
    let upload = has_body.then(|| Arc::new(Upload::new(rec.bytes_up.clone())));
    // (A 1.0 client's expectation was dropped above.)
    let expects = has_body && hyper_continues(&parts.headers);
    let body = RequestBody::new(body, upload.clone());
    // The wait for the origin's `100` is part of the wait for its answer,
    // so it takes at most half of that.
    let patience = CONTINUE_WAIT.min(snap.limits.upstream_response_timeout / 2);
    let (req, gate, interims) = watch_interims(Request::from_parts(parts, body), expects.then_some(patience));

    let limits = &snap.limits;
    let key = (target.clone(), https, snap.id, (user.name.clone(), user.fingerprint));
    // RFC 9110 §9.2.2; an upgrade's connection is the client's alone. And
    // only under the configuration this request was checked with: after a
    // reload the origin may be forbidden, and no new connection is made.
    let idempotent = !has_body && !upgrade && req.method().is_idempotent();
    let replayable = || idempotent && std::ptr::eq(&**state.snapshot.load(), snap);
    let checked = checked.as_deref();
    let dial = || async {
        // Before anything is dialled (probe 146).
        let name =
            if https { Some(upstream_tls::server_name(&target.host).map_err(|e| (e, None))?) } else { None };
        let resolved;
        let addrs = match checked {
            Some(a) => a,
            None => {
                resolved = state
                    .connector
                    .resolve_checked(&target, &snap.egress, limits.dns_timeout)
                    .await
                    .map_err(|e| (e, None))?;
                &resolved[..]
            }
        };
        // One budget for the TCP connect and the TLS handshake: each had
        // its own, so an origin could take twice `connect_timeout` (probe 111).
        let deadline = tokio::time::Instant::now() + limits.connect_timeout;
        let (tcp, peer) = Connector::dial(addrs, limits.connect_timeout).await.map_err(|e| (e, None))?;
        if let Some(name) = name {
            let tls = upstream_tls::handshake(&snap.upstream_tls, name, tcp);
            // A failed handshake names the address it was with.
            let tls = tokio::time::timeout_at(deadline, tls)
                .await
                .unwrap_or(Err(ProxyError::ConnectionTimeout))
                .map_err(|e| (e, Some(peer)))?;
            Ok((UpstreamIo::Tls(Box::new(tls)), peer))
        } else {
            Ok((UpstreamIo::Plain(upstream_tls::OriginTcp::new(tcp)), peer))
        }
    };
    let exchange = Exchange {
        head_timeout: limits.upstream_response_timeout,
        upload: upload.as_deref(),
        reached: &mut rec.upstream,
        only_to: checked,
        interims: &interims,
    };
    let sent = match state.pool.send(&key, req, exchange, replayable, dial).await {
        Ok(sent) => sent,
        // The client's body broke off: that, not the origin, ended the request.
        Err(e) => match upload.map(|u| u.state()) {
            // A client that closed mid-body may have closed only its sending
            // side and still read the answer; one that reset the connection
            // is gone (logged as `client_gone`).
            Some(UploadState::Broken) => return Err(ProxyError::BadBody { reset: false }),
            Some(UploadState::Reset) => return Err(ProxyError::BadBody { reset: true }),
            _ => return Err(e),
        },
    };
    let Sent { response: mut resp, conn } = sent;
    // The origin answered without asking for the body: it is never sent.
    let unasked = gate.as_ref().is_some_and(|gate| gate.answered());
    // An answer before the request body's end (see `early` below).
    let body_unfinished =
        upload.as_ref().is_some_and(|u| u.state() != UploadState::Done) || conn.still_sending();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // RFC 9110 §7.8: a server that switches protocols for a request
        // with `Expect: 100-continue` MUST send the 100 first; and a 101 to
        // a request that asked for no switch is no answer at all. Either
        // way HTTP ended on the origin's connection: it is closed at once.
        // Kept, with hyper waiting for good to send the body held back
        // for that 100, it held the client's connection, its slot and both
        // sockets until shutdown (probe 174).
        let refused = match (client_upgrade.as_ref(), &offered) {
            // HTTP/1.0 has no 1xx (RFC 9110 §15.2): no switch to trust.
            _ if resp.version() != Version::HTTP_11 => Some("101 from an HTTP/1.0 origin"),
            (Some(_), Some(_)) if unasked => Some("101 before 100 Continue to a request with a body"),
            // The switch would wait for the rest of the body, with no timer
            // on the client or on the origin: both connections were held
            // for as long as the origin kept its socket open (probe 181).
            // The client switches only once it has sent the whole request
            // (RFC 9110 §7.8); an upgrade with a body is rare, and one
            // answered before the body's end is refused.
            (Some(_), Some(_)) if body_unfinished => Some("101 before the end of the request body"),
            (Some(_), Some(offered)) => check_switch(offered, resp.headers()).err(),
            _ => Some("101 without an upgrade request"),
        };
        // A switch asked for and refused failed; one nobody asked for is
        // no HTTP.
        let bad = if client_upgrade.is_some() && offered.is_some() {
            BadAnswer::UpgradeFailed
        } else {
            BadAnswer::Protocol
        };
        // Taken only once the switch is sure: one taken and refused was
        // left to no one (see `ClientUpgrade`).
        let client = if refused.is_none() { client_upgrade.and_then(|c| c.take()) } else { None };
        let Some(client) = client else {
            drop(conn.close_on_drop());
            let detail = refused.unwrap_or("101 without an upgrade request");
            return Err(ProxyError::UpstreamProtocol { bad, detail });
        };
        state.metrics.upstream_response(101);
        let origin = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let _ = strip_hop_by_hop(&mut parts.headers, true);
        if snap.server.via {
            add_via(&mut parts.headers, parts.version);
        }
        parts.version = Version::HTTP_11;
        let resp = http::Response::from_parts(parts, ProxyBody::empty());
        return Ok(Reply::Tunnel(resp, Job { client, upstream: Upstream::Upgraded(origin), user: None }));
    }
    // An answer before the request body's end (a 413 to a large upload, an
    // answer to an `Expect: 100-continue` request): the origin will not
    // read the rest, and the connection cannot carry another request. It is
    // closed once this answer is relayed (or at once, for one that is not):
    // hyper would keep sending the body, or wait for good to send it, for
    // as long as the origin keeps the socket open.
    let early = body_unfinished;
    let (conn, close) = if early { (None, Some(conn.close_on_drop())) } else { (Some(conn), None) };

    if resp.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return Err(ProxyError::Upstream407);
    }
    // RFC 9110 §15: status codes are 100-599; hyper parses any three digits.
    if resp.status().as_u16() >= 600 {
        return Err(ProxyError::UpstreamProtocol { bad: BadAnswer::Protocol, detail: "malformed response" });
    }

    // Kept for another request only when the exchange left no doubt about
    // framing: after an HTTP/1.0 answer hyper speaks 1.0 on the connection,
    // where a chunked body cannot go (one was sent as a POST without body),
    // and a response with both Transfer-Encoding and Content-Length "ought
    // to be handled as an error" (RFC 9112 §6.1). Nor after a `close` in a
    // `Connection` field hyper skips (one with obs-text): the connection
    // went back into the pool, and the user's next request got a 502 when
    // the origin closed it as it had said (RFC 9112 §9.6, probe 203).
    let reusable = resp.version() == Version::HTTP_11
        && !(resp.headers().contains_key(header::TRANSFER_ENCODING)
            && resp.headers().contains_key(header::CONTENT_LENGTH))
        && !close_hidden_from_hyper(resp.headers());
    match strip_hop_by_hop(resp.headers_mut(), false) {
        // `chunked` twice, or not last (the body then runs to the close,
        // still chunked): no field can say what the body is.
        Codings::Malformed => {
            return Err(ProxyError::UpstreamProtocol {
                bad: BadAnswer::TransferCoding,
                detail: "malformed Transfer-Encoding",
            });
        }
        // A coding such as gzip stays on the body, and only `Transfer-Encoding`
        // can say so, which an HTTP/1.0 client must not be sent (RFC 9112
        // §6.1); passed on without it, the client would take gzip bytes for
        // the content.
        Codings::Kept if from_http10 && !http_body::Body::is_end_stream(resp.body()) => {
            return Err(ProxyError::UpstreamProtocol {
                bad: BadAnswer::Protocol,
                detail: "a transfer coding other than chunked, which an HTTP/1.0 client cannot receive",
            });
        }
        _ => {}
    }
    // RFC 9110 §8.6: no Content-Length in a 204 (its body, none, is
    // dropped by hyper either way), so none to check there.
    if resp.status() == StatusCode::NO_CONTENT {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if !single_content_length(resp.headers_mut()) {
        return Err(ProxyError::UpstreamProtocol {
            bad: BadAnswer::Protocol,
            detail: "malformed Content-Length",
        });
    }
    // Counted once it is sure to be passed on (not replaced by a 502).
    state.metrics.upstream_response(resp.status().as_u16());
    if snap.server.via {
        let version = resp.version();
        add_via(resp.headers_mut(), version);
    }
    // RFC 9110 §2.5: a proxy sends its own version, not the origin's (hyper
    // still answers an HTTP/1.0 client as 1.0).
    *resp.version_mut() = Version::HTTP_11;
    // Nor will the client's connection carry another request after an early
    // answer, or after a body that ended with trailer fields (see
    // `Upload::had_trailers`): the client is told, and the caller closes it.
    if early || upload.as_ref().is_some_and(|u| u.had_trailers()) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // An HTTP/1.0 client gets a body of unknown length (the origin's was
    // chunked or ended by its close) delimited by the close of the
    // connection: hyper does so, but still answered `Connection:
    // keep-alive` to a client that asked for it (RFC 9112 §9.3: the
    // connection persists only with a self-delimited body).
    let open_ended = from_http10 && of_unknown_length(resp.body());
    if open_ended {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(conn) = conn.filter(|_| reusable) {
        state.pool.checkin(key, conn);
    }
    let idle = limits.upstream_response_timeout;
    Ok(Reply::Response(resp.map(|body| {
        let body = ProxyBody::upstream(body, idle);
        let body = if open_ended { body.open_ended() } else { body };
        match close {
            Some(connection) => body.closing(connection),
            None => body,
        }
    })))
}

fn is_100_continue(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"100-continue")
}

/// Whether hyper's server sends the client its own `100 Continue` when the
/// body is first read: it reads each `Expect` field whole and keeps the
/// last. The gate of `Expect: 100-continue` end to end must agree: with
/// `Expect: foo` first and `Expect: 100-continue` last, the body was read
/// at once, and the client had its 100 before the origin said a word
/// (probe 303). A list such as `100-continue, foo` makes hyper send none,
/// and so goes on unchanged as any other expectation.
fn hyper_continues(headers: &HeaderMap) -> bool {
    headers.get_all(header::EXPECT).iter().next_back().is_some_and(|v| is_100_continue(v.as_bytes()))
}

/// Takes every `100-continue` member out of the `Expect` fields (RFC 9110
/// §10.1.1: an HTTP/1.0 client's MUST be ignored), keeping the others.
fn drop_100_continue(headers: &mut HeaderMap) {
    if !headers.contains_key(header::EXPECT) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::EXPECT)
        .iter()
        .filter_map(|v| {
            let members = || super::headers::value_members(v.as_bytes());
            if !members().any(is_100_continue) {
                return Some(v.clone());
            }
            let others: Vec<&[u8]> = members().filter(|m| !is_100_continue(m)).collect();
            (!others.is_empty()).then(|| HeaderValue::from_bytes(&others.join(&b", "[..])).ok()).flatten()
        })
        .collect();
    headers.remove(header::EXPECT);
    for v in kept {
        headers.append(header::EXPECT, v);
    }
}

/// The origin's interim (1xx) answers, which hyper's client reads past
/// and reports through `on_informational`. A `100 Continue` opens the gate
/// of `Expect: 100-continue` end to end, when there is a `patience` (see
/// [`Continue`]): the body is held back until it comes, or for `patience`
/// without a word. And what the interim answers say is recorded in the
/// [`Interims`] returned: a `Connection: close` keeps the connection from
/// the pool (probe 174), a head over 256 KiB has the answer refused. (One
/// that declares a body, which an origin may send in a later write, to be
/// read as the answer to the next request on the connection, needs nothing
/// here: the connection serves the same account only; probe 172 had bob
/// get the bytes behind alice's `103` with `Content-Length: 43` when
/// connections were shared.)
fn watch_interims(
    mut req: Request<RequestBody>,
    patience: Option<Duration>,
) -> (Request<RequestBody>, Option<Arc<Continue>>, Arc<Interims>) {
    let interims = Arc::new(Interims::default());
    let gate = patience.map(|_| Arc::new(Continue::default()));
    let (opener, seen) = (gate.clone(), interims.clone());
    hyper::ext::on_informational(&mut req, move |interim| {
        if let Some(opener) = &opener
            && interim.status() == StatusCode::CONTINUE
        {
            opener.go();
        }
        seen.record(interim.headers());
    });
    let req = match gate.clone().zip(patience) {
        Some((gate, patience)) => req.map(|body| body.held_by(gate, patience)),
        None => req,
    };
    (req, gate, interims)
}

fn of_unknown_length(body: &hyper::body::Incoming) -> bool {
    use http_body::Body as _;
    !body.is_end_stream() && body.size_hint().exact().is_none()
}
