"""The PyTorch engines: eager (the reference) and TorchScript; common (devices, engine), variants
(fp16, bf16, dynamic int8 modules)."""
