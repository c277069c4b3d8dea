"""The front door: TF Serving's gRPC services (and REST) over the `cluster.requests.ServingAPI`.

Only this package (and `cluster.client`) knows TF Serving's protos and gRPC; converters turn the
wire messages into domain requests and back, and `status` holds the one error -> code table.
"""
