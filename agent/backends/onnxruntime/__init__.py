"""ONNX Runtime: backend (execution providers, engine), variants (fp16 / QDQ / dynamic int8 graphs and what
ORT really computes in), cuda (CUDA and TensorRT execution providers)."""
