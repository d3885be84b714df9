"""Train the demo model: a small timm CNN on scikit-learn's bundled digits, 32x32 RGB.

    python examples/digits/train.py [--arch ARCH] [--epochs N] [--out DIR]

Trains on the train split of `agent.data.digits_split` (the same split evaluation uses), reports
accuracy on the held-out split once at the end (never used for model selection), and writes
`model.safetensors` (the state dict) and `model.json` (arch, accuracy, timing, versions) to DIR.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fleetbench.agent.data import digits_split, preprocess_digits  # noqa: E402

log = logging.getLogger("train_digits")

INPUT_SIZE = (3, 32, 32)
NUM_CLASSES = 10


def seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(x, generator, max_shift: int = 2):
    """Random translation by up to `max_shift` pixels (pad with the background value, crop back)."""
    import torch
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, value=-1.0)   # -1 = background after normalising
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(arch: str, epochs: int, batch_size: int, lr: float, seed: int):
    """Train `arch`; returns (model, held-out accuracy, training seconds, parameter count)."""
    import timm
    import torch
    from sklearn.datasets import load_digits

    seed_everything(seed)
    digits = load_digits()
    train_idx, test_idx = digits_split()
    x_train = torch.from_numpy(preprocess_digits(digits.images[train_idx], INPUT_SIZE))
    y_train = torch.from_numpy(digits.target[train_idx].astype(np.int64))
    x_test = torch.from_numpy(preprocess_digits(digits.images[test_idx], INPUT_SIZE))
    y_test = digits.target[test_idx].astype(np.int64)

    model = timm.create_model(arch, num_classes=NUM_CLASSES, in_chans=INPUT_SIZE[0])
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)

    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:            # BatchNorm needs more than one sample
                continue
            xb, yb = augment(x_train[idx], gen), y_train[idx]
            logits = model(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            total += len(idx)
        log.info("epoch %d/%d  loss %.4f  train acc %.4f", epoch + 1, epochs, loss_sum / total, correct / total)
    train_seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_test[i:i + 256]).argmax(1) for i in range(0, len(x_test), 256)]).numpy()
    accuracy = float((pred == y_test).mean())
    return model, accuracy, train_seconds, n_params


def save(model, out: Path, meta: dict) -> Path:
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = out / "model.safetensors"
    save_file(state, str(path))
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="test_resnet", help="timm architecture name (default: test_resnet)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import timm
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    model, accuracy, seconds, n_params = train(args.arch, args.epochs, args.batch_size, args.lr, args.seed)
    meta = {
        "arch": args.arch, "num_classes": NUM_CLASSES, "input_size": list(INPUT_SIZE),
        "heldout_accuracy": round(accuracy, 6), "train_seconds": round(seconds, 2),
        "params": n_params, "epochs": args.epochs, "seed": args.seed,
        "split": "fleetbench.agent.data.digits_split(): sklearn load_digits, stratified 70/30, random_state=0",
        "torch": torch.__version__, "timm": timm.__version__,
    }
    path = save(model, args.out, meta)
    print(f"{args.arch}: {n_params} params, held-out accuracy {accuracy:.4f} "
          f"({len(digits_split()[1])} images), trained in {seconds:.1f} s -> {path} "
          f"({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
