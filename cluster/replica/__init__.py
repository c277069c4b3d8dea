"""Replicas: hold the loaded versions of one model and run batches on them.

`replica.Replica` is a plain class (testable without Ray); `actor.ReplicaActor` wraps it in a Ray actor.
"""
