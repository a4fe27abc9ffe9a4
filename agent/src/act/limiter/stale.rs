//! Limiter hooks a previous run left behind: clsact filters (netlink, no
//! file descriptor: they outlive a killed agent) and pinned links for
//! interfaces the configuration no longer names.

use std::path::Path;

use aya::programs::{TcAttachType, tc::qdisc_detach_program};

use super::{LimiterError, attach::TC_PROGRAM};
use crate::kernel::errno;

/// Removes every limiter clsact filter on `interface` ingress (found by
/// the program's name); returns whether there was one.
pub fn remove_stale_filters(interface: &str) -> Result<bool, LimiterError> {
    match qdisc_detach_program(interface, TcAttachType::Ingress, TC_PROGRAM) {
        Ok(()) => {
            tracing::info!(
                interface,
                "removed a limiter clsact filter left by an earlier run"
            );
            Ok(true)
        }
        Err(e) => {
            // No filter by that name, no clsact qdisc, or no such device.
            let absent = match &e {
                aya::programs::tc::TcError::IoError(io) => {
                    io.kind() == std::io::ErrorKind::NotFound
                        || matches!(io.raw_os_error(), Some(libc::ENODEV | libc::ENOENT))
                }
                other => matches!(
                    errno::code(other),
                    Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
                ),
            };
            if absent {
                Ok(false)
            } else {
                Err(LimiterError::Attach {
                    interface: interface.to_owned(),
                    detail: format!("removing a stale clsact filter: {}", errno::describe(&e)),
                })
            }
        }
    }
}

/// Unpins the links in `dir` (`xdp_<interface>`, `tc_<interface>`) not in
/// `keep`: they would go on enforcing where nothing is configured. Returns
/// the names removed.
pub fn remove_stale_links(dir: &Path, keep: &[String]) -> Result<Vec<String>, LimiterError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LimiterError::PinDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_link = name.starts_with("xdp_") || name.starts_with("tc_");
        if !is_link || keep.contains(&name) {
            continue;
        }
        let path = entry.path();
        std::fs::remove_file(&path).map_err(|source| LimiterError::PinDir { path, source })?;
        tracing::info!(pin = %name, "unpinned a limiter link for an interface no longer configured");
        removed.push(name);
    }
    Ok(removed)
}

/// The pin names of the links `interface` may carry.
pub fn link_pins(interface: &str) -> [String; 2] {
    [format!("xdp_{interface}"), format!("tc_{interface}")]
}
