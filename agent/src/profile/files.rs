//! The `profiles/` directory: one `<time>.pb.gz` and one `<time>.svg` per
//! interval, `<time>` the interval's start as a sortable UTC timestamp
//! (`20261125T153000Z`), written atomically and pruned to a bound.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub const PROFILES_DIR: &str = "profiles";
pub const PPROF_SUFFIX: &str = ".pb.gz";
pub const SVG_SUFFIX: &str = ".svg";

/// Which intervals' files are kept: the newest ones, at most
/// `max_intervals` of them, none older than `max_age`, and no more than
/// `max_bytes` together (the newest interval is always kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_intervals: usize,
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for Retention {
    /// Four hours of the default 10-second intervals. A busy interval
    /// (5,000 distinct stacks) takes about 240 KiB in both files, so the
    /// byte cap is what binds on a busy node.
    fn default() -> Self {
        Self {
            max_intervals: 1440,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 256 << 20,
        }
    }
}

/// `20261125T153000Z` for the second `t` falls in (UTC).
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The time a `timestamp` names; `None` for other text.
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = s.get(range)?;
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::from(y), m, d)).ok()?;
    let secs = days * 86_400 + u64::from(hh * 3600 + mm * 60 + ss);
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to eras of 400 years starting on 0000-03-01, so leap days fall
    // at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of `civil_from_days`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A name for the files of the interval starting at `start` that no
/// existing file has: `<time>`, or `<time>-2`, `-3`… when intervals start
/// within one second (short intervals, a clock step back).
pub fn free_stem(dir: &Path, start: SystemTime) -> String {
    let base = timestamp(start);
    let taken = |stem: &str| {
        [PPROF_SUFFIX, SVG_SUFFIX]
            .iter()
            .any(|suffix| dir.join(format!("{stem}{suffix}")).exists())
    };
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|stem| !taken(stem))
        .unwrap_or(base)
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename, so
/// readers (and the pruning) never see half a file.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    if let Err(err) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    Ok(path)
}

/// The interval stem and time of a file this module wrote.
fn interval_of(name: &str) -> Option<(&str, SystemTime)> {
    let stem = name
        .strip_suffix(PPROF_SUFFIX)
        .or_else(|| name.strip_suffix(SVG_SUFFIX))?;
    let time = parse_timestamp(stem.get(..16)?)?;
    let rest = &stem[16..];
    let numbered = rest.is_empty()
        || rest
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
    numbered.then_some((stem, time))
}

/// Removes the files of intervals beyond `retention`; other files in the
/// directory are left alone. Returns how many files were removed.
pub fn prune(dir: &Path, retention: Retention, now: SystemTime) -> io::Result<usize> {
    let mut files: Vec<(String, String, SystemTime, u64)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some((stem, time)) = interval_of(&name) {
            // Gone meanwhile or unreadable: counts as empty.
            let size = entry.metadata().map_or(0, |m| m.len());
            files.push((stem.to_owned(), name.clone(), time, size));
        }
    }
    // Newest interval first; the numbered stems of one second sort by name.
    files.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| b.0.cmp(&a.0)));
    // Decided per interval, so its two files go together.
    let mut intervals: Vec<(&str, SystemTime, u64, Vec<&str>)> = Vec::new();
    for (stem, name, time, size) in &files {
        match intervals.last_mut() {
            Some(last) if last.0 == stem.as_str() => {
                last.2 = last.2.saturating_add(*size);
                last.3.push(name);
            }
            _ => intervals.push((stem, *time, *size, vec![name.as_str()])),
        }
    }
    let oldest_kept = now.checked_sub(retention.max_age);
    let mut bytes = 0u64;
    let mut removed = 0;
    for (i, (_, time, size, names)) in intervals.iter().enumerate() {
        bytes = bytes.saturating_add(*size);
        // The newest interval stays whatever its age or size: a clock
        // stepped forward, or one huge interval, must not empty the directory.
        let newest = i == 0;
        let too_many = i >= retention.max_intervals.max(1);
        let too_old = oldest_kept.is_some_and(|oldest| *time < oldest);
        let too_big = bytes > retention.max_bytes;
        if newest || !(too_many || too_old || too_big) {
            continue;
        }
        for name in names {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_and_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_620_600); // 2026-11-25 15:30:00
        assert_eq!(timestamp(t), "20261125T153000Z");
        assert_eq!(parse_timestamp("20261125T153000Z"), Some(t));
        assert_eq!(timestamp(UNIX_EPOCH), "19700101T000000Z");
        // A leap day.
        let leap = parse_timestamp("20240229T235959Z").unwrap();
        assert_eq!(timestamp(leap), "20240229T235959Z");
        assert_eq!(timestamp(leap + Duration::from_secs(1)), "20240301T000000Z");
        for bad in [
            "",
            "20261125T153000",
            "2026112XT153000Z",
            "20261325T153000Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        // Sortable: text order is time order.
        let a = timestamp(t);
        let b = timestamp(t + Duration::from_secs(3600 * 24 * 40));
        assert!(a < b);
    }

    #[test]
    fn prune_keeps_newest_intervals_within_age() {
        let dir = std::env::temp_dir().join(format!("selfops-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let now = parse_timestamp("20261125T160000Z").unwrap();
        let minute = Duration::from_secs(60);
        for i in 0..6u32 {
            let stem = timestamp(now - minute * (i + 1));
            std::fs::write(dir.join(format!("{stem}.pb.gz")), b"x").unwrap();
            std::fs::write(dir.join(format!("{stem}.svg")), b"x").unwrap();
        }
        std::fs::write(dir.join("notes.txt"), b"keep").unwrap();
        let retention = Retention {
            max_intervals: 4,
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 20,
        };
        assert_eq!(prune(&dir, retention, now).unwrap(), 4);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left.len(), 9, "{left:?}");
        assert!(left.contains(&"notes.txt".to_owned()));
        assert!(!left.contains(&format!("{}.svg", timestamp(now - minute * 5))));

        // Age: only intervals of the last 2.5 minutes stay.
        let retention = Retention {
            max_intervals: 100,
            max_age: Duration::from_secs(150),
            max_bytes: 1 << 20,
        };
        assert_eq!(prune(&dir, retention, now).unwrap(), 4);

        // Bytes: each interval is 2 bytes here; 3 bytes keep one.
        let retention = Retention {
            max_intervals: 100,
            max_age: Duration::from_secs(3600),
            max_bytes: 3,
        };
        assert_eq!(prune(&dir, retention, now).unwrap(), 2);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            3,
            "one interval and notes.txt"
        );
        let retention = Retention {
            max_bytes: 0,
            ..retention
        };
        assert_eq!(prune(&dir, retention, now).unwrap(), 0, "the newest stays");
        let stem = free_stem(&dir, now - minute);
        assert_eq!(stem, format!("{}-2", timestamp(now - minute)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
