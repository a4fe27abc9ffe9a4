//! Builds unwind tables from arbitrary ELF images: the CFI parsing path
//! (object headers, .eh_frame / .debug_frame through gimli) must never
//! panic and must stay bounded, and lookups on whatever it built must be
//! safe.
//!
//! Input: an ELF image; the seed corpus should hold real binaries so
//! mutations reach deep into their CFI.

#![no_main]

use libfuzzer_sys::fuzz_target;
use selfops_agent::profile::unwind::table::{MAX_ROWS, UnwindTable};

fuzz_target!(|data: &[u8]| {
    let Ok(table) = UnwindTable::from_bytes(data) else {
        return;
    };
    assert!(table.rows() <= MAX_ROWS);
    for address in [0u64, 0x1000, 0x40_0000, u64::from(u32::MAX), u64::MAX] {
        let _ = table.lookup(address);
        let _ = table.vaddr_of(address);
    }
});
