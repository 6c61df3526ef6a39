"""Evaluation: quality metrics, x264/x265/AV1/VVC anchors, Bjontegaard deltas and RD plots."""
