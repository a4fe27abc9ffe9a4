//! The bpf filesystem persistent limiter state is pinned in, mounted at
//! /sys/fs/bpf when the host has not (as `ip` or systemd usually do).

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use selfops_ebpf::limiter::{LimiterBucket, LimiterKey};

use super::{BUCKETS, LimiterError, STATS, allow};

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

/// Removes a pinned map whose layout this build's programs cannot use (an
/// older or newer agent's): the verifier would refuse the programs, and
/// the agent must start. Its keys are lost with it; a key always expires
/// by itself anyway.
pub fn discard_incompatible(dir: &Path) -> Result<(), LimiterError> {
    let expected = [
        (BUCKETS, size_of::<LimiterKey>(), size_of::<LimiterBucket>()),
        (STATS, size_of::<u32>(), size_of::<u64>()),
        (allow::PORTS, size_of::<u16>(), size_of::<u8>()),
        (allow::SOURCES, size_of::<u32>() + 16, size_of::<u8>()),
    ];
    for (name, key_size, value_size) in expected {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let fits = MapInfo::from_pin(&path).is_ok_and(|info| {
            info.key_size() as usize == key_size && info.value_size() as usize == value_size
        });
        if !fits {
            tracing::warn!(path = %path.display(), "pinned limiter map has another layout: removed");
            std::fs::remove_file(&path).map_err(|source| LimiterError::PinDir { path, source })?;
        }
    }
    Ok(())
}
