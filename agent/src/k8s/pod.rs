//! The few Pod fields the agent reads, as the API server sends them, and
//! the compact, bounded form kept per pod.
//!
//! Deserialized straight into these structs (unknown fields skipped), so a
//! page of pods never exists as a generic JSON tree.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::owner::{self, Owner};

/// Longest name, namespace or owner name kept (a DNS subdomain).
const MAX_NAME: usize = 253;
const MAX_UID: usize = 64;
/// A label key is an optional 253-byte prefix, `/`, and a 63-byte name.
const MAX_LABEL_KEY: usize = 317;
const MAX_LABEL_VALUE: usize = 63;
const MAX_LABELS: usize = 64;
const MAX_CONTAINERS: usize = 128;
const MAX_SERVICE_NAME: usize = 256;

pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

#[derive(Debug, Default, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: String,
    #[serde(default, rename = "continue")]
    pub continue_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Default, Deserialize)]
pub struct OwnerReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    /// `<runtime>://<id>`, absent until the container was created.
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
}

/// What is kept of one pod: every string capped, labels and containers
/// counted out at fixed maxima.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: Box<str>,
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub owner: Option<Owner>,
    /// From the `resource.opentelemetry.io/service.name` annotation, else
    /// the `app.kubernetes.io/name` label.
    pub service_name: Option<Box<str>>,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    /// (container id, container name).
    pub containers: Box<[(ContainerId, Box<str>)]>,
}

/// Why a pod object was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("the pod has no uid")]
    NoUid,
    #[error("a name, namespace or uid is longer than Kubernetes allows")]
    TooLong,
}

impl PodMeta {
    /// The compact form; `dropped` counts labels, containers or annotation
    /// values left out for exceeding their caps.
    pub fn from_pod(pod: Pod, dropped: &mut u64) -> Result<Self, PodError> {
        let m = pod.metadata;
        if m.uid.is_empty() {
            return Err(PodError::NoUid);
        }
        if m.uid.len() > MAX_UID || m.name.len() > MAX_NAME || m.namespace.len() > MAX_NAME {
            return Err(PodError::TooLong);
        }
        let owner = owner::resolve(&m.owner_references, &m.labels, dropped);
        let service_name = m
            .annotations
            .get(SERVICE_NAME_ANNOTATION)
            .or_else(|| m.labels.get(APP_NAME_LABEL))
            .filter(|s| !s.is_empty())
            .and_then(|s| keep(s, MAX_SERVICE_NAME, dropped));
        let labels = m
            .labels
            .into_iter()
            .filter(|(k, v)| {
                let fits = k.len() <= MAX_LABEL_KEY && v.len() <= MAX_LABEL_VALUE;
                if !fits {
                    *dropped += 1;
                }
                fits
            })
            .take(MAX_LABELS)
            .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
            .collect::<Vec<_>>();
        let status = pod.status;
        let mut containers = Vec::new();
        for status in status
            .container_statuses
            .into_iter()
            .chain(status.init_container_statuses)
            .chain(status.ephemeral_container_statuses)
        {
            let Some(id) = status.container_id.as_deref().and_then(container_id) else {
                continue;
            };
            if containers.len() >= MAX_CONTAINERS || status.name.len() > MAX_NAME {
                *dropped += 1;
                continue;
            }
            containers.push((id, status.name.into_boxed_str()));
        }
        Ok(Self {
            uid: m.uid.into_boxed_str(),
            namespace: m.namespace.into_boxed_str(),
            name: m.name.into_boxed_str(),
            owner,
            service_name,
            labels: labels.into_boxed_slice(),
            containers: containers.into_boxed_slice(),
        })
    }

    /// Bytes this entry holds on the heap, roughly (strings and slices; the
    /// directory adds its map overhead).
    pub fn heap_bytes(&self) -> usize {
        let labels = self
            .labels
            .iter()
            .map(|(a, b)| a.len() + b.len())
            .sum::<usize>()
            + std::mem::size_of_val(&*self.labels);
        let containers = self.containers.iter().map(|(_, n)| n.len()).sum::<usize>()
            + std::mem::size_of_val(&*self.containers);
        self.uid.len()
            + self.namespace.len()
            + self.name.len()
            + self.owner.as_ref().map_or(0, Owner::heap_bytes)
            + self.service_name.as_deref().map_or(0, str::len)
            + labels
            + containers
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }
}

fn keep(value: &str, max: usize, dropped: &mut u64) -> Option<Box<str>> {
    if value.len() > max {
        *dropped += 1;
        return None;
    }
    Some(value.into())
}

/// A container id's 32 bytes: held inline, not as 64 characters on the
/// heap (there are several per pod, and each is a map key too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContainerId([u8; 32]);

impl ContainerId {
    /// From the 64 hex digits the cgroup path and the runtimes use.
    pub fn parse(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut id = [0u8; 32];
        for (byte, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| char::from(c).to_digit(16);
            *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Self(id))
    }
}

/// The id of `containerd://…`, `cri-o://…`, `docker://…`.
pub fn container_id(status_id: &str) -> Option<ContainerId> {
    let (_, id) = status_id.split_once("://")?;
    ContainerId::parse(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4d1f3e9b2c7a8f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291807f6e";

    fn pod_json(extra_labels: &str) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web-7d9f8c6b5-x2x9q",
            "namespace":"shop","uid":"0b1c2d3e-1111-2222-3333-444455556666","resourceVersion":"812",
            "labels":{{"app.kubernetes.io/name":"web","pod-template-hash":"7d9f8c6b5"{extra_labels}}},
            "ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9f8c6b5",
            "uid":"x","controller":true,"blockOwnerDeletion":true}}]}},
            "spec":{{"nodeName":"node-a","containers":[{{"name":"nginx","image":"nginx"}}]}},
            "status":{{"phase":"Running","containerStatuses":[{{"name":"nginx","ready":true,
            "restartCount":0,"image":"nginx","containerID":"containerd://{ID}"}},
            {{"name":"waiting","ready":false}}]}}}}"#
        )
    }

    #[test]
    fn real_shaped_pod() {
        let pod: Pod = serde_json::from_str(&pod_json("")).unwrap();
        let mut dropped = 0;
        let meta = PodMeta::from_pod(pod, &mut dropped).unwrap();
        assert_eq!(&*meta.namespace, "shop");
        assert_eq!(&*meta.name, "web-7d9f8c6b5-x2x9q");
        assert_eq!(meta.service_name.as_deref(), Some("web"));
        assert_eq!(
            meta.containers.len(),
            1,
            "a container not yet created has no id"
        );
        assert_eq!(Some(meta.containers[0].0), ContainerId::parse(ID));
        assert_eq!(&*meta.containers[0].1, "nginx");
        assert_eq!(
            meta.owner,
            Some(Owner::ReplicaSet {
                name: "web-7d9f8c6b5".into(),
                deployment: Some("web".into())
            })
        );
        assert_eq!(meta.label("pod-template-hash"), Some("7d9f8c6b5"));
        assert_eq!(dropped, 0);
        assert!(meta.heap_bytes() > 100);
    }

    #[test]
    fn oversized_fields_are_left_out_and_counted() {
        let long = "v".repeat(64);
        let pod: Pod = serde_json::from_str(&pod_json(&format!(r#","big":"{long}""#))).unwrap();
        let mut dropped = 0;
        let meta = PodMeta::from_pod(pod, &mut dropped).unwrap();
        assert_eq!(meta.label("big"), None);
        assert_eq!(dropped, 1);
        let mut pod: Pod = serde_json::from_str(&pod_json("")).unwrap();
        pod.metadata.name = "n".repeat(300);
        assert_eq!(PodMeta::from_pod(pod, &mut 0), Err(PodError::TooLong));
        let pod: Pod = serde_json::from_str(r#"{"metadata":{"name":"x"}}"#).unwrap();
        assert_eq!(PodMeta::from_pod(pod, &mut 0), Err(PodError::NoUid));
    }

    #[test]
    fn status_ids() {
        let id = ContainerId::parse(ID);
        assert!(id.is_some());
        assert_eq!(container_id(&format!("cri-o://{ID}")), id);
        assert_eq!(container_id(&format!("docker://{}", ID.to_uppercase())), id);
        assert_eq!(container_id(&format!("containerd://{}g", &ID[..63])), None);
        assert_eq!(container_id(ID), None);
        assert_eq!(container_id("containerd://abc"), None);
    }
}
