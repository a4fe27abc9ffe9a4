//! Keeping resident memory close to what the agent holds.
//!
//! mimalloc keeps freed pages per thread and purges them lazily, when that
//! thread next allocates, after a delay; glibc keeps freed memory below its
//! (self-raising) trim threshold. Either way a burst of allocation, such as
//! kernel BTF parsed at start or a paged pod list, stays resident while the
//! agent is quiet. The agent calls [`release_everywhere`] where it knows a
//! burst has ended, and runs on 4 KiB pages ([`without_huge_pages`]).

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
};

/// Bumped by [`release_everywhere`]; each runtime thread releases once per
/// bump, when it next goes idle.
static RELEASE_EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RELEASED_AT: Cell<u64> = const { Cell::new(0) };
}

/// Asks every runtime thread to hand back its free pages when it next
/// parks: mimalloc keeps them per thread, and a burst spread over several
/// threads leaves some on each.
pub fn release_everywhere() {
    RELEASE_EPOCH.fetch_add(1, Ordering::Relaxed);
    release_free();
}

/// The runtime's park hook: one atomic load unless a release is due.
pub fn on_thread_park() {
    let epoch = RELEASE_EPOCH.load(Ordering::Relaxed);
    if RELEASED_AT.get() != epoch {
        RELEASED_AT.set(epoch);
        release_free();
    }
}

/// Returns free heap pages to the kernel: the calling thread's empty pages
/// and every pending purge, expired or not.
pub fn release_free() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect only releases pages that hold no live block.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
    #[cfg(not(feature = "mimalloc"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0)
    };
}

/// Keeps this process on 4 KiB pages. mimalloc asks for transparent huge
/// pages on its arena, so on hosts that grant them on request (THP mode
/// `madvise`, or `always`) every touched 2 MiB of heap is resident in
/// full, and an idle agent held several times what it uses. Applies to
/// mappings made before the call too, as the kernel checks the flag at
/// each fault. A re-executed agent inherits the flag, which is meant.
pub fn without_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
