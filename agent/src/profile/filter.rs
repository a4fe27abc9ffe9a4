//! Which processes are profiled: everything by default; `profile.include`
//! narrows it, `profile.exclude` removes from it.

use globset::{Glob, GlobMatcher};

use crate::{config::Selector, process::Process};

enum Rule {
    Executable(GlobMatcher),
    Cgroup(GlobMatcher),
}

impl Rule {
    /// Selectors were validated with the config (an executable or a cgroup).
    fn new(selector: &Selector) -> Result<Option<Self>, globset::Error> {
        Ok(match (&selector.executable, &selector.cgroup) {
            (Some(glob), _) => Some(Rule::Executable(Glob::new(glob)?.compile_matcher())),
            (None, Some(glob)) => Some(Rule::Cgroup(Glob::new(glob)?.compile_matcher())),
            (None, None) => None,
        })
    }

    fn matches(&self, process: Option<&Process>) -> bool {
        let Some(p) = process else { return false };
        match self {
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
        })
    }

    /// Without rules every sample is kept, even of a process the table does
    /// not know yet.
    pub fn is_trivial(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    pub fn allows(&self, process: Option<&Process>) -> bool {
        let included = self.include.is_empty() || self.include.iter().any(|r| r.matches(process));
        included && !self.exclude.iter().any(|r| r.matches(process))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
}
