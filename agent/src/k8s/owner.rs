//! A pod's controller, and the workload above it resolved by name alone,
//! so the agent needs no cluster-wide ReplicaSet or Job watch:
//! - a Deployment names its ReplicaSets `<deployment>-<pod-template-hash>`,
//!   and the pod carries that hash as a label;
//! - a CronJob names its Jobs `<cronjob>-<scheduled time in minutes>`, so a
//!   Job named `<name>-<digits>` is taken as a CronJob's (a Job someone named
//!   that way by hand is misread as one).

use std::collections::BTreeMap;

use super::pod::OwnerReference;

const MAX_NAME: usize = 253;
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    ReplicaSet {
        name: Box<str>,
        deployment: Option<Box<str>>,
    },
    StatefulSet(Box<str>),
    DaemonSet(Box<str>),
    Job {
        name: Box<str>,
        cronjob: Option<Box<str>>,
    },
}

impl Owner {
    /// The `k8s.*.name` resource attributes this owner gives.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let (first, second) = match self {
            Owner::ReplicaSet { name, deployment } => (
                ("k8s.replicaset.name", &**name),
                deployment.as_deref().map(|d| ("k8s.deployment.name", d)),
            ),
            Owner::StatefulSet(name) => (("k8s.statefulset.name", &**name), None),
            Owner::DaemonSet(name) => (("k8s.daemonset.name", &**name), None),
            Owner::Job { name, cronjob } => (
                ("k8s.job.name", &**name),
                cronjob.as_deref().map(|c| ("k8s.cronjob.name", c)),
            ),
        };
        std::iter::once(first).chain(second)
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            Owner::ReplicaSet {
                name,
                deployment: o,
            }
            | Owner::Job { name, cronjob: o } => name.len() + o.as_deref().map_or(0, str::len),
            Owner::StatefulSet(name) | Owner::DaemonSet(name) => name.len(),
        }
    }
}

/// The controlling owner (the one marked `controller`, else the first).
pub fn resolve(
    references: &[OwnerReference],
    labels: &BTreeMap<String, String>,
    dropped: &mut u64,
) -> Option<Owner> {
    let owner = references
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| references.first())?;
    if owner.name.is_empty() || owner.name.len() > MAX_NAME {
        *dropped += 1;
        return None;
    }
    let name: Box<str> = owner.name.as_str().into();
    Some(match owner.kind.as_str() {
        "ReplicaSet" => Owner::ReplicaSet {
            deployment: labels
                .get(POD_TEMPLATE_HASH)
                .and_then(|hash| deployment_of(&owner.name, hash))
                .map(Into::into),
            name,
        },
        "StatefulSet" => Owner::StatefulSet(name),
        "DaemonSet" => Owner::DaemonSet(name),
        "Job" => Owner::Job {
            cronjob: cronjob_of(&owner.name).map(Into::into),
            name,
        },
        _ => return None,
    })
}

fn deployment_of<'a>(replicaset: &'a str, hash: &str) -> Option<&'a str> {
    let deployment = replicaset.strip_suffix(hash)?.strip_suffix('-')?;
    (!deployment.is_empty()).then_some(deployment)
}

fn cronjob_of(job: &str) -> Option<&str> {
    let (cronjob, suffix) = job.rsplit_once('-')?;
    (!cronjob.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .then_some(cronjob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
        }
    }

    fn hash(h: &str) -> BTreeMap<String, String> {
        [(POD_TEMPLATE_HASH.to_owned(), h.to_owned())].into()
    }

    #[test]
    fn workloads() {
        let attrs = |o: Option<Owner>| {
            o.map(|o| {
                o.attributes()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
            })
        };
        let rs = resolve(
            &[reference("ReplicaSet", "api-6b8f9d7c4")],
            &hash("6b8f9d7c4"),
            &mut 0,
        );
        assert_eq!(
            attrs(rs).unwrap(),
            [
                "k8s.replicaset.name=api-6b8f9d7c4",
                "k8s.deployment.name=api"
            ]
        );
        // A ReplicaSet of its own (no matching hash): no deployment.
        let rs = resolve(
            &[reference("ReplicaSet", "api-6b8f9d7c4")],
            &hash("zzz"),
            &mut 0,
        );
        assert_eq!(attrs(rs).unwrap(), ["k8s.replicaset.name=api-6b8f9d7c4"]);
        let job = resolve(
            &[reference("Job", "backup-29012345")],
            &BTreeMap::new(),
            &mut 0,
        );
        assert_eq!(
            attrs(job).unwrap(),
            ["k8s.job.name=backup-29012345", "k8s.cronjob.name=backup"]
        );
        let job = resolve(&[reference("Job", "migrate")], &BTreeMap::new(), &mut 0);
        assert_eq!(attrs(job).unwrap(), ["k8s.job.name=migrate"]);
        let sts = resolve(&[reference("StatefulSet", "db")], &BTreeMap::new(), &mut 0);
        assert_eq!(attrs(sts).unwrap(), ["k8s.statefulset.name=db"]);
        let ds = resolve(
            &[reference("DaemonSet", "selfops")],
            &BTreeMap::new(),
            &mut 0,
        );
        assert_eq!(attrs(ds).unwrap(), ["k8s.daemonset.name=selfops"]);
        assert_eq!(resolve(&[], &BTreeMap::new(), &mut 0), None);
        assert_eq!(
            resolve(&[reference("Node", "n")], &BTreeMap::new(), &mut 0),
            None
        );
    }
}
