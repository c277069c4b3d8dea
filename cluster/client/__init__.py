"""Python client helpers: numpy <-> TensorProto, tf.Example builders and a small gRPC client.

This package and `cluster.gateway` are the only places that import TF Serving's proto names.
"""

from cluster.client.client import TesseraClient, model_spec
from cluster.client.examples import (
    bytes_feature,
    example_to_dict,
    float_feature,
    int64_feature,
    make_example,
    make_feature,
    make_input,
    serialize_example,
    serialize_examples,
)
from cluster.client.tensors import make_ndarray, make_tensor_proto

__all__ = [
    "TesseraClient",
    "bytes_feature",
    "example_to_dict",
    "float_feature",
    "int64_feature",
    "make_example",
    "make_feature",
    "make_input",
    "make_ndarray",
    "make_tensor_proto",
    "model_spec",
    "serialize_example",
    "serialize_examples",
]
