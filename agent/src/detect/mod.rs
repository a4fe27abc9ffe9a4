//! Streaming anomaly detectors over time series.
