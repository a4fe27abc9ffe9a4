//! When a kernel program wakes the agent reading its ring buffer.

/// How far past the wake-up mark a record still wakes the reader (see
/// [`wakes_reader`]): room for the records other CPUs reserve at the same
/// moment, each far smaller than this.
pub const WAKE_WINDOW: u64 = 16 * 1024;

/// Whether the record just reserved in a ring that the agent drains on its
/// own timer wakes it: only when the record brought the unread bytes
/// (`unread`, this record included) across `wake_at`. Once past the mark
/// the records that follow wake nobody: every wake-up is an interrupt
/// raised by the writing task, a VM exit under virtualisation, and the
/// agent, once awake, reads the ring until it is empty. A crossing missed
/// (more than the window reserved at one moment) leaves the backlog to
/// the agent's timer.
#[inline(always)]
pub const fn wakes_reader(unread: u64, wake_at: u64) -> bool {
    unread >= wake_at && unread - wake_at < WAKE_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: u64 = 256 * 1024;

    #[test]
    fn only_the_records_that_cross_the_mark_wake_the_reader() {
        assert!(!wakes_reader(0, MARK));
        assert!(!wakes_reader(MARK - 1, MARK));
        assert!(wakes_reader(MARK, MARK));
        assert!(wakes_reader(MARK + 640, MARK));
        assert!(wakes_reader(MARK + WAKE_WINDOW - 1, MARK));
        // A backlog above the mark: the reader is already awake.
        assert!(!wakes_reader(MARK + WAKE_WINDOW, MARK));
        assert!(!wakes_reader(8 << 20, MARK));
    }

    #[test]
    fn a_ring_filled_by_small_records_wakes_the_reader_a_bounded_number_of_times() {
        // Records of a socket event's size, written until the ring holds
        // 8 MiB unread: a wake-up per record past the mark cost the
        // writers an interrupt each.
        let record = 640;
        let wakes = (1..=(8 << 20) / record)
            .filter(|n| wakes_reader(n * record, MARK))
            .count() as u64;
        assert!(wakes >= 1);
        assert!(wakes <= WAKE_WINDOW / record + 1, "{wakes} wake-ups");
    }
}
