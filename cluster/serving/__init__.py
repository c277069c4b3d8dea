"""Servable streams without Ray or gRPC: the source, version policies and the lifecycle planner."""
