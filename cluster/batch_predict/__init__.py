"""Offline batch prediction on Ray: the models the cluster serves, over files in storage (docs/batch.md)."""
