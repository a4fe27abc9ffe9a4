//! Profiler samples shared with the CPU-clock sampler.
//!
//! One ring-buffer record per sample: a [`SampleHeader`] followed by
//! `user_stack_len` bytes of the user stack copied from the sampled stack
//! pointer upwards, unwound later in userspace.

/// Kernel frames kept per sample (the kernel's default perf_event_max_stack).
pub const KERNEL_STACK_DEPTH: usize = 127;

/// Stack pages the sampler copies: the partial page at the stack pointer
/// plus whole pages above it, stopping at the first unreadable page.
pub const USER_STACK_PAGES: usize = 4;
pub const STACK_PAGE_BYTES: usize = 4096;
/// Most user-stack bytes in one record.
pub const USER_STACK_BYTES: usize = USER_STACK_PAGES * STACK_PAGE_BYTES;

/// `SampleHeader::flags`: the registers are user registers (absent for
/// kernel threads and when the user state could not be read).
pub const SAMPLE_HAS_USER_REGS: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleHeader {
    /// Thread group id (the process id as userspace sees it).
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub flags: u32,
    /// Valid entries in `kernel_stack`.
    pub kernel_frames: u32,
    /// Bytes of user stack following this header.
    pub user_stack_len: u32,
    /// User registers at the sample: instruction, stack and frame pointer.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub comm: [u8; 16],
    /// Kernel return addresses, innermost first.
    pub kernel_stack: [u64; KERNEL_STACK_DEPTH],
}

impl SampleHeader {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// What the sampler reserves in the ring for one sample; the unused tail of
/// the stack area is not read by the agent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleRecord {
    pub header: SampleHeader,
    pub user_stack: [u8; USER_STACK_BYTES],
}

/// Set by the agent at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProfilerSettings {
    /// The agent's own process: never sampled.
    pub agent_tgid: u32,
    pub _pad: u32,
}

impl ProfilerSettings {
    pub const DEFAULT: Self = Self {
        agent_tgid: 0,
        _pad: 0,
    };
}

/// Per-CPU counters of the sampler, by index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileCounter {
    /// Samples written to the ring.
    Samples = 0,
    /// Samples lost: the ring was full.
    RingFull = 1,
    /// Samples of the idle task, not recorded.
    Idle = 2,
    /// Samples whose user stack could not be read at all.
    UserStackUnreadable = 3,
}

pub const PROFILE_COUNTER_COUNT: u32 = 4;

impl ProfileCounter {
    pub const ALL: [Self; PROFILE_COUNTER_COUNT as usize] = [
        Self::Samples,
        Self::RingFull,
        Self::Idle,
        Self::UserStackUnreadable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Samples => "recorded",
            Self::RingFull => "ring_full",
            Self::Idle => "idle",
            Self::UserStackUnreadable => "user_stack_unreadable",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without implicit padding.
    unsafe impl aya::Pod for super::ProfilerSettings {}
}

// No implicit padding: the header is a whole number of u64s.
const _: () = assert!(SampleHeader::SIZE == 6 * 4 + 3 * 8 + 16 + KERNEL_STACK_DEPTH * 8);
const _: () = assert!(SampleHeader::SIZE.is_multiple_of(8));
