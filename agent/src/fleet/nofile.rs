//! Open-file limit: a fleet server holds a socket per agent and the
//! simulator one per simulated agent, past the usual soft limit of 1024.

/// Raises the soft RLIMIT_NOFILE to the hard limit; the soft limit now.
pub fn raise_to_hard() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// Raises the limit and warns when `wanted` descriptors will not fit.
pub fn ensure(wanted: usize, what: &str) {
    match raise_to_hard() {
        Ok(soft) if u64::try_from(wanted).is_ok_and(|w| w > soft) => tracing::warn!(
            limit = soft,
            wanted,
            "{what}: the open-file limit (ulimit -n) is lower than the connections asked for"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "{what}: raising the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_reaches_the_hard_one() {
        let soft = super::raise_to_hard().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit on a valid struct.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(soft, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
