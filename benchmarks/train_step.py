"""Images/s of one DenseNet-121 training step (224x224, batch 8) per Keras backend, jit on and off, vs plain PyTorch.

Each measurement runs in its own child process (a backend is fixed when Keras is imported): build the model
(random weights), run `--warmup` steps, then time `--steps` steps one by one; the table shows the median step.
Prints a table and writes JSON.

    python benchmarks/train_step.py                       # all backends, jit off and on, plain PyTorch
    python benchmarks/train_step.py --backends torch --jit off --steps 5 --out runs/bench/train_step.json

Plain PyTorch is measured in NCHW (its default) and channels_last memory format. On the torch backend two Keras
variants run: "stock" is keras.applications' DenseNet-121 as Keras ships it, where every convolution copies its
input NHWC -> NCHW -> channels_last and BatchNormalization is a dozen unfused element-wise ops; "medimg" is the
model `build_classifier("densenet121", ...)` gives, with `keras_medimg.models.torch_kernels` installed (one fused
batch norm, no copies around convolutions). jit "on" is XLA on TensorFlow/JAX and torch.compile on torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BATCH = 8
SIZE = 224
CLASSES = 4


def _keras_step(jit: bool, warmup: int, steps: int, variant: str) -> dict:
    import keras
    import numpy as np

    shape = (SIZE, SIZE, 3)
    if variant == "medimg":
        from keras_medimg.models.classifier import build_classifier

        model = build_classifier("densenet121", CLASSES, input_shape=shape, dropout=0.0)
    else:
        model = keras.applications.DenseNet121(weights=None, input_shape=shape, classes=CLASSES)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(BATCH, *shape)).astype("float32")
    labels = rng.integers(0, CLASSES, BATCH)
    return _time_steps(lambda: model.train_on_batch(images, labels), warmup, steps)


def _time_steps(step, warmup: int, steps: int) -> dict:
    """Median seconds per step (robust to another program briefly sharing the 2 cores), and the mean."""
    import statistics

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": statistics.median(times), "mean_seconds_per_step": statistics.fmean(times)}


def _torch_step(warmup: int, steps: int, variant: str) -> dict:
    import torch
    import torchvision

    model = torchvision.models.densenet121(weights=None, num_classes=CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    labels = torch.randint(0, CLASSES, (BATCH,))
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return _time_steps(step, warmup, steps)


def _child(args: argparse.Namespace) -> None:
    if args.child == "pytorch":
        result = _torch_step(args.warmup, args.steps, args.variant)
    else:
        result = _keras_step(args.jit == "on", args.warmup, args.steps, args.variant)
    import torch

    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result))


def _measure(kind: str, jit: str, variant: str, args: argparse.Namespace) -> dict:
    # OMP_WAIT_POLICY=PASSIVE is what `medimg` runs with (torch threads must not spin against tf.data)
    env = {**os.environ, "KERAS_BACKEND": kind if kind != "pytorch" else "torch", "TF_CPP_MIN_LOG_LEVEL": "2",
           "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, __file__, "--child", kind, "--jit", jit, "--variant", variant,
               "--warmup", str(args.warmup), "--steps", str(args.steps)]
    started = time.perf_counter()
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=args.timeout)
    row = {"runner": "plain PyTorch" if kind == "pytorch" else f"Keras {kind}", "jit": jit, "variant": variant,
           "wall_seconds": round(time.perf_counter() - started, 1)}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        row["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return row
    row.update(json.loads(lines[-1][len("RESULT "):]))
    row["images_per_second"] = BATCH / row["seconds_per_step"]
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,torch,jax")
    parser.add_argument("--jit", default="off,on", help="off, on or off,on")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--out", default="runs/benchmarks/train_step.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return

    plan = [("pytorch", "off", "default"), ("pytorch", "off", "channels_last")]
    for backend in args.backends.split(","):
        for variant in ("stock", "medimg") if backend == "torch" else ("stock",):
            plan += [(backend, jit, variant) for jit in args.jit.split(",")]
    rows = []
    for kind, jit, variant in plan:
        rows.append(_measure(kind, jit, variant, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    reference = next((r["seconds_per_step"] for r in rows if r["runner"] == "plain PyTorch" and "error" not in r), None)
    print(f"DenseNet-121 training step, {SIZE}x{SIZE}, batch {BATCH}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'runner':<18} {'jit':<4} {'variant':<15} {'s/step':>8} {'images/s':>9} {'vs PyTorch':>11}")
    for row in rows:
        if "error" in row:
            print(f"{row['runner']:<18} {row['jit']:<4} {row['variant']:<15} failed: {row['error']}")
            continue
        ratio = f"{row['seconds_per_step'] / reference:.2f}x" if reference else "-"
        print(f"{row['runner']:<18} {row['jit']:<4} {row['variant']:<15} {row['seconds_per_step']:>8.3f} "
              f"{row['images_per_second']:>9.2f} {ratio:>11}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": BATCH, "size": SIZE, "steps": args.steps, "warmup": args.warmup,
                               "cpu_count": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
