//! Decoding process-event records from the ring buffer. Records are checked
//! for size and kind before use; a bad record is an error, never a panic.

use selfops_ebpf::{ExecEvent, ExitEvent, ForkEvent, ProcessEventHeader, ProcessEventKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    Exec {
        pid: u32,
        boot_ns: u64,
        comm: String,
        filename: String,
    },
    Fork {
        pid: u32,
        ppid: u32,
        boot_ns: u64,
    },
    Exit {
        pid: u32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {len} bytes, expected {expected}")]
    Size {
        kind: ProcessEventKind,
        len: usize,
        expected: usize,
    },
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: length checked; read_unaligned has no alignment needs and
        // T is a plain-old-data type for which every bit pattern is valid.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn expect<T: Copy>(kind: ProcessEventKind, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() != size_of::<T>() {
        return Err(DecodeError::Size {
            kind,
            len: bytes.len(),
            expected: size_of::<T>(),
        });
    }
    read(bytes).ok_or(DecodeError::Short(bytes.len()))
}

/// The text before the first NUL, lossily decoded.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn decode(bytes: &[u8]) -> Result<ProcessEvent, DecodeError> {
    let header: ProcessEventHeader = read(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    let kind =
        ProcessEventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        ProcessEventKind::Exec => {
            let e: ExecEvent = expect(kind, bytes)?;
            ProcessEvent::Exec {
                pid: e.header.pid,
                boot_ns: e.header.boot_ns,
                comm: c_string(&e.comm),
                filename: c_string(&e.filename),
            }
        }
        ProcessEventKind::Fork => {
            let e: ForkEvent = expect(kind, bytes)?;
            ProcessEvent::Fork {
                pid: e.header.pid,
                ppid: e.header.ppid,
                boot_ns: e.header.boot_ns,
            }
        }
        ProcessEventKind::Exit => {
            let e: ExitEvent = expect(kind, bytes)?;
            ProcessEvent::Exit { pid: e.header.pid }
        }
    })
}

#[cfg(test)]
mod tests {
    use selfops_ebpf::{COMM_LEN, FILENAME_LEN};

    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: test-only view of a padding-free repr(C) struct.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: ProcessEventKind) -> ProcessEventHeader {
        ProcessEventHeader {
            kind: kind as u32,
            pid: 42,
            tid: 43,
            ppid: 7,
            boot_ns: 1000,
            cgroup_id: 1,
        }
    }

    #[test]
    fn decodes_exec() {
        let mut e = ExecEvent {
            header: header(ProcessEventKind::Exec),
            comm: [0; COMM_LEN],
            filename: [0xff; FILENAME_LEN],
        };
        e.comm[..4].copy_from_slice(b"true");
        e.filename[..10].copy_from_slice(b"/bin/true\0");
        let event = decode(&bytes_of(&e)).unwrap();
        assert_eq!(
            event,
            ProcessEvent::Exec {
                pid: 42,
                boot_ns: 1000,
                comm: "true".into(),
                filename: "/bin/true".into()
            }
        );
    }

    #[test]
    fn decodes_fork_and_exit() {
        let f = ForkEvent {
            header: header(ProcessEventKind::Fork),
            clone_flags: 0,
            comm: [0; COMM_LEN],
        };
        assert_eq!(
            decode(&bytes_of(&f)).unwrap(),
            ProcessEvent::Fork {
                pid: 42,
                ppid: 7,
                boot_ns: 1000
            }
        );
        let x = ExitEvent {
            header: header(ProcessEventKind::Exit),
            comm: [0; COMM_LEN],
        };
        assert_eq!(
            decode(&bytes_of(&x)).unwrap(),
            ProcessEvent::Exit { pid: 42 }
        );
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode(&[1; 31]), Err(DecodeError::Short(31)));
        let mut h = bytes_of(&header(ProcessEventKind::Exit));
        assert!(matches!(decode(&h), Err(DecodeError::Size { .. })));
        h[0] = 9;
        assert_eq!(decode(&h), Err(DecodeError::UnknownKind(9)));
    }
}
