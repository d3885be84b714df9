"""Does the RSS sampler thread (agent.measure.PeakRSS, wakes every 5 ms) move the latency of a
sub-millisecond engine? ONNX Runtime CPU, demo model, batch 1, timed with fleetbench's own loop, rounds
alternating without and with the sampler running, in one process.

    python bench/sampler_effect.py [--rounds 6] [--seconds 2] [--threads 2]

Prints p50 and p99 per round and the median ratio with/without (1.00 = no effect).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort

    from fleetbench.agent import measure
    from fleetbench.agent.data import load_dataset
    from fleetbench.agent.models import load_model
    from fleetbench.agent.onnx_export import export_onnx
    from fleetbench.agent.probe import cpu_info
    from fleetbench.shared.sweep import DatasetSpec, MeasureSpec, ModelSpec

    spec = ModelSpec(name="digits", source="timm:test_resnet", num_classes=10, input_size=(3, 32, 32),
                     checkpoint=str(ROOT / "examples/digits/model.safetensors"))
    model, _ = load_model(spec, None)
    x = np.ascontiguousarray(load_dataset(DatasetSpec(kind="digits", limit=1), (3, 32, 32)).eval_x[:1])
    path = export_onnx(model, x, Path(tempfile.mkdtemp(prefix="sampler-")) / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    loop = MeasureSpec(warmup_iters=200, min_iters=100, min_duration_s=args.seconds, max_duration_s=args.seconds * 2)

    def timed(sampler: bool):
        if sampler:
            with measure.PeakRSS():
                return measure.summarize(measure.time_loop(lambda: sess.run(None, {name: x}), loop))
        return measure.summarize(measure.time_loop(lambda: sess.run(None, {name: x}), loop))

    print(f"CPU: {cpu_info()[0]}; onnxruntime {ort.__version__}, {args.threads} threads, batch 1")
    print(f"{'round':>5} {'sampler':>7} {'p50 ms':>8} {'p99 ms':>8} {'iters':>7}")
    ratios50, ratios99 = [], []
    for r in range(args.rounds):
        pair = {}
        for sampler in ((False, True) if r % 2 == 0 else (True, False)):
            st = timed(sampler)
            pair[sampler] = st
            print(f"{r:5d} {'on' if sampler else 'off':>7} {st.p50_ms:8.4f} {st.p99_ms:8.4f} {st.iterations:7d}", flush=True)
        ratios50.append(pair[True].p50_ms / pair[False].p50_ms)
        ratios99.append(pair[True].p99_ms / pair[False].p99_ms)
    print(f"median ratio on/off: p50 {statistics.median(ratios50):.3f}, p99 {statistics.median(ratios99):.3f} "
          f"(per round p50 {min(ratios50):.3f}..{max(ratios50):.3f}, p99 {min(ratios99):.3f}..{max(ratios99):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
