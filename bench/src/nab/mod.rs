//! `cargo xtask bench nab`: runs the detectors over a labelled corpus in
//! NAB's layout (by default the vendored subset in `bench/nab/`), scores them
//! by NAB's rules and measures their cost per point.

mod corpus;
mod emit;
mod grid;
mod loco;
mod scoring;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use selfops_agent::detect::{
    ContextualConfig, Detector, DetectorConfig, EwmaConfig, HoltWintersConfig,
    SeasonalLikelihoodConfig, ThresholdConfig, WindowedLikelihoodConfig, ZScoreConfig,
};

use corpus::Corpus;
use scoring::{PROFILES, Point, RowKind};

#[derive(clap::Args)]
pub struct Args {
    /// Data directory in NAB's layout (`<category>/<file>.csv`); default: the vendored corpus.
    #[arg(long, requires = "windows")]
    data: Option<PathBuf>,
    /// NAB windows file (`combined_windows.json` layout).
    #[arg(long, requires = "data")]
    windows: Option<PathBuf>,
    /// Also write per-row scores in NAB's results layout under this directory.
    #[arg(long)]
    emit: Option<PathBuf>,
    /// An extra detector to evaluate, as `NAME=JSON` with JSON a detector
    /// config, e.g. `fast='{"kind":"ewma","alpha":0.5}'`, or `onnx=MODEL`
    /// for an ONNX model over a window of the series. Repeatable.
    #[arg(long = "detector", value_name = "NAME=JSON")]
    detectors: Vec<String>,
    /// Print, per file, windows detected and false positives at each
    /// detector's best standard-profile threshold.
    #[arg(long)]
    per_file: bool,
}

/// The detectors benchmarked by default, the shipped default last.
fn builtin() -> Vec<(String, DetectorConfig)> {
    vec![
        // The classic static alert, "CPU above 90%"; on series in other units it fires
        // everywhere or nowhere, as a static threshold would.
        (
            "threshold_90".into(),
            DetectorConfig::Threshold(ThresholdConfig {
                above: Some(90.0),
                below: None,
            }),
        ),
        (
            "zscore".into(),
            DetectorConfig::Zscore(ZScoreConfig::default()),
        ),
        ("ewma".into(), DetectorConfig::Ewma(EwmaConfig::default())),
        (
            "holt_winters".into(),
            DetectorConfig::HoltWinters(HoltWintersConfig::default()),
        ),
        (
            "windowed_likelihood".into(),
            DetectorConfig::WindowedLikelihood(WindowedLikelihoodConfig::default()),
        ),
        (
            "seasonal_likelihood".into(),
            DetectorConfig::SeasonalLikelihood(SeasonalLikelihoodConfig::default()),
        ),
        (
            "contextual".into(),
            DetectorConfig::Contextual(ContextualConfig::default()),
        ),
    ]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (data, windows) = match (args.data, args.windows) {
        (Some(d), Some(w)) => (d, w),
        _ => corpus::vendored(),
    };
    let corpus = Corpus::load(&data, &windows)?;
    println!(
        "corpus {}: {} files, {} rows, {} windows",
        data.display(),
        corpus.files.len(),
        corpus.rows(),
        corpus.windows()
    );

    let mut detectors = builtin();
    for spec in &args.detectors {
        let (name, json) = spec
            .split_once('=')
            .with_context(|| format!("--detector {spec:?} is not NAME=JSON"))?;
        let cfg = extra_detector(name, json)?;
        detectors.push((name.to_string(), cfg));
    }

    println!(
        "\n{:<22} {:>9} {:>14} {:>14} {:>10} {:>8} {:>8} {:>6} {:>9}",
        "detector",
        PROFILES[0].name,
        PROFILES[1].name,
        PROFILES[2].name,
        "threshold",
        "raw",
        "windows",
        "FPs",
        "ns/point"
    );
    for (name, cfg) in &detectors {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            bail!("detector name {name:?} cannot be a directory name");
        }
        cfg.build().with_context(|| format!("detector {name}"))?;
        let (scores, ns) = run_detector(cfg, &corpus)?;
        let mut results = Vec::new();
        for profile in &PROFILES {
            let mut points = scorable(&corpus, &scores);
            results.push(scoring::sweep(&mut points, corpus.windows(), profile));
        }
        let std = &results[0];
        println!(
            "{:<22} {:>9.1} {:>14.1} {:>14.1} {:>10} {:>8.2} {:>5}/{:<2} {:>6} {:>9.1}",
            name,
            std.normalized,
            results[1].normalized,
            results[2].normalized,
            if std.threshold.is_finite() {
                format!("{:.6}", std.threshold)
            } else {
                "never".into()
            },
            std.raw,
            std.true_windows,
            corpus.windows(),
            std.false_positives,
            ns
        );
        if args.per_file {
            print_per_file(&corpus, &scores, std.threshold);
        }
        if let Some(out) = &args.emit {
            emit::write(out, name, &corpus, &scores)?;
        }
    }
    print_loco(&corpus, &detectors)?;
    println!(
        "\ncontextual is the default detector. Scores normalised as NAB does: 0 never \
         fires, 100 perfect; threshold, raw, windows and FPs are for the standard profile. Published on these 35 files \
         (standard): windowed Gaussian 22.0, Random Cut Forest 49.5, KNN CAD 53.0, Numenta HTM 66.6, \
         ARTime 67.8."
    );
    if let Some(out) = &args.emit {
        println!("per-row scores written under {}", out.display());
    }
    Ok(())
}

/// `--detector NAME=JSON`, or `onnx=MODEL` (a path, not JSON).
fn extra_detector(name: &str, value: &str) -> anyhow::Result<DetectorConfig> {
    if name == "onnx" && !value.trim_start().starts_with('{') {
        let json = serde_json::json!({ "kind": "onnx", "model": value });
        return serde_json::from_value(json).with_context(|| format!("--detector onnx={value}"));
    }
    serde_json::from_str(value).with_context(|| format!("--detector {name}: config {value}"))
}

/// The leave-one-category-out table: every family with its grid (extra
/// detectors are a family of one), then the default chosen among all of them
/// by the same protocol.
fn print_loco(corpus: &Corpus, extra: &[(String, DetectorConfig)]) -> anyhow::Result<()> {
    let mut families = grid::families();
    let builtin_names: Vec<String> = builtin().into_iter().map(|(n, _)| n).collect();
    for (name, cfg) in extra {
        if !builtin_names.contains(name) {
            families.push((name.clone(), vec![cfg.clone()]));
        }
    }
    let cats = loco::categories(corpus);
    println!(
        "\nleave-one-category-out (standard profile): parameters and threshold chosen on the other categories, scored on the one left out"
    );
    let mut header = format!("{:<22}", "detector");
    for c in &cats {
        header.push_str(&format!(" {:>22}", c));
    }
    header.push_str(&format!(
        " {:>8} {:>9} {:>6} {:>9}",
        "LOCO", "in-sample", "grid", "ns/point"
    ));
    println!("{header}");
    let mut all_scores = Vec::new();
    let mut all_labels = Vec::new();
    for (name, grid) in &families {
        let mut family = Vec::with_capacity(grid.len());
        let mut worst_ns: f64 = 0.0;
        for cfg in grid {
            let (scores, ns) =
                score_once(cfg, corpus).with_context(|| format!("detector {name}"))?;
            worst_ns = worst_ns.max(ns);
            family.push(scores);
        }
        let out = loco::evaluate(corpus, &family);
        print_outcome(name, &out, grid.len(), worst_ns);
        all_labels.extend(grid.iter().map(|c| (name.clone(), c.clone())));
        all_scores.extend(family);
    }
    let out = loco::evaluate(corpus, &all_scores);
    print_outcome("default (any family)", &out, all_scores.len(), f64::NAN);
    for (cat, _, _, k) in &out.per_category {
        println!(
            "    without {cat:<22} chose {} {:?}",
            all_labels[*k].0, all_labels[*k].1
        );
    }
    println!(
        "    on everything            chose {} {:?}",
        all_labels[out.chosen].0, all_labels[out.chosen].1
    );
    println!(
        "  per category: normalised score (artificialNoAnomaly has no windows: its raw false-positive cost); ns/point: slowest configuration, one pass"
    );
    Ok(())
}

fn print_outcome(name: &str, out: &loco::Outcome, grid: usize, ns: f64) {
    let mut line = format!("{name:<22}");
    for (_, norm, raw, _) in &out.per_category {
        let cell = match norm {
            Some(n) => format!("{n:.1}"),
            None => format!("raw {raw:.2}"),
        };
        line.push_str(&format!(" {cell:>22}"));
    }
    let ns = if ns.is_finite() {
        format!("{ns:.1}")
    } else {
        "-".into()
    };
    line.push_str(&format!(
        " {:>8.1} {:>9.1} {:>6} {:>9}",
        out.overall, out.in_sample, grid, ns
    ));
    println!("{line}");
}

/// One untimed-for-ranking pass of a fresh detector over each file: the
/// scores and the cost in ns per point.
fn score_once(cfg: &DetectorConfig, corpus: &Corpus) -> anyhow::Result<(Vec<Vec<f64>>, f64)> {
    let mut scores = Vec::with_capacity(corpus.files.len());
    let mut elapsed = 0.0;
    for file in &corpus.files {
        let mut d: Box<dyn Detector> = cfg.build()?;
        let mut out = vec![0.0; file.values.len()];
        let start = Instant::now();
        for ((&t, &v), o) in file.times.iter().zip(&file.values).zip(out.iter_mut()) {
            *o = d.update(t, v);
        }
        elapsed += start.elapsed().as_secs_f64();
        if let Some(bad) = out.iter().position(|x| !(0.0..=1.0).contains(x)) {
            bail!("{}: row {bad} scored {} outside [0, 1]", file.key, out[bad]);
        }
        scores.push(out);
    }
    Ok((scores, elapsed * 1e9 / corpus.rows() as f64))
}

/// Runs a fresh detector over each file; returns per-file scores and the
/// fastest of three timed passes in ns per point.
fn run_detector(cfg: &DetectorConfig, corpus: &Corpus) -> anyhow::Result<(Vec<Vec<f64>>, f64)> {
    let mut scores: Vec<Vec<f64>> = corpus
        .files
        .iter()
        .map(|f| vec![0.0; f.values.len()])
        .collect();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let mut elapsed = 0.0;
        for (file, out) in corpus.files.iter().zip(scores.iter_mut()) {
            let mut d: Box<dyn Detector> = cfg.build()?;
            let start = Instant::now();
            for ((&t, &v), o) in file.times.iter().zip(&file.values).zip(out.iter_mut()) {
                *o = d.update(t, v);
            }
            elapsed += start.elapsed().as_secs_f64();
        }
        best = best.min(elapsed);
    }
    for (file, s) in corpus.files.iter().zip(&scores) {
        if let Some(bad) = s.iter().position(|x| !(0.0..=1.0).contains(x)) {
            bail!("{}: row {bad} scored {} outside [0, 1]", file.key, s[bad]);
        }
    }
    Ok((scores, best * 1e9 / corpus.rows() as f64))
}

fn scorable(corpus: &Corpus, scores: &[Vec<f64>]) -> Vec<Point> {
    let mut points = Vec::with_capacity(corpus.rows());
    let mut first_id = 0;
    for (file, s) in corpus.files.iter().zip(scores) {
        for (i, kind) in scoring::row_kinds(file.values.len(), &file.windows, first_id) {
            points.push(Point { score: s[i], kind });
        }
        first_id += file.windows.len();
    }
    points
}

fn print_per_file(corpus: &Corpus, scores: &[Vec<f64>], threshold: f64) {
    for (file, s) in corpus.files.iter().zip(scores) {
        let kinds = scoring::row_kinds(file.values.len(), &file.windows, 0);
        let mut hit = vec![None; file.windows.len()];
        let mut fps = Vec::new();
        for (i, kind) in kinds {
            if s[i] < threshold {
                continue;
            }
            match kind {
                RowKind::InWindow { window, sigmoid } => {
                    hit[window].get_or_insert(sigmoid);
                }
                RowKind::Outside { .. } => fps.push(i),
            }
        }
        let hits: Vec<String> = hit
            .iter()
            .map(|h| {
                h.map_or("miss".to_string(), |s| {
                    format!("{:.2}", s / scoring::scaled_sigmoid(-1.0))
                })
            })
            .collect();
        println!(
            "    {:<55} windows [{}] FPs {} {:?}",
            file.key,
            hits.join(" "),
            fps.len(),
            &fps[..fps.len().min(8)]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_onnx_detector_is_a_model_path_or_a_json_config() {
        let cfg = extra_detector("onnx", "models/jump.onnx").unwrap_or_else(|e| panic!("{e:#}"));
        let DetectorConfig::Onnx(c) = &cfg else {
            panic!("not onnx: {cfg:?}")
        };
        assert_eq!(c.model, PathBuf::from("models/jump.onnx"));
        let cfg = extra_detector(
            "onnx",
            r#"{"kind":"onnx","model":"m.onnx","window":16,"normalize":"window"}"#,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(matches!(&cfg, DetectorConfig::Onnx(c) if c.window == Some(16)));
        let cfg = extra_detector("fast", r#"{"kind":"ewma","alpha":0.5}"#);
        assert!(matches!(cfg, Ok(DetectorConfig::Ewma(_))));
        assert!(extra_detector("fast", "not json").is_err());
    }
}
