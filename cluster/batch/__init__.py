"""Offline batch prediction on Ray Data: the same bundles the cluster serves, over files."""
