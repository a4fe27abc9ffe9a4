//! The fleet server: the OpAMP server side that agents connect to, an
//! inventory of them in SQLite, and signed configs offered to a selection
//! of them. `selfops fleet serve|status|keygen`.

pub mod cli;
pub mod keygen;
