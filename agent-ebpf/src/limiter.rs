//! Limiter policy: map keys and values shared with the XDP and tc programs.
