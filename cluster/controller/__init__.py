"""The controller: the one actor that owns desired state (config, aspired versions, replicas)."""
