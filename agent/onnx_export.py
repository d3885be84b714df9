"""The fp32 ONNX export of a (compressed) model, shared by every ONNX-based backend (agent/prepare.py caches it)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
BATCH_AXIS = "batch"   # the name of a dynamic batch axis (ONNX Runtime overrides it by name at load)


def export_onnx(model, example: np.ndarray, path: Path, opset: int = 18, dynamic_batch: bool = False) -> Path:
    """Export `model` at the example's shape, with a dynamic first axis named "batch" when `dynamic_batch`.
    Weights may land in a `.onnx.data` file beside it."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(np.ascontiguousarray(example))
    dynamic = ({0: torch.export.Dim(BATCH_AXIS)},) if dynamic_batch else None
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=opset, dynamo=True, verbose=False, dynamic_shapes=dynamic)
    log.info("exported ONNX to %s%s", path, " (dynamic batch axis)" if dynamic_batch else "")
    return path
