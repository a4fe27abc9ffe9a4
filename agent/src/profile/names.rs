//! Names shared by the encoders: label/attribute keys (OpenTelemetry
//! semantic conventions, also used as pprof label keys) and how a frame
//! without symbols is shown.

use super::model::Frame;

pub const PROCESS_PID: &str = "process.pid";
pub const THREAD_NAME: &str = "thread.name";
pub const EXECUTABLE_NAME: &str = "process.executable.name";
pub const CONTAINER_ID: &str = "container.id";
pub const SERVICE_NAME: &str = "service.name";
/// OTLP mapping attribute carrying the GNU build-id (hex).
pub const BUILD_ID_GNU: &str = "process.executable.build_id.gnu";
/// OTLP location attribute: "kernel" or "native".
pub const FRAME_TYPE: &str = "profile.frame.type";

/// A readable stand-in for a frame that has no symbols: the file and the
/// offset in it (what a back-end symbolizes with), or the bare address.
pub fn unsymbolized(frame: &Frame) -> String {
    match &frame.mapping {
        Some(mapping) => {
            let file = mapping.path.rsplit('/').next().unwrap_or(&mapping.path);
            format!("{file}+{:#x}", frame.file_offset)
        }
        None if frame.kernel => format!("[kernel] {:#x}", frame.address),
        None => format!("[unknown] {:#x}", frame.address),
    }
}
