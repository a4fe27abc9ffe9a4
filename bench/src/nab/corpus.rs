//! A corpus in NAB's layout: `DATA/<category>/<file>.csv` with
//! `timestamp,value` rows, and a windows file mapping `category/file.csv` to
//! `[[first, last], ...]` timestamps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub struct DataFile {
    /// `category/file.csv`, as keyed in the windows file.
    pub key: String,
    pub category: String,
    pub stem: String,
    /// Timestamp and value text as in the file, for the results CSVs.
    pub raw: Vec<(String, String)>,
    /// Seconds since the Unix epoch.
    pub times: Vec<f64>,
    pub values: Vec<f64>,
    /// Inclusive row ranges of the labelled windows, in order.
    pub windows: Vec<(usize, usize)>,
}

pub struct Corpus {
    pub files: Vec<DataFile>,
}

impl Corpus {
    pub fn windows(&self) -> usize {
        self.files.iter().map(|f| f.windows.len()).sum()
    }

    pub fn rows(&self) -> usize {
        self.files.iter().map(|f| f.values.len()).sum()
    }

    pub fn load(data: &Path, windows_path: &Path) -> anyhow::Result<Corpus> {
        let text = std::fs::read_to_string(windows_path)
            .with_context(|| format!("reading windows file {}", windows_path.display()))?;
        let labelled: BTreeMap<String, Vec<[String; 2]>> = serde_json::from_str(&text)
            .with_context(|| {
                format!(
                    "parsing {} as {{file: [[first, last], ...]}}",
                    windows_path.display()
                )
            })?;
        let mut files = Vec::new();
        for (key, windows) in labelled {
            let path = data.join(&key);
            let mut file = read_csv(&path, &key)?;
            for [first, last] in &windows {
                let range = window_rows(&file.times, first, last)
                    .with_context(|| format!("window [{first}, {last}] of {key}"))?;
                if let Some(&(_, prev_last)) = file.windows.last()
                    && range.0 <= prev_last
                {
                    bail!(
                        "window [{first}, {last}] of {key} overlaps or precedes the previous one"
                    );
                }
                file.windows.push(range);
            }
            files.push(file);
        }
        if files.is_empty() {
            bail!("{} lists no data files", windows_path.display());
        }
        Ok(Corpus { files })
    }
}

fn read_csv(path: &Path, key: &str) -> anyhow::Result<DataFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header.trim() != "timestamp,value" {
        bail!(
            "{}: header is {header:?}, expected \"timestamp,value\"",
            path.display()
        );
    }
    let (mut raw, mut times, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (ts, v) = line
            .split_once(',')
            .with_context(|| format!("{} line {}: no comma", path.display(), n + 2))?;
        let t =
            parse_timestamp(ts).with_context(|| format!("{} line {}", path.display(), n + 2))?;
        let value: f64 = v
            .trim()
            .parse()
            .with_context(|| format!("{} line {}: value {v:?}", path.display(), n + 2))?;
        raw.push((ts.to_string(), v.trim().to_string()));
        times.push(t);
        values.push(value);
    }
    let (category, stem) = match key.rsplit_once('/') {
        Some((c, f)) => (c.to_string(), f.trim_end_matches(".csv").to_string()),
        None => (String::new(), key.trim_end_matches(".csv").to_string()),
    };
    Ok(DataFile {
        key: key.to_string(),
        category,
        stem,
        raw,
        times,
        values,
        windows: Vec::new(),
    })
}

/// NAB enters a window at the row stamped with its first timestamp and leaves
/// it at the row stamped with its last; both must be rows of the file.
fn window_rows(times: &[f64], first: &str, last: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = (parse_timestamp(first)?, parse_timestamp(last)?);
    let find = |t: f64| times.iter().position(|&x| x == t);
    match (find(a), find(b)) {
        (Some(l), Some(r)) if l <= r => Ok((l, r)),
        (Some(_), Some(_)) => bail!("ends before it starts"),
        _ => bail!("its first or last timestamp is not a row of the file"),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC) to seconds since the Unix epoch.
pub fn parse_timestamp(s: &str) -> anyhow::Result<f64> {
    let s = s.trim();
    let bad = || anyhow::anyhow!("timestamp {s:?} is not YYYY-MM-DD HH:MM:SS[.ffffff]");
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(bad)?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(Ok(y)), Some(Ok(m)), Some(Ok(day)), None) => (y, m, day),
        _ => return Err(bad()),
    };
    let mut t = time.split(':');
    let (h, min, sec) = match (t.next(), t.next(), t.next(), t.next()) {
        (Some(h), Some(mi), Some(se), None) => (
            h.parse::<i64>().map_err(|_| bad())?,
            mi.parse::<i64>().map_err(|_| bad())?,
            se.parse::<f64>().map_err(|_| bad())?,
        ),
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&min)
    {
        return Err(bad());
    }
    if !(0.0..61.0).contains(&sec) {
        return Err(bad());
    }
    Ok((days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The vendored corpus, found from this crate's directory.
pub fn vendored() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nab");
    (root.join("data"), root.join("windows.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_epoch_seconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00").ok(), Some(0.0));
        assert_eq!(
            parse_timestamp("2014-04-10 07:15:00.000000").ok(),
            Some(1_397_114_100.0)
        );
        assert_eq!(
            parse_timestamp("2000-03-01 00:00:01").ok(),
            Some(951_868_801.0)
        );
        assert!(parse_timestamp("2014-13-10 07:15:00").is_err());
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn vendored_corpus_loads_with_every_window_on_a_row() {
        let (data, windows) = vendored();
        let corpus = Corpus::load(&data, &windows).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(corpus.files.len(), 35);
        assert_eq!(corpus.windows(), 55);
    }
}
