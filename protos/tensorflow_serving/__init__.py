"""TF Serving protos (package `tensorflow.serving`), wire-identical copies; import only in the gateway and client."""
