//! Unit tests, by concern; `helpers` builds the requests they run on.

mod contexts;
mod errors;
mod filter;
mod functions;
mod helpers;
mod parse;
mod scenario;
