//! Decoding the sampler's ring-buffer records.

use selfops_ebpf::profile::{
    KERNEL_STACK_DEPTH, SAMPLE_HAS_USER_REGS, SampleHeader, USER_STACK_BYTES,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("user stack length {0} exceeds the record")]
    StackLength(u32),
}

/// One sample, borrowing the record's stack bytes.
pub struct Sample<'a> {
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
    /// Kernel return addresses, innermost first.
    pub kernel: &'a [u64],
    pub user: Option<UserRegs>,
    pub stack: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Copies the header out (the ring gives no alignment guarantee for our
/// purposes) and checks every length against the record.
pub fn decode<'a>(
    record: &'a [u8],
    header: &'a mut SampleHeader,
) -> Result<Sample<'a>, RecordError> {
    if record.len() < SampleHeader::SIZE {
        return Err(RecordError::Short(record.len()));
    }
    // SAFETY: length checked; SampleHeader is plain old data.
    *header = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<SampleHeader>()) };
    let stack_len = header.user_stack_len as usize;
    let stack = record
        .get(SampleHeader::SIZE..SampleHeader::SIZE + stack_len)
        .filter(|_| stack_len <= USER_STACK_BYTES)
        .ok_or(RecordError::StackLength(header.user_stack_len))?;
    let frames = (header.kernel_frames as usize).min(KERNEL_STACK_DEPTH);
    let kernel = &header.kernel_stack[..frames];
    let kernel = &kernel[..kernel.iter().position(|&a| a == 0).unwrap_or(frames)];
    let user = (header.flags & SAMPLE_HAS_USER_REGS != 0).then_some(UserRegs {
        ip: header.ip,
        sp: header.sp,
        bp: header.bp,
    });
    Ok(Sample {
        pid: header.pid,
        tid: header.tid,
        comm: header.comm,
        kernel,
        user,
        stack,
    })
}

/// The thread name from a kernel comm (NUL-padded).
pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SampleHeader {
        SampleHeader {
            pid: 7,
            tid: 8,
            cpu: 0,
            flags: SAMPLE_HAS_USER_REGS,
            kernel_frames: 2,
            user_stack_len: 16,
            ip: 1,
            sp: 2,
            bp: 3,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            kernel_stack: [0; KERNEL_STACK_DEPTH],
        }
    }

    fn bytes(h: &SampleHeader, extra: usize) -> Vec<u8> {
        let mut v = vec![0u8; SampleHeader::SIZE + extra];
        // SAFETY: writing a POD header into a buffer of its size.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast::<SampleHeader>(), *h) };
        v
    }

    #[test]
    fn decodes_and_checks_lengths() {
        let mut h = header();
        h.kernel_stack[0] = 0xffff_ffff_8100_0000;
        h.kernel_stack[1] = 0xffff_ffff_8100_0100;
        let record = bytes(&h, 16);
        let mut scratch = header();
        let sample = decode(&record, &mut scratch).unwrap();
        assert_eq!(sample.pid, 7);
        assert_eq!(sample.kernel.len(), 2);
        assert_eq!(sample.stack.len(), 16);
        assert_eq!(comm_str(&sample.comm), "worker");

        let short = bytes(&h, 8);
        assert_eq!(
            decode(&short, &mut scratch).err(),
            Some(RecordError::StackLength(16))
        );
        assert_eq!(
            decode(&[0; 10], &mut scratch).err(),
            Some(RecordError::Short(10))
        );
        let mut huge = header();
        huge.kernel_frames = 10_000;
        huge.user_stack_len = u32::MAX;
        assert!(decode(&bytes(&huge, 64), &mut scratch).is_err());
    }
}
