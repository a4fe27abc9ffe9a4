//! Which processes and connections are traced: everything by default;
//! `trace.include` narrows it, `trace.exclude` removes from it.

use std::sync::Arc;

use globset::{Glob, GlobMatcher};

use super::event::Endpoints;
use crate::{
    config::Selector,
    k8s::{PodDirectory, selector::PodSelector},
    process::Process,
};

enum Rule {
    Executable(GlobMatcher),
    Cgroup(GlobMatcher),
    Port(u16),
    Pod(PodSelector),
}

impl Rule {
    /// Selectors were validated with the config: exactly one field is set
    /// (or a pod's namespace and labels).
    fn new(selector: &Selector) -> Result<Self, globset::Error> {
        if let Some(pod) = PodSelector::new(selector)? {
            return Ok(Rule::Pod(pod));
        }
        Ok(
            match (&selector.executable, &selector.cgroup, selector.port) {
                (Some(glob), _, _) => Rule::Executable(Glob::new(glob)?.compile_matcher()),
                (None, Some(glob), _) => Rule::Cgroup(Glob::new(glob)?.compile_matcher()),
                (None, None, port) => Rule::Port(port.unwrap_or(0)),
            },
        )
    }

    fn matches(
        &self,
        process: Option<&Process>,
        endpoints: &Endpoints,
        pods: Option<&PodDirectory>,
    ) -> bool {
        match self {
            // A listening port (server side) or a destination port (client side).
            Rule::Port(port) => endpoints.local.port() == *port || endpoints.remote.port() == *port,
            _ => self.matches_process(process, pods).unwrap_or(false),
        }
    }

    /// Whether the rule picks `process`, or None for a rule that picks
    /// connections (a port).
    fn matches_process(
        &self,
        process: Option<&Process>,
        pods: Option<&PodDirectory>,
    ) -> Option<bool> {
        Some(match self {
            Rule::Port(_) => return None,
            Rule::Pod(selector) => selector.matches(process, pods),
            Rule::Executable(m) => process.is_some_and(|p| {
                m.is_match(p.executable_name())
                    || p.executable_path
                        .as_deref()
                        .is_some_and(|path| m.is_match(path))
            }),
            Rule::Cgroup(m) => {
                process.is_some_and(|p| p.cgroup.as_deref().is_some_and(|c| m.is_match(c)))
            }
        })
    }
}

pub struct TraceFilter {
    include: Vec<Rule>,
    exclude: Vec<Rule>,
    /// Where pod selectors look a process's pod up.
    pods: Option<Arc<PodDirectory>>,
}

impl TraceFilter {
    pub fn new(include: &[Selector], exclude: &[Selector]) -> Result<Self, globset::Error> {
        Ok(Self {
            include: include.iter().map(Rule::new).collect::<Result<_, _>>()?,
            exclude: exclude.iter().map(Rule::new).collect::<Result<_, _>>()?,
            pods: crate::k8s::installed(),
        })
    }

    /// Pod selectors consult `pods` instead of the agent's directory.
    pub fn with_pods(mut self, pods: Arc<PodDirectory>) -> Self {
        self.pods = Some(pods);
        self
    }

    pub fn allows(&self, process: Option<&Process>, endpoints: &Endpoints) -> bool {
        let pods = self.pods.as_deref();
        let included = self.include.is_empty()
            || self
                .include
                .iter()
                .any(|r| r.matches(process, endpoints, pods));
        included
            && !self
                .exclude
                .iter()
                .any(|r| r.matches(process, endpoints, pods))
    }
}

impl TraceFilter {
    /// Whether every connection of `process` is left out, whatever its
    /// ports: then the kernel may skip the process altogether. A pod rule
    /// in `include` whose pod is not known yet keeps the process in, as
    /// the pod may match once learned.
    /// Whether any rule could leave a process out (without rules, every
    /// process is traced and there is nothing to hand the kernel).
    pub fn has_rules(&self) -> bool {
        !self.include.is_empty() || !self.exclude.is_empty()
    }

    pub fn excludes_process(&self, process: &Process) -> bool {
        let pods = self.pods.as_deref();
        let by_process = |rules: &[Rule]| {
            rules
                .iter()
                .any(|r| r.matches_process(Some(process), pods) == Some(true))
        };
        if by_process(&self.exclude) {
            return true;
        }
        if self.include.is_empty() || by_process(&self.include) {
            return false;
        }
        let port_rule = self.include.iter().any(|r| matches!(r, Rule::Port(_)));
        let pod_unknown = self.include.iter().any(|r| matches!(r, Rule::Pod(_)))
            && process
                .container_id
                .as_deref()
                .is_some_and(|id| pods.is_none_or(|p| p.container(id).is_none()));
        !port_rule && !pod_unknown
    }
}

#[cfg(test)]
mod tests {
    const C1: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";

    use super::*;

    fn process(name: &str, cgroup: &str) -> Process {
        Process {
            pid: 1,
            ppid: 0,
            comm: name.into(),
            executable_path: Some(Arc::from(format!("/usr/sbin/{name}"))),
            build_id: None,
            command_line: None,
            cgroup: Some(Arc::from(cgroup)),
            container_id: None,
            start_time_unix_nano: 0,
        }
    }

    fn endpoints(local: u16, remote: u16) -> Endpoints {
        Endpoints {
            local: ([127, 0, 0, 1], local).into(),
            remote: ([127, 0, 0, 1], remote).into(),
        }
    }

    #[test]
    fn everything_by_default() {
        let f = TraceFilter::new(&[], &[]).unwrap();
        assert!(f.allows(None, &endpoints(80, 5000)));
    }

    #[test]
    fn include_then_exclude() {
        let executable = Selector {
            executable: Some("nginx".into()),
            ..Selector::default()
        };
        let port = Selector {
            port: Some(8080),
            ..Selector::default()
        };
        let cgroup = Selector {
            cgroup: Some("/system.slice/noisy*".into()),
            ..Selector::default()
        };
        let f = TraceFilter::new(&[executable, port], &[cgroup]).unwrap();
        let nginx = process("nginx", "/system.slice/nginx.service");
        assert!(f.allows(Some(&nginx), &endpoints(80, 5000)));
        let curl = process("curl", "/user.slice");
        assert!(!f.allows(Some(&curl), &endpoints(5000, 443)));
        assert!(f.allows(Some(&curl), &endpoints(5000, 8080)), "port rule");
        let noisy = process("nginx", "/system.slice/noisy.service");
        assert!(!f.allows(Some(&noisy), &endpoints(80, 5000)));
    }

    #[test]
    fn process_exclusion_agrees_with_allows() {
        let executable = |glob: &str| Selector {
            executable: Some(glob.into()),
            ..Selector::default()
        };
        let cgroup = Selector {
            cgroup: Some("/system.slice/noisy*".into()),
            ..Selector::default()
        };
        let port = Selector {
            port: Some(8080),
            ..Selector::default()
        };
        let nginx = process("nginx", "/system.slice/nginx.service");
        let noisy = process("nginx", "/system.slice/noisy.service");
        let curl = process("curl", "/user.slice");
        let cases = [
            (vec![], vec![], [false, false, false]),
            (vec![], vec![cgroup.clone()], [false, true, false]),
            (vec![executable("nginx")], vec![], [false, false, true]),
            (vec![executable("nginx")], vec![cgroup], [false, true, true]),
            // curl may connect to 8080: only userspace can tell.
            (
                vec![executable("nginx"), port.clone()],
                vec![],
                [false, false, false],
            ),
            // A port exclusion leaves the process's other ports traced.
            (vec![], vec![port], [false, false, false]),
        ];
        for (include, exclude, expected) in cases {
            let f = TraceFilter::new(&include, &exclude).unwrap();
            for (p, excluded) in [&nginx, &noisy, &curl].into_iter().zip(expected) {
                assert_eq!(
                    f.excludes_process(p),
                    excluded,
                    "{include:?} {exclude:?} {}",
                    p.comm
                );
                // Excluded in the kernel means no connection is allowed.
                if excluded {
                    for e in [
                        endpoints(80, 5000),
                        endpoints(5000, 8080),
                        endpoints(8080, 1),
                    ] {
                        assert!(!f.allows(Some(p), &e));
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_pod_is_not_excluded_by_include() {
        use crate::k8s::metrics::KubeMetrics;
        let pods = Arc::new(PodDirectory::new("n", None, 8, KubeMetrics::default()));
        let selector = Selector {
            namespace: Some("shop".into()),
            ..Selector::default()
        };
        let f = TraceFilter::new(&[selector], &[]).unwrap().with_pods(pods);
        let mut p = process("nginx", "/kubepods.slice/x");
        p.container_id = Some(Arc::from(C1));
        assert!(!f.excludes_process(&p), "its pod may not be known yet");
        p.container_id = None;
        assert!(f.excludes_process(&p), "outside any pod");
    }

    #[test]
    fn pod_namespace_and_labels() {
        use crate::k8s::{metrics::KubeMetrics, pod::PodMeta};
        let pods = Arc::new(PodDirectory::new("n", None, 8, KubeMetrics::default()));
        pods.upsert(PodMeta {
            uid: "u".into(),
            namespace: "shop-prod".into(),
            name: "web-0".into(),
            owner: None,
            service_name: None,
            labels: vec![("tier".into(), "front".into())].into_boxed_slice(),
            containers: vec![(
                crate::k8s::pod::ContainerId::parse(C1).expect("hex"),
                "web".into(),
            )]
            .into_boxed_slice(),
        });
        let selector = |namespace: Option<&str>, labels: &[(&str, &str)]| Selector {
            namespace: namespace.map(Into::into),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            ..Selector::default()
        };
        let mut in_pod = process("nginx", "/kubepods.slice/x");
        in_pod.container_id = Some(Arc::from(C1));
        let host = process("nginx", "/system.slice/nginx.service");
        let e = endpoints(80, 5000);
        let f = TraceFilter::new(&[selector(Some("shop-*"), &[("tier", "front")])], &[])
            .unwrap()
            .with_pods(pods.clone());
        assert!(f.allows(Some(&in_pod), &e));
        assert!(!f.allows(Some(&host), &e), "outside any pod");
        let f = TraceFilter::new(&[selector(None, &[("tier", "back")])], &[])
            .unwrap()
            .with_pods(pods.clone());
        assert!(!f.allows(Some(&in_pod), &e));
        let f = TraceFilter::new(&[], &[selector(Some("kube-system"), &[])])
            .unwrap()
            .with_pods(pods.clone());
        assert!(f.allows(Some(&in_pod), &e));
        let f = TraceFilter::new(&[], &[selector(Some("shop-prod"), &[])])
            .unwrap()
            .with_pods(pods);
        assert!(!f.allows(Some(&in_pod), &e));
        assert!(f.allows(Some(&host), &e));
    }
}
