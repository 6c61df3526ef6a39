"""Training input: video file I/O, the embedded sample data and grain pipelines."""
