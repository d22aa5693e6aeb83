"""Thin adapters that plug necklace necks into other libraries; each submodule is imported on demand."""
