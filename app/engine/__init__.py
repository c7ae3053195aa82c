"""The anomaly lens: pure functions over polars frames, and a param lens that only holds state."""
