//! `Max-Forwards` (RFC 9110 §7.6.2): for TRACE and OPTIONS, each proxy
//! decrements the field before forwarding, and the one that receives `0`
//! answers as the final recipient instead. A client uses it to reach one
//! hop of a proxy chain at a time.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::target::without_userinfo;

/// Request fields a TRACE answer leaves out (RFC 9110 §9.3.8: the final
/// recipient SHOULD exclude fields likely to carry sensitive data).
/// `Cookie2` is obsolete (RFC 6265) but carried a session all the same
/// (probe 229).
const NOT_ECHOED: [header::HeaderName; 4] = [
    header::PROXY_AUTHORIZATION,
    header::AUTHORIZATION,
    header::COOKIE,
    header::HeaderName::from_static("cookie2"),
];

/// For a TRACE or OPTIONS request with `Max-Forwards`: `0` gets authgate's
/// own answer (returned), a larger value is decremented in place for the
/// next hop. Every other request is left alone (`None`), as is a field that
/// is repeated or not a number (RFC 9110 defines nothing for either;
/// forwarding it unchanged breaks nothing).
pub fn answer_here<B>(req: &mut Request<B>) -> Option<Response<ProxyBody>> {
    if req.method() != Method::TRACE && req.method() != Method::OPTIONS {
        return None;
    }
    let hops = remaining(req.headers())?;
    if hops > 0 {
        req.headers_mut().insert(header::MAX_FORWARDS, HeaderValue::from(hops - 1));
        return None;
    }
    let mut resp = if req.method() == Method::TRACE {
        let mut resp = Response::new(ProxyBody::full(echo(req)));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("message/http"));
        resp
    } else {
        Response::new(ProxyBody::empty())
    };
    *resp.status_mut() = StatusCode::OK;
    Some(resp)
}

/// The value of a single well-formed `Max-Forwards` (1*DIGIT); values too
/// large for a `u64` count as `u64::MAX` (the field has no upper limit).
fn remaining(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::MAX_FORWARDS).iter();
    let (value, None) = (values.next()?, values.next()) else {
        return None;
    };
    let digits = value.to_str().ok().filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))?;
    // Only digits: parsing fails only on overflow.
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// Whether a field stays out of a TRACE answer: one of [`NOT_ECHOED`], or
/// its twin with `_` for `-` (`Proxy_Authorization`), which a recipient
/// that reads `_` as `-` takes for the field itself (probe 214).
fn not_echoed(name: &header::HeaderName) -> bool {
    let dashed = super::headers::dashed(name.as_str().as_bytes());
    NOT_ECHOED.iter().any(|n| n.as_str() == dashed)
}

/// The TRACE request as authgate received it, minus credentials (fields
/// and URL userinfo) and cookies, and without content: a client must not
/// send any (RFC 9110 §9.3.8), and none is echoed, so neither are the
/// `Content-Length` and `Transfer-Encoding` that framed it. The echo said
/// `content-length: 5` over no content, a message cut short (probe 258).
fn echo<B>(req: &Request<B>) -> BytesMut {
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(req.method().as_str().as_bytes());
    out.put_u8(b' ');
    let uri = req.uri();
    if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
        out.put_slice([scheme, "://", without_userinfo(authority.as_str())].concat().as_bytes());
    }
    out.put_slice(uri.path_and_query().map_or(uri.path(), |p| p.as_str()).as_bytes());
    out.put_slice(format!(" {:?}\r\n", req.version()).as_bytes());
    for (name, value) in req.headers() {
        if not_echoed(name) || name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, max_forwards: &[&str]) -> Request<()> {
        let mut r = Request::builder().method(method).uri("http://u:pw@example.com/p?q").body(()).unwrap();
        for v in max_forwards {
            r.headers_mut().append(header::MAX_FORWARDS, HeaderValue::from_str(v).unwrap());
        }
        r.headers_mut().insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic c2VjcmV0"));
        r.headers_mut().insert(header::COOKIE, HeaderValue::from_static("sid=1"));
        r.headers_mut().insert("proxy_authorization", HeaderValue::from_static("Basic dHdpbg=="));
        r.headers_mut().insert("x_trace", HeaderValue::from_static("kept"));
        r.headers_mut().insert("cookie2", HeaderValue::from_static("$Version=\"1\"; sid2=2"));
        r.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        r
    }

    #[test]
    fn a_positive_value_is_decremented_for_the_next_hop() {
        let mut r = req(Method::OPTIONS, &["3"]);
        assert!(answer_here(&mut r).is_none());
        assert_eq!(r.headers()[header::MAX_FORWARDS], "2");
        let mut r = req(Method::TRACE, &["99999999999999999999999"]);
        assert!(answer_here(&mut r).is_none());
        assert_eq!(r.headers()[header::MAX_FORWARDS], (u64::MAX - 1).to_string().as_str());
    }

    #[test]
    fn other_methods_and_malformed_values_are_left_alone() {
        for (method, values) in [
            (Method::GET, &["0"][..]),
            (Method::OPTIONS, &[][..]),
            (Method::OPTIONS, &["-1"][..]),
            (Method::OPTIONS, &["1 "][..]),
            (Method::TRACE, &["0", "1"][..]),
        ] {
            let mut r = req(method.clone(), values);
            assert!(answer_here(&mut r).is_none(), "{method} {values:?}");
            let now: Vec<_> = r.headers().get_all(header::MAX_FORWARDS).iter().collect();
            assert_eq!(now, values.iter().map(|v| HeaderValue::from_str(v).unwrap()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn zero_is_answered_here_and_trace_echoes_no_credentials() {
        let options = answer_here(&mut req(Method::OPTIONS, &["0"])).expect("answered");
        assert_eq!(options.status(), 200);
        assert_eq!(options.body().full_bytes().unwrap(), "");

        let trace = answer_here(&mut req(Method::TRACE, &["0"])).expect("answered");
        assert_eq!(trace.status(), 200);
        assert_eq!(trace.headers()[header::CONTENT_TYPE], "message/http");
        let body = trace.body().full_bytes().unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.starts_with("TRACE http://example.com/p?q HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("accept: */*\r\n") && text.contains("max-forwards: 0\r\n"), "{text}");
        assert!(!text.contains("c2VjcmV0") && !text.contains("sid=1") && !text.contains("pw"), "{text}");
        assert!(!text.contains("dHdpbg") && text.contains("x_trace: kept\r\n"), "{text}");
        assert!(!text.contains("sid2"), "{text}");
    }

    /// The echo is a whole message: content is not echoed, and so neither
    /// is the framing that announced it.
    #[test]
    fn a_trace_echo_has_no_framing_for_content_it_does_not_echo() {
        for (name, value) in [("content-length", "5"), ("transfer-encoding", "chunked")] {
            let mut r = req(Method::TRACE, &["0"]);
            r.headers_mut().insert(name, HeaderValue::from_static(value));
            let trace = answer_here(&mut r).expect("answered");
            let body = trace.body().full_bytes().unwrap();
            let text = std::str::from_utf8(&body).unwrap();
            assert!(!text.contains(name), "{text}");
            assert!(text.contains("x_trace: kept\r\n") && text.ends_with("\r\n\r\n"), "{text}");
        }
    }
}
