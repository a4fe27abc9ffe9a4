//! Token-bucket limiter: XDP and tc programs over policy maps.
