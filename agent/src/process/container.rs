//! Container ids from cgroup paths, as runtimes name them:
//! `/docker/<id>`, `/system.slice/docker-<id>.scope`,
//! `/kubepods/…/cri-containerd-<id>.scope`, `crio-<id>`, `libpod-<id>`.

/// The container id in any of `paths` (the innermost match wins).
pub fn container_id<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<String> {
    paths.into_iter().filter_map(from_path).last()
}

fn from_path(path: &str) -> Option<String> {
    path.rsplit('/').find_map(from_segment)
}

fn from_segment(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".scope").unwrap_or(segment);
    // The id is the last dash-separated word: docker-<id>, cri-containerd-<id>.
    let id = segment.rsplit('-').next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4d1f3e9b2c7a8f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291807f6e";

    #[test]
    fn runtimes() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods/besteffort/pod0b1c/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/crio-{ID}"),
        ] {
            assert_eq!(container_id([path.as_str()]).as_deref(), Some(ID), "{path}");
        }
    }

    #[test]
    fn no_container() {
        for path in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/process_api/88a2e8569b1f66b8e79b8d976f0af8a2",
            "",
            "/docker-zz.scope",
        ] {
            assert_eq!(container_id([path]), None, "{path}");
        }
    }
}
