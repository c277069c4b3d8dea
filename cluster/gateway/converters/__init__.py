"""TF Serving's gRPC messages <-> the domain requests and results of `cluster.requests`.

With `config_converters` and `predict_bytes` (big Predict messages by hand), the only code that
knows proto field names: `requests` (messages in: validation TF Serving does before it looks a
servable up) and `responses` (results out, trusted as they come). This package is their one
entry point, as the servicers use it.
"""

from cluster.gateway.converters.requests import (
    DEFAULT_MAX_FILL_BYTES,
    SIGNATURE_DEF_FIELD,
    examples_request,
    metadata_request,
    model_spec,
    multi_inference_request,
    parse,
    predict_request,
    predict_spec,
    status_request,
)
from cluster.gateway.converters.responses import (
    classification_response,
    classification_result,
    fill_spec,
    metadata_response,
    multi_inference_response,
    predict_response,
    regression_response,
    regression_result,
    reload_response,
    signature_def_map,
    status_response,
)

__all__ = [
    "DEFAULT_MAX_FILL_BYTES",
    "SIGNATURE_DEF_FIELD",
    "classification_response",
    "classification_result",
    "examples_request",
    "fill_spec",
    "metadata_request",
    "metadata_response",
    "model_spec",
    "multi_inference_request",
    "multi_inference_response",
    "parse",
    "predict_request",
    "predict_response",
    "predict_spec",
    "regression_response",
    "regression_result",
    "reload_response",
    "signature_def_map",
    "status_request",
    "status_response",
]
