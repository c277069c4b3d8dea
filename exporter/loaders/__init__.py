"""Loaders: one module per model runtime, each turning a version directory into a `Servable`."""
