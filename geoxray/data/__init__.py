"""Making benchmarks: the synthetic GeoX-Bench world (`synth`, `world`, `render`) and, beside
them, the readers and preprocessing of real source datasets."""
