//! The function table: editors change a record, converters compute values.

pub(crate) mod converters;
pub(crate) mod editors;
