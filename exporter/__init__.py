"""Tessera exporter: build a graph, export a versioned bundle, read it back, run it.

An offline library: no Ray, no gRPC.
"""
