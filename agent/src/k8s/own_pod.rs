//! The agent's own pod, from the environment the DaemonSet fills through
//! the downward API. It names the actor on what the agent itself emits
//! (audit records of its actions and of remote configs, the OpAMP
//! description), and needs no API request, so it holds from the first
//! record on, even with the watch off or the API server away.

/// Environment variable → attribute.
const FROM_ENV: [(&str, &str); 4] = [
    ("POD_NAMESPACE", "k8s.namespace.name"),
    ("POD_NAME", "k8s.pod.name"),
    ("POD_UID", "k8s.pod.uid"),
    ("NODE_NAME", "k8s.node.name"),
];

/// `k8s.*` attributes of the agent's pod: those whose variable is set,
/// and the cluster's name when one is configured.
pub fn attributes(cluster_name: Option<&str>) -> Vec<(&'static str, String)> {
    attributes_from(|name| std::env::var(name).ok(), cluster_name)
}

fn attributes_from(
    env: impl Fn(&str) -> Option<String>,
    cluster_name: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut attrs: Vec<(&'static str, String)> = FROM_ENV
        .iter()
        .filter_map(|(var, key)| {
            env(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (*key, v))
        })
        .collect();
    if let Some(cluster) = cluster_name.filter(|c| !c.is_empty()) {
        attrs.push(("k8s.cluster.name", cluster.to_owned()));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_variables_become_attributes() {
        let env = |name: &str| match name {
            "POD_NAME" => Some("selfops-x9z".to_owned()),
            "POD_NAMESPACE" => Some("selfops".to_owned()),
            "POD_UID" => Some(" ".to_owned()),
            _ => None,
        };
        assert_eq!(
            attributes_from(env, Some("prod")),
            vec![
                ("k8s.namespace.name", "selfops".to_owned()),
                ("k8s.pod.name", "selfops-x9z".to_owned()),
                ("k8s.cluster.name", "prod".to_owned()),
            ]
        );
        assert!(attributes_from(|_| None, None).is_empty());
    }
}
