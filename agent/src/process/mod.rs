//! The process model: a bounded live table of the host's processes, fed by
//! the exec/fork/exit sensors and seeded and reconciled from /proc. It is the
//! resource of every signal the agent emits.

pub mod build_id;
pub mod caught_up;
pub mod clock;
pub mod container;
pub mod event;
pub mod procfs;
pub mod resource;
pub mod sensor;
pub mod table;

pub use resource::ResourceBuilder;
pub use table::{Process, SharedTable};
