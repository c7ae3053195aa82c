"""Data layer: sources, geography, the DuckDB store and its immutable snapshots."""
