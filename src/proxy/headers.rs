//! Header hygiene: hop-by-hop removal, `Via`, loop detection.
//!
//! RFC 9110 §7.6.1: a proxy MUST remove the `Connection` header and every field
//! it names, plus the hop-by-hop fields (`Proxy-Connection`, `Keep-Alive`,
//! `TE`, `Transfer-Encoding`, `Upgrade` unless upgrading, `Trailer`), before
//! forwarding; `Transfer-Encoding` is replaced by the codings other than the
//! `chunked` that hyper decoded (§7.6.1 "remove or replace"; see
//! `undecoded_codings`). `Proxy-Authorization` is consumed here (RFC 9110 §11.7.2: it
//! applies to the next inbound proxy only) and `Proxy-Authenticate` from an
//! origin is dropped. §7.6.3: a proxy MUST add `Via`.

use std::collections::HashSet;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::respond::PROXY_NAME;

/// Fields never forwarded, whatever `Connection` says: the hop-by-hop ones
/// (`HTTP2-Settings` among them),
/// `Proxy-Authorization` (consumed here), and `Proxy-Authenticate` and
/// `Proxy-Authentication-Info` (an origin's challenge, or its word on a
/// proxy login, is not for the client's proxy credentials: RFC 9110
/// §11.7.1, §11.7.3, for the next outbound client only, which is authgate).
///
/// A `match` on the (always lowercase) name: a `const` array of `HeaderName`s
/// is a new array at every use, built and dropped for every field checked
/// (criterion `header_rewrite`: 330 ns before, 252 ns with the `match`).
fn always_dropped(name: &HeaderName) -> bool {
    always_dropped_name(name.as_str())
}

/// Hands the names [`always_dropped`] drops (lowercase) to the macro `$m`:
/// written once, for the `match` there and for the tests of the `_` twins
/// (`every_twin_passes_the_length_gate`), which a second list let fall
/// behind.
macro_rules! with_always_dropped {
    ($m:ident) => {
        $m!(
            "connection",
            "proxy-connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "proxy-authentication-info",
            // Hop-by-hop even when a client fails to name it in
            // `Connection` (RFC 9113 §3.2.1), and of no use without the
            // `h2c` upgrade, which is never passed on.
            "http2-settings"
        )
    };
}

/// [`always_dropped`] of a lowercase name.
fn always_dropped_name(name: &str) -> bool {
    macro_rules! is_one_of {
        ($($n:literal),*) => { matches!(name, $($n)|*) };
    }
    with_always_dropped!(is_one_of)
}

/// Whether `name` is, with `_` for `-`, a field that frames a message or
/// belongs to one hop (`Transfer_Encoding`, `Content_Length`,
/// `Proxy_Authorization`, `Keep_Alive` ...).
///
/// RFC 9110 §5.1 allows `_` in a name, and authgate frames and
/// authenticates by the real fields only; but a recipient that reads `_` as
/// `-` (CGI-style environments, some frameworks) would take such a twin for
/// the field itself: `Transfer_Encoding: chunked` beside a `Content-Length`
/// went on with both, and such a recipient would end the body elsewhere
/// than authgate did (probe 204). These twins are dropped, and so is
/// `Proxy_Status`, which such a client would take for a `Proxy-Status`
/// that names authgate, one an origin cannot forge in the field itself
/// (probe 326); other names with `_` go on (nginx drops every one by
/// default, which breaks applications that use them).
fn underscore_twin(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    // The lengths of the twins (`keep_alive` 10, `proxy_status` 12 ...
    // `proxy_authentication_info` 25) first: most names end the check
    // there, and the criterion `header_rewrite` paid 14 ns more per message
    // for the check without.
    matches!(name.len(), 10 | 12 | 14 | 16..=19 | 25) && name.contains(&b'_') && dashed_twin(name)
}

/// [`underscore_twin`] of a name that has a `_`.
#[cold]
fn dashed_twin(name: &[u8]) -> bool {
    let dashed = dashed(name);
    always_dropped_name(&dashed) || dashed == "content-length" || dashed == "proxy-status"
}

/// A field name with each `_` written `-`: the field a recipient that reads
/// `_` as `-` takes it for (the name itself when it has none).
pub(super) fn dashed(name: &[u8]) -> String {
    name.iter().map(|&b| if b == b'_' { '-' } else { char::from(b) }).collect()
}

/// Whether the message asks to switch protocols (`Connection: upgrade` plus
/// an `Upgrade` field), e.g. a WebSocket handshake.
///
/// Not when `h2c` is all it offers: that upgrade needs its
/// `HTTP2-Settings` field, which is hop-by-hop (named in `Connection`) and
/// so never reaches the origin; the request goes on as plain HTTP/1.1, as
/// RFC 9113 §3.1 lets a server answer it anyway.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    offers(headers).next().is_some() && connection_lists(headers, "upgrade")
}

/// The protocols the `Upgrade` fields offer, every field, but `h2c`.
fn offers(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    list_members(headers.get_all(header::UPGRADE)).filter(|p| !p.eq_ignore_ascii_case(b"h2c"))
}

/// The members of comma-separated list field values, in order, without
/// the whitespace around them and without empty ones, as bytes (see
/// [`members`] and [`value_members`]).
fn list_members<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> impl Iterator<Item = &'a [u8]> {
    values.into_iter().flat_map(|v| value_members(v.as_bytes()))
}

/// The members of one comma-separated list value (RFC 9110 §5.6.1), in
/// order, without the whitespace around them and without empty ones. A
/// comma inside a quoted string (§5.6.4) is part of its member
/// (`foo="a,100-continue"` is one; probe 305); a quoted string begins only
/// where a parameter's value does, after `=` (a stray `"` in a token,
/// `a"b, 100-continue`, hid the members after it; probe 306).
pub fn value_members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    // Most values hold no quote (every `Connection` a client sends): their
    // members end at the next comma, found as `split` finds it (the
    // quote-aware scan of every byte cost 190 instructions a request in
    // callgrind's shape a).
    let plain = !value.contains(&b'"');
    let mut rest = value;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let end = if plain {
                rest.iter().position(|&b| b == b',').unwrap_or(rest.len())
            } else {
                member_end(rest)
            };
            let member = rest[..end].trim_ascii();
            rest = rest.get(end + 1..).unwrap_or_default();
            if !member.is_empty() {
                return Some(member);
            }
        }
        None
    })
}

/// Where the first member of `value` ends: at its first comma outside a
/// quoted string, or at the end (see [`value_members`]).
fn member_end(value: &[u8]) -> usize {
    let (mut quoted, mut escaped) = (false, false);
    // The last byte outside a quoted string that is not whitespace.
    let mut last = 0u8;
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' if quoted => quoted = false,
            b'"' if last == b'=' => quoted = true,
            b',' if !quoted => return i,
            _ => {}
        }
        if !quoted && !b.is_ascii_whitespace() {
            last = b;
        }
    }
    value.len()
}

/// The [`offers`] in one value; `None` when there is none.
fn upgrade_offers(headers: &HeaderMap) -> Option<HeaderValue> {
    let offers: Vec<&[u8]> = offers(headers).collect();
    if offers.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&offers.join(&b", "[..])).ok()
}

/// Checks a 101 against the `Upgrade` of the request it answers, as
/// forwarded (the client's offers but `h2c`). RFC 9110 §7.8:
/// a server that sends 101 MUST send `Upgrade` naming the new protocols,
/// and MUST NOT switch to one the client did not offer. Relayed anyway, the
/// connection became a tunnel the client had not asked for, and its next
/// request, `Proxy-Authorization` and all, went to the origin unread.
///
/// # Errors
/// What is wrong with the 101, for the 502's details.
pub fn check_switch(offered: &HeaderValue, response: &HeaderMap) -> Result<(), &'static str> {
    // Each offer, whole and by its name, in a set: an answer checked
    // against every offer was offers × answers, and an origin answering a
    // request's 7,000 offers with 27,000 names took 3.7 s of a runtime
    // thread, with a head under the default 64 KiB (probe 221).
    let offers: Vec<&[u8]> = list_members([offered]).filter(|p| !p.eq_ignore_ascii_case(b"h2c")).collect();
    let whole: HashSet<Folded<'_>> = offers.iter().map(|&o| Folded(o)).collect();
    let names: HashSet<Folded<'_>> =
        offers.iter().filter_map(|o| o.split(|&b| b == b'/').next()).map(Folded).collect();
    let mut named = false;
    for answer in list_members(response.get_all(header::UPGRADE)) {
        named = true;
        // `protocol-name ["/" protocol-version]`, without regard to case;
        // an answer without a version matches an offer of that name with
        // one.
        let offered = if answer.contains(&b'/') { &whole } else { &names };
        if !offered.contains(&Folded(answer)) {
            return Err("101 to a protocol the client did not offer");
        }
    }
    if named { Ok(()) } else { Err("101 without Upgrade") }
}

/// Bytes compared and hashed without regard to ASCII case, for sets of
/// tokens a peer chose (under std's keyed hasher when the peer decides how
/// many there are).
#[derive(Clone, Copy)]
struct Folded<'a>(&'a [u8]);

impl PartialEq for Folded<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(other.0)
    }
}

impl Eq for Folded<'_> {}

impl std::hash::Hash for Folded<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut lower = [0u8; 32];
        for chunk in self.0.chunks(lower.len()) {
            let lower = &mut lower[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            state.write(lower);
        }
        state.write_usize(self.0.len());
    }
}

/// Whether `Connection` says `close` (in any of its fields, obs-text and
/// all).
pub fn closes(headers: &HeaderMap) -> bool {
    connection_lists(headers, "close")
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    members(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether `Connection` asks to close the connection in a field hyper does
/// not read: hyper reads each field as text and skips one with a byte
/// outside ASCII (obs-text), so `Connection: close, caf\xe9` kept the
/// connection open (RFC 9112 §9.6: the server closes after its answer).
/// Looked for only when a field is not text.
pub fn close_hidden_from_hyper(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| v.to_str().is_err()) && closes(headers)
}

/// The members of the comma-separated list fields `name`, without the
/// whitespace around them and without empty ones, as bytes: a field with a
/// byte outside ASCII (obs-text, which hyper lets through) is still read for
/// its other members; read as text, the whole field was skipped, and the
/// fields that `Connection: X-Hop, caf\xe9` names were forwarded.
fn members<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    list_members(headers.get_all(name))
}

/// The transfer codings a message's body still has once hyper decoded its
/// `chunked` framing (see [`strip_hop_by_hop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Codings {
    /// None: no `Transfer-Encoding`, or `chunked` alone.
    Plain,
    /// Others (`gzip` of `gzip, chunked`): they stay in `Transfer-Encoding`
    /// with the body, which only an HTTP/1.1 recipient may be sent.
    Kept,
    /// `chunked` more than once or not last (RFC 9112 §6.1), or a field
    /// that is not text: the body cannot be passed on as it was sent.
    Malformed,
}

/// `Connection` tokens up to which [`strip_hop_by_hop`] compares each field
/// name with each token; past it, it looks each token up among the names.
const LINEAR_TOKENS: usize = 8;

/// Removes hop-by-hop fields, and the `_` twins of those and of
/// `Content-Length` (see `underscore_twin`); keeps `Upgrade`
/// (and sets `Connection: upgrade`) when `upgrade` is true. With `Transfer-Encoding`, also removes
/// `Content-Length` (RFC 9112 §6.3: the chunks frame the body, and an
/// intermediary must not pass the length on), and says which codings the
/// body still has. A `Proxy-Status` member naming this proxy is removed too
/// (`drop_forged_proxy_status`); the field is noticed in the same pass
/// over the names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) -> Codings {
    let upgrade_value = if upgrade { upgrade_offers(headers) } else { None };
    let mut proxy_status = false;
    // One pass over the few names a message has, then a removal for each
    // one present: a hashed lookup for each of the ten names, most of them
    // absent, and a `HeaderName` made from each `Connection` token, were
    // 4.4k instructions per forwarded request (callgrind).
    let doomed: Vec<HeaderName> = {
        // Fields named by Connection, read before Connection goes away.
        // `keep-alive`, the usual token, names a field dropped anyway: left
        // out, the list stays empty and unallocated for most messages.
        let listed: Vec<&[u8]> = members(headers, &header::CONNECTION)
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive"))
            .collect();
        // Past a few tokens, each token is looked up among the names, at
        // most hyper's 100: each name against every token was tokens ×
        // fields, 15 times a plain request's cost at the default 64 KiB
        // head and 28 times at 1 MiB (probe 221). (A set of the tokens
        // instead, under std's keyed hasher, cost 12 times at 1 MiB with 5
        // fields; a set of at most 100 names needs no defence against
        // collisions: at worst a lookup compares with each name, as before.)
        let matched: Option<foldhash::HashSet<Folded<'_>>> = (listed.len() > LINEAR_TOKENS).then(|| {
            let names: foldhash::HashSet<Folded<'_>> =
                headers.keys().map(|n| Folded(n.as_str().as_bytes())).collect();
            listed.iter().filter_map(|&t| names.get(&Folded(t)).copied()).collect()
        });
        let named = |name: &HeaderName| match &matched {
            Some(set) => set.contains(&Folded(name.as_str().as_bytes())),
            None => listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str().as_bytes())),
        };
        headers
            .keys()
            .filter(|name| {
                proxy_status |= name.as_str() == "proxy-status";
                always_dropped(name) || underscore_twin(name) || named(name)
            })
            .cloned()
            .collect()
    };
    let chunked = doomed.contains(&header::TRANSFER_ENCODING);
    let codings = if chunked { undecoded_codings(headers) } else { Ok(None) };
    for name in &doomed {
        headers.remove(name);
    }
    if chunked {
        headers.remove(header::CONTENT_LENGTH);
    }
    let codings = match codings {
        Ok(None) => Codings::Plain,
        Ok(Some(v)) => {
            headers.insert(header::TRANSFER_ENCODING, v);
            Codings::Kept
        }
        Err(()) => Codings::Malformed,
    };
    if let Some(v) = upgrade_value {
        headers.insert(header::UPGRADE, v);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if proxy_status {
        drop_forged_proxy_status(headers);
    }
    codings
}

/// Replaces a `Content-Length` that lists one length several times
/// (`5, 5`, or two equal fields), which hyper accepts from an origin, with
/// that one length: RFC 9110 §8.6 lets a recipient do so, and passed on as
/// it was, it made clients such as Node's fail the response. A length
/// written with leading zeros (`010`) goes on without them.
///
/// Returns `false`, changing nothing, when the lengths differ or one is not
/// a length (digits only, RFC 9110 §8.6: `-5`, `+5`, `0x10`, `abc`, an
/// empty value, one past `i64`, which clients that count in signed 64 bits
/// as curl does misread: a body cut short passed as complete, probe 154):
/// the response is malformed (RFC 9112 §6.3). hyper refuses those where the length frames a body, not in the
/// answer to a `HEAD` or a `304`, which were passed on as they came (`5`
/// and `7` lost the field: probe 82).
pub fn single_content_length(headers: &mut HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else { return true };
    let length = |n: &[u8]| {
        let n = n.trim_ascii();
        if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(n).ok()?.parse::<i64>().ok()
    };
    let first = first.as_bytes();
    if values.next().is_none() && !first.contains(&b',') {
        // `010` is 10 (RFC 9110 §8.6: decimal digits), which a careless
        // recipient reading octal takes for 8 and the rest of the body for
        // the next message: it goes on as `10` (probe 194).
        let respelled = first.len() > 1 && first[0] == b'0';
        return match length(first) {
            Some(n) if respelled => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                true
            }
            found => found.is_some(),
        };
    }
    let lengths: Option<Vec<i64>> = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(length)
        .collect();
    match lengths.as_deref() {
        Some([n, rest @ ..]) if rest.iter().all(|m| m == n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(*n));
            true
        }
        _ => false,
    }
}

/// Whether the request's `Transfer-Encoding` names `chunked` other than once
/// at the end (RFC 9112 §6.1): a 400 whoever sent it.
pub fn transfer_coding_malformed(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING) && codings_malformed(headers)
}

/// Whether `Transfer-Encoding` is malformed (see [`scan_codings`]).
fn codings_malformed(headers: &HeaderMap) -> bool {
    scan_codings(headers, |_| {}).is_err()
}

/// Hands each member of `Transfer-Encoding` to `each`, in order; returns
/// whether the last is the `chunked` that hyper decoded. An error when the
/// field is malformed: a field that is not text, or `chunked` (by name:
/// `chunked;x=1` too) other than as that last member (one too many, or one
/// hyper did not take off). One pass without allocating: it runs before
/// the password check too, and collecting and joining the members first
/// cost about 25 ns each (a 64 KiB list 3.4 times a plain head's cost;
/// probe 221).
fn scan_codings<'a>(headers: &'a HeaderMap, mut each: impl FnMut(&'a [u8])) -> Result<bool, ()> {
    let mut last_chunked = false;
    let mut last_field = None;
    for field in headers.get_all(header::TRANSFER_ENCODING) {
        if field.to_str().is_err() {
            return Err(());
        }
        for coding in list_members([field]) {
            if last_chunked {
                return Err(());
            }
            last_chunked = named(coding, b"chunked");
            each(coding);
        }
        last_field = Some(field.as_bytes());
    }
    match (last_chunked, last_field.is_some_and(decoded_chunked)) {
        (true, false) => Err(()),
        (_, decoded) => Ok(decoded),
    }
}

/// Whether hyper decoded `chunked` from a message whose last
/// `Transfer-Encoding` field is `field`: `chunked` exactly as its last
/// member (hyper's own test). `chunked,` and `chunked;x=1` are read to the
/// close instead, chunks and all; taken for chunked here, the client got
/// the chunk framing as content.
fn decoded_chunked(field: &[u8]) -> bool {
    field.rsplit(|&b| b == b',').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a (trimmed) coding is `coding_name` by name, parameters or
/// not: `chunked`, `Chunked ;q=1`, `identity;q=1`.
fn named(coding: &[u8], coding_name: &[u8]) -> bool {
    let (name, rest) = coding.split_at(coding.len().min(coding_name.len()));
    name.eq_ignore_ascii_case(coding_name) && rest.trim_ascii_start().first().is_none_or(|&b| b == b';')
}

/// The transfer codings still on a body after hyper removed its `chunked`
/// framing: `gzip` of `Transfer-Encoding: gzip, chunked` (a response without
/// a final `chunked` is read to its close, and all its codings remain). They
/// must go on with the body, or the next hop takes gzip bytes for the
/// content. The value ends in `chunked`, the framing hyper puts on a body
/// sent with this field: left for hyper to append, it also went onto the
/// next field hyper wrote (`Connection: close, chunked`, a hyper 1.x bug).
/// `None` when nothing but `chunked` (and `identity`, which is no coding)
/// was applied; an error when the field is malformed (see
/// [`scan_codings`]: passed on, the next hop would decode a layer the body
/// does not have, or one too few).
fn undecoded_codings(headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let (mut value, mut last) = (Vec::new(), 0);
    let decoded = scan_codings(headers, |coding| {
        // `identity` is no coding (HTTP/1.1 dropped it; its registry entry
        // is reserved): left on as `identity, chunked`, it made clients that
        // take `chunked` only alone read the chunk framing as content until
        // the close (Python's http.client) or refuse the response (Go), and
        // an HTTP/1.0 client got a 502 for a body with nothing on it.
        // (By name: `identity;q=1` too, probe 260.)
        if named(coding, b"identity") {
            return;
        }
        last = value.len();
        value.extend_from_slice(coding);
        value.extend_from_slice(b", ");
    })?;
    if decoded {
        // The decoded `chunked` goes; one is put back at the end.
        value.truncate(last);
    }
    if value.is_empty() {
        return Ok(None);
    }
    value.extend_from_slice(b"chunked");
    HeaderValue::from_bytes(&value).map(Some).map_err(|_| ())
}

/// Removes the members of a received `Proxy-Status` that name this proxy.
///
/// RFC 9209 §2: origins must not send the field, and each intermediary adds
/// its own member. One named `authgate` can only be forged upstream (the
/// intermediaries between authgate and the origin do not know it by that
/// name), and would make an origin's 403 look like authgate's (README: the
/// two are never confused).
///
/// Looking for forgeries shape by shape did not hold: each way of reading
/// the field (line by line, the lines joined, a quote left open on one line,
/// a non-ASCII byte before the name, a Display String with an invisible
/// character in it, a Byte Sequence ...) let one through to some client
/// (probes 91 to 95). So each field line must be a list as RFC 9651 §4.2.1
/// reads it, of the members RFC 9209 §2 defines: a Token or a String, and
/// parameters. A field with a line that is not is dropped whole (a strict
/// client ignores it, a lenient one could find anything in it); lines that
/// each are join into a list of the same members. Then a member that holds
/// `authgate` in any case, in its name or its parameters, is removed, and
/// so are empty lines; the others stay, in order.
fn drop_forged_proxy_status(headers: &mut HeaderMap) {
    let name = HeaderName::from_static("proxy-status");
    let lines: Option<Vec<Vec<sf::Member<'_>>>> =
        headers.get_all(&name).iter().map(|v| sf::members(v.as_bytes())).collect();
    let Some(lines) = lines else {
        headers.remove(&name);
        return;
    };
    // The name anywhere in a member, its parameters too: a reader that
    // splits at every comma found `authgate; error=…` in a `details`
    // String (probe 96). (A String's escapes are a backslash before `"` or
    // `\`: none can split the name, so the text as written is searched.)
    let ours = |m: &sf::Member<'_>| {
        let n = PROXY_NAME.as_bytes();
        std::iter::once(m.text)
            .chain(m.bytes.iter().map(Vec::as_slice))
            .any(|t| t.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n)))
    };
    // (An empty line, joined by a client to the others, made a list no
    // strict parser reads: such lines go too.)
    if !lines.iter().any(Vec::is_empty) && !lines.iter().flatten().any(ours) {
        return;
    }
    let kept: Vec<&[u8]> = lines.iter().flatten().filter(|m| !ours(m)).map(|m| m.text).collect();
    let rebuilt = kept.join(&b", "[..]);
    let rest = (!kept.is_empty() && rebuilt.len() <= MAX_REBUILT).then(|| HeaderValue::from_bytes(&rebuilt));
    headers.remove(&name);
    if let Some(Ok(v)) = rest {
        headers.insert(name, v);
    }
}

/// The longest `Proxy-Status` rebuilt of a field with a forgery in it: a
/// forged field of 200 KB came out longer than it went in (its members
/// joined by `", "`), beyond what clients take.
const MAX_REBUILT: usize = 8192;

/// The part of RFC 9651 (Structured Field Values) that `Proxy-Status`
/// (RFC 9209) uses, read strictly.
mod sf {
    /// A list member: its text as written.
    pub struct Member<'a> {
        pub text: &'a [u8],
        /// Its parameters' Byte Sequences, decoded.
        pub bytes: Vec<Vec<u8>>,
    }

    /// The members of `line`, a list of Tokens and Strings with parameters
    /// (RFC 9651 §4.2.1; no inner lists), or `None` when it is not one.
    /// Parameter values are Tokens, Strings, Integers, Decimals, Booleans
    /// or Byte Sequences (not Display Strings).
    pub fn members(line: &[u8]) -> Option<Vec<Member<'_>>> {
        let mut out = Vec::new();
        let mut at = skip(line, 0, b" \t");
        if at == line.len() {
            return Some(out);
        }
        loop {
            let start = at;
            let mut bytes = Vec::new();
            at = parameters(line, item_end(line, at)?, &mut bytes)?;
            out.push(Member { text: &line[start..at], bytes });
            at = skip(line, at, b" \t");
            match line.get(at) {
                None => return Some(out),
                Some(b',') => {
                    at = skip(line, at + 1, b" \t");
                    // A comma must be followed by a member.
                    line.get(at)?;
                }
                Some(_) => return None,
            }
        }
    }

    fn skip(line: &[u8], mut at: usize, what: &[u8]) -> usize {
        while line.get(at).is_some_and(|b| what.contains(b)) {
            at += 1;
        }
        at
    }

    /// Where a member's item, a Token or a String, ends.
    fn item_end(line: &[u8], at: usize) -> Option<usize> {
        match line.get(at)? {
            b'"' => string_end(line, at),
            c if c.is_ascii_alphabetic() || *c == b'*' => Some(token_end(line, at)),
            _ => None,
        }
    }

    fn token_end(line: &[u8], at: usize) -> usize {
        let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(b);
        at + line[at..].iter().take_while(|b| token(b)).count()
    }

    /// Where a String that opens at `at` ends (its only escapes are `\"`
    /// and `\\`, its characters printable ASCII).
    fn string_end(line: &[u8], at: usize) -> Option<usize> {
        let mut i = at + 1;
        loop {
            match *line.get(i)? {
                b'\\' if matches!(line.get(i + 1), Some(b'"' | b'\\')) => i += 2,
                b'"' => return Some(i + 1),
                b'\\' => return None,
                0x20..=0x7e => i += 1,
                _ => return None,
            }
        }
    }

    /// Parameters from `at`: `;` key [`=` value], each; where they end.
    /// Byte Sequences are decoded into `bytes`.
    fn parameters(line: &[u8], mut at: usize, bytes: &mut Vec<Vec<u8>>) -> Option<usize> {
        while line.get(at) == Some(&b';') {
            at = skip(line, at + 1, b" ");
            let key = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(b);
            match line.get(at) {
                Some(c) if c.is_ascii_lowercase() || *c == b'*' => {}
                _ => return None,
            }
            at += line[at..].iter().take_while(|b| key(b)).count();
            if line.get(at) == Some(&b'=') {
                let end = value_end(line, at + 1)?;
                if line.get(at + 1) == Some(&b':') {
                    bytes.push(decoded(&line[at + 2..end - 1])?);
                }
                at = end;
            }
        }
        Some(at)
    }

    /// A Byte Sequence's bytes, or `None` when it is not base64 (RFC 9651
    /// §4.2.7: the parse fails; padding may be left out, pad bits may be
    /// set). Kept as written, `:YXV0aGdhdGU=A:` went through, and lenient
    /// decoders read `authgate` from it (probe 98).
    fn decoded(base64: &[u8]) -> Option<Vec<u8>> {
        use base64::Engine;
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
                .with_decode_allow_trailing_bits(true),
        );
        lenient.decode(base64).ok()
    }

    /// The end of a parameter's value: a bare item other than a Display
    /// String.
    fn value_end(line: &[u8], at: usize) -> Option<usize> {
        match *line.get(at)? {
            b'"' => string_end(line, at),
            b'?' => matches!(line.get(at + 1), Some(b'0' | b'1')).then_some(at + 2),
            b':' => {
                let base64 = |b: &u8| b.is_ascii_alphanumeric() || b"+/=".contains(b);
                let end = at + 1 + line[at + 1..].iter().take_while(|b| base64(b)).count();
                (line.get(end) == Some(&b':')).then_some(end + 1)
            }
            c if c == b'-' || c.is_ascii_digit() => {
                let digits = |from: usize| line[from..].iter().take_while(|b| b.is_ascii_digit()).count();
                let start = if c == b'-' { at + 1 } else { at };
                let whole = digits(start);
                if whole == 0 || whole > 15 {
                    return None;
                }
                let end = start + whole;
                if line.get(end) == Some(&b'.') {
                    let fraction = digits(end + 1);
                    return (whole <= 12 && (1..=3).contains(&fraction)).then_some(end + 1 + fraction);
                }
                Some(end)
            }
            c if c.is_ascii_alphabetic() || c == b'*' => Some(token_end(line, at)),
            _ => None,
        }
    }
}

/// Appends our `Via` entry for a message received with `version`.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    let v = match version {
        Version::HTTP_10 => "1.0 authgate",
        Version::HTTP_09 => "0.9 authgate",
        _ => "1.1 authgate",
    };
    headers.append(header::VIA, HeaderValue::from_static(v));
}

/// Whether a `Via` entry already names this proxy (a forwarding loop).
pub fn via_names_us(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .flat_map(|v| via_entries(v.as_bytes()))
        .filter_map(|entry| entry.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).nth(1))
        .any(|received_by| host_of(received_by).eq_ignore_ascii_case(PROXY_NAME.as_bytes()))
}

/// A `Via` entry's received-by without its port (RFC 9110 §7.6.3:
/// `uri-host [ ":" port ]`): `authgate:3128` names a host `authgate` as
/// `authgate` does. A colon in anything else (an IPv6 literal, a
/// pseudonym) is left alone.
fn host_of(received_by: &[u8]) -> &[u8] {
    match received_by.iter().rposition(|&b| b == b':') {
        Some(colon) if received_by[colon + 1..].iter().all(u8::is_ascii_digit) => &received_by[..colon],
        _ => received_by,
    }
}

/// The entries of a `Via` line: split at the commas outside its comments
/// (RFC 9110 §7.6.3 and §5.6.5: a comment may hold commas, nested comments
/// and quoted pairs). Split at every comma, `1.1 cache (Squid, via
/// authgate pool)` had an entry `via authgate pool)`, whose second word
/// made a 508 of a request that had never passed here (probe 216).
fn via_entries(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (mut depth, mut escaped) = (0usize, false);
    line.split(move |&b| {
        match b {
            _ if escaped => escaped = false,
            b'\\' if depth > 0 => escaped = true,
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' => return depth == 0,
            _ => {}
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Proxy-Status` lines are read as RFC 9651 lists of Tokens and
    /// Strings with parameters, strictly: anything else is not a list.
    #[test]
    fn proxy_status_lines_are_read_strictly() {
        let names = |line: &str| {
            sf::members(line.as_bytes())
                .map(|ms| ms.iter().map(|m| String::from_utf8_lossy(m.text).into_owned()).collect::<Vec<_>>())
        };
        let some = |v: &[&str]| Some(v.iter().map(ToString::to_string).collect::<Vec<_>>());
        assert_eq!(names(""), some(&[]));
        assert_eq!(names("cdn"), some(&["cdn"]));
        assert_eq!(
            names(
                "cdn-7; error=connection_timeout; details=\"a, b\", \"Edge \\\"x\\\"\";rcode=-503;w=1.5;ok=?1;np=:aDI=:"
            ),
            some(&[
                "cdn-7; error=connection_timeout; details=\"a, b\"",
                "\"Edge \\\"x\\\"\";rcode=-503;w=1.5;ok=?1;np=:aDI=:"
            ])
        );
        for bad in [
            "cdn,",
            ", cdn",
            "cdn; details=\"a",
            "\"auth\\gate\"",
            "%\"authgate\"",
            "(authgate)",
            ":YXV0aGdhdGU=:",
            "42",
            "cdn; details=%\"x\"",
            "cdn; Details=1",
            "cdn x",
            "\u{430}uthgate",
            "cdn; details=\"\u{e9}\"",
            "cdn; by=:YXV0aGdhdGU=A:",
            "cdn; by=:=YXV0aGdhdGU=:",
            "cdn; by=:YXV0aGdhdGU===:",
            "cdn; by=:YXV0aGdhdGUAA:",
        ] {
            assert_eq!(names(bad), None, "{bad:?}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eDp5"),
            ("proxy-authenticate", "Basic realm=\"x\""),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("transfer-encoding", "chunked"),
            ("authorization", "Bearer t"),
            ("x-end", "kept"),
            ("x-end", "twice"),
        ]);
        assert_eq!(left_after_strip(&mut h), ["authorization", "x-end"]);
        assert_eq!(h.get_all("x-end").iter().count(), 2);
        let mut plain = map(&[("host", "a"), ("accept", "*/*")]);
        let _ = strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 2);
        // Any case, several Connection fields, empty list members.
        let mut mixed = map(&[
            ("connection", "Keep-Alive"),
            ("connection", ",CLOSE,, x-a"),
            ("keep-alive", "timeout=5"),
            ("X-A", "1"),
            ("close", "?"),
            ("host", "a"),
        ]);
        let _ = strip_hop_by_hop(&mut mixed, false);
        assert_eq!(mixed.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"]);
        // Past `LINEAR_TOKENS` tokens the names are looked up in a set: the
        // same fields go, in any case, a long token included.
        let long = "X-".to_string() + &"Long".repeat(40);
        let tokens: Vec<String> = (0..40).map(|i| format!("X-Tok-{i}")).chain([long.clone()]).collect();
        let connection = tokens.join(", ");
        let mut many = map(&[
            ("connection", &connection),
            ("x-tok-7", "1"),
            ("X-TOK-39", "2"),
            (&long.to_lowercase(), "3"),
            ("x-tok-40", "kept"),
            ("x-tok", "kept"),
            ("host", "a"),
        ]);
        assert_eq!(left_after_strip(&mut many), ["host", "x-tok", "x-tok-40"]);
    }

    /// The names `strip_hop_by_hop` leaves in `h`, sorted.
    fn left_after_strip(h: &mut HeaderMap) -> Vec<String> {
        let _ = strip_hop_by_hop(h, false);
        let mut names: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names
    }

    /// The length gate of [`underscore_twin`] lets through the twin of
    /// every dropped name that has a `-`, and of `Content-Length`.
    #[test]
    fn every_twin_passes_the_length_gate() {
        macro_rules! list {
            ($($n:literal),*) => { [$($n),*] };
        }
        let dropped = with_always_dropped!(list);
        for name in dropped.into_iter().chain(["content-length", "proxy-status"]) {
            if name.contains('-') {
                let twin = HeaderName::from_bytes(name.replace('-', "_").as_bytes()).unwrap();
                assert!(underscore_twin(&twin), "{twin}");
            }
        }
    }

    /// The `_` twins of framing, routing and hop-by-hop fields are dropped;
    /// other names with `_` go on.
    #[test]
    fn underscore_twins_of_framing_and_hop_by_hop_fields_are_dropped() {
        let mut h = map(&[
            ("transfer_encoding", "chunked"),
            ("content_length", "40"),
            // Not twins: `host-`, `-host`.
            ("host_", "kept"),
            ("proxy_authorization", "Basic eDp5"),
            ("proxy_connection", "close"),
            ("keep_alive", "timeout=5"),
            ("proxy_authenticate", "Basic realm=\"x\""),
            ("proxy_authentication_info", "x"),
            ("http2_settings", "AAMAAABkAAQAAP__"),
            // Read as `Proxy-Status`, an origin's forgery of authgate's own.
            ("proxy_status", "authgate; error=http_request_denied"),
            ("content-length", "5"),
            ("x_request_id", "kept"),
            ("content_type", "kept"),
            ("host", "a"),
        ]);
        let codings = strip_hop_by_hop(&mut h, false);
        assert!(matches!(codings, Codings::Plain), "the twin is not a transfer coding");
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "content_type", "host", "host_", "x_request_id"]);
        assert_eq!(h.get("content-length").map(|v| v.as_bytes()), Some(&b"5"[..]));
    }

    /// A byte outside ASCII (obs-text) in `Connection` does not hide the
    /// other fields it names; read as text, the whole field was skipped.
    #[test]
    fn a_connection_field_with_obs_text_still_names_its_fields() {
        for value in [&b"X-Hop, keep-aliv\xe5"[..], b"X-Hop, caf\xc3\xa9", b"\xff,\tX-Hop\t"] {
            let mut h = HeaderMap::new();
            h.append(header::CONNECTION, HeaderValue::from_bytes(value).unwrap());
            h.append("x-hop", HeaderValue::from_static("1"));
            h.append("x-end", HeaderValue::from_static("kept"));
            let _ = strip_hop_by_hop(&mut h, false);
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-end"], "{value:?}");
        }
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_bytes(b"Upgrade, \xe5").unwrap());
        h.append(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
    }

    #[test]
    fn transfer_codings_other_than_chunked_stay_with_the_body() {
        let coded = |pairs: &[(&str, &str)]| {
            let mut h = map(pairs);
            let codings = strip_hop_by_hop(&mut h, false);
            let kept = h
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>();
            assert_eq!(codings == Codings::Kept, !kept.is_empty(), "{pairs:?}");
            (codings, kept)
        };
        let te = |pairs: &[(&str, &str)]| coded(pairs).1;
        assert_eq!(coded(&[("transfer-encoding", "chunked")]), (Codings::Plain, vec![]));
        assert_eq!(coded(&[("accept", "*/*")]), (Codings::Plain, vec![]));
        // The codings left on the body, and the chunked framing it is sent with.
        assert_eq!(te(&[("transfer-encoding", "gzip, chunked")]), ["gzip, chunked"]);
        assert_eq!(te(&[("transfer-encoding", "gzip"), ("transfer-encoding", "Chunked")]), ["gzip, chunked"]);
        // A close-delimited response: every coding is still on the body.
        assert_eq!(te(&[("transfer-encoding", "gzip")]), ["gzip, chunked"]);
        assert_eq!(te(&[("transfer-encoding", "deflate,gzip , chunked")]), ["deflate, gzip, chunked"]);
        // Named by Connection or not, the codings are a property of the body.
        assert_eq!(
            te(&[("connection", "transfer-encoding"), ("transfer-encoding", "gzip, chunked")]),
            ["gzip, chunked"]
        );
        // Malformed: chunked twice or not last. Nothing is passed on, and
        // the caller refuses the message.
        for te in [
            "chunked, gzip",
            "chunked, chunked",
            "gzip, chunked, chunked",
            // What hyper does not decode as chunked, though named so.
            "chunked,",
            " chunked , ",
            "chunked;ext=1",
            "chunked;x=1, chunked",
            "chunked ; q=1, chunked",
        ] {
            assert_eq!(coded(&[("transfer-encoding", te)]), (Codings::Malformed, vec![]), "{te}");
        }
        assert_eq!(
            coded(&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]),
            (Codings::Malformed, vec![])
        );
        // hyper reads the last field: an empty one after `chunked` is not chunked.
        assert_eq!(
            coded(&[("transfer-encoding", "chunked"), ("transfer-encoding", "")]),
            (Codings::Malformed, vec![])
        );
        // `identity` is nothing, alone or among codings.
        for te in [
            "identity",
            "Identity",
            "identity, chunked",
            "identity,identity , chunked",
            "identity ;q=1, chunked",
        ] {
            assert_eq!(coded(&[("transfer-encoding", te)]), (Codings::Plain, vec![]), "{te}");
        }
        assert_eq!(te(&[("transfer-encoding", "gzip, IDENTITY, chunked")]), ["gzip, chunked"]);
        assert_eq!(
            te(&[("transfer-encoding", "identity"), ("transfer-encoding", "gzip")]),
            ["gzip, chunked"]
        );
        assert_eq!(te(&[("transfer-encoding", "identityx, chunked")]), ["identityx, chunked"]);
        // Empty members elsewhere are nothing (RFC 9110 §5.6.1).
        assert_eq!(te(&[("transfer-encoding", "gzip,,chunked")]), ["gzip, chunked"]);
        // Only `chunked` itself is chunked: not a longer or shorter name.
        assert_eq!(te(&[("transfer-encoding", "chunkedx, chunk , chunked")]), ["chunkedx, chunk, chunked"]);
        assert_eq!(te(&[("transfer-encoding", "chunked x;q=1, chunked")]), ["chunked x;q=1, chunked"]);
        let opaque = HeaderValue::from_bytes(b"g\xffzip, chunked").unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, opaque);
        assert_eq!(strip_hop_by_hop(&mut h, false), Codings::Malformed);
    }

    #[test]
    fn upgrade_is_kept_when_upgrading() {
        // h2c alone cannot be passed on (its HTTP2-Settings is hop-by-hop).
        for (upgrade, wanted) in [("h2c", false), ("H2C", false), ("h2c, websocket", true), ("", false)] {
            let h = map(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", upgrade)]);
            assert_eq!(wants_upgrade(&h), wanted, "{upgrade:?}");
        }
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
        // Every offer goes on, in one field, without h2c.
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "h2c"), ("upgrade", "websocket, foo/2")]);
        assert!(wants_upgrade(&h));
        let _ = strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get_all("upgrade").iter().collect::<Vec<_>>(), ["websocket, foo/2"]);
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(wants_upgrade(&h));
        let _ = strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn a_switch_must_name_an_offered_protocol() {
        let offered = HeaderValue::from_static("h2c, websocket, Foo/2");
        for (answer, ok) in [
            (None, Err("101 without Upgrade")),
            (Some(""), Err("101 without Upgrade")),
            (Some("websocket"), Ok(())),
            (Some("WebSocket"), Ok(())),
            (Some("foo"), Ok(())),
            (Some("foo/2"), Ok(())),
            (Some("websocket, foo/2"), Ok(())),
            (Some("foo/3"), Err("101 to a protocol the client did not offer")),
            (Some("h2c"), Err("101 to a protocol the client did not offer")),
            (Some("websocket, irc"), Err("101 to a protocol the client did not offer")),
        ] {
            let response = answer.map_or_else(HeaderMap::new, |a| map(&[("upgrade", a)]));
            assert_eq!(check_switch(&offered, &response), ok, "{answer:?}");
        }
        // Many offers and answers (looked up in sets), in any case; the
        // answers over several fields.
        let offers: Vec<String> =
            (0..2000).map(|i| format!("p{i}/{}", i % 3)).chain(["h2c".into()]).collect();
        let offered = HeaderValue::from_str(&offers.join(", ")).unwrap();
        let fine = map(&[("upgrade", "P1999/1, p5"), ("upgrade", &vec!["p7/1"; 500].join(","))]);
        assert_eq!(check_switch(&offered, &fine), Ok(()));
        for wrong in ["p1999/0", "p2000", "h2c", "p7/", "p7/1/1"] {
            let response = map(&[("upgrade", "p1/1"), ("upgrade", wrong)]);
            let refused = Err("101 to a protocol the client did not offer");
            assert_eq!(check_switch(&offered, &response), refused, "{wrong}");
        }
    }

    #[test]
    fn a_close_in_a_connection_field_hyper_skips_is_seen() {
        let field = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.append(header::CONNECTION, HeaderValue::from_bytes(v).unwrap());
            h
        };
        assert!(close_hidden_from_hyper(&field(b"close, caf\xe9")));
        assert!(close_hidden_from_hyper(&field(b"\xff,\tCLOSE")));
        // hyper reads these itself.
        assert!(!close_hidden_from_hyper(&field(b"close")));
        assert!(!close_hidden_from_hyper(&field(b"keep-alive, caf\xe9")));
    }

    #[test]
    fn via_loop_detection() {
        assert!(via_names_us(&map(&[("via", "1.1 other, 1.1 AuthGate")])));
        assert!(!via_names_us(&map(&[("via", "1.1 authgate-other")])));
        // received-by is a host and a port: `authgate:3128` is a host
        // named `authgate`, and was not seen as one.
        assert!(via_names_us(&map(&[("via", "1.1 AUTHGATE:3128")])));
        assert!(via_names_us(&map(&[("via", "1.0 authgate:")])));
        assert!(!via_names_us(&map(&[("via", "1.1 authgate:x")])));
        assert!(!via_names_us(&map(&[("via", "1.1 [::1]:3128, 1.1 authgate.example:3128")])));
        // A byte outside ASCII elsewhere in the field does not hide the loop.
        let mut h = HeaderMap::new();
        h.append(header::VIA, HeaderValue::from_bytes(b"1.1 caf\xe9, 1.1\tauthgate (x)").unwrap());
        assert!(via_names_us(&h));
        let mut h = HeaderMap::new();
        add_via(&mut h, Version::HTTP_11);
        assert!(via_names_us(&h));
        // Commas inside a comment do not end its entry (probe 216), nested
        // or escaped parentheses included; the entry after it still counts.
        for line in [
            "1.1 cache1 (Squid/5.7, via authgate pool)",
            "1.1 c ((a, b), authgate x)",
            "1.1 c (a \\) , x authgate)",
        ] {
            assert!(!via_names_us(&map(&[("via", line)])), "{line}");
            let looped = format!("{line}, 1.1 authgate");
            assert!(via_names_us(&map(&[("via", &looped)])), "{looped}");
        }
    }
}
