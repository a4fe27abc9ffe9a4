//! Sensor identities shared by kernel and userspace: the index of each sensor
//! in the per-CPU `LOST_EVENTS` counter array.

/// A kernel sensor that emits events into a ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensor {
    ProcessExec = 0,
    ProcessFork = 1,
    ProcessExit = 2,
    Socket = 3,
}

impl Sensor {
    /// Every sensor, in index order.
    pub const ALL: [Sensor; SENSOR_COUNT as usize] = [
        Sensor::ProcessExec,
        Sensor::ProcessFork,
        Sensor::ProcessExit,
        Sensor::Socket,
    ];

    /// The sensor's label in metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Sensor::ProcessExec => "process_exec",
            Sensor::ProcessFork => "process_fork",
            Sensor::ProcessExit => "process_exit",
            Sensor::Socket => "socket",
        }
    }
}

/// Number of entries in the `LOST_EVENTS` per-CPU array.
pub const SENSOR_COUNT: u32 = 4;
