"""Model fabrication: test models built offline (tiny random Qwen2-VL, full-size random-weights shapes)."""
