"""Servable streams without Ray or gRPC: the source, version policies, the availability-preserving
planner, the stream of one model's versions, and version resolution for requests."""
