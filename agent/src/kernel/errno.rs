//! Finding the errno behind an aya error, for "no (EPERM: …)" answers.

use std::error::Error;

/// The first OS error in `err`'s source chain, as `EPERM (Operation not
/// permitted)`, or the error's own text when no errno is inside.
pub fn describe(err: &(dyn Error + 'static)) -> String {
    let mut current: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return format!("{}: {}", name(code), strerror(code));
        }
        current = e.source();
    }
    err.to_string()
}

/// The first OS error number in `err`'s source chain.
pub fn code(err: &(dyn Error + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// The C library's message for `code`, without Rust's "(os error N)".
fn strerror(code: i32) -> String {
    let text = std::io::Error::from_raw_os_error(code).to_string();
    match text.rfind(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Symbolic name of an errno the BPF syscalls return.
pub fn name(code: i32) -> String {
    let known = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENOLINK => "ENOLINK",
        // The kernel-internal ENOTSUPP leaks out of some BPF paths.
        524 => "ENOTSUPP",
        _ => return format!("errno {code}"),
    };
    known.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn finds_errno_in_chain() {
        let err = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(describe(&err), "EPERM: Operation not permitted");
        assert_eq!(name(524), "ENOTSUPP");
        assert_eq!(name(9999), "errno 9999");
    }

    #[test]
    fn falls_back_to_text() {
        let err = Outer(std::io::Error::other("no code"));
        assert_eq!(describe(&err), "outer");
    }
}
