"""cluster-<k>: per-layer k-means of weights, after BatchNorm folding so that folding cannot undo it.

The exporters (ONNX, OpenVINO, TorchScript freeze) fold BatchNorm into the preceding convolution,
multiplying each output channel by its own scale: clustered values would then become k values *per
channel*. So BatchNorm is folded here first (and replaced by Identity), then each conv/linear weight
is clustered to at most k shared values. Biases are left as they are (as TF-MOT does).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def kmeans_1d(values: np.ndarray, k: int, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 1-D k-means (Lloyd) of `values`: (centroids ascending, index of each value).

    Starts from centroids spread linearly between min and max (keeps outlier weights, as TF-MOT's
    'linear' init), refined by Lloyd iterations; empty clusters are dropped, so <= k centroids.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    uniq = np.unique(v)
    if uniq.size <= k:
        return uniq, np.searchsorted(uniq, v)
    c = np.linspace(v.min(), v.max(), k)
    order = np.sort(v)
    csum = np.concatenate([[0.0], np.cumsum(order)])
    for _ in range(iters):
        edges = (c[1:] + c[:-1]) / 2
        bounds = np.concatenate([[0], np.searchsorted(order, edges), [order.size]])
        counts = np.diff(bounds)
        keep = counts > 0
        sums = csum[bounds[1:]] - csum[bounds[:-1]]
        new = sums[keep] / counts[keep]
        if new.size == c.size and np.allclose(new, c, rtol=0, atol=1e-12):
            c = new
            break
        c = new
    edges = (c[1:] + c[:-1]) / 2
    return c, np.searchsorted(edges, v)


def layer_kind(module) -> str | None:
    """'conv' or 'linear' for the layers compression works on, else None."""
    import torch
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, torch.nn.Linear):
        return "linear"
    return None


def cluster_model(model, k: int, layers: str = "all") -> dict[str, int]:
    """Replace each selected layer's weight by its k-means centroids; returns unique values per layer."""
    import torch
    out: dict[str, int] = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            kind = layer_kind(mod)
            if kind is None or (layers != "all" and layers != kind):
                continue
            w = mod.weight
            centroids, idx = kmeans_1d(w.detach().cpu().numpy(), k)
            new = centroids.astype(np.float32)[idx].reshape(tuple(w.shape))
            w.copy_(torch.from_numpy(new))
            out[name] = int(np.unique(new).size)
    return out


# ---- BatchNorm folding ---------------------------------------------------------------------------

def fold_batchnorm(model, example: Any) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a conv/linear into it; the BN becomes Identity.

    Pairs are found by running `example` through the model with hooks: a BatchNorm whose input is
    the very tensor a conv/linear produced. Returns the (layer, batchnorm) names folded.
    """
    import torch
    producers: dict[int, tuple[str, Any]] = {}   # id(output) -> (layer, output): kept alive, so ids stay unique
    pairs: list[tuple[str, str]] = []
    hooks = []
    modules = dict(model.named_modules())

    def after_layer(name):
        def hook(mod, inp, out):
            producers[id(out)] = (name, out)
        return hook

    def before_bn(name):
        def hook(mod, inp):
            src = producers.get(id(inp[0]))
            if src is not None and src[1] is inp[0] and all(b != name for _, b in pairs):
                pairs.append((src[0], name))
        return hook

    for name, mod in modules.items():
        if layer_kind(mod) and not getattr(mod, "transposed", False):
            hooks.append(mod.register_forward_hook(after_layer(name)))
        elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            hooks.append(mod.register_forward_pre_hook(before_bn(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    # A conv feeding two BatchNorms (or used elsewhere too) cannot be folded safely.
    srcs = [s for s, _ in pairs]
    pairs = [(s, b) for s, b in pairs if srcs.count(s) == 1]
    producers.clear()
    for layer_name, bn_name in pairs:
        _fold_one(modules[layer_name], modules[bn_name])
        _set_module(model, bn_name, torch.nn.Identity())
    return pairs


def _fold_one(layer, bn) -> None:
    import torch
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        scale = gamma / std
        w = layer.weight
        layer.weight.copy_(w * scale.reshape(-1, *([1] * (w.dim() - 1))))
        old_bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = beta + (old_bias - bn.running_mean) * scale
        if layer.bias is None:
            layer.bias = torch.nn.Parameter(new_bias.detach().clone())
        else:
            layer.bias.copy_(new_bias)


def _set_module(model, dotted: str, new) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def apply_cluster(model, spec, calib_x: np.ndarray):
    """The `cluster` method: BatchNorm folded (checked to leave the outputs as they were), then each
    selected layer's weights clustered to at most `spec.clusters` values."""
    import torch

    from fleetbench.agent.compress import ModelChange, layers_word
    example = torch.from_numpy(np.ascontiguousarray(calib_x[:1]))
    with torch.no_grad():
        before = model(example)
    folded = fold_batchnorm(model, example)
    with torch.no_grad():
        drift = float((model(example) - before).abs().max() / (before.abs().max() + 1e-12))
    if drift > 1e-3:
        raise RuntimeError(f"BatchNorm folding changed the outputs (max relative difference {drift:.2e})")
    unique = cluster_model(model, spec.clusters, spec.layers)
    for name, n in unique.items():
        log.info("cluster: %s has %d unique weight values", name, n)
    return ModelChange(model, [f"folded {len(folded)} BatchNorm; clustered {len(unique)} {layers_word(spec.layers)} "
                               f"layers to <={spec.clusters} values (max {max(unique.values(), default=0)} unique "
                               "per layer)"])
