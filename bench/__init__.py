"""Benchmarks of City Service Heat: ``python -m bench.run`` prints ``BENCH <name> <value> <unit>`` lines."""
