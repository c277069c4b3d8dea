"""TensorFlow core protos (package `tensorflow`), wire-identical copies; import only in the gateway and client."""
