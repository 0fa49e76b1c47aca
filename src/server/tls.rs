//! TLS on the listener (an "HTTPS proxy"): rustls with the *ring* provider,
//! TLS 1.2 and 1.3 only, ALPN `http/1.1`.
//!
//! The certificate lives behind an `ArcSwap` read by the certificate resolver
//! on every handshake, so a reload swaps it without touching open
//! connections; a bad new certificate fails the whole reload and the old one
//! keeps serving. So does an expired one (see [`DateProblem`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::records::Records;
use crate::config::file::{
    pem_begin_inside_line, pem_cut_short, pem_problem, pem_trusted_form, read_file, reason, without_boms,
};
use crate::config::shown_path;

/// Which of a TLS listener's two files a [`CertError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain (`cert`).
    Cert,
    /// The private key (`key`).
    Key,
}

/// Why a certificate and key could not be loaded, and the file at fault (so
/// that a config error points at that file's line).
#[derive(Debug)]
pub struct CertError {
    /// The file the problem is in.
    pub file: TlsFile,
    /// What is wrong, naming the file; never key material.
    pub message: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Loads a PEM certificate chain and private key (RSA, ECDSA or Ed25519).
///
/// # Errors
/// What is wrong and in which file, never key material.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let in_cert = |message: String| CertError { file: TlsFile::Cert, message };
    let in_key = |message: String| CertError { file: TlsFile::Key, message };
    let chain = load_chain(cert)?;
    let signer = off_runtime_if_costly(load_key(key)?);
    // The key's certificate further down the chain: the chain is out of
    // order (it was told as a key that does not match; probe 184).
    let matches_at = |chain: &[CertificateDer<'static>]| {
        chain
            .iter()
            .skip(1)
            .position(|c| CertifiedKey::new(vec![c.clone()], signer.clone()).keys_match().is_ok())
    };
    let certified = CertifiedKey::new(chain, signer.clone());
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            match matches_at(&certified.cert) {
                Some(n) => in_cert(format!(
                    "{}: the certificate of the key in {} is number {} of the chain, not the first: the \
                 server's own certificate must come first, then the ones that issued it",
                    shown_path(cert),
                    shown_path(key),
                    n + 2
                )),
                None => in_key(format!(
                    "{}: key does not match the certificate in {}",
                    shown_path(key),
                    shown_path(cert)
                )),
            }
        }
        // Anything else is about the certificate: rustls could not read it
        // (a bad encoding, an X.509 v1 certificate ...).
        other => in_cert(format!("{}: the first certificate cannot be used ({other})", shown_path(cert))),
    })?;
    // rustls does not read its dates: one with a date that is none (month
    // 13) loaded, even long expired, without a word (probe 123).
    if certified.cert.first().is_none_or(|c| !super::x509::is_certificate(c)) {
        return Err(in_cert(format!(
            "{}: the first certificate's dates cannot be read (clients refuse it: \"format error\")",
            shown_path(cert)
        )));
    }
    Ok(Arc::new(certified))
}

/// `key`, as an [`OffRuntime`] key when it is RSA, whose signatures cost
/// milliseconds. ECDSA and Ed25519 keys sign in tens of microseconds, about
/// what handing the work to another thread costs: off the runtime, a flood
/// of ClientHellos on a P-256 listener got 25 % fewer answers a second
/// (4,537 to 3,402), and the other clients' latency did not change (p99
/// 13.1 and 12.3 ms; probe 222's repro).
fn off_runtime_if_costly(key: Arc<dyn SigningKey>) -> Arc<dyn SigningKey> {
    if key.algorithm() == SignatureAlgorithm::RSA { Arc::new(OffRuntime(key)) } else { key }
}

/// A listener's key whose signatures are made off the async runtime.
///
/// A handshake's signature (4.5 ms of CPU with RSA 4096) was made on the
/// runtime thread that read the ClientHello: ClientHellos alone, which
/// anyone can send without a password, took both runtime threads with 32
/// at a time, and a plain listener's keep-alive requests waited 240 ms at
/// the median (probe 222). Now the thread making a signature first hands its
/// other tasks to another (`block_in_place`), and at most half the cores
/// sign at once ([`PLACES`]), as for argon2: the others wait, as tasks,
/// before the ClientHello is answered, or the second one after a
/// HelloRetryRequest (see [`handshake`] and [`after_retry`]).
#[derive(Debug)]
struct OffRuntime(Arc<dyn SigningKey>);

impl SigningKey for OffRuntime {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let signer = self.0.choose_scheme(offered)?;
        Some(Box::new(OffRuntimeSigner(signer)))
    }

    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'_>> {
        self.0.public_key()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
}

/// The [`Signer`] of an [`OffRuntime`] key.
#[derive(Debug)]
struct OffRuntimeSigner(Box<dyn Signer>);

impl Signer for OffRuntimeSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // Refused before `block_in_place`: each handshake that waits holds
        // a thread (see [`MAX_WAITING`]).
        off_runtime(&WAITING, || self.0.sign(message))
    }

    fn scheme(&self) -> SignatureScheme {
        self.0.scheme()
    }
}

/// `sign`, in a place of [`PLACES`], off the runtime.
///
/// In [`handshake`]'s answer to a ClientHello, and in [`after_retry`]'s to
/// a second one, the place is held already, and the thread is off the
/// runtime: `sign` runs at once. A signature asked for anywhere else waits
/// for a place on its thread, the thread's other tasks handed to another
/// (`block_in_place`), in the same queue as the handshakes; it is refused
/// at once when [`MAX_WAITING`] such signatures wait already: refused
/// before `block_in_place`, as each one that waits holds a thread. With
/// rustls 0.23 that is only a handshake whose key a reload made an RSA key
/// between its two ClientHellos ([`handshake`] looked at the key before the
/// first).
fn off_runtime(
    waiting: &Waiting,
    sign: impl FnOnce() -> Result<Vec<u8>, rustls::Error>,
) -> Result<Vec<u8>, rustls::Error> {
    if IN_PLACE.get().is_some() {
        return sign();
    }
    let Some(admitted) = waiting.admit() else {
        static FULL: crate::telemetry::Every = crate::telemetry::Every::new(10, QUEUE_FULL_LINE);
        if let Some(held) = FULL.pass() {
            tracing::warn!(waiting = MAX_WAITING, held_back = held, "{QUEUE_FULL_LINE}");
        }
        return Err(rustls::Error::General(QUEUE_FULL_LINE.into()));
    };
    in_place(|| {
        let _place = admitted.place();
        sign()
    })
}

/// Runs `work`, which takes milliseconds of CPU, on this thread, once it has
/// handed its other tasks to another (`block_in_place`). That needs a
/// multi-threaded runtime: a test's may be single-threaded, and `check`
/// signs nothing. And a thread to hand them to: when the system refuses
/// one (a limit on threads), tokio panics in the middle of the handing, its
/// worker's tasks left without a thread; every RSA handshake failed so
/// (probe 353). [`crate::blocking::block_in_place`] catches that and runs
/// the work here, holding up the tasks of this thread for its
/// milliseconds, and while the refusal lasts the work runs here at once.
/// (A look for room first, a thread made and ended, about 30 µs on every
/// RSA handshake, left a race with other processes that the catch covers
/// anyway; probe 357.)
fn in_place<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h)
            if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                && !crate::blocking::refusing() =>
        {
            crate::blocking::block_in_place("an RSA signature", work)
        }
        _ => work(),
    }
}

thread_local! {
    /// Whether this thread answers a ClientHello in a place of [`PLACES`]
    /// (see [`off_runtime`]), and if so, how many ClientHellos it answered
    /// there since it was marked (see [`CertSlot`]'s `resolve`).
    static IN_PLACE: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// This thread marked as answering a ClientHello in a place of [`PLACES`]
/// (`IN_PLACE`) until dropped, also if the answer panicked.
struct InPlace;

impl InPlace {
    fn mark() -> InPlace {
        IN_PLACE.set(Some(0));
        InPlace
    }

    /// The ClientHellos answered since the mark: rustls resolves the
    /// certificate once for each ClientHello it answers, resumed or not,
    /// before it signs.
    fn hellos(&self) -> u32 {
        IN_PLACE.get().unwrap_or(0)
    }
}

impl Drop for InPlace {
    fn drop(&mut self) {
        IN_PLACE.set(None);
    }
}

/// `work`, which answers ClientHellos, run in a place of [`PLACES`] held
/// by the caller, off the runtime (`in_place`), the thread marked; and the
/// ClientHellos it answered.
fn answered_in_place<T>(work: impl FnOnce() -> T) -> (T, u32) {
    in_place(|| {
        let marked = InPlace::mark();
        let done = work();
        (done, marked.hellos())
    })
}

/// Places to make an RSA signature in: half the cores, at least one, as for
/// argon2. Handshakes wait for one as tasks, without a thread (see
/// [`handshake`]), in one queue, first come first served, with the rare
/// signature that waits on its thread (see [`off_runtime`]).
static PLACES: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(super::limits::half_the_cores()));

/// The ClientHello on `stream`, read before anything is answered (see
/// [`handshake`]).
///
/// A first record that is no handshake message (application data, say) is
/// answered with an `unexpected_message` alert, as a whole handshake in
/// rustls answers it: rustls' ClientHello reader fails on it without one,
/// and the client saw the connection closed without a word. An alert from
/// the client is answered with nothing (RFC 8446 §6.2; probe 248).
///
/// # Errors
/// The stream's, or why what came is no ClientHello.
pub async fn client_hello(stream: TcpStream) -> std::io::Result<tokio_rustls::StartHandshake<Records>> {
    use tokio::io::AsyncWriteExt;
    let stream = Records::new(stream);
    let mut hello = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let e = match (&mut hello).await {
        Ok(start) => return Ok(start),
        Err(e) => e,
    };
    let unexpected = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()).is_some_and(|e| match e {
        rustls::Error::InappropriateMessage { got_type, .. } => *got_type != rustls::ContentType::Alert,
        rustls::Error::InappropriateHandshakeMessage { .. } => true,
        _ => false,
    });
    if let Some(mut stream) = hello.take_io().filter(|_| unexpected) {
        // A fatal (2) `unexpected_message` (10) alert, in the clear.
        let _ = stream.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a]).await;
    }
    Err(e)
}

/// The rest of the TLS handshake whose ClientHello `start` holds, with
/// `config`.
///
/// With an RSA key, whose signature costs milliseconds, the handshake first
/// waits for a place to sign in (`PLACES`), as a task, without a thread;
/// then the ClientHello is answered, and so signed, off the runtime
/// (`in_place`). The wait was on a thread of tokio's blocking pool, which
/// argon2, `/metrics` and reloads use too, and the runtime's own threads in
/// `block_in_place`: a flood of 520 ClientHellos at a time, sent without a
/// password, took all 512 of its threads, and logins on the plain listener
/// waited 0.5 to 10 s (probe 242). An answer that is a HelloRetryRequest
/// signs nothing: the signature comes with the client's second ClientHello,
/// read in a place too (`after_retry`).
///
/// # Errors
/// The handshake's.
pub async fn handshake(
    start: tokio_rustls::StartHandshake<Records>,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<tokio_rustls::server::TlsStream<Records>> {
    use tokio::io::AsyncWriteExt;
    let key = config.cert_resolver.resolve(start.client_hello());
    let costly = key.is_some_and(|k| k.key.algorithm() == SignatureAlgorithm::RSA);
    let (Answer { mut accept, refused, retry }, hellos) = if costly {
        let _place = PLACES.acquire().await.map_err(std::io::Error::other)?;
        answered_in_place(|| answer(start, config))
    } else {
        (answer(start, config), 0)
    };
    if let Some((error, last_words)) = refused {
        if let Some(stream) = accept.get_mut() {
            let _ = stream.write_all(&last_words).await;
        }
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error));
    }
    let Some(retry) = retry else {
        return accept.await;
    };
    if let Some(stream) = accept.get_mut() {
        stream.write_all(&retry).await?;
    }
    // (A second ClientHello sent with the first is answered already.)
    if costly && hellos < 2 { after_retry(accept).await } else { accept.await }
}

/// The rest of a handshake with an RSA key whose answer was a
/// HelloRetryRequest: each read of the client's records, until its second
/// ClientHello is answered (and signed for, unless the handshake resumes a
/// session), is made in a place of [`PLACES`], waited for as a task; the
/// rest, which signs nothing, as any handshake's. The first read waits
/// for a whole record (`whole_record`), which holds the whole second
/// ClientHello in practice; the next ones, once rustls may have read part
/// of a record, for any bytes. After [`READS_IN_PLACE`] reads, the rest of
/// the handshake goes as any's, its signature, if any, through
/// [`off_runtime`].
///
/// The signature was made where the second ClientHello was read, and
/// waited for its place on a thread, 64 at most ([`MAX_WAITING`]): under a
/// flood of such handshakes, the clients that need a HelloRetryRequest (an
/// `openssl` offering P-521 first, say) were refused, 19 of 40 (probe 249).
/// Now they wait in the same queue as every other handshake, without a
/// thread, until the handshake's deadline.
async fn after_retry(
    mut accept: tokio_rustls::Accept<Records>,
) -> std::io::Result<tokio_rustls::server::TlsStream<Records>> {
    use std::future::Future;
    use std::task::Poll;
    for read in 0..READS_IN_PLACE {
        if let Some(stream) = accept.get_ref() {
            let stream = stream.tcp();
            if read == 0 { whole_record(stream).await? } else { stream.readable().await? }
        }
        let place = PLACES.acquire().await.map_err(std::io::Error::other)?;
        // Polled here, by this task: off the runtime (`in_place`), with the
        // task's waker.
        let (polled, hellos) = std::future::poll_fn(|cx| {
            Poll::Ready(answered_in_place(|| std::pin::Pin::new(&mut accept).poll(cx)))
        })
        .await;
        drop(place);
        match polled {
            Poll::Ready(done) => return done,
            Poll::Pending if hellos > 0 => break,
            Poll::Pending => {}
        }
    }
    accept.await
}

/// The reads of a handshake made in a place after a HelloRetryRequest (see
/// [`after_retry`]): a second ClientHello in several records, or cut
/// across them, needs a few; each costs a turn in the queue and a thread
/// handed over, which a client sending its records a byte at a time would
/// otherwise have at will.
const READS_IN_PLACE: usize = 4;

/// Waits until the bytes `stream` has received, unread, hold a whole TLS
/// record after any ChangeCipherSpec ones (the second ClientHello, in
/// practice), or what rustls refuses at once (no record, the end): the
/// bytes are left for rustls to read.
///
/// Every read after a HelloRetryRequest was made in a place, off the
/// runtime: 300 clients that sent their second ClientHello a byte every
/// 10 ms made the proxy use 263 threads, against 15, and twice the CPU
/// (probe 252).
async fn whole_record(stream: &TcpStream) -> std::io::Result<()> {
    use std::io::ErrorKind::WouldBlock;
    loop {
        // (The end stays a readiness: rustls reads to it at once.)
        if stream.ready(tokio::io::Interest::READABLE).await?.is_read_closed() {
            return Ok(());
        }
        // Not yet whole: readiness cleared, so that the next wait is for
        // bytes that come later (unless some came since the look).
        let looked = stream.try_io(tokio::io::Interest::READABLE, || {
            if holds_whole_record(stream)? { Ok(()) } else { Err(WouldBlock.into()) }
        });
        match looked {
            Err(e) if e.kind() == WouldBlock => {}
            done => return done,
        }
    }
}

/// Whether the bytes `stream` has received, unread, hold what
/// [`whole_record`] waits for; looked at without reading them.
fn holds_whole_record(stream: &TcpStream) -> std::io::Result<bool> {
    // (A second ClientHello takes a few hundred bytes.)
    let mut head = [0u8; 2048];
    let n = peek_now(stream, &mut head)?;
    if n == 0 {
        return Ok(true);
    }
    Ok(match record_end(&head[..n]) {
        RecordEnd::At(end) if end > n && n == head.len() => {
            let mut all = vec![0u8; end];
            let n = peek_now(stream, &mut all)?;
            matches!(record_end(&all[..n]), RecordEnd::At(end) if end <= n)
        }
        RecordEnd::At(end) => end <= n,
        // (Hundreds of ChangeCipherSpec records in a row.)
        RecordEnd::Unknown => n == head.len(),
        RecordEnd::Now => true,
    })
}

/// The bytes `stream` has received, unread, copied into `buf` without
/// reading them (`MSG_PEEK`), now: `WouldBlock` when none have come.
fn peek_now(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::task::{Context, Poll, Waker};
    let mut buf = tokio::io::ReadBuf::new(buf);
    match stream.poll_peek(&mut Context::from_waker(Waker::noop()), &mut buf) {
        Poll::Ready(peeked) => peeked,
        Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
    }
}

/// Where the first record after any whole ChangeCipherSpec ones ends.
#[derive(Debug, PartialEq, Eq)]
enum RecordEnd {
    /// At this offset.
    At(usize),
    /// Not known until more bytes come.
    Unknown,
    /// No record: rustls refuses the bytes as they are.
    Now,
}

/// Where the first record after any whole ChangeCipherSpec ones ends in
/// `bytes`, the start of what a client sent.
fn record_end(bytes: &[u8]) -> RecordEnd {
    // rustls refuses a longer record at its header.
    const MAX_RECORD: usize = 16_384 + 2_048;
    let mut at = 0;
    loop {
        let Some(&[kind, _, _, high, low]) = bytes.get(at..at + 5) else {
            return RecordEnd::Unknown;
        };
        let len = usize::from(u16::from_be_bytes([high, low]));
        let end = at + 5 + len;
        match kind {
            _ if len > MAX_RECORD => return RecordEnd::Now,
            // ChangeCipherSpec, whole: the next record.
            20 if end <= bytes.len() => at = end,
            20..=23 => return RecordEnd::At(end),
            _ => return RecordEnd::Now,
        }
    }
}

/// What [`answer`] made of a ClientHello.
struct Answer {
    /// The rest of the handshake.
    accept: tokio_rustls::Accept<Records>,
    /// Why the records sent with the ClientHello end the handshake, and all
    /// that is to be sent before the close (the answer, then an alert).
    refused: Option<(rustls::Error, Vec<u8>)>,
    /// The answer, to be sent by [`handshake`], when it is a
    /// HelloRetryRequest.
    retry: Option<Vec<u8>>,
}

/// The answer to the ClientHello `start` holds, made with `config`, and the
/// records sent with it read.
///
/// Records that came in the same read as the ClientHello stayed unread
/// until more bytes came, rustls' reader having stopped at the ClientHello:
/// junk after a ClientHello was answered with nothing until
/// `header_read_timeout` (probe 248).
fn answer(start: tokio_rustls::StartHandshake<Records>, config: Arc<rustls::ServerConfig>) -> Answer {
    let (mut refused, mut retry) = (None, None);
    let accept = start.into_stream_with(config, |conn| {
        let error = conn.process_new_packets().err();
        let retried = conn.handshake_kind() == Some(rustls::HandshakeKind::FullWithHelloRetryRequest);
        if error.is_some() || retried {
            let mut queued = Vec::new();
            while conn.wants_write() && conn.write_tls(&mut queued).is_ok_and(|n| n > 0) {}
            match error {
                Some(e) => refused = Some((e, queued)),
                None => retry = Some(queued),
            }
        }
    });
    Answer { accept, refused, retry }
}

/// The warning, and the handshake's error, when [`MAX_WAITING`] handshakes
/// wait for a signature already.
const QUEUE_FULL_LINE: &str = "TLS handshake refused: too many handshakes wait for an RSA signature";

/// Signatures that may wait for a place on a thread, beyond those being
/// made; the next ones fail at once (closed, without an alert: rustls sends
/// none for a failed signature; probe 246). Only signatures made outside
/// [`handshake`]'s places come here waiting (see [`off_runtime`]; the
/// second ClientHello after a HelloRetryRequest came here until
/// [`after_retry`]), and each holds a thread of tokio's blocking pool (512
/// threads) while it waits: a flood of such handshakes takes 64 at most.
const MAX_WAITING: usize = 64;

/// The signatures waiting for a place on a thread (see [`off_runtime`]).
static WAITING: Waiting = Waiting::new();

/// A count of the signatures waiting for a place on their thread.
struct Waiting(std::sync::atomic::AtomicUsize);

impl Waiting {
    const fn new() -> Waiting {
        Waiting(std::sync::atomic::AtomicUsize::new(0))
    }

    /// A signature admitted to wait for a place, or `None` when
    /// [`MAX_WAITING`] wait already.
    fn admit(&self) -> Option<Admitted<'_>> {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.fetch_update(Relaxed, Relaxed, |n| (n < MAX_WAITING).then_some(n + 1)).ok()?;
        Some(Admitted(self))
    }
}

/// A signature admitted by [`Waiting::admit`]; counted until it has its
/// place.
struct Admitted<'a>(&'a Waiting);

impl Admitted<'_> {
    /// A place of [`PLACES`], waited for on this thread; `None` without a
    /// multi-threaded runtime to wait with (see [`in_place`]): the
    /// signature is then made where it is.
    fn place(self) -> Option<tokio::sync::SemaphorePermit<'static>> {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                h.block_on(PLACES.acquire()).ok()
            }
            _ => None,
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Largest certificate chain, in bytes of its TLS 1.3 handshake message,
/// that a listener takes. rustls clients hold the server's flight in a
/// 64 KiB buffer with its record headers and the messages around the chain:
/// with a P-256 key a chain of 65,107 bytes already failed every
/// handshake, 65,106 did not (probe 388); an RSA-4096 signature adds about
/// 440 bytes. This leaves 1.5 KB for those; Go clients take 64 KiB,
/// OpenSSL's 100 KiB, and a real chain (an RSA-4096 leaf and three
/// intermediates) is about 7 KB.
pub const MAX_CHAIN_BYTES: usize = 64_000;

/// The certificate chain in `cert` (leaf first), each certificate readable.
///
/// # Errors
/// What is wrong with the certificate file, naming it.
pub fn load_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let in_cert = |message: String| CertError { file: TlsFile::Cert, message };
    let cert_pem = read_file(cert)
        .map_err(|e| in_cert(format!("{}: cannot read certificate: {}", shown_path(cert), reason(&e))))?;
    // (A byte order mark before a BEGIN line skipped, as in `ca_file`: one
    // before an intermediate dropped it, and a chain of the leaf alone was
    // served with `check` saying ok; probe 389.)
    let cert_pem = without_boms(&cert_pem).into_owned();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| in_cert(format!("{}: bad PEM certificate: {}", shown_path(cert), pem_problem(&e))))?;
    if let Some(cut) = pem_cut_short(&cert_pem) {
        return Err(in_cert(format!("{}: bad PEM certificate: {cut}", shown_path(cert))));
    }
    if let Some(trusted) = pem_trusted_form(&cert_pem) {
        return Err(in_cert(format!("{}: {trusted}", shown_path(cert))));
    }
    if let Some(skipped) = pem_begin_inside_line(&cert_pem) {
        return Err(in_cert(format!("{}: {skipped}", shown_path(cert))));
    }
    if chain.is_empty() {
        return Err(in_cert(format!(
            "{}: no certificate found{}",
            shown_path(cert),
            holds_instead(&cert_pem, TlsFile::Cert)
        )));
    }
    // The chain as it goes out in a TLS 1.3 Certificate message (a context
    // byte, a 3-byte list length, each certificate with a 3-byte length and
    // 2 bytes of extensions), against what clients take (see
    // [`MAX_CHAIN_BYTES`]). A chain of the leaf 20,000
    // times (22 MB) loaded, and every handshake failed, seen only in
    // `authgate_tls_handshake_failures_total` (probe 380).
    let sent = chain.iter().fold(4usize, |n, c| n.saturating_add(c.len() + 5));
    if sent > MAX_CHAIN_BYTES {
        return Err(in_cert(format!(
            "{}: the chain is {sent} bytes in a handshake, more than clients take ({MAX_CHAIN_BYTES}: \
             rustls clients fail a little below 64 KiB, Go's past it, OpenSSL's past 100 KiB): leave out \
             the root and what does not issue the certificate",
            shown_path(cert)
        )));
    }
    // rustls reads the first certificate only; the others went out unread,
    // and a corrupt one failed every handshake (probe 118).
    if let Some(n) = chain.iter().skip(1).position(|c| !super::x509::is_certificate(c)) {
        return Err(in_cert(format!(
            "{}: certificate {} of the chain is not an X.509 certificate authgate can read (its DER structure or its dates)",
            shown_path(cert),
            n + 2
        )));
    }
    Ok(chain)
}

/// What a file read for `want` that has none in PEM holds instead, for
/// the message: nothing; the other file of the pair, in PEM or in binary
/// DER; or `want` itself in DER, which an `openssl` command writes as PEM.
/// (A file of the pair named for both was told "the wrong way round", and a
/// DER file nothing, then an `openssl` command that fails on a DER file of
/// the other kind; probes 161, 164.)
fn holds_instead(bytes: &[u8], want: TlsFile) -> String {
    let pem = |marker: &[u8]| bytes.windows(marker.len()).any(|w| w == marker);
    // (Any key's shape, one authgate cannot use included: it is told so
    // once written as PEM. The first certificate of a chain in DER.)
    let der_key = || PrivateKeyDer::try_from(bytes).is_ok();
    let der_cert = || super::x509::is_certificate(first_der(bytes));
    let convert = |tool: &str, what: &str| {
        format!(
            " (it is {what} in binary DER, not PEM: `openssl {tool} -inform DER -in FILE -out FILE.pem` writes \
             it as PEM)"
        )
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return " (the file is empty)".to_owned();
    }
    match want {
        TlsFile::Cert if pem(b"PRIVATE KEY-----") => {
            " (it holds a private key: is this the `key` file?)".into()
        }
        TlsFile::Cert if der_cert() => convert("x509", "a certificate"),
        TlsFile::Cert if der_key() => " (it is a private key in binary DER: is this the `key` file?)".into(),
        TlsFile::Key if pem(b"-----BEGIN CERTIFICATE-----") => {
            " (it holds a certificate: is this the `cert` file?)".into()
        }
        TlsFile::Key if der_key() => convert("pkey", "a private key"),
        TlsFile::Key if der_cert() => " (it is a certificate in binary DER: is this the `cert` file?)".into(),
        _ if !bytes.is_ascii() => " (it is binary, not PEM text)".into(),
        _ => String::new(),
    }
}

/// The first DER element of `bytes` (all of them when its length cannot be
/// read): a chain of certificates in DER is several, one after the other.
fn first_der(bytes: &[u8]) -> &[u8] {
    let len = match bytes.get(1) {
        Some(&n) if n < 0x80 => Some((2, usize::from(n))),
        Some(&n) if (0x81..=0x84).contains(&n) => {
            let count = usize::from(n - 0x80);
            bytes.get(2..2 + count).map(|b| (2 + count, b.iter().fold(0, |l, &d| (l << 8) | usize::from(d))))
        }
        _ => None,
    };
    len.and_then(|(head, body)| bytes.get(..head.checked_add(body)?)).unwrap_or(bytes)
}

/// The private key in `key`, as a signer. [`load_certified_key`] reads it
/// only once the certificate is usable; `check` calls this too, so that a
/// bad key is reported beside a bad certificate (probe 147).
///
/// # Errors
/// What is wrong with the key file, naming it.
pub fn load_key(key: &Path) -> Result<Arc<dyn rustls::sign::SigningKey>, CertError> {
    let in_key = |message: String| CertError { file: TlsFile::Key, message };
    let key_pem = read_file(key)
        .map_err(|e| in_key(format!("{}: cannot read private key: {}", shown_path(key), reason(&e))))?;
    let key_pem = without_boms(&key_pem).into_owned();
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        // rustls skips PEM sections it does not know, an encrypted key's
        // among them, and then finds "no items".
        in_key(if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
            format!(
                "{}: the private key is encrypted (passphrase-protected), which authgate cannot read; write it decrypted (`openssl pkey -in KEY -out KEY.plain`) and keep that file private",
                shown_path(key)
            )
        } else if matches!(e, rustls::pki_types::pem::Error::NoItemsFound) {
            // ("cannot read private key: no items found" read as a failed
            // read, and a certificate there as nothing; probe 160.)
            format!(
                "{}: no private key found{}",
                shown_path(key),
                holds_instead(&key_pem, TlsFile::Key)
            )
        } else {
            format!("{}: cannot read private key: {}", shown_path(key), pem_problem(&e))
        })
    })?;
    let signer = ring::sign::any_supported_type(&der).map_err(|_| {
        // rustls says it could not read the key "as RSA, ECDSA, or EdDSA",
        // also of an ECDSA key on P-521 (probe 106) and of an RSA key of
        // 8192 bits (probe 108): name what is taken instead. ring signs with
        // RSA keys whose primes are a multiple of 512 bits long: "2048 to
        // 4096" named 2560 and 3000 bits too, which it refuses (probe 219).
        // A key whose bytes are cut or damaged is refused the same way: ring
        // does not say which (probe 340).
        in_key(format!(
            "{}: unsupported private key (or a damaged one); authgate takes RSA keys of 2048, 3072 or 4096 bits \
                 (public exponent 65537, not RSA-PSS), ECDSA keys on P-256 or P-384 (a named curve), \
                 and Ed25519 keys",
            shown_path(key)
        ))
    })?;
    Ok(signer)
}

/// A certificate used outside its validity period, which every client that
/// checks certificates refuses.
///
/// An expired certificate fails a reload that would put it in place of
/// another (probe 118: one replaced a working certificate). At the start
/// and in `authgate check` it is a warning only: a restart with it would
/// otherwise take down the plain listeners too. A certificate not valid
/// yet is a warning everywhere: one issued a moment ago by a machine
/// whose clock is ahead is valid a moment later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateProblem {
    /// `notAfter` has passed.
    Expired(SystemTime),
    /// `notBefore` has not come yet.
    NotYetValid(SystemTime),
}

impl DateProblem {
    /// The problem of a certificate valid over `v` at `now`, if any.
    fn of_validity(v: &super::x509::Validity, now: SystemTime) -> Option<DateProblem> {
        if now > v.not_after {
            Some(DateProblem::Expired(v.not_after))
        } else if now < v.not_before {
            Some(DateProblem::NotYetValid(v.not_before))
        } else {
            None
        }
    }

    /// Whether the certificate has expired (not merely not valid yet).
    pub fn expired(&self) -> bool {
        matches!(self, DateProblem::Expired(_))
    }
}

impl fmt::Display for DateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DateProblem::Expired(t) => {
                write!(f, "the certificate expired on {}; TLS clients refuse it", super::x509::rfc3339(*t))
            }
            DateProblem::NotYetValid(t) => write!(
                f,
                "the certificate is not valid until {}; TLS clients refuse it until then",
                super::x509::rfc3339(*t)
            ),
        }
    }
}

/// A [`DateProblem`] of one certificate of a listener's chain. Only the leaf
/// was looked at: a renewal whose new chain carried an expired intermediate
/// replaced a working one at a reload, and every verifying client failed
/// (probe 184).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainDateProblem {
    /// The certificate's place in the chain: 0 for the leaf.
    pub index: usize,
    /// What is wrong with its dates.
    pub problem: DateProblem,
    /// The certificate is the chain's last (but for a root sent along), past
    /// the second: if
    /// it is a cross-signed root, clients that trust the root it leads to
    /// stop before it, and the way out is to leave it out of the file. It
    /// is still refused at a reload: by position alone it cannot be told
    /// from an intermediate every client needs (probe 188: a leaf sent
    /// twice, then its expired issuer, was let through and failed every
    /// client).
    pub last: bool,
}

impl ChainDateProblem {
    /// The date problems of `chain` (leaf first) at `now`, in chain order.
    /// A self-issued certificate past the leaf (a root sent along) is not
    /// looked at: clients take a root from their own trust store, not from
    /// the chain, so an expired one sent along fails no handshake.
    pub fn of_chain<C: AsRef<[u8]>>(chain: &[C], now: SystemTime) -> Vec<ChainDateProblem> {
        // The last that is not a root sent along.
        let last =
            chain.iter().rposition(|c| super::x509::validity(c.as_ref()).is_none_or(|v| !v.self_issued));
        checked_by_clients(chain)
            .filter_map(|(index, v)| {
                let problem = DateProblem::of_validity(&v, now)?;
                let last = index >= 2 && Some(index) == last;
                Some(ChainDateProblem { index, problem, last })
            })
            .collect()
    }
}

impl fmt::Display for ChainDateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == 0 {
            return self.problem.fmt(f);
        }
        let place = self.index + 1;
        if let (DateProblem::Expired(t), true) = (self.problem, self.last) {
            return write!(
                f,
                "certificate {place} of the chain, its last, expired on {}; TLS clients refuse the chain \
                 unless they trust the root it leads to (if it is a cross-signed root, leave it out of the file)",
                super::x509::rfc3339(t)
            );
        }
        match self.problem {
            DateProblem::Expired(t) => write!(
                f,
                "certificate {place} of the chain (an intermediate) expired on {}; TLS clients refuse the chain",
                super::x509::rfc3339(t)
            ),
            DateProblem::NotYetValid(t) => write!(
                f,
                "certificate {place} of the chain (an intermediate) is not valid until {}; TLS clients refuse the \
                 chain until then",
                super::x509::rfc3339(t)
            ),
        }
    }
}

/// One line per certificate of a TLS listener's chain that is outside its
/// validity period now: `path: problem`.
pub fn date_warnings(tls: &[crate::config::TlsListener]) -> Vec<String> {
    let now = SystemTime::now();
    tls.iter()
        .flat_map(|t| {
            ChainDateProblem::of_chain(&t.certified.cert, now)
                .into_iter()
                .map(|p| format!("{}: {p}", shown_path(&t.cert)))
        })
        .collect()
}

/// Logs [`date_warnings`] (at the start, and after each reload, for as long
/// as the files hold such a certificate).
pub fn warn_if_out_of_date(tls: &[crate::config::TlsListener]) {
    for line in date_warnings(tls) {
        tracing::warn!(problem = &*line, "TLS listener certificate outside its validity period");
    }
}

/// The live certificate of one TLS listener, and the address it was bound
/// on.
pub struct CertSlot {
    key: ArcSwap<CertifiedKey>,
    bound: OnceLock<SocketAddr>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertSlot")
    }
}

impl CertSlot {
    /// A slot holding `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertSlot { key: ArcSwap::new(key), bound: OnceLock::new() })
    }

    /// Replaces the certificate for new handshakes.
    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.key.store(key);
    }

    /// Records the address the listener was bound on (the port the system
    /// chose for a `:0` one); only the first call counts.
    pub fn bound_on(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// The address the listener was bound on, once it was.
    pub fn bound(&self) -> Option<SocketAddr> {
        self.bound.get().copied()
    }

    /// When the chain served now stops working for clients: see
    /// [`chain_expiry`].
    pub fn expiry(&self) -> Option<SystemTime> {
        chain_expiry(&self.key.load().cert)
    }
}

/// The earliest `notAfter` of a chain's certificates that clients check:
/// the leaf and the intermediates, not a root sent along (self-issued past
/// the leaf, which clients take from their own trust store, as in
/// [`ChainDateProblem::of_chain`]). `None` when no certificate of the chain
/// reads as one.
pub fn chain_expiry<C: AsRef<[u8]>>(chain: &[C]) -> Option<SystemTime> {
    checked_by_clients(chain).map(|(_, v)| v.not_after).min()
}

/// The validity of each certificate of `chain` that clients check, with
/// its place in the chain: the leaf and the intermediates, not a root sent
/// along (self-issued past the leaf: clients take a root from their own
/// trust store), nor a block that does not read as a certificate.
fn checked_by_clients<C: AsRef<[u8]>>(
    chain: &[C],
) -> impl Iterator<Item = (usize, super::x509::Validity)> + '_ {
    chain
        .iter()
        .enumerate()
        .filter_map(|(index, der)| super::x509::validity(der.as_ref()).map(|v| (index, v)))
        .filter(|(index, v)| *index == 0 || !v.self_issued)
}

impl ResolvesServerCert for CertSlot {
    /// The certificate in the slot; counted, in a place to sign in, as a
    /// ClientHello answered there (see `after_retry`).
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(hellos) = IN_PLACE.get() {
            IN_PLACE.set(Some(hellos.saturating_add(1)));
        }
        Some(self.key.load_full())
    }
}

/// A TLS acceptor serving the certificate in `slot`.
///
/// # Errors
/// Only if rustls rejects the protocol versions, which it does not.
pub fn acceptor(slot: Arc<CertSlot>) -> Result<TlsAcceptor, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How a connection on a TLS listener opens, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Plain HTTP instead of a TLS handshake: a client given `http://` for
    /// this port, or a PROXY header on a listener without `proxy_protocol`.
    /// A TLS record opens with 0x16 (an SSLv2-style hello with a byte above
    /// 0x7f), an HTTP/1.1 request with a method name (RFC 9112 §3: a token,
    /// letters in practice) or an empty line, a PROXY header with `PROXY` (version 1) or
    /// `\r\n\r\n\0\r\nQUIT\n` (version 2, which got a TLS alert: probe 82).
    PlainHttp,
    /// Anything else: a handshake, to be tried.
    Handshake,
    /// Closed or reset before a byte came (a load balancer's TCP health
    /// check, which some end with a reset).
    Closed,
}

/// How the connection opens.
pub async fn opening(stream: &TcpStream) -> Opening {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        // (A reset was tried as a handshake, and counted as a failed one:
        // probe 84.)
        Ok(0) | Err(_) => Opening::Closed,
        // (An empty line may come first, RFC 9112 §2.2: CRLF, or a bare LF,
        // which got a TLS alert, probe 88.)
        Ok(_) if first[0].is_ascii_alphabetic() || matches!(first[0], b'\r' | b'\n') => Opening::PlainHttp,
        Ok(_) => Opening::Handshake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// A chain expires with the first of its leaf and intermediates to
    /// expire; a root sent along is not counted, a self-signed leaf is.
    #[test]
    fn a_chain_expires_with_its_first_certificate_that_clients_check() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let year = |y: i32| rcgen::date_time_ymd(y, 1, 1);
        let params = |ca: bool, until: i32| {
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.is_ca = if ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::NoCa };
            p.distinguished_name.push(rcgen::DnType::CommonName, format!("until {until}"));
            (p.not_before, p.not_after) = (year(2000), year(until));
            p
        };
        let (root_key, mid_key, leaf_key) =
            (KeyPair::generate().unwrap(), KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let root = params(true, 2030).self_signed(&root_key).unwrap();
        let mid = params(true, 2035).signed_by(&mid_key, &root, &root_key).unwrap();
        let leaf = params(false, 2040).signed_by(&leaf_key, &mid, &mid_key).unwrap();
        let at = |secs: u64| Some(UNIX_EPOCH + Duration::from_secs(secs));
        let (y2030, y2035, y2040) = (1_893_456_000, 2_051_222_400, 2_208_988_800);
        assert_eq!(chain_expiry(&[leaf.der(), mid.der(), root.der()]), at(y2035));
        assert_eq!(chain_expiry(&[leaf.der(), root.der()]), at(y2040), "a root sent along is not counted");
        assert_eq!(chain_expiry(&[root.der()]), at(y2030), "a self-signed leaf is");
        assert_eq!(chain_expiry(&[&b"not a certificate"[..]]), None);
    }

    /// The test RSA key of 3072 bits and its self-signed certificate.
    fn rsa3072() -> Arc<CertifiedKey> {
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/keys");
        load_certified_key(&keys.join("rsa3072.pem"), &keys.join("rsa3072.key"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A runtime of two threads whose blocking pool has one.
    fn one_blocking_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A loopback listener whose connections are TLS handshakes with
    /// `config`, through [`client_hello`] and [`handshake`]; its address.
    async fn serve_handshakes(config: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let config = config.clone();
                tokio::spawn(async move {
                    let _ = handshake(client_hello(stream).await?, config).await;
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        addr
    }

    /// At most half the cores (at least one) make a signature at once;
    /// the others wait (probe 222: signatures took every runtime thread).
    #[test]
    fn half_the_cores_sign_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NOW: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let max = crate::server::limits::half_the_cores();
        // More than can sign at once, but fewer than may wait (a machine of
        // 120 cores and more would have some refused), one waiting place
        // left for `a_signature_waits_for_a_place`, which may run alongside.
        let asked = (max + 4).min(MAX_WAITING - 1);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
        let signed = runtime.block_on(async {
            let signatures = (0..asked).map(|_| {
                tokio::spawn(async {
                    off_runtime(&WAITING, || {
                        MOST.fetch_max(NOW.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        NOW.fetch_sub(1, Ordering::SeqCst);
                        Ok(Vec::new())
                    })
                })
            });
            let mut signed = 0;
            for s in signatures.collect::<Vec<_>>() {
                signed += usize::from(matches!(s.await, Ok(Ok(_))));
            }
            signed
        });
        assert_eq!(signed, asked, "every signature was made");
        assert!((1..=max).contains(&MOST.load(Ordering::SeqCst)), "{} at once", MOST.load(Ordering::SeqCst));
    }

    /// A listener's RSA key signs only in a free place of [`PLACES`]: from
    /// a runtime thread, outside a handshake's answer to its ClientHello, it
    /// waits while every place is taken.
    #[test]
    fn a_signature_waits_for_a_place() {
        use std::sync::mpsc;
        let certified = rsa3072();
        let signer = certified.key.choose_scheme(&[SignatureScheme::RSA_PSS_SHA256]).expect("a scheme");
        let max = crate::server::limits::half_the_cores();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
        let held = runtime.block_on(PLACES.acquire_many(max as u32)).expect("every place");
        let (signed, done) = mpsc::channel();
        runtime.spawn(async move {
            let _ = signed.send(signer.sign(b"hello").map(|s| s.len()));
        });
        let early = done.recv_timeout(Duration::from_millis(300)).is_ok();
        drop(held);
        assert!(!early, "signed while every place was taken");
        assert_eq!(done.recv_timeout(Duration::from_secs(10)).expect("signed").expect("ok"), 3072 / 8);
    }

    /// Past [`MAX_WAITING`] waiting, a signature is refused at once,
    /// without taking a thread to wait on (probe 242: a flood of
    /// ClientHellos took every thread of tokio's blocking pool); one that
    /// stops waiting admits the next.
    #[test]
    fn a_signature_past_the_waiting_ones_is_refused_at_once() {
        let waiting = Waiting::new();
        let sign = || off_runtime(&waiting, || Ok(b"signed".to_vec()));
        let admitted: Vec<_> = (0..MAX_WAITING).map(|_| waiting.admit().expect("admitted")).collect();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
        let refused = runtime.block_on(async { sign() });
        assert!(matches!(&refused, Err(rustls::Error::General(m)) if m == QUEUE_FULL_LINE), "{refused:?}");
        // A signature answering a ClientHello in a place of `PLACES` is
        // made all the same (probe 248).
        let marked = InPlace::mark();
        let in_place = runtime.block_on(async { sign() });
        drop(marked);
        assert_eq!(in_place.expect("a place holder refused"), b"signed");
        // The mark is gone with its holder, also one that panicked.
        let _ = std::panic::catch_unwind(|| {
            let _marked = InPlace::mark();
            panic!("a signature that panics");
        });
        assert!(
            runtime.block_on(async { sign() }).is_err(),
            "a panicked place holder's thread kept its mark"
        );
        drop(admitted);
        let signed = runtime.block_on(async { sign() });
        assert_eq!(signed.expect("signed once fewer wait"), b"signed");
        assert_eq!(waiting.0.load(std::sync::atomic::Ordering::Relaxed), 0, "every admission given back");
    }

    /// A listener's RSA key signs through [`OffRuntime`], and signs, from a
    /// runtime thread: a signature of the key's size.
    #[test]
    fn a_listeners_key_signs_off_the_runtime() {
        let certified = rsa3072();
        assert!(format!("{:?}", certified.key).starts_with("OffRuntime("), "{:?}", certified.key);
        // An ECDSA key signs in place: it costs about what the hand-off does.
        let ecdsa = rcgen::KeyPair::generate().expect("key");
        let der = PrivateKeyDer::from_pem_slice(ecdsa.serialize_pem().as_bytes()).expect("pem");
        let ecdsa = off_runtime_if_costly(ring::sign::any_supported_type(&der).expect("signer"));
        assert!(!format!("{ecdsa:?}").starts_with("OffRuntime("), "{ecdsa:?}");
        let signer = certified.key.choose_scheme(&[SignatureScheme::RSA_PSS_SHA256]).expect("a scheme");
        assert_eq!(signer.scheme(), SignatureScheme::RSA_PSS_SHA256);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
        let signature = runtime.block_on(async { tokio::spawn(async move { signer.sign(b"hello") }).await });
        assert_eq!(signature.expect("joined").expect("signed").len(), 3072 / 8);
    }

    /// A handshake on a listener with an RSA key waits for a place to sign
    /// in as a task, holding no thread (probe 242: waiting on threads, a
    /// flood of ClientHellos took all of tokio's blocking pool): with every
    /// place taken, 16 ClientHellos wait unanswered on a runtime whose
    /// blocking pool has one thread, which stays free for other work; once
    /// the places are free, each gets its answer.
    #[test]
    fn handshakes_wait_for_a_place_without_a_thread() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const HELLOS: usize = 16;
        let certified = rsa3072();
        let config = acceptor(CertSlot::new(certified)).expect("acceptor").config().clone();
        let runtime = one_blocking_thread();
        runtime.block_on(async {
            let held = PLACES
                .acquire_many(crate::server::limits::half_the_cores() as u32)
                .await
                .expect("every place");
            let addr = serve_handshakes(config).await;
            // A ClientHello, as rustls's client writes it (nothing of the
            // answer is checked).
            let client = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let mut hello = Vec::new();
            rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().expect("name"))
                .expect("client")
                .write_tls(&mut hello)
                .expect("hello");
            let mut clients = Vec::new();
            for _ in 0..HELLOS {
                let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
                c.write_all(&hello).await.expect("send");
                clients.push(c);
            }
            let mut byte = [0u8; 1];
            for c in &mut clients {
                let read = tokio::time::timeout(Duration::from_millis(300), c.read(&mut byte)).await;
                assert!(read.is_err(), "answered while every place was taken: {read:?}");
            }
            let free = tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(|| 7)).await;
            assert_eq!(free.ok().and_then(Result::ok), Some(7), "the blocking pool was taken");
            drop(held);
            for c in &mut clients {
                let read = tokio::time::timeout(Duration::from_secs(20), c.read(&mut byte)).await;
                assert!(matches!(read, Ok(Ok(1))), "no answer once places were free: {read:?}");
            }
        });
    }

    /// After a HelloRetryRequest, the client's second ClientHello is
    /// answered, and signed for, in a place too, waited for as a task: with
    /// every place taken, 8 second ClientHellos wait unanswered on a runtime
    /// whose blocking pool has one thread, which stays free; once the places
    /// are free, each gets its answer. (They waited on threads, 64 at most,
    /// and the rest were refused: probe 249.)
    #[test]
    fn a_second_hello_after_a_retry_waits_for_a_place_without_a_thread() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const CLIENTS: usize = 8;
        let (config, client) = retrying();
        let runtime = one_blocking_thread();
        // On a thread of its own, watched: second ClientHellos waiting on
        // threads for a place took the one thread of the blocking pool, and
        // with it the runtime's cores (each thread waiting in
        // `block_in_place` hands its core to that pool), its timers too.
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(runtime.block_on(async {
                let addr = serve_handshakes(config).await;
                // Each client sends its first ClientHello and reads the
                // HelloRetryRequest; its second ClientHello is kept.
                let mut clients = Vec::new();
                for _ in 0..CLIENTS {
                    clients.push(retried(addr, &client).await);
                }
                let held = PLACES
                    .acquire_many(crate::server::limits::half_the_cores() as u32)
                    .await
                    .expect("every place");
                for (tcp, second) in &mut clients {
                    tcp.write_all(second).await.expect("send");
                }
                let mut byte = [0u8; 1];
                for (tcp, _) in &mut clients {
                    let read = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut byte)).await;
                    if read.is_ok() {
                        return Err(format!("answered while every place was taken: {read:?}"));
                    }
                }
                let free =
                    tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(|| 7)).await;
                if free.ok().and_then(Result::ok) != Some(7) {
                    return Err("the blocking pool was taken".to_owned());
                }
                drop(held);
                for (tcp, _) in &mut clients {
                    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut byte)).await;
                    if !matches!(read, Ok(Ok(1))) {
                        return Err(format!("no answer once places were free: {read:?}"));
                    }
                }
                Ok(())
            }));
        });
        match outcome.recv_timeout(Duration::from_secs(60)) {
            Ok(outcome) => outcome.unwrap_or_else(|e| panic!("{e}")),
            Err(_) => panic!("no answer in 60 s: the runtime was stuck"),
        }
    }

    /// A server with the test RSA key that takes P-256 only, and a client
    /// (rustls's) whose key share is X25519: it is asked for a P-256 one.
    fn retrying() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let p256_only = rustls::crypto::CryptoProvider {
            kx_groups: vec![ring::kx_group::SECP256R1],
            ..ring::default_provider()
        };
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(p256_only))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(CertSlot::new(rsa3072()));
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A connection to `addr` that has sent `client`'s first ClientHello
    /// and read the HelloRetryRequest, and the second ClientHello, unsent.
    async fn retried(addr: std::net::SocketAddr, client: &Arc<rustls::ClientConfig>) -> (TcpStream, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = rustls::ClientConnection::new(client.clone(), "localhost".try_into().expect("name"))
            .expect("client");
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("hello");
        tcp.write_all(&hello).await.expect("send");
        let mut buf = [0u8; 4096];
        while !conn.wants_write() {
            let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
                .await
                .expect("a HelloRetryRequest")
                .expect("read");
            assert!(n > 0, "closed before the HelloRetryRequest");
            conn.read_tls(&mut &buf[..n]).expect("read_tls");
            conn.process_new_packets().expect("a HelloRetryRequest the client takes");
        }
        let mut second = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut second).expect("second hello");
        }
        (tcp, second)
    }

    /// A second ClientHello in six records, the first sent with a piece of
    /// the second and the others 50 ms apart, is answered: the reads after
    /// the first do not look for whole records (rustls may have read part
    /// of one), and past `READS_IN_PLACE` the handshake goes on as any.
    #[test]
    fn a_second_hello_in_six_records_sent_apart_is_answered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (config, client) = retrying();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let addr = serve_handshakes(config).await;
            let (mut tcp, second) = retried(addr, &client).await;
            // (The client's ChangeCipherSpec record, if any, then the
            // ClientHello's record.)
            let RecordEnd::At(end) = record_end(&second) else { panic!("no record") };
            let start = if second[0] == 20 { 6 } else { 0 };
            assert_eq!(end, second.len(), "one ClientHello record");
            let payload = &second[start + 5..];
            let records: Vec<u8> = payload
                .chunks(payload.len().div_ceil(6))
                .flat_map(|piece| {
                    let len = u16::try_from(piece.len()).expect("short").to_be_bytes();
                    [&[22, 3, 3, len[0], len[1]][..], piece].concat()
                })
                .collect();
            let cut = start + 5 + payload.len().div_ceil(6) + 3;
            let sent = [&second[..start], &records[..]].concat();
            tcp.write_all(&sent[..cut]).await.expect("send");
            for piece in sent[cut..].chunks(payload.len().div_ceil(6) + 5) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tcp.write_all(piece).await.expect("send");
            }
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte)).await;
            assert!(matches!(read, Ok(Ok(1))), "no answer: {read:?}");
        });
    }

    /// The end of the first record after whole ChangeCipherSpec ones, as
    /// the client's bytes come.
    #[test]
    fn where_a_record_ends() {
        let ccs = [20, 3, 3, 0, 1, 1];
        assert_eq!(record_end(&[]), RecordEnd::Unknown);
        assert_eq!(record_end(&ccs[..5]), RecordEnd::At(6), "a ChangeCipherSpec not whole yet");
        assert_eq!(record_end(&ccs), RecordEnd::Unknown, "a whole one, then nothing");
        assert_eq!(record_end(&[&ccs[..], &[22, 3, 3, 1, 0]].concat()), RecordEnd::At(6 + 5 + 256));
        assert_eq!(record_end(&[&ccs[..], &ccs, &[22, 3, 1]].concat()), RecordEnd::Unknown);
        assert_eq!(record_end(&[21, 3, 3, 0, 2]), RecordEnd::At(7), "an alert");
        assert_eq!(record_end(b"GET / HTTP/1.1"), RecordEnd::Now, "no record");
        assert_eq!(record_end(&[22, 3, 3, 0xff, 0xff]), RecordEnd::Now, "longer than rustls takes");
    }

    /// A record sent in pieces is waited for whole, its bytes left unread;
    /// what is no record, and the end, at once.
    #[test]
    fn a_record_is_waited_for_whole() {
        use tokio::io::AsyncWriteExt;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let pair = || async {
                let client = TcpStream::connect(addr).await.expect("connect");
                (client, listener.accept().await.expect("accept").0)
            };
            let sent = [&[20, 3, 3, 0, 1, 1][..], &[22, 3, 3, 0, 4, 1, 0, 0, 0]].concat();
            let (mut client, server) = pair().await;
            for byte in &sent[..sent.len() - 1] {
                client.write_all(&[*byte]).await.expect("send");
                let early = tokio::time::timeout(Duration::from_millis(20), whole_record(&server)).await;
                assert!(early.is_err(), "whole before its last byte: {early:?}");
            }
            client.write_all(&sent[sent.len() - 1..]).await.expect("send");
            let whole = tokio::time::timeout(Duration::from_secs(5), whole_record(&server)).await;
            assert!(matches!(whole, Ok(Ok(()))), "{whole:?}");
            let mut unread = [0u8; 32];
            assert_eq!(server.peek(&mut unread).await.expect("peek"), sent.len(), "left for rustls");
            // No record, and the end: at once.
            let (mut client, server) = pair().await;
            client.write_all(b"GET / HTTP/1.1\r\n").await.expect("send");
            let at_once = tokio::time::timeout(Duration::from_secs(5), whole_record(&server)).await;
            assert!(matches!(at_once, Ok(Ok(()))), "{at_once:?}");
            let (mut client, server) = pair().await;
            client.write_all(&sent[..3]).await.expect("send");
            client.shutdown().await.expect("shutdown");
            drop(client);
            let ended = tokio::time::timeout(Duration::from_secs(5), whole_record(&server)).await;
            assert!(ended.is_ok(), "the end waited for");
        });
    }

    /// Dates before 1970 are written, not a panic: a certificate that
    /// expired in 1969 made `check`, the start and a reload panic in
    /// humantime's formatter (probe 122).
    #[test]
    fn date_problems_before_1970_are_written() {
        let t = UNIX_EPOCH.checked_sub(Duration::from_secs(1)).unwrap();
        assert_eq!(
            DateProblem::Expired(t).to_string(),
            "the certificate expired on 1969-12-31T23:59:59Z; TLS clients refuse it"
        );
        let t = UNIX_EPOCH.checked_sub(Duration::from_secs(310_521_600)).unwrap();
        assert!(DateProblem::NotYetValid(t).to_string().contains("1960-02-29T00:00:00Z"));
    }
}
