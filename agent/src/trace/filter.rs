//! Which processes and connections are traced: everything by default;
//! `trace.include` narrows it, `trace.exclude` removes from it.

use globset::{Glob, GlobMatcher};

use super::event::Endpoints;
use crate::{config::Selector, process::Process};

enum Rule {
    Executable(GlobMatcher),
    Cgroup(GlobMatcher),
    Port(u16),
}

impl Rule {
    /// Selectors were validated with the config: exactly one field is set.
    fn new(selector: &Selector) -> Result<Self, globset::Error> {
        Ok(
            match (&selector.executable, &selector.cgroup, selector.port) {
                (Some(glob), _, _) => Rule::Executable(Glob::new(glob)?.compile_matcher()),
                (None, Some(glob), _) => Rule::Cgroup(Glob::new(glob)?.compile_matcher()),
                (None, None, port) => Rule::Port(port.unwrap_or(0)),
            },
        )
    }

    fn matches(&self, process: Option<&Process>, endpoints: &Endpoints) -> bool {
        match self {
            Rule::Executable(m) => process.is_some_and(|p| {
                m.is_match(p.executable_name())
                    || p.executable_path
                        .as_deref()
                        .is_some_and(|path| m.is_match(path))
            }),
            Rule::Cgroup(m) => {
                process.is_some_and(|p| p.cgroup.as_deref().is_some_and(|c| m.is_match(c)))
            }
            // A listening port (server side) or a destination port (client side).
            Rule::Port(port) => endpoints.local.port() == *port || endpoints.remote.port() == *port,
        }
    }
}

pub struct TraceFilter {
    include: Vec<Rule>,
    exclude: Vec<Rule>,
}

impl TraceFilter {
    pub fn new(include: &[Selector], exclude: &[Selector]) -> Result<Self, globset::Error> {
        Ok(Self {
            include: include.iter().map(Rule::new).collect::<Result<_, _>>()?,
            exclude: exclude.iter().map(Rule::new).collect::<Result<_, _>>()?,
        })
    }

    pub fn allows(&self, process: Option<&Process>, endpoints: &Endpoints) -> bool {
        let included =
            self.include.is_empty() || self.include.iter().any(|r| r.matches(process, endpoints));
        included && !self.exclude.iter().any(|r| r.matches(process, endpoints))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
}
