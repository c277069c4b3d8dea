"""`make bench`: Tessera against a plain grpc.aio server and Ray Serve on one model and one load.

Benchmarks are never tests: nothing here is collected by pytest or run by `make test`.
"""
