"""Cluster operations: Ray init, local multi-node clusters, Ray Jobs submit/status/logs/stop."""
