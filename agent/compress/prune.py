"""prune-<p>: global magnitude pruning (unstructured, masks made permanent);
prune-channels-<p>: structured pruning that physically removes channels (torch-pruning).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fleetbench.agent.compress.cluster import layer_kind
from fleetbench.shared.sweep import exact

log = logging.getLogger(__name__)


def selected_layers(model, layers: str = "all") -> list[tuple[str, Any]]:
    """(name, module) of the conv/linear layers the `layers` filter (all | conv | linear) selects."""
    return [(n, m) for n, m in model.named_modules()
            if (kind := layer_kind(m)) is not None and layers in ("all", kind)]


def sparsity(modules) -> float:
    """Fraction of exactly-zero weights over the given layers."""
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    total = sum(m.weight.numel() for m in modules)
    return zeros / total if total else 0.0


def prune_unstructured(model, percent: float, layers: str = "all") -> tuple[float, int]:
    """Global L1 pruning of `percent`% of the selected layers' weights, made permanent.

    Returns (achieved sparsity over those layers, number of layers)."""
    import torch.nn.utils.prune as tprune
    chosen = [m for _, m in selected_layers(model, layers)]
    if not chosen:
        raise ValueError(f"no {layers} layers to prune")
    params = [(m, "weight") for m in chosen]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=percent / 100.0)
    for m, name in params:
        tprune.remove(m, name)          # weight = weight_orig * mask, hooks and buffers gone
    return sparsity(chosen), len(chosen)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_channels(model, percent: float, example, layers: str = "all"):
    """Remove `percent`% of the channels of each prunable layer group (L1 magnitude, torch-pruning).

    Dependencies (residual adds, BatchNorm, the next layer's inputs) are followed by torch-pruning's
    DependencyGraph; the classifier's output is kept. Returns the pruned model (changed in place).
    """
    import torch
    import torch_pruning as tp
    classifier = _classifier(model)
    ignored = [m for _, m in _all_layers(model) if m is classifier or (layers != "all" and layer_kind(m) != layers)]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=percent / 100.0, ignored_layers=ignored)
    with torch.no_grad():
        pruner.step()
    return model


def recalibrate_batchnorm(model, x: np.ndarray, batch_size: int = 64) -> int:
    """Re-estimate BatchNorm running statistics on `x` (calibration images; no labels, no training).

    After channels are removed the old statistics no longer describe the layer inputs. Returns the
    number of BatchNorm layers updated."""
    import torch
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) == 0:
        return 0
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None          # cumulative average over all batches
        bn.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))
    model.eval()
    return len(bns)


def _all_layers(model):
    return [(n, m) for n, m in model.named_modules() if layer_kind(m) is not None]


def _classifier(model):
    """The layer producing the logits: timm's get_classifier(), else the last conv/linear."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            clf = get()
            if layer_kind(clf) is not None:
                return clf
        except Exception:  # any failure: some models have no usable classifier accessor
            pass
    layers = _all_layers(model)
    return layers[-1][1] if layers else None


def apply_prune(model, spec, calib_x: np.ndarray):
    """The `prune` method: global L1 unstructured pruning, made permanent."""
    from fleetbench.agent.compress import ModelChange, layers_word
    achieved, n = prune_unstructured(model, spec.percent, spec.layers)
    return ModelChange(model, [f"prune {exact(spec.percent)}% (global L1, unstructured) over {n} "
                               f"{layers_word(spec.layers)} layers: sparsity {achieved:.3f}"], sparsity=achieved)


def apply_prune_channels(model, spec, calib_x: np.ndarray):
    """The `prune-channels` method: channels removed (torch-pruning), BatchNorm statistics re-estimated."""
    import torch

    from fleetbench.agent.compress import ModelChange
    example = torch.from_numpy(np.ascontiguousarray(calib_x[:1]))
    before = count_params(model)
    model = prune_channels(model, spec.percent, example, spec.layers)
    after = count_params(model)
    n_bn = recalibrate_batchnorm(model, calib_x)
    return ModelChange(model, [f"prune-channels {exact(spec.percent)}% (torch-pruning, L1 magnitude, classifier kept): "
                               f"params {before:,} -> {after:,} ({after / before:.2f}x)"
                               + (f"; {n_bn} BatchNorm statistics re-estimated on {len(calib_x)} calibration images"
                                  if n_bn else "") + "; no fine-tuning"])
