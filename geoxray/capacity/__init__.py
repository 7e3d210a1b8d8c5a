"""Capacity: profile a model's throughput and plan GPU-hours for a sweep."""
