//! Profiler samples shared with the CPU-clock sampler.
