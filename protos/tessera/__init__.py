"""Tessera's own protos: the bundle format and wire-compatible copies of a few TF messages."""
