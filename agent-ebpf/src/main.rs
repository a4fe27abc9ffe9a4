//! selfops kernel programs. Each program is a thin attribute wrapper over one
//! `try_…` function that returns `Result`, so no error path can panic.
#![no_std]
#![no_main]

mod programs;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in verified programs: the verifier rejects any reachable panic.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
