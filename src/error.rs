//! The one error type of the request path, grouped by who is at fault.
//!
//! Every failure that ends a request as a response authgate makes itself is a
//! [`ProxyError`]. The mapping to a status code, an RFC 9209 `Proxy-Status`
//! error type and a stable `code` lives in one `match` in [`crate::respond`];
//! this module only says *what* went wrong and *who* caused it.
//!
//! Details never name a password, a header value, or whether a user exists.

use std::time::Duration;

/// Who caused a failure: groups authgate's errors for the metrics (the
/// status comes from `respond::describe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we cannot serve (4xx).
    Client,
    /// The client's proxy credentials are missing or wrong (407), or its
    /// address is throttled for failed logins (429).
    Credentials,
    /// Authenticated, but policy says no (403, 508).
    Policy,
    /// The origin or the path to it failed (502/504).
    Upstream,
    /// authgate itself could not do its job (500/503).
    Ourselves,
}

/// A failure that authgate answers with a response of its own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    // ---- client ----
    /// An origin-form request (`GET / HTTP/1.1`) aimed at the proxy itself.
    #[error("origin-form request sent to a proxy")]
    OriginForm,
    /// An absolute-form target with a scheme authgate does not forward.
    #[error("unsupported scheme {scheme}")]
    UnsupportedScheme {
        /// The scheme as sent (lower-cased, truncated).
        scheme: String,
    },
    /// The request head did not arrive within `limits.header_read_timeout`.
    #[error("request head timed out")]
    HeadTimeout,
    /// The request head is larger than `limits.max_header_bytes`.
    #[error("request head too large")]
    HeadTooLarge,
    /// The request head could not be parsed as HTTP/1.1, or is one that
    /// cannot be served as it stands; `why`, when it is not the parse.
    #[error("malformed request")]
    MalformedRequest {
        /// What is wrong, for the client; `None`: the head could not be read.
        why: Option<&'static str>,
    },
    /// The request target is longer than the parser accepts.
    #[error("request target too long")]
    UriTooLong,
    /// A CONNECT request that declares a body (RFC 9110 §9.3.6: it has none):
    /// where the tunnel would begin is ambiguous.
    #[error("CONNECT with a body")]
    ConnectWithBody,
    /// The client stopped sending its request body before the end: nothing
    /// arrived for `limits.upstream_response_timeout`.
    #[error("request body timed out")]
    BodyTimeout,
    /// The client's request body broke off (its connection closed or reset
    /// before the end) or is not valid chunked framing.
    #[error("bad request body")]
    BadBody {
        /// The client reset its connection: no answer can reach it, and
        /// none is logged as sent (status 0, `client_gone`).
        reset: bool,
    },
    /// Plain HTTP sent to a TLS listener (the client was given `http://`
    /// for an HTTPS proxy port).
    #[error("plain HTTP on a TLS port")]
    TlsRequired,
    /// The request target cannot be used (no host, bad port, ...).
    #[error("bad request target: {detail}")]
    BadTarget {
        /// What is wrong with it, without echoing the target.
        detail: &'static str,
    },

    // ---- credentials ----
    /// Missing, malformed or wrong proxy credentials; all look alike.
    #[error("proxy authentication required")]
    ProxyAuthRequired,
    /// Too many failed attempts from this client address.
    #[error("too many failed authentication attempts")]
    Throttled {
        /// When the client may try again.
        retry_after: Duration,
    },

    // ---- policy ----
    /// An access rule (or the default) denies this user this target.
    #[error("denied by {rule}")]
    DeniedByRule {
        /// `rule NAME` or `default`.
        rule: String,
    },
    /// The target resolves to an address the egress policy forbids.
    #[error("destination address prohibited")]
    DestinationIpProhibited {
        /// The address that was refused.
        addr: std::net::IpAddr,
    },
    /// The request already passed through this proxy.
    #[error("proxy loop detected")]
    LoopDetected,

    // ---- upstream ----
    /// The name does not resolve.
    #[error("DNS lookup failed")]
    DnsError,
    /// The resolver did not answer in time.
    #[error("DNS lookup timed out")]
    DnsTimeout,
    /// The last address tried refused the connection.
    #[error("connection refused")]
    ConnectionRefused,
    /// Connecting took longer than the connect timeout.
    #[error("connection timed out")]
    ConnectionTimeout,
    /// Could not connect for another reason (unreachable network, ...).
    #[error("destination unavailable")]
    DestinationUnavailable,
    /// The origin did not send a response head in time.
    #[error("upstream response timed out")]
    UpstreamReadTimeout,
    /// The origin stopped taking the request body (the client kept sending).
    #[error("upstream stopped reading the request")]
    UpstreamWriteTimeout,
    /// The origin broke the protocol or closed the connection early.
    #[error("upstream protocol error: {detail}")]
    UpstreamProtocol {
        /// What kind of failure it was, for `Proxy-Status`.
        bad: BadAnswer,
        /// A short, fixed description.
        detail: &'static str,
    },
    /// The origin answered 407, which would be mistaken for ours.
    #[error("upstream answered 407")]
    Upstream407,
    /// The origin's TLS certificate did not verify.
    #[error("upstream TLS certificate error: {reason}")]
    UpstreamTls {
        /// Why, in words (expired, not for this name, unknown issuer ...).
        reason: &'static str,
    },

    // ---- ourselves ----
    /// The password-verification queue is full.
    #[error("authentication overloaded")]
    AuthOverloaded {
        /// When the client may try again.
        retry_after: Duration,
    },
    /// Too many connections (overall or from this client).
    #[error("too many connections")]
    TooManyConnections,
    /// A bug or resource failure inside authgate.
    #[error("internal error")]
    Internal,
}

impl ProxyError {
    /// Whether the connection must close after this answer, whatever the
    /// request asked: a CONNECT that declares a body leaves the rest of the
    /// connection framed one way by hyper and perhaps another by a front end;
    /// after a request body that broke off, where the next request begins is
    /// unknown.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectWithBody
                | ProxyError::BodyTimeout
                | ProxyError::BadBody { .. }
                | ProxyError::MalformedRequest { .. }
        )
    }

    /// Who is at fault for this error.
    pub fn fault(&self) -> Fault {
        use ProxyError::*;
        match self {
            OriginForm
            | UnsupportedScheme { .. }
            | BadTarget { .. }
            | ConnectWithBody
            | HeadTimeout
            | HeadTooLarge
            | MalformedRequest { .. }
            | BodyTimeout
            | BadBody { .. }
            | TlsRequired
            | UriTooLong => Fault::Client,
            ProxyAuthRequired | Throttled { .. } => Fault::Credentials,
            DeniedByRule { .. } | DestinationIpProhibited { .. } | LoopDetected => Fault::Policy,
            DnsError
            | DnsTimeout
            | ConnectionRefused
            | ConnectionTimeout
            | DestinationUnavailable
            | UpstreamReadTimeout
            | UpstreamWriteTimeout
            | UpstreamProtocol { .. }
            | Upstream407
            | UpstreamTls { .. } => Fault::Upstream,
            AuthOverloaded { .. } | TooManyConnections | Internal => Fault::Ourselves,
        }
    }
}

/// What was wrong with an origin's answer ([`ProxyError::UpstreamProtocol`]):
/// the RFC 9209 §2.3 proxy error type that says it most precisely, since
/// `http_protocol_error` "SHOULD only be used when a more specific one is
/// not defined" (every such failure said `http_protocol_error`; probe 233).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadAnswer {
    /// `http_protocol_error`: a response that breaks HTTP otherwise.
    Protocol,
    /// `connection_terminated`: the connection closed before any byte of
    /// a response came.
    Terminated,
    /// `http_response_incomplete`: it closed in the middle of a response
    /// head (or after interim answers).
    Incomplete,
    /// `http_response_header_section_size`: a response head over the limit.
    HeadTooLarge,
    /// `http_response_transfer_coding`: a `Transfer-Encoding` that cannot
    /// be read.
    TransferCoding,
    /// `http_upgrade_failed`: a `101` that cannot be taken.
    UpgradeFailed,
    /// `tls_protocol_error`: the TLS handshake with the origin failed.
    Tls,
    /// `tls_alert_received`: the origin sent this TLS alert.
    TlsAlert(u8),
}

impl BadAnswer {
    /// Its RFC 9209 proxy error type.
    pub fn proxy_status(self) -> &'static str {
        match self {
            BadAnswer::Protocol => "http_protocol_error",
            BadAnswer::Terminated => "connection_terminated",
            BadAnswer::Incomplete => "http_response_incomplete",
            BadAnswer::HeadTooLarge => "http_response_header_section_size",
            BadAnswer::TransferCoding => "http_response_transfer_coding",
            BadAnswer::UpgradeFailed => "http_upgrade_failed",
            BadAnswer::Tls => "tls_protocol_error",
            BadAnswer::TlsAlert(_) => "tls_alert_received",
        }
    }
}

/// The kind of the I/O error under `e` (the first in its chain of
/// sources), if there is one: what a socket said under a hyper error.
pub fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}
