//! When a kernel program wakes the agent reading its ring buffer.

/// Bytes a record of `size` takes in a ring buffer: the kernel's 8-byte
/// header, then the record rounded up to 8.
pub const fn ring_record_bytes(size: usize) -> u64 {
    (8 + size as u64).next_multiple_of(8)
}

/// Whether the record just reserved in a ring that the agent drains on its
/// own timer wakes it: only when this record (`record` bytes) took the
/// unread bytes (`unread`, this record included) across `wake_at`. The
/// records that follow wake nobody: every wake-up is an interrupt raised
/// by the writing task, a VM exit under virtualisation, and the agent,
/// once awake, reads the ring until it is empty. A crossing missed, when
/// another CPU reserved between this record's reservation and its
/// reading of `unread`, leaves the backlog to the agent's timer.
#[inline(always)]
pub const fn wakes_reader(unread: u64, record: u64, wake_at: u64) -> bool {
    unread >= wake_at && unread.saturating_sub(record) < wake_at
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: u64 = 256 * 1024;

    #[test]
    fn only_the_record_that_crosses_the_mark_wakes_the_reader() {
        let record = ring_record_bytes(620);
        assert_eq!(record, 632);
        assert!(!wakes_reader(0, record, MARK));
        assert!(!wakes_reader(MARK - 1, record, MARK));
        assert!(wakes_reader(MARK, record, MARK));
        assert!(wakes_reader(MARK + record - 1, record, MARK));
        // A backlog above the mark: the reader is already awake.
        assert!(!wakes_reader(MARK + record, record, MARK));
        assert!(!wakes_reader(8 << 20, record, MARK));
    }

    #[test]
    fn a_ring_filling_up_wakes_the_reader_once() {
        // Records of a socket event's size, written until the ring holds
        // 8 MiB unread: a wake-up per record past the mark cost the
        // writers an interrupt each.
        let record = ring_record_bytes(620);
        let wakes = (1..=(8 << 20) / record)
            .filter(|n| wakes_reader(n * record, record, MARK))
            .count();
        assert_eq!(wakes, 1);
    }
}
