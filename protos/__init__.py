"""Protocol buffers: our bundle format (protos.tessera) and TF Serving's wire API."""
