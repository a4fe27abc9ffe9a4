//! The user's registers a syscall was entered with (`struct pt_regs`):
//! where its number and first two arguments are, per architecture. Read
//! through the helper where the verifier knows them only as an address,
//! which works on every kernel whatever its BTF says of `pt_regs` (see
//! `syscall_functions`), and with plain loads where it knows their type.

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

/// A `struct pt_regs *` the verifier knows by its BTF type (an argument of
/// a `tp_btf` program): each word is a plain load, which it checks against
/// the type's fields and guards against faults, instead of a helper call.
#[derive(Clone, Copy)]
pub struct TypedRegs(*const u8);

impl TypedRegs {
    /// None for a null pointer, which newer verifiers make programs check.
    #[inline(always)]
    pub fn new(regs: *const u8) -> Option<Self> {
        (!regs.is_null()).then_some(Self(regs))
    }

    #[inline(always)]
    fn word<T: Copy>(self, offset: u64) -> T {
        // SAFETY: a field of the kernel's `pt_regs` at its ABI offset; the
        // verifier checks the access against the BTF type and turns it
        // into a load that cannot fault.
        unsafe { core::ptr::read_volatile(self.0.add(offset as usize).cast::<T>()) }
    }

    /// As [`user_args`].
    #[inline(always)]
    pub fn user_args(self) -> (u64, u64) {
        (self.word(ARGS[0]), self.word(ARGS[1]))
    }

    /// As [`syscall_nr`].
    #[inline(always)]
    pub fn syscall_nr(self) -> i64 {
        #[cfg(bpf_target_arch = "x86_64")]
        let nr: i64 = self.word(NR);
        #[cfg(bpf_target_arch = "aarch64")]
        let nr = i64::from(self.word::<i32>(NR));
        nr
    }
}
