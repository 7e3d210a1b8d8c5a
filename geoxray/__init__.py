"""geoxray: evaluate multimodal models on GeoX-Bench at cluster scale."""
__version__ = "0.1.0"
