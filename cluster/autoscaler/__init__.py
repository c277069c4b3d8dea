"""Replica autoscaling: the pure policy (and, elsewhere, the loop that applies it)."""
