"""Many models x decodes in one driver: sweep specs, the sweep loop, its state, the leaderboard."""
