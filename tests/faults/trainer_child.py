"""A training process for the fault suite: a tiny classifier fitted into a run folder, two phases.

`python trainer_child.py RUN_DIR [--resume] [--slow-saves SECONDS]`. `--slow-saves` holds every checkpoint
write open for a while (a slow disk), so the parent can kill the process while a checkpoint is being written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_medimg.config import TrainConfig
from keras_medimg.runs import Run
from keras_medimg.training import trainer


def main() -> None:
    run_dir = Path(sys.argv[1])
    resume = "--resume" in sys.argv
    slow = float(sys.argv[sys.argv.index("--slow-saves") + 1]) if "--slow-saves" in sys.argv else 0.0
    if slow:
        save = keras.Model.save

        def slow_save(self, filepath, *args, **kwargs):
            save(self, filepath, *args, **kwargs)
            time.sleep(slow)  # the temporary file exists, the rename has not happened yet

        keras.Model.save = slow_save
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    val = tf.data.Dataset.from_tensor_slices((x[:32], y[:32])).batch(16)

    def build(weights=None):
        inputs = keras.Input((8, 8, 1))
        features = keras.layers.Conv2D(4, 3, name="backbone_conv")(inputs)
        pooled = keras.layers.GlobalAveragePooling2D()(features)
        return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(pooled))

    config = TrainConfig(epochs=8, learning_rate=0.01, verbose=0, early_stopping_patience=0)
    trainer.set_seed(0)
    model = build()
    trainer.fit(model, train, val, config=config, run=Run(dir=run_dir, app="faults", mode="train"), resume=resume)
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main()
