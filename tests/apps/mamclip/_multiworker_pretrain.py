"""Child-process body of test_multiworker's mamclip test: one worker (or the lone process) of a tiny
`mamclip pretrain`, started as `medimg mamclip pretrain` starts (the pipeline joins the cluster itself).

Run as `python _multiworker_pretrain.py <distribution> <pairs file> <project> <epochs> <resume 0|1>` with KERAS_BACKEND
and the cluster's environment (KERAS_DISTRIBUTION_*) set; prints one JSON line.

The batch is every training pair, no word is masked, and nothing random is applied: a step's loss then does not
depend on the order of the pairs, which tf.data's parallel decoding may change between processes, so the
workers' run and one process's run must give the same losses.
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

PAIRS, BATCH = 32, 16  # write_pairs(n=PAIRS) split in half: one global batch to train, one to validate


def order_free(cfg, distribution: str):
    """`cfg` (a `tiny_config` on `write_pairs(n=PAIRS)`) with losses that do not depend on the pairs' order, under
    `distribution`. XLA-compiled on JAX: Keras' JAX trainer runs MamClip only compiled (eagerly, MamClip.call
    mixes the fusion's traced inputs with the NumPy padding mask and Keras refuses that)."""
    import keras

    return replace(cfg, data=replace(cfg.data, val_fraction=0.5), model=replace(cfg.model, text_dropout=0.0),
                   pretrain=replace(cfg.pretrain, batch_size=BATCH, mask_rate=0.0, distribution=distribution,
                                    jit_compile=keras.backend.backend() == "jax",
                                    augment=replace(cfg.pretrain.augment, probability=0.0)))


def pretrain(distribution: str, pairs: str, project: str, epochs: str, resume: str) -> dict:
    from _mamclip_data import tiny_config

    from keras_medimg.apps.mamclip import pipeline
    from keras_medimg.apps.mamclip.config import MamclipConfig
    from keras_medimg.runs import RunPlace, open_run
    from keras_medimg.training.distribute import worker

    cfg = order_free(tiny_config(MamclipConfig(), pairs, epochs=int(epochs)), distribution)
    run = open_run(Path(project) / "mamclip" / "pretrain", "mamclip", "pretrain") if resume == "1" else \
        RunPlace(project=project)
    result = pipeline.pretrain(cfg, run=run, resume=resume == "1")
    history = [row.split(",") for row in (result.run.dir / "results.csv").read_text().splitlines()]
    columns = history[0]
    return {"worker": worker().index, "run_dir": str(result.run.dir), **result.metrics["distribution"],
            "loss": [float(row[columns.index("loss")]) for row in history[1:]],
            "val_loss": [float(row[columns.index("val_loss")]) for row in history[1:]],
            "recall": result.metrics["retrieval_val"]}


if __name__ == "__main__":
    print(json.dumps(pretrain(*sys.argv[1:])))
