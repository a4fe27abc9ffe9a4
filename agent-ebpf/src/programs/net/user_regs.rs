//! The user's registers a syscall was entered with (`struct pt_regs`):
//! where its number and first two arguments are, per architecture. Read
//! through the helper, which works on every kernel whatever its BTF says
//! of `pt_regs` (see `syscall_functions`).

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Offsets of the first two arguments. arm64 overwrites `regs[0]` with the
/// return value, so the first argument is taken from `orig_x0`, which
/// holds it from entry to exit.
#[cfg(bpf_target_arch = "x86_64")]
const ARGS: [u64; 2] = [112, 104]; // di, si
#[cfg(bpf_target_arch = "aarch64")]
const ARGS: [u64; 2] = [272, 8]; // orig_x0, regs[1]

/// Offset of the syscall number: `orig_ax` (a long) on x86_64,
/// `syscallno` (an int) on arm64.
#[cfg(bpf_target_arch = "x86_64")]
const NR: u64 = 120;
#[cfg(bpf_target_arch = "aarch64")]
const NR: u64 = 280;

#[inline(always)]
fn read<T: Copy>(at: u64) -> Result<T, i64> {
    // SAFETY: kernel memory read through the helper, which fails cleanly.
    unsafe { bpf_probe_read_kernel(at as *const T) }.map_err(i64::from)
}

/// The first two syscall arguments in the user's registers at `regs`.
#[inline(always)]
pub fn user_args(regs: u64) -> Result<(u64, u64), i64> {
    Ok((read(regs + ARGS[0])?, read(regs + ARGS[1])?))
}

/// The number of the syscall the registers at `regs` entered.
#[inline(always)]
pub fn syscall_nr(regs: u64) -> Result<i64, i64> {
    #[cfg(bpf_target_arch = "x86_64")]
    let nr: i64 = read(regs + NR)?;
    #[cfg(bpf_target_arch = "aarch64")]
    let nr = i64::from(read::<i32>(regs + NR)?);
    Ok(nr)
}
