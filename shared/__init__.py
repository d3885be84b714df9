"""What crosses the wire between coordinator and agents: sweep schema, jobs, results, node profiles.

No torch, ray or onnx imports here."""
