"""Fusion methods: one file per method, registered in `harness/registry.py`."""
