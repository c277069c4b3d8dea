"""Tessera serving cluster: replicas on Ray, a gateway speaking TF Serving's APIs."""
