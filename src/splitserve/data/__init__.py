"""Bundled sample data and dataset loaders."""
