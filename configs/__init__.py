"""Data: model and target YAML files (read through bertrt.config)."""
