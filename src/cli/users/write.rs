//! The atomic write: temp file in the same folder, fsync, rename, fsync of
//! the folder, owner, mode and extended attributes (the ACL) kept.

use super::*;

/// The folder `target` is in (`.` for a bare file name).
pub(super) fn folder_of(target: &Path) -> &Path {
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Replaces `target` with `data` atomically: a temp file in the same folder,
/// written and fsynced with the old file's owner and mode (0600 for a new
/// file), renamed over `target`, then the folder fsynced so the rename
/// itself survives a crash. `unchanged` runs right before the rename, after
/// the write and its fsync: a change it checks for that lands during those
/// (slow on a busy disk) was overwritten when it ran before them (probe
/// 125); an `Err` from it leaves `target` as it was.
///
/// Returns the number of other hard links the old file had: they keep its
/// old content (the file is replaced, not rewritten).
pub(super) fn atomic_write(
    target: &Path,
    data: &[u8],
    unchanged: impl FnOnce() -> Result<(), UsersError>,
) -> Result<u64, UsersError> {
    let dir = folder_of(target);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = match fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(UsersError::Io { path: target.to_path_buf(), what: "cannot stat", source });
        }
    };
    // A file nobody may write is one an admin froze (`chmod a-w`): a rename
    // would replace it all the same, mode kept (probe 139).
    if let Some(m) = old.as_ref().filter(|m| m.permissions().mode() & 0o222 == 0) {
        return Err(UsersError::Refused(format!(
            "{}: the file is read-only (mode {:04o}); nothing written (`chmod u+w` it to edit it here)",
            crate::config::shown_path(target),
            m.permissions().mode() & 0o7777
        )));
    }
    // Leftovers of killed runs (`.NAME.tmp-PID`, hashes and all): called
    // under the folder's lock (see `UsersFile::save`), so no other run is
    // writing one now. Only ours was removed, and one a `SIGKILL` left
    // stayed for good (probe 178).
    let prefix = format!(".{name}.tmp-");
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file = entry.file_name();
            let stale = file
                .to_str()
                .and_then(|f| f.strip_prefix(&prefix))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let result =
        write_temp(&tmp, data, old.as_ref().map(|m| (target, m))).and_then(|()| unchanged()).and_then(|()| {
            fs::rename(&tmp, target).map_err(|source| match source.kind() {
                // "Device or resource busy" alone said nothing of why (probe 349).
                io::ErrorKind::ResourceBusy => refused(format!(
                    "{}: cannot replace it: it is a mount point (a file bind-mounted on its own, as a \
                     container's volume may be), which only its source can be edited through; nothing written",
                    shown_path(target)
                )),
                _ => UsersError::Io { path: target.to_path_buf(), what: "cannot replace", source },
            })
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| UsersError::Io {
        path: dir.to_path_buf(),
        what: "cannot sync the folder",
        source,
    })?;
    Ok(old.map_or(0, |m| m.nlink().saturating_sub(1)))
}

/// An exclusive lock on the folder of `target`, held by a `users` command
/// from its check that the file is unchanged since it was read to the
/// rename: two commands run at once could otherwise both pass the check and
/// the later rename drop the other's edit. The folder, not a lock file, so
/// that no extra file appears beside the users file (`flock(2)` on the
/// folder; editors that do not lock are still caught by the check, up to
/// the instant of the rename).
///
/// Waited for at most [`LOCK_WAIT`]: another `users` command holds it for
/// the moment of its write, but anyone who can read the folder can take
/// it, and a command waited without end and without a word (probe 114).
pub(super) fn lock_folder(target: &Path) -> Result<File, UsersError> {
    let dir = folder_of(target);
    let folder = File::open(dir).map_err(|source| match source.kind() {
        // "cannot open the folder to lock it: file not found" read as a
        // lock or permission problem (probe 139).
        std::io::ErrorKind::NotFound => UsersError::Refused(format!(
            "{}: the folder does not exist; create it first (nothing written)",
            crate::config::shown_path(dir)
        )),
        _ => UsersError::Io { path: dir.to_path_buf(), what: "cannot open the folder to lock it", source },
    })?;
    let since = std::time::Instant::now();
    loop {
        match folder.try_lock() {
            Ok(()) => return Ok(folder),
            Err(fs::TryLockError::WouldBlock) if since.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(UsersError::Refused(format!(
                    "{}: the folder is locked by another process (still after {} s; an `authgate users` \
                     command holds the lock only while it writes); nothing written",
                    // Absolute: `.` said little (probe 123).
                    crate::config::shown_path(
                        &std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
                    ),
                    LOCK_WAIT.as_secs()
                )));
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(UsersError::Io {
                    path: dir.to_path_buf(),
                    what: "cannot lock the folder",
                    source,
                });
            }
        }
    }
}

/// How long [`lock_folder`] waits for the lock.
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes `data` to the new file `tmp`, with the owner, mode and extended
/// attributes of the file it replaces, `old` (its path and metadata).
pub(super) fn write_temp(
    tmp: &Path,
    data: &[u8],
    old: Option<(&Path, &fs::Metadata)>,
) -> Result<(), UsersError> {
    let io_err = |what| move |source| UsersError::Io { path: tmp.to_path_buf(), what, source };
    // 0600 until the old mode is applied: never readable by more than it will be.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_err("cannot create"))?;
    f.write_all(data).map_err(io_err("cannot write"))?;
    if let Some((_, old)) = old {
        let new = f.metadata().map_err(io_err("cannot stat"))?;
        if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
            std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid())).map_err(|e| {
                refused(format!(
                    "cannot give the new users file the old one's owner {}:{} ({e}); nothing written: run as that owner or root",
                    old.uid(),
                    old.gid()
                ))
            })?;
        }
    }
    // A new file's 0600 set here too: `open` took the umask off it (0400
    // under umask 0277, which the next command refused as read-only; probe
    // 336).
    let mode = old.map_or(0o600, |(_, old)| old.mode() & 0o7777);
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err("cannot set permissions"))?;
    // After the mode: an ACL sets the group bits (its mask) itself; and
    // the mode again after, for one taken off (it leaves its mask there).
    if let Some((path, _)) = old {
        copy_xattrs(path, &f)?;
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err("cannot set permissions"))?;
    }
    f.sync_all().map_err(io_err("cannot sync"))
}

/// Largest list of names, and largest value, of extended attributes
/// (Linux's `XATTR_LIST_MAX`, `XATTR_SIZE_MAX`).
const XATTR_MAX: usize = 64 * 1024;

/// Gives `new` the extended attributes of `old` it does not have already:
/// its POSIX ACL above all (`system.posix_acl_access`), which the mode
/// does not hold. Without, an edit narrowed access for the proxy's own
/// user, named in the ACL (the proxy then failed to read the file at the
/// reload and went on with the old passwords, the command having said it
/// changed one), and widened it for the group (probe 349). One that cannot
/// be set stops the edit: nothing is written. A file system without
/// extended attributes has none to copy.
fn copy_xattrs(old: &Path, new: &File) -> Result<(), UsersError> {
    use rustix::io::Errno;
    let failed = |what: String, e: Errno| {
        refused(format!(
            "{}: cannot {what} ({}); nothing written: its access control list or other attributes would be lost",
            shown_path(old),
            io::Error::from(e)
        ))
    };
    let mut names = vec![0u8; XATTR_MAX];
    let listed = match rustix::fs::listxattr(old, &mut names[..]) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(failed("list its extended attributes".into(), e)),
    };
    let (mut value, mut present) = (vec![0u8; XATTR_MAX], vec![0u8; XATTR_MAX]);
    for name in names[..listed].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let shown = String::from_utf8_lossy(name);
        let n = match rustix::fs::getxattr(old, name, &mut value[..]) {
            Ok(n) => n,
            // Removed since it was listed.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(failed(format!("read its extended attribute `{shown}`"), e)),
        };
        // (A label the new file got from its folder already, say.)
        if rustix::fs::fgetxattr(new, name, &mut present[..]).is_ok_and(|m| present[..m] == value[..n]) {
            continue;
        }
        rustix::fs::fsetxattr(new, name, &value[..n], rustix::fs::XattrFlags::empty())
            .map_err(|e| failed(format!("give the new file its extended attribute `{shown}`"), e))?;
    }
    // Nor more than it had: a folder's default ACL gave the new file an
    // ACL the old one did not have, and a user it named could then read
    // the hashes (probe 352). Labels (`security.*`) are the system's to
    // give, not the old file's.
    let old_names: Vec<&[u8]> = names[..listed].split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    let mut new_names = vec![0u8; XATTR_MAX];
    let new_listed = rustix::fs::flistxattr(new, &mut new_names[..])
        .map_err(|e| failed("list the new file's extended attributes".into(), e))?;
    for name in new_names[..new_listed].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if old_names.contains(&name) || name.starts_with(b"security.") {
            continue;
        }
        rustix::fs::fremovexattr(new, name).map_err(|e| {
            failed(
                format!(
                    "take off the new file an attribute the old one lacked, `{}`",
                    String::from_utf8_lossy(name)
                ),
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check that the file is unchanged runs after the new text is
    /// written and synced, right before the rename (it ran before the
    /// write, and a hand edit that landed during the write and its fsync
    /// was overwritten; probe 125); a refusal from it leaves the file and
    /// no temp file.
    #[test]
    fn the_unchanged_check_comes_last_before_the_rename() {
        let dir = std::env::temp_dir().join(format!("authgate-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("users.toml");
        fs::write(&target, "old\n").unwrap();
        let temp_of = |dir: &Path| -> Vec<String> {
            fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect()
        };
        let mut seen = None;
        atomic_write(&target, b"new\n", || {
            let temps = temp_of(&dir);
            seen = Some((temps.len(), temps.first().map(|t| fs::read(dir.join(t)).unwrap())));
            assert_eq!(fs::read(&target).unwrap(), b"old\n");
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, Some((1, Some(b"new\n".to_vec()))), "the new text was in place before the check");
        assert_eq!(fs::read(&target).unwrap(), b"new\n");

        let refused = atomic_write(&target, b"newer\n", || Err(refused("changed".to_owned())));
        assert!(refused.is_err());
        assert_eq!(fs::read(&target).unwrap(), b"new\n");
        assert!(temp_of(&dir).is_empty(), "{:?}", temp_of(&dir));
        let _ = fs::remove_dir_all(&dir);
    }

    /// The replaced file keeps the old one's extended attributes: its ACL
    /// (which sets the group bits, its mask) and a user attribute. They were
    /// lost, and the proxy's user named in the ACL could no longer read the
    /// file (probe 349). The other hard links are counted.
    #[test]
    fn an_edit_keeps_the_files_acl_and_extended_attributes() {
        use rustix::fs::{XattrFlags, fgetxattr, fsetxattr};
        let dir = std::env::temp_dir().join(format!("authgate-xattr-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("users.toml");
        fs::write(&target, "old\n").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        // user::rw-, user:65534:r--, group::---, mask::r--, other::---
        let entry = |tag: u16, perm: u16, id: u32| {
            [&tag.to_le_bytes()[..], &perm.to_le_bytes(), &id.to_le_bytes()].concat()
        };
        let acl = [
            &2u32.to_le_bytes()[..],
            &entry(1, 6, u32::MAX),
            &entry(2, 4, 65_534),
            &entry(4, 0, u32::MAX),
            &entry(0x10, 4, u32::MAX),
            &entry(0x20, 0, u32::MAX),
        ]
        .concat();
        let file = File::open(&target).unwrap();
        for (name, value) in [("system.posix_acl_access", &acl[..]), ("user.note", b"kept")] {
            if let Err(e) = fsetxattr(&file, name, value, XattrFlags::empty()) {
                // (The file system takes none: nothing to keep.)
                eprintln!("skipped: {name} cannot be set on {}: {e}", dir.display());
                let _ = fs::remove_dir_all(&dir);
                return;
            }
        }
        fs::hard_link(&target, dir.join("users.link")).unwrap();
        assert_eq!(atomic_write(&target, b"new\n", || Ok(())).unwrap(), 1, "one other link");
        assert_eq!(fs::read(&target).unwrap(), b"new\n");
        let file = File::open(&target).unwrap();
        let mut buf = [0u8; 256];
        for (name, value) in [("system.posix_acl_access", &acl[..]), ("user.note", b"kept")] {
            let n = fgetxattr(&file, name, &mut buf[..]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&buf[..n], value, "{name}");
        }
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o640, "the mask is the group bits");
        assert_eq!(fs::read(dir.join("users.link")).unwrap(), b"old\n");
        // A folder whose default ACL names a user: a file without an ACL of
        // its own stays without one (the new file got the folder's).
        let folder = File::open(&dir).unwrap();
        fsetxattr(&folder, "system.posix_acl_default", &acl, XattrFlags::empty()).unwrap();
        let bare = dir.join("bare.toml");
        fs::write(&bare, "old\n").unwrap();
        let _ = rustix::fs::fremovexattr(File::open(&bare).unwrap(), "system.posix_acl_access");
        fs::set_permissions(&bare, fs::Permissions::from_mode(0o600)).unwrap();
        atomic_write(&bare, b"new\n", || Ok(())).unwrap();
        let got = fgetxattr(File::open(&bare).unwrap(), "system.posix_acl_access", &mut buf[..]);
        assert_eq!(got.err(), Some(rustix::io::Errno::NODATA), "no ACL came with the new file");
        assert_eq!(fs::metadata(&bare).unwrap().mode() & 0o777, 0o600);
        let _ = fs::remove_dir_all(&dir);
    }
}
