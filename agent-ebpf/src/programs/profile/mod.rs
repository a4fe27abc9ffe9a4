//! CPU-clock sampler: stacks and register state per sample.
