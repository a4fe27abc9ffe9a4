//! Feeds arbitrary bytes, as an API server's pod list or one watch event's
//! pod, to what the agent does with them: JSON decoding into the pod
//! structs, the compact per-pod entry (caps on names, labels, containers),
//! the owner's attributes, and the pod directory (insert, look up by
//! container id, replace on re-list, remove). Nothing may panic, and the
//! directory never holds more than its cap.

#![no_main]

use libfuzzer_sys::fuzz_target;
use selfops_agent::k8s::{
    directory::PodDirectory,
    metrics::KubeMetrics,
    pod::{Pod, PodList, PodMeta},
};

const MAX_PODS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let pods: Vec<Pod> = if selector & 1 == 0 {
        match serde_json::from_slice::<PodList>(body) {
            Ok(list) => list.items,
            Err(_) => return,
        }
    } else {
        match serde_json::from_slice::<Pod>(body) {
            Ok(pod) => vec![pod],
            Err(_) => return,
        }
    };
    let directory = PodDirectory::new("node-1", Some("cluster"), MAX_PODS, KubeMetrics::default());
    let mut dropped = 0;
    let mut kept = Vec::new();
    for pod in pods {
        let Ok(meta) = PodMeta::from_pod(pod, &mut dropped) else {
            continue;
        };
        let _ = meta.heap_bytes();
        if let Some(owner) = &meta.owner {
            for (key, value) in owner.attributes() {
                assert!(key.starts_with("k8s."));
                let _ = value.len();
            }
        }
        let uid = meta.uid.clone();
        let _ = directory.upsert(meta);
        let _ = directory.container(&"ab".repeat(32));
        assert!(directory.len() <= MAX_PODS);
        kept.push(uid);
    }
    for uid in &kept {
        let _ = directory.remove(uid);
    }
    assert!(directory.is_empty());
});
