//! Reading the files an admin names in the config or on the command line
//! (the config itself, the users file, certificates and keys, CA bundles,
//! htpasswd files).
//!
//! Only regular files are read, and at most [`MAX_FILE_BYTES`] of them: a
//! path that names a FIFO made `authgate check` hang in `open` until a
//! writer came, and `/dev/zero` grew memory until the allocator aborted.
//! Both are now an error naming the file. Symlinks are followed, as
//! deployments (Kubernetes secrets, certbot) rely on them.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The largest file read: 64 MiB, far above any real config, users file
/// (a user is about 150 bytes) or certificate bundle.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads a whole regular file of at most [`MAX_FILE_BYTES`].
///
/// # Errors
/// The open or read error, or an `InvalidInput` error saying that the path
/// is a directory, not a regular file (FIFO, socket, device) or too large.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    read_whole(path).inspect_err(|e| {
        if short_of_resources(e) {
            SHORT_READS.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Reads of [`read_file`] that failed for want of a resource of the process
/// or the system (file descriptors, memory) since the process started.
static SHORT_READS: AtomicU64 = AtomicU64::new(0);

/// How many reads of [`read_file`] have failed for want of file
/// descriptors or memory (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`). Such a
/// failure says nothing of the file, and the same read may work a moment
/// later: a reload that failed so is tried again (see `server::reload`).
pub fn reads_short_of_resources() -> u64 {
    SHORT_READS.load(Ordering::Relaxed)
}

fn short_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS))
}

fn read_whole(path: &Path) -> io::Result<Vec<u8>> {
    // Checked before opening, as opening a FIFO blocks until a writer comes.
    let before = std::fs::metadata(path)?;
    regular(&before)?;
    let (file, meta) = open_regular(path)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).min(1 << 20));
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Opens `path` without waiting, and checks that what was opened is a
/// regular file: a FIFO put in the file's place after [`read_file`]'s first
/// check (a symlink swapped back and forth) held a blocking open, and with
/// it every later reload, until a writer came (probe 125). `O_NONBLOCK`
/// changes nothing for a regular file's reads.
fn open_regular(path: &Path) -> io::Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    regular(&meta)?;
    Ok((file, meta))
}

/// Why a file could not be read, worded the same for every file authgate
/// reads: "file not found" and "permission denied" for the two an admin
/// meets most, the system's words otherwise.
pub fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "file not found".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// `pem` without a byte order mark in front of a BEGIN line: one at the
/// file's start hid the first certificate, and one before a later
/// certificate (two files saved with one, joined with `cat`) hid that one,
/// without a word, where OpenSSL and curl read them (probe 388). One mark,
/// in front of `-----BEGIN ` only, as OpenSSL skips it: a mark inside a
/// line (in a label, in base64), at the start of a base64 line, or a second
/// one is left to fail as OpenSSL fails it; removing those made a section
/// of an unknown label, or one OpenSSL reads no certificate from, a trusted
/// root (probes 389, 390). A mark left before a BEGIN line is refused by
/// [`pem_begin_inside_line`].
pub fn without_boms(pem: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const MARKED: &[u8] = "\u{feff}-----BEGIN ".as_bytes();
    let starts_a_line = |at: usize| at == 0 || pem[at - 1] == b'\n';
    if !pem.windows(MARKED.len()).enumerate().any(|(at, w)| w == MARKED && starts_a_line(at)) {
        return std::borrow::Cow::Borrowed(pem);
    }
    let mut out = Vec::with_capacity(pem.len());
    for line in pem.split_inclusive(|&b| b == b'\n') {
        let unmarked = if line.starts_with(MARKED) { &line["\u{feff}".len()..] } else { line };
        out.extend_from_slice(unmarked);
    }
    std::borrow::Cow::Owned(out)
}

/// What to say of a PEM file with a section whose BEGIN line has
/// something before it on its line: spaces, a second byte order mark, the
/// END line of the section before or a comment (files without a last
/// newline joined with `cat`). The PEM reader, as OpenSSL's, takes such a
/// section for text around the others and skips it: a chain of a leaf and
/// its intermediate so joined served the leaf alone, `check` saying ok
/// (probes 390, 394). A section is a BEGIN whose END line follows before
/// the next BEGIN line; a comment that names a BEGIN line (`# was -----BEGIN
/// TRUSTED CERTIFICATE-----`) is text. The line is named. One pass: each
/// such BEGIN looked ahead for its END on its own, and a 1 MB file of them
/// took 14 s (64 MiB, the bound of a file read, hours).
pub fn pem_begin_inside_line(pem: &[u8]) -> Option<String> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    // The label after `marker` in `line`, up to its closing dashes.
    let label = |line: &'_ [u8], marker: &[u8]| -> Option<(usize, Vec<u8>)> {
        let at = find(line, marker)?;
        let rest = &line[at + marker.len()..];
        Some((at, rest[..find(rest, b"-----")?].to_vec()))
    };
    // The labels of the BEGIN lines inside a line since the last BEGIN
    // line, each with the first line it opened on.
    let mut open: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for (at, line) in pem.split(|&b| b == b'\n').enumerate() {
        if line.starts_with(BEGIN) {
            open.clear();
            continue;
        }
        if let Some(&opened) = label(line, END).and_then(|(_, l)| open.get(&l)) {
            return Some(format!(
                "line {}: a PEM section's BEGIN line has text before it on the line, and a PEM reader skips such a \
                 section: `-----BEGIN` must start its line",
                opened + 1
            ));
        }
        if let Some((_, l)) = label(line, BEGIN) {
            open.entry(l).or_insert(at);
        }
    }
    None
}

/// What is wrong with a PEM file, in words (rustls's debug form printed a
/// missing end line's marker as a list of byte values, probes 111 and
/// 184): for the CA file, the listener's certificate and its key alike.
pub fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a PEM section has no END line (is the file cut short?)".into(),
        Error::IllegalSectionStart { .. } => {
            "a PEM section's BEGIN line is not valid (is the file cut short?)".into()
        }
        Error::Base64Decode(_) => "a PEM section's base64 is not valid".into(),
        Error::Io(e) => reason(e),
        other => other.to_string(),
    }
}

/// What to say of a PEM file that holds a certificate under a label the
/// PEM reader skips: `TRUSTED CERTIFICATE`, OpenSSL's form with trust
/// settings (`openssl x509 -trustout`), or the legacy `X509 CERTIFICATE`
/// and `X.509 CERTIFICATE` (RFC 7468 §5.1). An intermediate so labelled was
/// left out of the chain served, without a word (probes 273, 280). Only a
/// BEGIN line of its own counts: text between sections may name one.
pub fn pem_trusted_form(pem: &[u8]) -> Option<String> {
    const LABELS: [&str; 3] = ["TRUSTED CERTIFICATE", "X509 CERTIFICATE", "X.509 CERTIFICATE"];
    let label = pem.split(|&b| b == b'\n').find_map(|line| {
        let line = line.trim_ascii();
        LABELS.into_iter().find(|l| {
            line.strip_prefix(b"-----BEGIN ")
                .and_then(|rest| rest.strip_suffix(b"-----"))
                .is_some_and(|found| found == l.as_bytes())
        })
    })?;
    Some(match label {
        "TRUSTED CERTIFICATE" => "it holds a TRUSTED CERTIFICATE, OpenSSL's form with trust settings, which authgate \
                                  does not read (`openssl x509 -in IN -out OUT` writes one as a plain CERTIFICATE)"
            .to_owned(),
        other => format!(
            "it holds an {other}, a legacy label authgate does not read: write `-----BEGIN CERTIFICATE-----` and \
             `-----END CERTIFICATE-----` around it instead"
        ),
    })
}

/// What to say of a PEM file cut inside the BEGIN line of a section after
/// its last whole one (from `-` to `-----BEGIN CERTIF`): the PEM reader
/// takes such a tail for text around the sections, and a chain cut there
/// loaded without its intermediates, without a word (probes 186, 188).
/// Text after the last section that is no such start (`----- end of
/// bundle -----`, a comment) is not a cut.
pub fn pem_cut_short(pem: &[u8]) -> Option<&'static str> {
    const END: &[u8] = b"-----END ";
    const BEGIN: &[u8] = b"-----BEGIN ";
    let last_end = pem.windows(END.len()).rposition(|w| w == END)?;
    let after = &pem[last_end..];
    let line_end = after.iter().position(|&b| b == b'\n').map_or(after.len(), |i| i + 1);
    let tail = after[line_end..].trim_ascii();
    let cut = !tail.is_empty() && (BEGIN.starts_with(tail) || tail.starts_with(BEGIN));
    cut.then_some("the file ends inside a PEM section's BEGIN line (is it cut short?)")
}

/// What identifies a version of a file: size, mtime, ctime, device and
/// inode, and the path the symlink chain resolves to; `None` when the file
/// cannot be looked at. The ctime is what a writer cannot set back: a
/// change of the same size whose mtime was put back (`cp -p`,
/// `rsync -t --inplace`, `tar x`, a file deleted and made again on the same
/// inode) went unseen with size and mtime alone.
pub type Stamp = Option<(u64, Option<SystemTime>, (i64, i64), (u64, u64), PathBuf)>;

/// The [`Stamp`] of the file at `path` now (symlinks followed).
pub fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let real = std::fs::canonicalize(path).unwrap_or_default();
    Some((
        meta.len(),
        meta.modified().ok(),
        (meta.ctime(), meta.ctime_nsec()),
        (meta.dev(), meta.ino()),
        real,
    ))
}

fn regular(meta: &std::fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a directory, not a file"));
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device)",
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("larger than {} MiB", MAX_FILE_BYTES >> 20))
}

/// `bytes` as UTF-8 text, or where the first byte that is not UTF-8 stands
/// (line and column, from 1) and what to tell the admin: a file saved as
/// Windows-1252 or UTF-16 is common, and its place was told by `check`
/// but not by the `users` commands (probe 230).
pub fn utf8_text(bytes: Vec<u8>) -> Result<String, (usize, usize, String)> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let before = std::str::from_utf8(&e.as_bytes()[..valid]).unwrap_or_default();
        let (line, col) = super::error::line_col(before, before.len());
        let byte = e.as_bytes().get(valid).copied().unwrap_or_default();
        (line, col, format!("not UTF-8 text (byte 0x{byte:02x} here); save the file as UTF-8"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One byte order mark is skipped in front of a BEGIN line, as OpenSSL
    /// skips it, and left elsewhere, where OpenSSL fails on it too: in a
    /// label, removing one made a section of an unknown label a trusted
    /// root (probe 389); at the start of a base64 line, or a second one, a
    /// certificate OpenSSL reads none from (probe 390). A BEGIN line with
    /// anything before it is named.
    #[test]
    fn byte_order_marks_are_skipped_before_begin_lines_only() {
        let bom = "\u{feff}";
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let joined = format!("{bom}{cert}{bom}{cert}");
        assert_eq!(&*without_boms(joined.as_bytes()), format!("{cert}{cert}").as_bytes());
        for left in [
            format!("-----BEGIN CERTIF{bom}ICATE-----\nAA{bom}AA\n-----END CERTIFICATE-----\n"),
            format!("-----BEGIN CERTIFICATE-----\n{bom}AAAA\n-----END CERTIFICATE-----\n"),
            format!("{bom}# a comment\n{cert}"),
            format!("# was -----BEGIN TRUSTED CERTIFICATE-----\n{cert}"),
        ] {
            assert_eq!(&*without_boms(left.as_bytes()), left.as_bytes());
            assert_eq!(pem_begin_inside_line(left.as_bytes()), None);
        }
        let twice = format!("{cert}{bom}{bom}{cert}");
        assert_eq!(&*without_boms(twice.as_bytes()), twice.as_bytes());
        let problem = pem_begin_inside_line(&without_boms(twice.as_bytes())).unwrap();
        assert!(problem.starts_with("line 4: "), "{problem}");
        // A space before it; files without a last newline joined, the first
        // ending in its END line, in a comment, or in a mark (probe 394).
        let joined = |before: &str| format!("{cert}{before}{cert}");
        for (inside, line) in [
            (format!("{cert} {cert}"), 4),
            (format!("{}{cert}", cert.trim_end()), 3),
            (joined("# end of the leaf file"), 4),
            (format!("{}{bom}{cert}", cert.trim_end()), 3),
            (joined("x"), 4),
        ] {
            let problem = pem_begin_inside_line(inside.as_bytes()).unwrap();
            assert!(problem.starts_with(&format!("line {line}: ")), "{problem}");
        }
        assert!(matches!(without_boms(cert.as_bytes()), std::borrow::Cow::Borrowed(_)));
    }

    /// The open itself does not wait on a FIFO (the check before it cannot
    /// see a FIFO swapped in after it): the error comes at once.
    #[test]
    fn opening_a_fifo_does_not_wait() {
        let dir = std::env::temp_dir().join(format!("authgate-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("users.toml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(open_regular(&path).map(|_| ()).map_err(|e| e.to_string())));
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        if got.is_err() {
            // Let the waiting open go, so the test ends.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got, Ok(Err("not a regular file (a FIFO, socket or device)".to_owned())));
    }
}
