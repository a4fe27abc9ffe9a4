//! The bpf filesystem persistent limiter state is pinned in, mounted at
//! /sys/fs/bpf when the host has not (as `ip` or systemd usually do).

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::LimiterError;

/// Where bpffs is conventionally mounted.
const BPFFS: &str = "/sys/fs/bpf";
/// `statfs.f_type` of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `dir` can be created on a bpf filesystem, mounting bpffs at
/// /sys/fs/bpf if `dir` is under it and nothing is mounted there.
pub fn ensure_bpffs(dir: &Path) -> Result<(), LimiterError> {
    let error = |path: &Path, source: io::Error| LimiterError::PinDir {
        path: path.to_owned(),
        source,
    };
    if dir.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)).map_err(|e| error(dir, e))? {
        mount_bpffs().map_err(|e| error(Path::new(BPFFS), e))?;
        tracing::info!(target = BPFFS, "mounted bpffs");
    }
    std::fs::create_dir_all(dir).map_err(|e| error(dir, e))?;
    if !is_bpffs(dir).map_err(|e| error(dir, e))? {
        return Err(error(
            dir,
            io::Error::other("not on a bpf filesystem (mount -t bpf bpf <dir>)"),
        ));
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = c_path(path)?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a writable struct.
    if unsafe { libc::statfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs() -> io::Result<()> {
    let source = CString::new("bpf")?;
    let target = c_path(&PathBuf::from(BPFFS))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
