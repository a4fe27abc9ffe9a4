//! Which processes are profiled: everything by default; `profile.include`
//! narrows it, `profile.exclude` removes from it.

use std::sync::Arc;

use globset::{Glob, GlobMatcher};

use crate::{
    config::Selector,
    k8s::{PodDirectory, selector::PodSelector},
    process::Process,
};

enum Rule {
    Executable(GlobMatcher),
    Cgroup(GlobMatcher),
    Pod(PodSelector),
}

impl Rule {
    /// Selectors were validated with the config (an executable, a cgroup,
    /// or a pod's namespace and labels).
    fn new(selector: &Selector) -> Result<Option<Self>, globset::Error> {
        if let Some(pod) = PodSelector::new(selector)? {
            return Ok(Some(Rule::Pod(pod)));
        }
        Ok(match (&selector.executable, &selector.cgroup) {
            (Some(glob), _) => Some(Rule::Executable(Glob::new(glob)?.compile_matcher())),
            (None, Some(glob)) => Some(Rule::Cgroup(Glob::new(glob)?.compile_matcher())),
            (None, None) => None,
        })
    }

    fn matches(&self, process: Option<&Process>, pods: Option<&PodDirectory>) -> bool {
        let Some(p) = process else { return false };
        match self {
            Rule::Pod(selector) => selector.matches(Some(p), pods),
            Rule::Executable(m) => {
                m.is_match(p.executable_name())
                    || p.executable_path
                        .as_deref()
                        .is_some_and(|path| m.is_match(path))
            }
            Rule::Cgroup(m) => p.cgroup.as_deref().is_some_and(|c| m.is_match(c)),
        }
    }
}

pub struct ProcessFilter {
    include: Vec<Rule>,
    exclude: Vec<Rule>,
    /// Where pod selectors look a process's pod up.
    pods: Option<Arc<PodDirectory>>,
}

impl ProcessFilter {
    pub fn new(include: &[Selector], exclude: &[Selector]) -> Result<Self, globset::Error> {
        let rules = |list: &[Selector]| -> Result<Vec<Rule>, globset::Error> {
            Ok(list
                .iter()
                .map(Rule::new)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect())
        };
        Ok(Self {
            include: rules(include)?,
            exclude: rules(exclude)?,
            pods: crate::k8s::installed(),
        })
    }

    /// Pod selectors consult `pods` instead of the agent's directory.
    pub fn with_pods(mut self, pods: Arc<PodDirectory>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Without rules every sample is kept, even of a process the table does
    /// not know yet.
    pub fn is_trivial(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    pub fn allows(&self, process: Option<&Process>) -> bool {
        let pods = self.pods.as_deref();
        let included =
            self.include.is_empty() || self.include.iter().any(|r| r.matches(process, pods));
        included && !self.exclude.iter().any(|r| r.matches(process, pods))
    }
}

#[cfg(test)]
mod tests {
    const C1: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";

    use super::*;

    fn process(name: &str) -> Process {
        Process {
            pid: 1,
            ppid: 0,
            comm: name.into(),
            executable_path: Some(Arc::from(format!("/usr/bin/{name}"))),
            build_id: None,
            command_line: None,
            cgroup: Some(Arc::from("/system.slice/x.service")),
            container_id: None,
            start_time_unix_nano: 0,
        }
    }

    fn exe(glob: &str) -> Selector {
        Selector {
            executable: Some(glob.into()),
            ..Default::default()
        }
    }

    #[test]
    fn include_then_exclude() {
        let all = ProcessFilter::new(&[], &[]).unwrap();
        assert!(all.is_trivial());
        assert!(all.allows(None));
        let f = ProcessFilter::new(&[exe("py*")], &[exe("python3.11")]).unwrap();
        assert!(f.allows(Some(&process("python3"))));
        assert!(!f.allows(Some(&process("python3.11"))));
        assert!(!f.allows(Some(&process("nginx"))));
        assert!(!f.allows(None));
        let cg = Selector {
            cgroup: Some("/system.slice/*".into()),
            ..Default::default()
        };
        let f = ProcessFilter::new(&[], &[cg]).unwrap();
        assert!(!f.allows(Some(&process("nginx"))));
    }

    #[test]
    fn pod_selectors() {
        use crate::k8s::{metrics::KubeMetrics, pod::PodMeta};
        let pods = Arc::new(PodDirectory::new("n", None, 8, KubeMetrics::default()));
        pods.upsert(PodMeta {
            uid: "u".into(),
            namespace: "batch".into(),
            name: "job-1".into(),
            owner: None,
            service_name: None,
            labels: vec![("profile".into(), "yes".into())].into_boxed_slice(),
            containers: vec![(
                crate::k8s::pod::ContainerId::parse(C1).expect("hex"),
                "main".into(),
            )]
            .into_boxed_slice(),
        });
        let mut in_pod = process("python3");
        in_pod.container_id = Some(Arc::from(C1));
        let labels = Selector {
            labels: Some([("profile".to_owned(), "yes".to_owned())].into()),
            ..Default::default()
        };
        let f = ProcessFilter::new(&[labels], &[])
            .unwrap()
            .with_pods(pods.clone());
        assert!(!f.is_trivial());
        assert!(f.allows(Some(&in_pod)));
        assert!(!f.allows(Some(&process("python3"))));
        let ns = Selector {
            namespace: Some("batch".into()),
            ..Default::default()
        };
        let f = ProcessFilter::new(&[], &[ns]).unwrap().with_pods(pods);
        assert!(!f.allows(Some(&in_pod)));
        assert!(f.allows(Some(&process("python3"))));
    }
}
