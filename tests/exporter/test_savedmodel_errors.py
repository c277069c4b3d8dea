"""What `tessera import` refuses, and how it says so: an op without an ONNX conversion (named, with
its node and the signature's key), parses that cannot become Tessera's receiver, and a converted
body that would answer differently from TensorFlow. Nothing is published for a refused version.
The models are built and imported in a TensorFlow subprocess (savedmodel_testlib)."""

from __future__ import annotations

import pytest

from exporter.errors import ExportError
from exporter.importers import savedmodel
from exporter.servable import load_servable
from tests.exporter.savedmodel_testlib import Built, assert_close, build, skip_without_the_extra

skip_without_the_extra()
pytestmark = pytest.mark.timeout(600)

REFUSED = {
    "igamma": r"signature 'my_signature': TensorFlow op\(s\) with no ONNX conversion: Igamma \(node '.*Igamma'\)",
    "parse_computed": "parse must read serialized examples fed as one signature input",
    "parse_and_more": "reads the serialized examples 'examples' beyond parsing them",
    "fixed_len_sequence": "feature 'x' is a FixedLenSequenceFeature",
    "ragged": "ragged features",
    # tf.one_hot(-1) is all zeros, tf2onnx's OneHot counts -1 from the end: the import-time check
    # runs both on a synthetic example and refuses the body.
    "one_hot_of_minus_one": "output 'y' of the converted ONNX body differs from TensorFlow's",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    return build(tmp_path_factory.mktemp("odd"), [*REFUSED, "string_and_int_inputs", "parse_example_v1_op"])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_a_reason_and_nothing_published(built, name: str) -> None:
    import re

    model = built[name]
    assert model.bundle is None and model.error is not None
    assert re.search(REFUSED[name], model.error), model.error
    assert model.error.startswith("version 1: signature ")
    dest = model.base.parent / f"{name}-bundles"
    assert not dest.exists() or not any(dest.iterdir())


@pytest.mark.parametrize("name", ["string_and_int_inputs", "parse_example_v1_op"])
def test_taken_string_and_int64_inputs_and_tf1s_parse_op(built, name: str) -> None:
    model = built[name]
    assert model.error is None, model.error
    servable = load_servable("tensorflow", model.bundle)
    assert model.cases
    for case in model.cases.values():
        assert_close(servable.run(case.signature, case.inputs), case.outputs)
    if name == "parse_example_v1_op":
        from exporter import bundle

        assert "ParseExample" in [n.op for n in bundle.read_meta_graph(model.bundle)[1].graph.nodes]


def test_missing_extra_says_what_to_install(monkeypatch) -> None:
    real = savedmodel.importlib.util.find_spec
    monkeypatch.setattr(savedmodel.importlib.util, "find_spec", lambda n: None if n == "tf2onnx" else real(n))
    with pytest.raises(ExportError, match=r"needs tf2onnx.*pip install 'tessera-serving\[tensorflow\]'"):
        savedmodel.require_tensorflow()
