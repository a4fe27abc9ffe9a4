//! Kubernetes pod metadata for every signal: the pods of this node listed
//! and watched from the API server (`watch`, `client`, `source`), kept
//! compact and bounded (`pod`, `owner`, `directory`), and found from a
//! process's container id, which its cgroup path names.

pub mod client;
pub mod directory;
pub mod metrics;
pub mod own_pod;
pub mod owner;
pub mod pod;
pub mod selector;
pub mod setup;
pub mod source;
pub mod watch;

use std::sync::{Arc, OnceLock};

pub use directory::{DEFAULT_DELETED_GRACE, PodContainer, PodDirectory};

/// The directory of this agent process, for the trace and profile
/// selectors, which their owners build in several places from config alone.
static INSTALLED: OnceLock<Arc<PodDirectory>> = OnceLock::new();

/// Makes `directory` the one selectors consult (first call wins).
pub fn install(directory: Arc<PodDirectory>) {
    let _ = INSTALLED.set(directory);
}

pub fn installed() -> Option<Arc<PodDirectory>> {
    INSTALLED.get().cloned()
}
