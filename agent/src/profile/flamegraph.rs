//! Renders an interval as an SVG flame graph with inferno.
//!
//! Each process is a root frame (`executable [pid]`), under it the stack
//! from the outermost caller to the leaf; inlined functions are frames of
//! their own, kernel functions get perf's `_[k]` suffix, and frames
//! without symbols are shown as `file+offset`.

use std::collections::HashMap;

use inferno::flamegraph;

use super::{
    model::{Frame, IntervalProfile, ProcessLabels},
    names,
};

#[derive(Debug, thiserror::Error)]
pub enum FlameGraphError {
    /// inferno draws nothing for an interval without samples.
    #[error("no samples to draw")]
    Empty,
    #[error("rendering the flame graph: {0}")]
    Render(#[from] std::io::Error),
}

/// The interval in folded-stack form (`root;…;leaf count`), one line per
/// distinct stack, sorted.
pub fn folded(profile: &IntervalProfile) -> Vec<String> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut line = String::new();
    for stack in &profile.stacks {
        if stack.count == 0 {
            continue;
        }
        line.clear();
        push_name(&mut line, &process_frame(&stack.labels));
        for frame in stack.frames.iter().rev() {
            push_frame(&mut line, frame);
        }
        match counts.get_mut(line.as_str()) {
            Some(count) => *count = count.saturating_add(stack.count),
            None => {
                counts.insert(line.clone(), stack.count);
            }
        }
    }
    let mut lines: Vec<String> = counts
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect();
    lines.sort_unstable();
    lines
}

/// The SVG of one interval.
pub fn render_svg(profile: &IntervalProfile, title: &str) -> Result<Vec<u8>, FlameGraphError> {
    let lines = folded(profile);
    if lines.is_empty() {
        return Err(FlameGraphError::Empty);
    }
    let mut options = flamegraph::Options::default();
    options.title = title.to_owned();
    options.subtitle = Some(format!(
        "one sample = {} µs of CPU time",
        profile.period_nanos / 1_000
    ));
    options.count_name = "samples".to_owned();
    // Same input, same picture: colours from the names, not at random.
    options.hash = true;
    options.deterministic = true;
    // Frames narrower than a pixel cannot be read, and drawing them all
    // makes a busy interval's SVG tens of megabytes.
    options.min_width = 1.0;
    let mut svg = Vec::with_capacity(64 * 1024);
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}

fn process_frame(labels: &ProcessLabels) -> String {
    if labels.executable_name.is_empty() {
        format!("[pid {}]", labels.pid)
    } else {
        format!("{} [{}]", labels.executable_name, labels.pid)
    }
}

fn push_frame(line: &mut String, frame: &Frame) {
    let suffix = if frame.kernel { "_[k]" } else { "" };
    if frame.symbols.is_empty() {
        push_name(line, &names::unsymbolized(frame));
        line.push_str(suffix);
        return;
    }
    // Symbols list inlined callees first; the flame graph goes outward in.
    for symbol in frame.symbols.iter().rev() {
        push_name(line, &symbol.function);
        line.push_str(suffix);
    }
}

/// Appends `;name`, keeping the folded format's separators out of it.
fn push_name(line: &mut String, name: &str) {
    if !line.is_empty() {
        line.push(';');
    }
    line.extend(name.chars().map(|c| match c {
        ';' => ',',
        c if c.is_control() => ' ',
        c => c,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::test_fixture;

    #[test]
    fn folded_stacks_go_root_to_leaf_with_inlines_and_kernel() {
        assert_eq!(
            folded(&test_fixture::interval()),
            [
                "batchjob [777];main;parse_order;validate_sku 5",
                "shopd [4242];main;handle_request;libc.so.6+0x12340;do_syscall_64_[k];\
                 [kernel] 0xffffffff81200042_[k] 7",
                "shopd [4242];main;handle_request;parse_order;validate_sku 30",
            ]
        );
    }

    #[test]
    fn identical_stacks_add_up_and_separators_are_escaped() {
        let mut interval = test_fixture::interval();
        let mut again = interval.stacks[0].clone();
        again.count = 12;
        // Another thread of the same process: the same flame graph stack.
        let mut labels = (*again.labels).clone();
        labels.thread_name = "worker-2".to_owned();
        again.labels = std::sync::Arc::new(labels);
        interval.stacks.push(again);
        let mut odd = interval.stacks[2].clone();
        odd.frames.truncate(1);
        odd.frames[0].symbols = vec![crate::profile::model::Symbol {
            function: "<[u8; 4] as Debug>::fmt\n".into(),
            file: None,
            line: None,
        }];
        interval.stacks.push(odd);
        let lines = folded(&interval);
        assert!(
            lines.contains(
                &"shopd [4242];main;handle_request;parse_order;validate_sku 42".to_owned()
            ),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"batchjob [777];<[u8, 4] as Debug>::fmt  5".to_owned()),
            "{lines:?}"
        );
    }

    #[test]
    fn svg_names_the_functions() {
        let svg = render_svg(&test_fixture::interval(), "CPU test").unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..100.min(svg.len())]);
        for name in [
            "validate_sku",
            "parse_order",
            "handle_request",
            "do_syscall_64",
            "libc.so.6+0x12340",
            "shopd [4242]",
            "CPU test",
        ] {
            assert!(svg.contains(name), "{name} missing");
        }
    }

    #[test]
    fn nothing_to_draw_is_an_error_not_a_broken_file() {
        let mut interval = test_fixture::interval();
        interval.stacks.clear();
        assert!(matches!(
            render_svg(&interval, "empty"),
            Err(FlameGraphError::Empty)
        ));
    }
}
