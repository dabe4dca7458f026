"""Measurement: cost and accuracy (params, GFLOPs, latency, mAP), hardware models, reports, INT8."""
