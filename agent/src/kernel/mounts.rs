//! Pseudo-filesystems the agent needs and mounts itself when the host has
//! not: tracefs (tracepoint ids and formats) and securityfs (lockdown mode).

use std::{ffi::CString, io, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const SECURITYFS: &str = "/sys/kernel/security";

/// What [`ensure_mounted`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    AlreadyMounted,
    MountedByAgent,
}

/// Mounts `fstype` at `target` unless `marker` (a path only present when the
/// filesystem is mounted) already exists.
pub fn ensure_mounted(fstype: &str, target: &str, marker: &str) -> io::Result<MountState> {
    if Path::new(marker).exists() {
        return Ok(MountState::AlreadyMounted);
    }
    let source = CString::new("nodev")?;
    let target_c = CString::new(target)?;
    let fstype_c = CString::new(fstype)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(fstype, target, "mounted");
    Ok(MountState::MountedByAgent)
}

/// Makes tracefs available at /sys/kernel/tracing.
pub fn ensure_tracefs() -> io::Result<MountState> {
    ensure_mounted("tracefs", TRACEFS, "/sys/kernel/tracing/events")
}

/// Makes securityfs available at /sys/kernel/security.
pub fn ensure_securityfs() -> io::Result<MountState> {
    ensure_mounted("securityfs", SECURITYFS, "/sys/kernel/security/lsm")
}
