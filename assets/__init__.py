"""The Dagster layer: thin assets over `pipeline/` (see `assets.definitions` for the code location)."""
