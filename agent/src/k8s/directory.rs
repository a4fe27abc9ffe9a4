//! The pods of this node, by uid and by container id: bounded, with a
//! generation that changes whenever what a container resolves to changes,
//! so caches of built resources know to go. A deleted pod's metadata stays
//! for a grace period: spans of its last requests, its exited processes and
//! the profile interval that sampled them are resolved after the API server
//! has already said the pod is gone.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    metrics::KubeMetrics,
    pod::{ContainerId, PodMeta},
};

/// Map-entry overhead counted per pod and per container on top of the
/// strings (key box, Arc header, hash-table slot), so the bytes gauge does
/// not flatter small pods.
const ENTRY_OVERHEAD: usize = 96;

/// A container resolved: its pod and its name there.
#[derive(Debug, Clone)]
pub struct PodContainer {
    pub pod: Arc<PodMeta>,
    pub index: usize,
}

impl PodContainer {
    pub fn container_name(&self) -> &str {
        self.pod
            .containers
            .get(self.index)
            .map_or("", |(_, name)| name)
    }
}

/// Outcome of [`PodDirectory::upsert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    New,
    Changed,
    Same,
    /// `max_pods` reached; the pod is not kept.
    Full,
}

/// How long a deleted pod's metadata is kept unless configured.
pub const DEFAULT_DELETED_GRACE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    pods: HashMap<Box<str>, Arc<PodMeta>>,
    containers: HashMap<ContainerId, PodContainer>,
    /// Deleted pods still held, by uid: until when.
    deleted: HashMap<Box<str>, Instant>,
    bytes: usize,
}

impl State {
    fn add(&mut self, pod: Arc<PodMeta>) {
        self.deleted.remove(&pod.uid);
        self.bytes += pod.heap_bytes() + ENTRY_OVERHEAD * (1 + pod.containers.len());
        for (index, (id, _)) in pod.containers.iter().enumerate() {
            self.containers.insert(
                *id,
                PodContainer {
                    pod: pod.clone(),
                    index,
                },
            );
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    fn take(&mut self, uid: &str) -> Option<Arc<PodMeta>> {
        self.deleted.remove(uid);
        let pod = self.pods.remove(uid)?;
        self.bytes = self
            .bytes
            .saturating_sub(pod.heap_bytes() + ENTRY_OVERHEAD * (1 + pod.containers.len()));
        for (id, _) in pod.containers.iter() {
            // Only if still this pod's: a container id never moves between
            // pods, but a bad peer could send one twice.
            if self
                .containers
                .get(id)
                .is_some_and(|c| Arc::ptr_eq(&c.pod, &pod))
            {
                self.containers.remove(id);
            }
        }
        Some(pod)
    }

    /// Drops the deleted pods whose grace ended; whether any went.
    fn sweep(&mut self, now: Instant) -> bool {
        let due: Vec<Box<str>> = self
            .deleted
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &due {
            self.take(uid);
        }
        !due.is_empty()
    }

    /// Whether `pod` was deleted and its grace has ended (it is dropped at
    /// the next change; until then lookups treat it as gone).
    fn expired(&self, pod: &PodMeta, now: Instant) -> bool {
        self.deleted
            .get(&pod.uid)
            .is_some_and(|until| *until <= now)
    }
}

pub struct PodDirectory {
    state: RwLock<State>,
    generation: AtomicU64,
    max_pods: usize,
    deleted_grace: Duration,
    node_name: Box<str>,
    cluster_name: Option<Box<str>>,
    metrics: KubeMetrics,
}

impl PodDirectory {
    pub fn new(
        node_name: &str,
        cluster_name: Option<&str>,
        max_pods: usize,
        metrics: KubeMetrics,
    ) -> Self {
        Self {
            state: RwLock::default(),
            generation: AtomicU64::new(0),
            max_pods,
            deleted_grace: DEFAULT_DELETED_GRACE,
            node_name: node_name.into(),
            cluster_name: cluster_name.map(Into::into),
            metrics,
        }
    }

    /// How long a deleted pod's metadata stays (zero: it goes at once).
    pub fn with_deleted_grace(mut self, grace: Duration) -> Self {
        self.deleted_grace = grace;
        self
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn cluster_name(&self) -> Option<&str> {
        self.cluster_name.as_deref()
    }

    /// Changes whenever a container's pod metadata may have changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The pod of the container with this (64 hex digit) id.
    pub fn container(&self, container_id: &str) -> Option<PodContainer> {
        let id = ContainerId::parse(container_id)?;
        let state = self.read();
        let found = state.containers.get(&id)?;
        (!state.expired(&found.pod, Instant::now())).then(|| found.clone())
    }

    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn upsert(&self, pod: PodMeta) -> Upserted {
        let outcome = {
            let mut state = self.write();
            let swept = state.sweep(Instant::now());
            let outcome = match state.pods.get(&pod.uid) {
                Some(old) if **old == pod => Upserted::Same,
                Some(_) => {
                    state.take(&pod.uid);
                    state.add(Arc::new(pod));
                    Upserted::Changed
                }
                None if state.pods.len() >= self.max_pods => Upserted::Full,
                None => {
                    state.add(Arc::new(pod));
                    Upserted::New
                }
            };
            (outcome, swept)
        };
        match outcome {
            (Upserted::New | Upserted::Changed, _) | (_, true) => self.changed(),
            _ => {}
        }
        if outcome.0 == Upserted::Full {
            self.metrics.reject("max_pods");
        }
        outcome.0
    }

    /// A pod the API server deleted: held for the grace period, then gone.
    /// Whether it was held. Marking a pod deleted changes no metadata, so
    /// only a pod that really goes (now, or by the sweep) bumps the
    /// generation; an unknown uid changes nothing.
    pub fn remove(&self, uid: &str) -> bool {
        let now = Instant::now();
        let (held, marked, gone) = {
            let mut state = self.write();
            let mut gone = state.sweep(now);
            let held = state.pods.contains_key(uid);
            let mut marked = false;
            if held && !state.deleted.contains_key(uid) {
                match now.checked_add(self.deleted_grace) {
                    Some(until) if !self.deleted_grace.is_zero() => {
                        state.deleted.insert(uid.into(), until);
                        marked = true;
                    }
                    _ => gone |= state.take(uid).is_some(),
                }
            }
            (held, marked, gone)
        };
        if gone {
            self.changed();
        } else if marked {
            self.update_gauges();
        }
        held
    }

    /// Drops deleted pods whose grace has ended.
    pub fn sweep(&self) {
        if self.write().sweep(Instant::now()) {
            self.changed();
        }
    }

    /// The entry already held for `pod` if it is unchanged, else a new
    /// one: a re-list of thousands of pods then holds each only once.
    pub fn reuse(&self, pod: PodMeta) -> Arc<PodMeta> {
        let held = self
            .read()
            .pods
            .get(&pod.uid)
            .filter(|old| ***old == pod)
            .cloned();
        held.unwrap_or_else(|| Arc::new(pod))
    }

    /// What a full list found replaces everything at once: pods still
    /// running never disappear in between; pods absent from it were
    /// deleted meanwhile and are held for the rest of their grace.
    pub fn replace_all(&self, pods: Vec<Arc<PodMeta>>) {
        let room = pods.len().min(self.max_pods);
        let mut fresh = State {
            pods: HashMap::with_capacity(room),
            containers: HashMap::with_capacity(room.saturating_mul(2)),
            deleted: HashMap::new(),
            bytes: 0,
        };
        for pod in pods {
            if fresh.pods.contains_key(&pod.uid) {
                continue;
            }
            if fresh.pods.len() >= self.max_pods {
                self.metrics.reject("max_pods");
                continue;
            }
            fresh.add(pod);
        }
        let now = Instant::now();
        {
            let mut state = self.write();
            state.sweep(now);
            let until = now.checked_add(self.deleted_grace);
            for (uid, pod) in &state.pods {
                let held_until = state.deleted.get(uid).copied().or(until);
                let Some(held_until) = held_until else {
                    continue;
                };
                if self.deleted_grace.is_zero()
                    || fresh.pods.contains_key(uid)
                    || fresh.pods.len() >= self.max_pods
                {
                    continue;
                }
                fresh.add(pod.clone());
                fresh.deleted.insert(uid.clone(), held_until);
            }
            *state = fresh;
        }
        self.changed();
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let state = self.read();
        self.metrics.pods.set(gauge(state.pods.len()));
        self.metrics.deleted_pods.set(gauge(state.deleted.len()));
        self.metrics.containers.set(gauge(state.containers.len()));
        self.metrics.bytes.set(gauge(state.bytes));
    }

    // The maps are replaced whole or changed by one call at a time, so a
    // poisoned lock still guards consistent data.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-hex container id made of one digit repeated.
    fn id(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    pub(crate) fn pod(uid: &str, name: &str, container: &str) -> PodMeta {
        let digit = container.chars().nth(1).unwrap_or('0');
        let container = ContainerId::parse(&id(digit)).expect("a hex digit");
        PodMeta {
            uid: uid.into(),
            namespace: "shop".into(),
            name: name.into(),
            owner: None,
            service_name: None,
            labels: Box::new([]),
            containers: vec![(container, "main".into())].into_boxed_slice(),
        }
    }

    #[test]
    fn restart_moves_the_container_and_bumps_the_generation() {
        let dir = PodDirectory::new("n", None, 10, KubeMetrics::default())
            .with_deleted_grace(Duration::ZERO);
        assert_eq!(dir.upsert(pod("u1", "web", "c1")), Upserted::New);
        let g = dir.generation();
        assert_eq!(dir.upsert(pod("u1", "web", "c1")), Upserted::Same);
        assert_eq!(dir.generation(), g);
        assert_eq!(dir.upsert(pod("u1", "web", "c2")), Upserted::Changed);
        assert_ne!(dir.generation(), g);
        assert!(dir.container(&id('1')).is_none());
        let c = dir.container(&id('2')).unwrap();
        assert_eq!(&*c.pod.name, "web");
        assert_eq!(c.container_name(), "main");
        assert!(dir.remove("u1"));
        assert!(dir.container(&id('2')).is_none());
        assert_eq!(dir.metrics.bytes.get(), 0);
    }

    #[test]
    fn bounded_and_replaced_whole() {
        let metrics = KubeMetrics::default();
        let dir =
            PodDirectory::new("n", None, 2, metrics.clone()).with_deleted_grace(Duration::ZERO);
        dir.upsert(pod("u1", "a", "c1"));
        dir.upsert(pod("u2", "b", "c2"));
        assert_eq!(dir.upsert(pod("u3", "c", "c3")), Upserted::Full);
        assert_eq!(metrics.pods.get(), 2);
        let kept = dir.container(&id('1')).unwrap().pod;
        let listed = [
            pod("u1", "a", "c1"),
            pod("u4", "d", "c4"),
            pod("u5", "e", "c5"),
        ];
        dir.replace_all(listed.into_iter().map(|p| dir.reuse(p)).collect());
        assert_eq!(dir.len(), 2);
        assert!(dir.container(&id('2')).is_none(), "gone from the list");
        assert!(Arc::ptr_eq(&dir.container(&id('1')).unwrap().pod, &kept));
        assert_eq!(
            metrics
                .rejected
                .get_or_create(&super::super::metrics::ReasonLabels { reason: "max_pods" })
                .get(),
            2
        );
        assert!(metrics.bytes.get() > 0);
    }

    #[test]
    fn deleted_pods_stay_for_their_grace_then_go() {
        let metrics = KubeMetrics::default();
        let dir = PodDirectory::new("n", None, 3, metrics.clone())
            .with_deleted_grace(Duration::from_secs(3600));
        dir.upsert(pod("u1", "a", "c1"));
        dir.upsert(pod("u2", "b", "c2"));
        assert!(dir.remove("u1"));
        assert!(!dir.remove("u9"), "never held");
        assert_eq!(&*dir.container(&id('1')).unwrap().pod.name, "a");
        assert_eq!(metrics.deleted_pods.get(), 1);
        assert_eq!(metrics.pods.get(), 2, "held pods count against max_pods");
        // A re-list without u2 (deleted during a watch gap) holds it too;
        // u1 keeps its mark.
        dir.replace_all(vec![dir.reuse(pod("u3", "c", "c3"))]);
        assert_eq!(dir.len(), 3);
        assert_eq!(metrics.deleted_pods.get(), 2);
        assert!(dir.container(&id('2')).is_some());
        // The cap still holds with held pods.
        assert_eq!(dir.upsert(pod("u4", "d", "c4")), Upserted::Full);

        let short = PodDirectory::new("n", None, 3, metrics.clone())
            .with_deleted_grace(Duration::from_millis(1));
        short.upsert(pod("u1", "a", "c1"));
        short.remove("u1");
        std::thread::sleep(Duration::from_millis(20));
        assert!(short.container(&id('1')).is_none(), "grace over");
        short.sweep();
        assert_eq!(short.len(), 0);
        assert_eq!(metrics.bytes.get(), 0);
    }

    #[test]
    fn only_metadata_that_goes_bumps_the_generation() {
        let metrics = KubeMetrics::default();
        let held = PodDirectory::new("n", None, 3, metrics.clone())
            .with_deleted_grace(Duration::from_secs(3600));
        held.upsert(pod("u1", "a", "c1"));
        let g = held.generation();
        assert!(!held.remove("u9"), "never held");
        assert_eq!(held.generation(), g, "an unknown uid changes nothing");
        assert!(held.remove("u1"));
        assert_eq!(held.generation(), g, "marked deleted, still resolved");
        assert_eq!(metrics.deleted_pods.get(), 1, "the mark is counted");
        assert!(held.container(&id('1')).is_some());
        assert!(held.remove("u1"), "a second delete");
        assert_eq!(held.generation(), g);

        let at_once = PodDirectory::new("n", None, 3, KubeMetrics::default())
            .with_deleted_grace(Duration::ZERO);
        at_once.upsert(pod("u1", "a", "c1"));
        let g = at_once.generation();
        assert!(at_once.remove("u1"));
        assert_ne!(at_once.generation(), g, "no grace: the metadata goes");
        let g = at_once.generation();
        assert!(!at_once.remove("u1"));
        assert_eq!(at_once.generation(), g, "already gone");
    }
}
