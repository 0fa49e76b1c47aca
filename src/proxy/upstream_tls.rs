//! TLS to origins, for absolute-form `https://` requests sent to a TLS
//! listener: rustls (*ring*), verifying against the system roots or
//! `[upstream] ca_file`.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::file::{
    MAX_FILE_BYTES, pem_begin_inside_line, pem_cut_short, pem_problem, pem_trusted_form, read_file, reason,
    without_boms,
};
use crate::config::shown_path;
use crate::error::{BadAnswer, ProxyError};
use crate::target::Host;

/// The connector for origins: trusting `ca_file` when given, else the
/// system's roots (read once per process).
///
/// Built with each configuration (a reload re-reads `ca_file`: a bundle
/// rotated in place applies then, where it was ignored until a restart
/// without a word, probe 111), with a session store of its own, which a
/// reload so drops (one connector kept for the system's roots kept its
/// sessions across reloads, probe 340).
///
/// # Errors
/// A message when `ca_file` cannot be read or holds no certificate, or
/// when `SSL_CERT_FILE` names what is not a regular file.
pub fn connector(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    match ca_file {
        Some(path) => Ok(with_roots(ca_roots(path)?)),
        None => {
            // (Two threads may both read them the first time; one set is kept.)
            if let Some((roots, _)) = SYSTEM.get() {
                return Ok(with_roots(roots.clone()));
            }
            let (roots, n) = system_roots()?;
            let (roots, _) = SYSTEM.get_or_init(|| (Arc::new(roots), n));
            Ok(with_roots(roots.clone()))
        }
    }
}

/// The system's roots, and how many there are; read once per process, once
/// read: a failed read is not kept, so that a later reload reads them
/// again (a failure at the first reload that needed them, with the cause
/// since removed, failed every later reload with the old message while
/// `check` said ok; probe 385).
static SYSTEM: OnceLock<(Arc<rustls::RootCertStore>, usize)> = OnceLock::new();

/// A connector that trusts no root: every `https://` origin fails
/// verification (what a configuration holds until its `[upstream]` is
/// checked).
pub fn trusting_nothing() -> Arc<ClientConfig> {
    with_roots(rustls::RootCertStore::empty())
}

fn with_roots(roots: impl Into<Arc<rustls::RootCertStore>>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The protocol versions are ring's defaults (TLS 1.2 and 1.3): no error.
    let mut config = match ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        Err(_) => ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The certificates of the PEM file at `path`.
fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let shown = shown_path(path);
    let pem = read_file(path).map_err(|e| format!("{shown}: cannot read: {}", reason(&e)))?;
    // A byte order mark, as some Windows editors write, hid the first
    // certificate (and one before a later certificate that one: see
    // `without_boms`).
    let pem = &*without_boms(&pem);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{shown}: {}", pem_problem(&e)))?;
        roots.add(cert).map_err(|e| match e {
            rustls::Error::InvalidCertificate(why) => {
                format!("{shown}: a certificate in it cannot be used: {}", why_not(&why))
            }
            other => format!("{shown}: a certificate in it cannot be used ({other})"),
        })?;
    }
    // After the sections are read: a cut inside one is told as such.
    if let Some(cut) = pem_cut_short(pem) {
        return Err(format!("{shown}: {cut}"));
    }
    if let Some(trusted) = pem_trusted_form(pem) {
        return Err(format!("{shown}: {trusted}"));
    }
    if let Some(skipped) = pem_begin_inside_line(pem) {
        return Err(format!("{shown}: {skipped}"));
    }
    if roots.is_empty() {
        let holds = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
        return Err(if pem.iter().all(u8::is_ascii_whitespace) {
            format!("{shown}: the file is empty")
        } else if holds(b"PRIVATE KEY-----") {
            format!("{shown}: no CA certificate found, only a private key")
        } else if !holds(b"-----BEGIN ") {
            format!(
                "{shown}: no CA certificate found: the file is not PEM (a DER certificate? \
                 `openssl x509 -inform der -in FILE -out FILE.pem` converts it)"
            )
        } else {
            format!("{shown}: no CA certificate found")
        });
    }
    Ok(roots)
}

/// The system's roots: what `SSL_CERT_FILE` and `SSL_CERT_DIR` name when
/// set, else the platform's bundle.
fn system_roots() -> Result<(rustls::RootCertStore, usize), String> {
    let found = match env_roots() {
        Some(found) => found?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found);
    // A file named on purpose with nothing usable in it is a mistake to
    // report (it passed `check` and started a proxy that verified nothing,
    // without a word, probe 113); no bundle on the platform is warned of
    // where it matters (see [`warn_if_no_system_roots`]).
    if added == 0 {
        let shown = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(|v| format!("{var}={}", shown_path(Path::new(&v))))
        };
        if let Some(set) = shown("SSL_CERT_FILE").or_else(|| shown("SSL_CERT_DIR")) {
            return Err(format!("{set}: no CA certificate found"));
        }
    }
    Ok((roots, added))
}

/// The certificates of what `SSL_CERT_FILE` and `SSL_CERT_DIR` (a list,
/// `:`-separated) name, `None` when neither is set; as rustls-native-certs
/// takes them (the file, then each directory's files, not recursing, each
/// file once however many links lead to it), but each file read as every
/// file authgate reads is ([`read_file`]: regular, at most 64 MiB, never
/// waited on), and at most [`MAX_FILE_BYTES`] of them all; a file that
/// cannot be read is an error naming it. (A directory's entries that are
/// no regular file, a subdirectory or a dangling link, are passed over, as
/// rustls-native-certs and OpenSSL pass them.) rustls-native-certs read
/// them as it found them: `SSL_CERT_FILE` as a FIFO kept the proxy from
/// starting and `/dev/zero` took memory until the allocator aborted (probe
/// 111); `/proc/kmsg`, a file of size 0 to `stat`, did the first and
/// `/proc/self/pagemap` the second, and so did such files, or a 1 GiB one,
/// in `SSL_CERT_DIR` (probe 380).
fn env_roots() -> Option<Result<Vec<CertificateDer<'static>>, String>> {
    use std::os::unix::fs::MetadataExt;
    // (Set and empty is as unset, for both: it was "SSL_CERT_FILE: : file
    // not found"; probe 385.)
    let file = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty());
    let dirs: Vec<std::path::PathBuf> = std::env::var_os("SSL_CERT_DIR")
        .map(|dirs| std::env::split_paths(&dirs).filter(|d| !d.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    if file.is_none() && dirs.is_empty() {
        return None;
    }
    let mut certs = Vec::new();
    let mut left = MAX_FILE_BYTES;
    let mut seen = std::collections::HashSet::new();
    // The certificates of one file; a bad PEM section is an error naming
    // it (it ended the file's certificates there without a word, where
    // `ca_file` is refused so; probe 385).
    let mut take = |var: &str, path: &Path, bytes: Vec<u8>| {
        left = left.checked_sub(bytes.len() as u64).ok_or_else(|| {
            format!(
                "{var}: {}: the certificate files hold more than {} MiB",
                shown_path(path),
                MAX_FILE_BYTES >> 20
            )
        })?;
        // As `ca_file` is read (see `ca_roots`): byte order marks hid
        // certificates, and a file cut short, or a BEGIN line with text
        // before it, lost some, without a word (probes 387, 388, 390). A TRUSTED CERTIFICATE (or a legacy label)
        // in `SSL_CERT_FILE` is refused by name, as in `ca_file`; in a
        // directory it is passed over, as the platform's bundle is read: a
        // Red Hat system's certificate directory holds a bundle of them
        // beside the plain one (probe 388). (A certificate no root can be
        // made of is passed over too, as in the platform's bundle.)
        let pem = &*without_boms(&bytes);
        let named = |problem: String| format!("{var}: {}: {problem}", shown_path(path));
        if var == "SSL_CERT_FILE"
            && let Some(trusted) = pem_trusted_form(pem)
        {
            return Err(named(trusted));
        }
        for cert in CertificateDer::pem_slice_iter(pem) {
            certs.push(cert.map_err(|e| named(pem_problem(&e)))?);
        }
        match pem_cut_short(pem).map(str::to_owned).or_else(|| pem_begin_inside_line(pem)) {
            Some(problem) => Err(named(problem)),
            None => Ok(()),
        }
    };
    if let Some(file) = &file {
        let path = Path::new(file);
        let read = std::fs::metadata(path).and_then(|meta| Ok((meta, read_file(path)?)));
        let (meta, bytes) = match read {
            Ok(read) => read,
            Err(e) => return Some(Err(format!("SSL_CERT_FILE: {}: {}", shown_path(path), reason(&e)))),
        };
        seen.insert((meta.dev(), meta.ino()));
        if let Err(e) = take("SSL_CERT_FILE", path, bytes) {
            return Some(Err(e));
        }
    }
    let unreadable =
        |path: &Path, e: &io::Error| format!("SSL_CERT_DIR: {}: {}", shown_path(path), reason(e));
    for dir in &dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            // A directory of the list that is not there is passed over, as
            // OpenSSL and Go pass it (probe 385).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Some(Err(unreadable(dir, &e))),
        };
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => return Some(Err(unreadable(dir, &e))),
            };
            // (Symlinks followed, as `openssl rehash` makes them; one that
            // leads nowhere, dangling, in a loop or through a file, is
            // passed over: probe 385.)
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(_) if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) => {
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Some(Err(unreadable(&path, &e))),
            };
            if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let bytes = match read_file(&path) {
                Ok(bytes) => bytes,
                Err(e) => return Some(Err(unreadable(&path, &e))),
            };
            if let Err(e) = take("SSL_CERT_DIR", &path, bytes) {
                return Some(Err(e));
            }
        }
    }
    Some(Ok(certs))
}

/// Warns when `https://` forwarding is possible (a TLS listener, no
/// `ca_file`) but the system roots were found empty: every origin would
/// fail verification. Called once logging runs (the roots are read with
/// the configuration, before it does).
pub fn warn_if_no_system_roots(snap: &crate::config::Snapshot) {
    let none_read = matches!(SYSTEM.get(), Some((_, 0)));
    if none_read && snap.upstream_ca.is_none() && !snap.server.tls.is_empty() {
        tracing::warn!(
            "no system CA certificates found: https:// forwarding on the TLS listener fails verification; set [upstream] ca_file"
        );
    }
}

/// Wraps `tcp` in TLS to `host`.
///
/// # Errors
/// `UpstreamTls` when the certificate does not verify, other handshake
/// failures as `UpstreamProtocol`, and `BadTarget` when the host is not a
/// valid TLS server name.
pub async fn handshake(
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> Result<TlsStream<OriginTcp>, ProxyError> {
    let tcp = OriginTcp::new(tcp);
    TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(|e| {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(why)) => ProxyError::UpstreamTls { reason: why_not(why) },
            Some(rustls::Error::AlertReceived(alert)) => ProxyError::UpstreamProtocol {
                bad: BadAnswer::TlsAlert(u8::from(*alert)),
                detail: alert_detail(*alert),
            },
            _ => ProxyError::UpstreamProtocol {
                bad: BadAnswer::Tls,
                detail: "TLS handshake with the origin failed",
            },
        }
    })
}

/// The TLS server name of `host`, checked before anything is dialled: a
/// name rustls refuses (`-a.example`) was a 400 only after the DNS query
/// and the TCP connection to the origin (probe 146).
///
/// # Errors
/// `BadTarget` when the host is not a valid TLS server name.
pub fn server_name(host: &Host) -> Result<ServerName<'static>, ProxyError> {
    match host {
        Host::Name(n) => {
            ServerName::try_from(n.clone()).map_err(|_| ProxyError::BadTarget { detail: "bad host name" })
        }
        // An IPv4-mapped address is dialled as its IPv4 address, and the
        // certificate is checked for that address too (probe 206: one for
        // 127.0.0.1 was refused for `[::ffff:127.0.0.1]`, one for the mapped
        // form taken).
        Host::Ip(ip) => Ok(ServerName::IpAddress(ip.to_canonical().into())),
    }
}

/// What a TLS alert from the origin says: under TLS 1.3 an origin that
/// requires a client certificate says so after the handshake, with the
/// first read (it was "connection failed", probe 146).
pub fn alert_detail(alert: rustls::AlertDescription) -> &'static str {
    match alert {
        rustls::AlertDescription::CertificateRequired => {
            "the origin requires a client certificate, which authgate does not send"
        }
        _ => "TLS handshake with the origin failed",
    }
}

/// Why a certificate was refused, in words for the client and the admin
/// (all were "could not be verified", which left the admin to guess
/// between an expired certificate, a wrong name and a CA not trusted,
/// probe 111).
fn why_not(e: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as E;
    match e {
        E::Expired | E::ExpiredContext { .. } => "it has expired",
        E::NotValidYet | E::NotValidYetContext { .. } => "it is not valid yet",
        E::NotValidForName | E::NotValidForNameContext { .. } => "it is not for this host name",
        E::UnknownIssuer => {
            "it is not issued by a CA authgate trusts (the system roots or [upstream] ca_file)"
        }
        #[allow(deprecated)]
        E::BadSignature
        | E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext { .. }
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "its signature is bad or of an algorithm authgate does not accept"
        }
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => "it is not for TLS servers",
        E::Revoked => "it is revoked",
        E::BadEncoding => "it cannot be parsed",
        // The README's common mistake, told as such (it was "it is not
        // valid", probe 146).
        E::Other(other) if matches!(other.0.downcast_ref(), Some(webpki::Error::CaUsedAsEndEntity)) => {
            "it is a CA certificate (CA:TRUE), which cannot be the origin's own"
        }
        _ => "it is not valid",
    }
}

/// An origin's TCP socket, plain or under TLS. A reset from the origin
/// under a write is taken as written, and noted (`reset`: the connection is
/// never pooled again): an origin that answers an upload early (a 413) and
/// closes without reading the rest is reset by its kernel, and the reset
/// failed hyper's next write of the body before it read the answer waiting
/// in the socket: the client got a 502 (probe 341: 6 of 30 curl uploads of
/// 3 MB; under TLS, probe 345: 16 of 30). Nothing is lost: a reset socket
/// takes nothing more, and its reads give what came before the reset, then
/// the end (an error when the reset came before the origin's FIN: see
/// [`UpstreamIo`]'s reads). Here, beneath rustls, which then thinks those records sent, as
/// beneath hyper for plain TCP (it was taken above the TLS layer for plain
/// TCP alone). Not once the connection is upgraded (see
/// [`UpstreamIo::upgraded`]): a tunnel's side sees its errors as they are.
#[derive(Debug)]
pub struct OriginTcp {
    tcp: TcpStream,
    /// A write was reset and taken as written.
    reset: Arc<AtomicBool>,
    /// The first such write met a reset before the origin's end (its FIN):
    /// what it had not sent yet is lost (see [`UpstreamIo`]'s reads).
    cut: bool,
    /// Whether a reset under a write is taken as written.
    past_writes: bool,
}

impl OriginTcp {
    /// `tcp`, a reset under a write taken as written.
    pub fn new(tcp: TcpStream) -> Self {
        OriginTcp { tcp, reset: Arc::default(), cut: false, past_writes: true }
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// `res` of a write of `offered` bytes, a reset taken as written.
    fn written(&mut self, offered: usize, res: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match res {
            Poll::Ready(Err(e))
                if self.past_writes
                    && offered > 0
                    && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) =>
            {
                // The first write the reset meets takes the socket's
                // error: `ECONNRESET`, or `EPIPE` when the origin's FIN came
                // first (Linux; later writes all get `EPIPE`).
                if !self.reset.swap(true, Ordering::Relaxed) {
                    self.cut = e.kind() == io::ErrorKind::ConnectionReset;
                }
                Poll::Ready(Ok(offered))
            }
            res => res,
        }
    }
}

impl AsyncRead for OriginTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for OriginTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.written(buf.len(), res)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.written(bufs.iter().map(|b| b.len()).sum(), res)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A connection to an origin: plain or TLS.
pub enum UpstreamIo {
    /// `http://`.
    Plain(OriginTcp),
    /// `https://`.
    Tls(Box<TlsStream<OriginTcp>>),
}

impl UpstreamIo {
    /// The socket under it.
    fn origin_tcp(&self) -> &OriginTcp {
        match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        }
    }

    /// Set when a reset under a write was taken as written (see
    /// [`OriginTcp`]).
    pub fn reset_flag(&self) -> Arc<AtomicBool> {
        self.origin_tcp().reset.clone()
    }

    /// The connection is upgraded: from now on its errors are passed on as
    /// they are (see [`OriginTcp`]).
    pub fn upgraded(&mut self) {
        let tcp = match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_mut().0,
        };
        tcp.past_writes = false;
    }
}

impl super::relay::Side for UpstreamIo {
    fn under_tls(&self) -> Option<&TcpStream> {
        match self {
            UpstreamIo::Plain(_) => None,
            UpstreamIo::Tls(s) => Some(s.get_ref().0.tcp()),
        }
    }

    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.origin_tcp().tcp())
    }
}

impl AsyncRead for UpstreamIo {
    /// On a plain connection whose reset was taken as written (see
    /// [`OriginTcp`]) before the origin's FIN, the end is an error: the
    /// write that met the reset took the socket's error, and its reads then
    /// give what came before the reset and an orderly end, while the
    /// origin's kernel dropped what it had not sent yet. An answer that ends with the connection was
    /// relayed cut short as complete (probe 354: 5 of 5 runs of a 200
    /// without a length lost megabytes, its chunked relay ended properly).
    /// Under TLS, rustls calls an end without `close_notify` an error
    /// itself (and an error here would come before the records it reads
    /// with it). A reset that came after the FIN (an origin that shut down
    /// its side, then closed with the upload unread) cut nothing.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // (The common case as it was: no bookkeeping per read.)
            UpstreamIo::Plain(s) if !s.cut => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Plain(s) => {
                let before = buf.filled().len();
                let res = ready!(Pin::new(&mut *s).poll_read(cx, buf));
                let end = res.is_ok() && buf.filled().len() == before && buf.remaining() > 0;
                match end {
                    true => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the origin reset the connection",
                    ))),
                    false => Poll::Ready(res),
                }
            }
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A plain connection to an origin, as `forward` makes one, and the
    /// origin's end of it, which has the first bytes sent on it and
    /// answers, then (after shutting down its side, a FIN, if `fin_first`)
    /// closes with them unread: its kernel resets.
    async fn reset_after_an_answer(fin_first: bool) -> UpstreamIo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut io = UpstreamIo::Plain(OriginTcp::new(client.unwrap()));
        let (mut origin, _) = accepted.unwrap();
        io.write_all(b"POST /upload HTTP/1.1\r\n").await.unwrap();
        origin.readable().await.unwrap();
        origin.write_all(b"HTTP/1.1 413 ").await.unwrap();
        if fin_first {
            origin.shutdown().await.unwrap();
        }
        drop(origin);
        io
    }

    /// Writes 4 KiB at a time, 10 ms apart, until one fails or the reset
    /// is noted (5 s at most).
    async fn write_until_reset(io: &mut UpstreamIo) -> io::Result<()> {
        let reset = io.reset_flag();
        for _ in 0..500 {
            io.write_all(&[b'x'; 4096]).await?;
            if reset.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the origin's reset was never met");
    }

    /// The reset is taken as written and noted, and the answer the origin
    /// sent before it is read, then the reset, not an orderly end (a plain
    /// origin; the TLS one is
    /// `https_upstream::an_early_answer_from_a_tls_origin_…`).
    #[tokio::test]
    async fn a_reset_under_a_write_is_taken_as_written_and_the_answer_before_it_is_read() {
        let mut io = reset_after_an_answer(false).await;
        write_until_reset(&mut io).await.unwrap();
        let mut answer = [0u8; 13];
        io.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 413 ");
        let end = io.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::ConnectionReset, "{end}");
    }

    /// A reset after the origin's FIN cut nothing: the answer, then the end.
    #[tokio::test]
    async fn a_reset_after_the_origins_end_leaves_its_answer_whole() {
        let mut io = reset_after_an_answer(true).await;
        write_until_reset(&mut io).await.unwrap();
        let mut answer = Vec::new();
        io.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 413 ");
    }

    /// Once upgraded, the same reset is an error, and nothing is noted.
    #[tokio::test]
    async fn an_upgraded_connection_sees_the_reset_as_it_is() {
        let mut io = reset_after_an_answer(false).await;
        io.upgraded();
        let err = write_until_reset(&mut io).await.unwrap_err();
        assert!(matches!(err.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe), "{err}");
        assert!(!io.reset_flag().load(Ordering::Relaxed));
    }
}
