"""Running evaluations: one model (evaluate), many (sweep), results on disk (store)."""
