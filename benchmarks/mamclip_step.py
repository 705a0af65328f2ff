"""Seconds per MAM-CLIP pretraining step (InfoNCE + 0.5 x MLM, AdamW) per Keras backend vs the same model in PyTorch.

One step = image encoder (ConvNeXt) + the text encoder twice (clean captions for InfoNCE, masked ones for MLM) +
the fusion transformer and vocabulary head + backward + AdamW update. The plain-PyTorch model is the same
architecture written with torchvision's ConvNeXt, `torch.nn.TransformerEncoderLayer` BERT-style layers (post-norm,
GELU, learned positions, as BERT) and a pre-norm fusion layer; sizes, batch and sequence length match.

Each runner lives in its own child process (a Keras backend is fixed at import): build, then `--warmup` steps.
With `--schedule interleaved` (the default) all children stay alive and take their `--steps` timed steps in
rounds, one step each per round, in an order rotated every round; on a machine shared with other work the load
then falls on every runner alike, and `ratio` (the median over rounds of the step time over the best plain
PyTorch variant's in the same round) compares like with like. `--schedule sequential` runs one child after
another (what a machine with little memory or a study-size config on a CPU needs); there each child's median is
taken alone. The table shows the median seconds per step and both ratios. Prints a table and writes JSON.

    python benchmarks/mamclip_step.py                          # tiny config, TF / torch / JAX / plain PyTorch
    python benchmarks/mamclip_step.py --configs tiny,study     # study size too (ConvNeXt-small, BERT-base; GPU)
    python benchmarks/mamclip_step.py --jit both               # XLA on TensorFlow and JAX as well

Keras' torch backend runs eagerly here, as plain PyTorch does (`jit_compile=True` there is torch.compile, which
the plain-PyTorch runner does not use either).

Configs: tiny = ConvNeXt-tiny at 64 px, BERT 2 x 64, text 64, batch 8 (the demo's scale with the study's image
family); study = ConvNeXt-small at the study's 1024 x 768 (height x width), BERT-base
(12 x 768, vocabulary 30522, PubMedBERT's size), text 100, embedding 768, batch 8 (the study's per-step batch);
study-b2 = the study's model at batch 2, the size one CPU process holds in memory:

    python benchmarks/mamclip_step.py --configs study-b2 --backends tensorflow,torch \
        --plain-variants channels_last --warmup 1 --steps 4      # interleaved, 3 runners, ~6 GiB each
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "tiny": {"backbone": "convnext_tiny", "image": (64, 64), "embed": 64, "vocab": 512, "length": 64, "layers": 2,
             "hidden": 64, "heads": 2, "intermediate": 128, "fusion_heads": 8, "batch": 8},
    "study": {"backbone": "convnext_small", "image": (1024, 768), "embed": 768, "vocab": 30522, "length": 100, "layers": 12,
              "hidden": 768, "heads": 12, "intermediate": 3072, "fusion_heads": 8, "batch": 8},
}
# The study's model at a batch a CPU holds: one training step of study at batch 8 needs more than this
# machine's 24 GiB per process; the per-sample work and the kernels are the study's.
CONFIGS["study-b2"] = dict(CONFIGS["study"], batch=2)


def _inputs(c: dict, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    b, n = c["batch"], c["length"]
    token_ids = rng.integers(5, c["vocab"], size=(b, n)).astype("int32")
    token_ids[:, 0], token_ids[:, -1] = 2, 3
    weights = (rng.uniform(size=(b, n)) < 0.15).astype("float32")
    weights[:, 0] = weights[:, -1] = 0
    return {"images": rng.uniform(size=(b, *c["image"], 3)).astype("float32"), "token_ids": token_ids,
            "padding_mask": np.ones((b, n), "int32"), "masked_token_ids": np.where(weights > 0, 4, token_ids).astype("int32"),
            "mlm_labels": token_ids, "mlm_weights": weights}


def _time(step, warmup: int, steps: int) -> dict:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "mean_s": statistics.mean(times), "steps": steps}


def _keras_step(c: dict, jit: bool):
    import keras

    from keras_medimg.models import vlm

    vocabulary = list(vlm.SPECIAL_TOKENS) + [f"w{i}" for i in range(c["vocab"] - len(vlm.SPECIAL_TOKENS))]
    tok = vlm.WordPieceTokenizer(vocabulary, sequence_length=c["length"])
    text = vlm.TextEncoderSpec(num_layers=c["layers"], num_heads=c["heads"], hidden_dim=c["hidden"],
                               intermediate_dim=c["intermediate"], dropout=0.0)
    model = vlm.build_mamclip(tok, image_size=tuple(c["image"]), backbone=c["backbone"], text=text, embed_dim=c["embed"],
                              fusion_heads=c["fusion_heads"])
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-6), jit_compile=jit)
    x = _inputs(c)
    return lambda: model.train_on_batch(x)


def _torch_model(c: dict):
    import torch
    import torchvision
    from torch import nn

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(c["vocab"], c["hidden"])
            self.positions = nn.Embedding(512, c["hidden"])
            self.segments = nn.Embedding(2, c["hidden"])
            self.norm = nn.LayerNorm(c["hidden"], eps=1e-12)
            layer = nn.TransformerEncoderLayer(c["hidden"], c["heads"], c["intermediate"], dropout=0.0,
                                               activation="gelu", batch_first=True, layer_norm_eps=1e-12)
            self.encoder = nn.TransformerEncoder(layer, c["layers"], enable_nested_tensor=False)

        def forward(self, ids, mask):
            positions = torch.arange(ids.shape[1], device=ids.device)
            h = self.norm(self.tokens(ids) + self.positions(positions)[None] + self.segments(torch.zeros_like(ids)))
            return self.encoder(h, src_key_padding_mask=mask == 0)

    class MamClip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision = getattr(torchvision.models, c["backbone"])()
            self.vision.classifier[2] = nn.Linear(self.vision.classifier[2].in_features, c["embed"])
            self.bert = Bert()
            self.text_projection = nn.Linear(c["hidden"], c["embed"], bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.image_to_fusion = nn.Linear(c["embed"], c["hidden"])
            self.image_token = nn.Parameter(torch.zeros(1, 1, c["hidden"]))
            self.fusion = nn.TransformerEncoderLayer(c["hidden"], c["fusion_heads"], 4 * c["hidden"], dropout=0.0,
                                                     activation="gelu", batch_first=True, norm_first=True)
            self.final_norm = nn.LayerNorm(c["hidden"])
            self.head = nn.Linear(c["hidden"], c["vocab"])

        def forward(self, x):
            image = self.vision(x["images"])
            text = self.text_projection(self.bert(x["token_ids"], x["padding_mask"])[:, 0])
            img_n = nn.functional.normalize(image, dim=-1)
            txt_n = nn.functional.normalize(text, dim=-1)
            logits = self.logit_scale.clamp(max=math.log(100)).exp() * img_n @ txt_n.T
            target = torch.arange(len(logits))
            contrastive = (nn.functional.cross_entropy(logits, target)
                           + nn.functional.cross_entropy(logits.T, target)) / 2
            masked = self.bert(x["masked_token_ids"], x["padding_mask"])
            b = masked.shape[0]
            seq = torch.cat([masked, self.image_token.expand(b, -1, -1), self.image_to_fusion(image)[:, None]], 1)
            keep = torch.cat([x["padding_mask"], torch.ones(b, 2, dtype=x["padding_mask"].dtype)], 1)
            fused = self.final_norm(self.fusion(seq, src_key_padding_mask=keep == 0))[:, : masked.shape[1]]
            per_token = nn.functional.cross_entropy(self.head(fused).flatten(0, 1), x["mlm_labels"].flatten().long(),
                                                    reduction="none")
            w = x["mlm_weights"].flatten()
            return contrastive + 0.5 * (per_token * w).sum() / w.sum().clamp(min=1)

    return MamClip()


def _plain_torch_step(c: dict, channels_last: bool):
    import torch

    model = _torch_model(c)
    raw = _inputs(c)
    x = {k: torch.from_numpy(v) for k, v in raw.items()}
    x["images"] = x["images"].permute(0, 3, 1, 2).contiguous()
    x["token_ids"], x["masked_token_ids"] = x["token_ids"].long(), x["masked_token_ids"].long()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x["images"] = x["images"].contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-6)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).backward()
        optimizer.step()

    return step


def _child(args: argparse.Namespace) -> None:
    c = CONFIGS[args.config]
    if args.kind == "torch_plain":
        step = _plain_torch_step(c, channels_last=args.variant == "channels_last")
    else:
        step = _keras_step(c, jit=args.variant == "jit")
    if not args.serve:
        print("RESULT " + json.dumps(_time(step, args.warmup, args.steps)), flush=True)
        return
    for _ in range(args.warmup):
        step()
    print("READY", flush=True)
    for line in sys.stdin:  # one timed step per "STEP" line from the parent
        if line.strip() != "STEP":
            break
        start = time.perf_counter()
        step()
        print(f"TIME {time.perf_counter() - start}", flush=True)


def _command(kind: str, variant: str, config: str, args: argparse.Namespace) -> tuple[list[str], dict]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if kind != "torch_plain":
        env["KERAS_BACKEND"] = kind
    command = [sys.executable, __file__, "--child", "--kind", kind, "--variant", variant, "--config", config,
               "--warmup", str(args.warmup), "--steps", str(args.steps)]
    return command, env


def _run(kind: str, variant: str, config: str, args: argparse.Namespace) -> dict:
    """One runner alone: build, warm up, time its steps."""
    command, env = _command(kind, variant, config, args)
    started = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200],
                "wall_s": round(time.time() - started, 1)}
    return {**json.loads(line[7:]), "wall_s": round(time.time() - started, 1)}


def _run_interleaved(runners: list[tuple[str, str]], config: str, args: argparse.Namespace) -> dict:
    """All runners alive at once, one timed step each per round -> {runner: {"times": [...]} or {"error": ...}}."""
    children, results = {}, {}
    for runner in runners:  # built one after another, so that building does not slow the others' warm-up
        command, env = _command(*runner, config, args)
        started = time.time()
        # stderr to a file: a child's warnings must not fill a pipe nobody reads while it waits for "STEP"
        errors = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(command + ["--serve"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errors, text=True)
        proc.errors_file = errors
        if _read_line(proc, "READY") is None:
            results[runner] = {"error": _last_error(proc), "wall_s": round(time.time() - started, 1)}
        else:
            children[runner] = proc
            results[runner] = {"times": [], "build_s": round(time.time() - started, 1)}
    order = list(children)
    for round_ in range(args.steps):
        for runner in order[round_ % len(order):] + order[: round_ % len(order)] if order else []:
            proc = children[runner]
            if "error" in results[runner]:
                continue
            proc.stdin.write("STEP\n")
            proc.stdin.flush()
            line = _read_line(proc, "TIME ")
            if line is None:
                results[runner] = {"error": _last_error(proc)}
            else:
                results[runner]["times"].append(float(line[5:]))
    for proc in children.values():
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=60)
    for runner, r in results.items():
        if r.get("times"):
            r.update(median_s=statistics.median(r["times"]), mean_s=statistics.mean(r["times"]), steps=len(r["times"]))
    return results


def _read_line(proc: subprocess.Popen, prefix: str) -> str | None:
    """The child's next stdout line starting with `prefix` (None when it exits first)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    return None


def _last_error(proc: subprocess.Popen) -> str:
    """Why a child stopped: killed by a signal (the kernel's out-of-memory killer sends SIGKILL) or its last
    stderr line."""
    died = proc.poll()
    proc.kill()
    proc.wait()
    if died is not None and died < 0:
        return f"killed by signal {-died}" + (" (out of memory?)" if -died == 9 else "")
    proc.errors_file.seek(0)
    return (proc.errors_file.read().strip().splitlines() or ["no output"])[-1][:200]


def _ratios(results: dict) -> None:
    """Add ratio_to_plain_torch (median over the best plain runner's) and, where every runner took the same rounds,
    ratio_per_round (the median over rounds of the step time over that plain runner's in the same round)."""
    plain = [(r["median_s"], runner) for runner, r in results.items() if runner[0] == "torch_plain" and "median_s" in r]
    if not plain:
        return
    anchor_s, anchor = min(plain)
    for r in results.values():
        if "median_s" not in r:
            continue
        r["ratio_to_plain_torch"] = round(r["median_s"] / anchor_s, 2)
        times, anchor_times = r.get("times"), results[anchor].get("times")
        if times and anchor_times and len(times) == len(anchor_times):
            r["ratio_per_round"] = round(statistics.median(t / a for t, a in zip(times, anchor_times)), 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny")
    parser.add_argument("--backends", default="tensorflow,torch,jax")
    parser.add_argument("--jit", default="off",
                        help="off | on | both (XLA on TF/JAX; the Keras torch runner stays eager, as plain PyTorch)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per child (sequential schedule)")
    parser.add_argument("--schedule", choices=["interleaved", "sequential"], default="interleaved",
                        help="interleaved: all runners alive, one step each per round (fair on a shared machine); "
                             "sequential: one runner after another (less memory)")
    parser.add_argument("--plain-variants", default="nchw,channels_last",
                        help="memory layouts of the plain-PyTorch runner (fewer runners: less memory when interleaved)")
    parser.add_argument("--out", default="runs/bench/mamclip_step.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    jits = {"off": ["eager_graph"], "on": ["jit"], "both": ["eager_graph", "jit"]}[args.jit]
    rows = []
    for config in args.configs.split(","):
        plain = [("torch_plain", v) for v in args.plain_variants.split(",")]
        keras_runs = [(b, v) for b in args.backends.split(",") for v in (jits if b != "torch" else ["eager_graph"])]
        if args.schedule == "interleaved":
            results = _run_interleaved(plain + keras_runs, config, args)
        else:
            results = {(k, v): _run(k, v, config, args) for k, v in plain + keras_runs}
        _ratios(results)
        for (kind, variant), r in results.items():
            rows.append({"config": config, "runner": "plain PyTorch" if kind == "torch_plain" else f"Keras {kind}",
                         "variant": variant, "schedule": args.schedule, **r})
    print(f"{'config':6} {'runner':16} {'variant':14} {'median s/step':>13} {'ratio':>6} {'per round':>9}")
    for r in rows:
        median = f"{r['median_s']:.3f}" if "median_s" in r else r.get("error", "")[:40]
        print(f"{r['config']:6} {r['runner']:16} {r['variant']:14} {median:>13} "
              f"{r.get('ratio_to_plain_torch', ''):>6} {r.get('ratio_per_round', ''):>9}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"Written {out}")


if __name__ == "__main__":
    main()
