"""Importers: models trained elsewhere, brought into Tessera bundles through ONNX.

Each importer turns a model into ONNX with its framework's own converter and wraps it in an
`ImportedModel` (exporter.importers.model): the ONNX model runs in one graph node
(exporter.ops.onnx), behind a parsing receiver (tf.Examples, one feature per input column) or a raw
receiver, and in front of TF's heads, so the bundle answers Classify, Regress and Predict.

- `exporter.importers.sklearn`: scikit-learn estimators and pipelines (skl2onnx);
- `exporter.importers.xgboost`, `exporter.importers.lightgbm`: boosted trees (onnxmltools);
- `exporter.importers.onnx`: any ONNX file (torch.onnx.export, tf2onnx, ...), with the heads the user
  names; `tessera export-onnx` on the command line.

Each importer module imports its own framework and converter; importing `exporter` or this package
never does (import-linter holds each converter to its importer).
"""
