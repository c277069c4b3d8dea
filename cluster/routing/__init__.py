"""Picking a replica for a request: the pure choice policy and the in-flight-counting router."""
