//! Actuation: playbooks, the kernel limiter, safety (TTL, allowlist, dry-run) and audit.
