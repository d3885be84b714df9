"""One ONNX export per job, shared by every ONNX-based backend."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def export_onnx(model, example: np.ndarray, path: Path, opset: int = 18) -> Path:
    """Export `model` at the example's (static) shape. Weights may land in a `.onnx.data` file beside it."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(np.ascontiguousarray(example))
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=opset, dynamo=True, verbose=False)
    log.info("exported ONNX to %s", path)
    return path
