//! The process's own figures for `/metrics`, under the names every
//! Prometheus client library gives them (`process_cpu_seconds_total`,
//! `process_open_fds` …), read from `/proc/self` on each scrape.
//!
//! The open-files limit is what an egress proxy runs out of first (each
//! client connection holds a descriptor, and one to its origin); the log
//! says so when it happens, and these let an alert say so before.

use std::time::SystemTime;

/// One reading of the process's figures; a figure that could not be read
/// is `None` (another system than Linux, or no `/proc`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time used, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory, in bytes.
    pub virtual_bytes: Option<u64>,
    /// File descriptors open now.
    pub open_fds: Option<u64>,
    /// The soft open-files limit (`None` also when unlimited).
    pub max_fds: Option<u64>,
    /// When the process started.
    pub start_time: Option<SystemTime>,
}

/// Reads the figures of this process now.
pub fn read() -> ProcessStats {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields = stat.as_deref().and_then(stat_fields);
    let ticks_whole = rustix::param::clock_ticks_per_second().max(1);
    let ticks = ticks_whole as f64;
    let page = rustix::param::page_size() as u64;
    let field = |i: usize| fields.as_ref().and_then(|f| f.get(i)?.parse::<u64>().ok());
    let cpu_seconds = field(UTIME).zip(field(STIME)).map(|(u, s)| u.saturating_add(s) as f64 / ticks);
    let start_time = field(STARTTIME)
        .zip(boot_time())
        .and_then(|(since_boot, boot)| started(boot, since_boot, ticks_whole));
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let open_fds = open_or_all(std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64), max_fds);
    ProcessStats {
        cpu_seconds,
        resident_bytes: field(RSS).map(|pages| pages.saturating_mul(page)),
        virtual_bytes: field(VSIZE),
        open_fds,
        max_fds,
        start_time,
    }
}

/// The start of a process `since_boot` clock ticks (`ticks` a second)
/// after `boot`, with its fraction of a second, as the Prometheus client
/// libraries give it (it was cut to whole seconds; probe 228).
fn started(boot: SystemTime, since_boot: u64, ticks: u64) -> Option<SystemTime> {
    let ticks = ticks.max(1);
    let whole = std::time::Duration::from_secs(since_boot / ticks);
    // The remainder is below `ticks`: no overflow for any real tick rate.
    let part = std::time::Duration::from_nanos((since_boot % ticks).saturating_mul(1_000_000_000) / ticks);
    boot.checked_add(whole.checked_add(part)?)
}

/// The count of open descriptors, or `max` when listing them failed for
/// want of one (`EMFILE`): every descriptor is taken, which is when the
/// figure matters most, and a series that vanished then would end the
/// alert on it.
fn open_or_all(counted: std::io::Result<u64>, max: Option<u64>) -> Option<u64> {
    match counted {
        Ok(n) => Some(n),
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => max,
        Err(_) => None,
    }
}

/// The places in [`stat_fields`] of `/proc/self/stat`'s fields 14
/// (`utime`), 15 (`stime`), 22 (`starttime`), 23 (`vsize`) and 24 (`rss`),
/// proc(5): the fields after the command name, which is field 2.
const UTIME: usize = 14 - 3;
const STIME: usize = 15 - 3;
const STARTTIME: usize = 22 - 3;
const VSIZE: usize = 23 - 3;
const RSS: usize = 24 - 3;

/// The fields of a `/proc/PID/stat` line after the command name, which is
/// in parentheses and may hold spaces and parentheses itself: the fields
/// start after the last `)`.
fn stat_fields(line: &str) -> Option<Vec<&str>> {
    let (_, rest) = line.rsplit_once(')')?;
    Some(rest.split_ascii_whitespace().collect())
}

/// When the system booted: `/proc/stat`'s `btime`, or, where that is
/// hidden (systemd's `ProcSubset=pid`, which the shipped unit sets, left
/// `process_start_time_seconds` out; probe 325), the time now less
/// `CLOCK_BOOTTIME`, the clock a process's start is counted on.
fn boot_time() -> Option<SystemTime> {
    boot_time_with(btime)
}

/// [`boot_time`] with `btime` read by `read`.
fn boot_time_with(read: impl FnOnce() -> Option<SystemTime>) -> Option<SystemTime> {
    read().or_else(boot_from_clock)
}

/// `/proc/stat`'s `btime`.
fn btime() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// The time now less the time since boot (`CLOCK_BOOTTIME`).
fn boot_from_clock() -> Option<SystemTime> {
    let up = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let up = std::time::Duration::new(u64::try_from(up.tv_sec).ok()?, u32::try_from(up.tv_nsec).ok()?);
    SystemTime::now().checked_sub(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "4242 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22\n";
        let fields = stat_fields(line).unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!(fields[UTIME], "11");
        assert_eq!(fields[STIME], "12");
        assert_eq!(fields[STARTTIME], "19");
        assert_eq!(fields[VSIZE], "20");
        assert_eq!(fields[RSS], "21");
        assert_eq!(stat_fields("no parenthesis"), None);
    }

    /// The boot time from the clock, for where `/proc/stat` is hidden,
    /// agrees with `btime` (whole seconds, so within one).
    #[test]
    fn the_boot_time_from_the_clock_agrees_with_btime() {
        let btime = btime().unwrap();
        assert_eq!(boot_time(), Some(btime), "btime first");
        // As where `/proc/stat` is hidden.
        let clock = boot_time_with(|| None).unwrap();
        let apart = clock.duration_since(btime).unwrap_or_else(|e| e.duration());
        assert!(apart < std::time::Duration::from_secs(2), "{btime:?} against {clock:?}");
    }

    #[test]
    fn no_descriptor_left_to_count_them_is_all_of_them() {
        let err = |n| Err(std::io::Error::from_raw_os_error(n));
        assert_eq!(open_or_all(Ok(12), Some(1024)), Some(12));
        assert_eq!(open_or_all(err(libc::EMFILE), Some(1024)), Some(1024));
        assert_eq!(open_or_all(err(libc::ENOENT), Some(1024)), None);
    }

    #[test]
    fn a_start_keeps_its_fraction_of_a_second() {
        let boot = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let at = |ticks, rate| started(boot, ticks, rate).unwrap().duration_since(boot).unwrap();
        assert_eq!(at(12_345, 100), std::time::Duration::from_millis(123_450));
        assert_eq!(at(7, 1000), std::time::Duration::from_millis(7));
        assert_eq!(at(5, 0), std::time::Duration::from_secs(5));
        // Past what a `SystemTime` holds: none, not a panic.
        assert_eq!(started(SystemTime::UNIX_EPOCH, u64::MAX, 1), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_itself() {
        let files: Vec<std::fs::File> =
            (0..8).map(|_| std::fs::File::open("/proc/self/stat").unwrap()).collect();
        let now = read();
        assert!(now.open_fds.unwrap() >= 8, "{now:?}");
        drop(files);
        assert!(now.max_fds.unwrap() >= now.open_fds.unwrap(), "{now:?}");
        assert!(now.resident_bytes.unwrap() > 1 << 20, "{now:?}");
        assert!(now.virtual_bytes.unwrap() >= now.resident_bytes.unwrap(), "{now:?}");
        assert!(now.cpu_seconds.unwrap() >= 0.0, "{now:?}");
        let started = now.start_time.unwrap();
        let age = SystemTime::now().duration_since(started).unwrap();
        assert!(age < std::time::Duration::from_secs(24 * 3600), "started {age:?} ago");
    }
}
