//! Per-row scores in NAB's results layout, so NAB's own tools can score
//! them: `OUT/<detector>/<category>/<detector>_<file>.csv`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::corpus::Corpus;

pub fn write(
    out: &Path,
    detector: &str,
    corpus: &Corpus,
    scores: &[Vec<f64>],
) -> anyhow::Result<()> {
    for (file, s) in corpus.files.iter().zip(scores) {
        let dir = out.join(detector).join(&file.category);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = String::from("timestamp,value,anomaly_score\n");
        for ((ts, v), score) in file.raw.iter().zip(s) {
            // `{}` on f64 prints the shortest text that reads back exactly.
            let _ = writeln!(text, "{ts},{v},{score}");
        }
        let path = dir.join(format!("{detector}_{}.csv", file.stem));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
