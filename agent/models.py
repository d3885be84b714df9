"""Model loading: timm by name, a Python callable, or an ONNX file; local checkpoints or hub weights."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Optional

from fleetbench.shared.errors import StageError
from fleetbench.shared.sweep import ModelSpec

log = logging.getLogger(__name__)


def weights_cache_dir() -> Path:
    from fleetbench.agent.paths import cache_dir
    return cache_dir("weights")


def materialise_weights(data: bytes, sha256: str, suffix: str) -> Path:
    """Shipped checkpoint bytes as a file in this node's cache, keyed by content hash.

    The copy is private (0600 in a 0700 folder) and re-hashed on every use: a copy that was
    truncated or altered since is replaced from the shipped bytes, never loaded. When the cache
    folder cannot be used safely (another user's, a symlink), the bytes go to a private temp file.
    """
    import hashlib
    import tempfile

    from fleetbench.agent.cache import UnsafeCacheDir, file_sha256, kind_dir
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StageError("load", f"shipped weights do not match their hash {sha256[:12]}")
    if not all(c in "0123456789abcdef" for c in sha256) or "/" in suffix:
        raise StageError("load", f"bad weights key {sha256[:16]!r}{suffix!r}")
    try:
        folder = kind_dir("weights")
    except (UnsafeCacheDir, OSError) as e:
        log.warning("weights cache not used: %s", e)
        folder = Path(tempfile.mkdtemp(prefix="fleetbench-weights-"))
    path = folder / f"{sha256}{suffix}"
    try:
        if not path.is_symlink() and path.is_file() and file_sha256(path) == sha256:
            os.utime(path)   # last used: what `cache prune` goes by
            return path
    except OSError:
        pass
    if path.exists() or path.is_symlink():
        log.warning("cached checkpoint %s is damaged or not a plain file; rewritten from the shipped bytes",
                    path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{sha256[:8]}-", dir=folder)   # 0600, unpredictable name
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict from .safetensors, or from a torch file loaded with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise StageError("load", f"{p}: checkpoint not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    import torch
    obj = torch.load(str(p), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise StageError("load", f"{p}: not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def build_module(spec: ModelSpec):
    """The bare network for a timm or python source (weights as created)."""
    scheme, _, target = spec.source.partition(":")
    in_chans = spec.input_size[0]
    if scheme == "timm":
        import timm
        if not timm.is_model(target):
            raise StageError("load", f"timm has no architecture {target!r}")
        try:
            return timm.create_model(target, pretrained=spec.pretrained, num_classes=spec.num_classes,
                                     in_chans=in_chans)
        except Exception as e:  # hub unreachable, bad arch arguments
            raise StageError("load", f"timm.create_model({target!r}) failed: {type(e).__name__}: {e}") from e
    if scheme == "python":
        module_name, _, attr = target.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise StageError("load", f"cannot import {target}: {e}") from e
        params = inspect.signature(fn).parameters
        kwargs = {k: v for k, v in (("num_classes", spec.num_classes), ("in_chans", in_chans)) if k in params}
        return fn(**kwargs)
    raise StageError("load", f"{spec.source}: no PyTorch module for this source")


def reinit_zeroed(model) -> list[str]:
    """Re-initialise layers whose weights are all zero (timm zero-inits the last norm of residual blocks).

    Without this, converters fold whole branches away and the benchmark measures a different network.
    Returns the names of the layers changed.
    """
    import torch
    changed = []
    with torch.no_grad():
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.nn.Parameter) or w.numel() == 0 or torch.count_nonzero(w) > 0:
                continue
            if w.dim() == 1:       # a norm layer's scale
                w.fill_(1.0)
            else:                  # a conv or linear weight
                torch.nn.init.kaiming_normal_(w, nonlinearity="relu")
            changed.append(name)
    return changed


def load_model(spec: ModelSpec, checkpoint: Optional[Path] = None) -> tuple[Any, list[str]]:
    """The fp32 eval-mode network with its weights, and notes for the result row."""
    path = checkpoint or (Path(spec.checkpoint) if spec.checkpoint else None)
    if path is None and not spec.pretrained:
        import torch
        torch.manual_seed(0)   # no weights: the same random network in every job, so rows compare
    model = build_module(spec)
    notes: list[str] = []
    if path is not None:
        state = read_state_dict(path)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches raise even when not strict
            detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise StageError("load", f"{path}: checkpoint does not fit {spec.source} ({detail})") from e
        if missing or unexpected:
            raise StageError("load", f"{path}: checkpoint does not fit {spec.source} "
                                     f"(missing {len(missing)}, unexpected {len(unexpected)} keys, "
                                     f"e.g. {(list(missing) + list(unexpected))[0]})")
    elif not spec.pretrained:
        changed = reinit_zeroed(model)
        if changed:
            msg = f"no weights given: re-initialised {len(changed)} zero-initialised layers"
            log.warning("%s: %s (%s...)", spec.name, msg, ", ".join(changed[:3]))
            notes.append(msg)
    return model.float().eval(), notes
