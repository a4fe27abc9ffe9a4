//! User-stack unwinding in userspace, over the stack bytes the sampler
//! copied: DWARF CFI rows where the file has them, frame pointers where it
//! has none.

pub mod cache;
pub mod table;

use cache::TableCache;
use table::Cfa;

use crate::profile::maps::ProcessMaps;

/// Frames kept per user stack.
pub const MAX_USER_FRAMES: usize = 128;

/// Registers and stack bytes of one sample.
pub struct UserState<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The stack from `sp` upwards.
    pub stack: &'a [u8],
}

impl UserState<'_> {
    fn read(&self, address: u64) -> Option<u64> {
        let offset = usize::try_from(address.checked_sub(self.sp)?).ok()?;
        let bytes = self.stack.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// How an unwind ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the outermost frame (CFI says the return address is undefined,
    /// or a null return address).
    Complete,
    /// The copied stack ended before the outermost frame.
    Truncated,
    /// An address outside every file mapping (JIT code, vdso, a process
    /// whose maps are gone).
    NoMapping,
    /// Neither CFI nor a frame pointer gave a caller.
    Lost,
    /// More frames than [`MAX_USER_FRAMES`].
    TooDeep,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Truncated => "truncated",
            Self::NoMapping => "no_mapping",
            Self::Lost => "lost",
            Self::TooDeep => "too_deep",
        }
    }
}

/// Unwinds `state` and pushes the frame addresses, innermost first: the
/// sampled instruction, then return addresses.
pub fn unwind(
    pid: u32,
    state: &UserState<'_>,
    maps: &ProcessMaps,
    tables: &mut TableCache,
    frames: &mut Vec<u64>,
) -> Outcome {
    let (mut pc, mut sp, mut bp) = (state.ip, state.sp, state.bp);
    frames.push(pc);
    loop {
        if frames.len() >= MAX_USER_FRAMES {
            return Outcome::TooDeep;
        }
        // A return address points after the call; look up the call itself.
        let lookup = if frames.len() == 1 {
            pc
        } else {
            pc.wrapping_sub(1)
        };
        let Some(entry) = maps.find(lookup) else {
            return Outcome::NoMapping;
        };
        let row = tables.table(pid, entry).and_then(|t| {
            t.vaddr_of(entry.file_offset(lookup))
                .and_then(|v| t.lookup(v).copied())
        });
        let (cfa, saved_bp) = match row {
            Some(row) if row.cfa == Cfa::End => return Outcome::Complete,
            Some(row) if row.cfa == Cfa::Sp => (
                sp.wrapping_add_signed(i64::from(row.cfa_offset)),
                i64::from(row.bp_offset),
            ),
            Some(row) if row.cfa == Cfa::Bp => (
                bp.wrapping_add_signed(i64::from(row.cfa_offset)),
                i64::from(row.bp_offset),
            ),
            // Frame pointers: [rbp] is the caller's rbp, [rbp+8] the
            // return address.
            _ => (bp.wrapping_add(16), -16),
        };
        // The stack grows down: a caller's frame is always above.
        if cfa <= sp {
            return Outcome::Lost;
        }
        let Some(ra) = state.read(cfa.wrapping_sub(8)) else {
            return Outcome::Truncated;
        };
        if saved_bp != 0 {
            match state.read(cfa.wrapping_add_signed(saved_bp)) {
                Some(value) => bp = value,
                None => return Outcome::Truncated,
            }
        }
        if ra == 0 {
            return Outcome::Complete;
        }
        sp = cfa;
        pc = ra;
        frames.push(pc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{maps::ProcessMaps, symbolize::UserSymbolizer};

    const COPY: usize = 16 * 1024;

    /// This thread's registers and a copy of its stack, as the sampler
    /// would take them.
    #[inline(never)]
    fn capture(stack: &mut Vec<u8>) -> (u64, u64, u64) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        // Only the callers' frames lie above sp, and the thread's stack
        // mapping may end within COPY bytes: copy no further than it.
        let len = COPY.min(mapped_above(sp));
        // SAFETY: [sp, sp + len) lies within one mapping of this process,
        // this thread's stack, which holds its callers' frames.
        let bytes = unsafe { std::slice::from_raw_parts(sp as *const u8, len) };
        stack.extend_from_slice(bytes);
        (ip, sp, bp)
    }

    /// Bytes from `address` to the end of the mapping holding it.
    fn mapped_above(address: u64) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        maps.lines()
            .find_map(|line| {
                let (start, end) = line.split_whitespace().next()?.split_once('-')?;
                let start = u64::from_str_radix(start, 16).ok()?;
                let end = u64::from_str_radix(end, 16).ok()?;
                (start <= address && address < end).then(|| (end - address) as usize)
            })
            .unwrap_or(0)
    }

    #[inline(never)]
    fn outer_frame_for_unwind_test(stack: &mut Vec<u8>) -> (u64, u64, u64) {
        std::hint::black_box(inner_frame_for_unwind_test(stack))
    }

    #[inline(never)]
    fn inner_frame_for_unwind_test(stack: &mut Vec<u8>) -> (u64, u64, u64) {
        std::hint::black_box(capture(stack))
    }

    fn own_maps() -> ProcessMaps {
        ProcessMaps::parse(&std::fs::read_to_string("/proc/self/maps").unwrap())
    }

    #[test]
    fn unwinds_own_stack_through_cfi() {
        let mut stack = Vec::new();
        let (ip, sp, bp) = outer_frame_for_unwind_test(&mut stack);
        let maps = own_maps();
        let mut tables = TableCache::new(64 << 20, 64);
        let mut frames = Vec::new();
        let state = UserState {
            ip,
            sp,
            bp,
            stack: &stack,
        };
        let outcome = unwind(std::process::id(), &state, &maps, &mut tables, &mut frames);
        assert!(frames.len() >= 4, "{outcome:?} {frames:x?}");
        let mut symbols = UserSymbolizer::new(64);
        let names: Vec<String> = frames
            .iter()
            .enumerate()
            .filter_map(|(i, &a)| {
                let lookup = if i == 0 { a } else { a - 1 };
                let entry = maps.find(lookup)?;
                let info = tables.file(std::process::id(), entry);
                let s = symbols.symbolize(
                    &info.key,
                    || entry.path.to_string(),
                    entry.file_offset(lookup),
                    false,
                );
                s.last().map(|s| s.function.to_string())
            })
            .collect();
        let position = |name: &str| names.iter().position(|n| n.contains(name));
        let inner = position("inner_frame_for_unwind_test");
        let outer = position("outer_frame_for_unwind_test");
        let test = position("unwinds_own_stack_through_cfi");
        assert!(
            inner.is_some() && inner < outer && outer < test,
            "callers in order: {names:?}"
        );
    }

    #[test]
    fn garbage_stacks_end_cleanly() {
        let maps = own_maps();
        let mut tables = TableCache::new(64 << 20, 64);
        let text = unwinds_own_stack_through_cfi as fn() as usize as u64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200 {
            let mut stack = vec![0u8; 4096];
            for chunk in stack.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Mix in plausible code and stack addresses.
                let value = match state % 4 {
                    0 => text + (state >> 40),
                    1 => 0x7ff0_0000_0000 + (state >> 36),
                    _ => state,
                };
                chunk.copy_from_slice(&value.to_le_bytes());
            }
            let mut frames = Vec::new();
            let ip = if round % 2 == 0 { text } else { state };
            let regs = UserState {
                ip,
                sp: 0x7ff0_0000_0000,
                bp: 0x7ff0_0000_0000 + (state % 4096),
                stack: &stack,
            };
            let _ = unwind(1, &regs, &maps, &mut tables, &mut frames);
            assert!(frames.len() <= MAX_USER_FRAMES);
        }
        // An empty copy and a stack pointer at the top of the address space.
        let mut frames = Vec::new();
        let regs = UserState {
            ip: text,
            sp: u64::MAX - 4,
            bp: u64::MAX,
            stack: &[0u8; 16],
        };
        let outcome = unwind(1, &regs, &maps, &mut tables, &mut frames);
        assert_ne!(outcome, Outcome::Complete);
    }
}
