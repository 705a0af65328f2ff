"""Child-process body of test_distribute: two logical devices, a tiny model built and trained by fit_plan under
the strategy that `train.distribution` names.

Run as `python _distributed_fit.py <mode> <run_dir>` with KERAS_BACKEND set; prints one JSON line.
"""

import json
import os
import sys


def main(mode: str, run_dir: str) -> None:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import make_dataset, make_images, tiny_classifier

    from keras_medimg.config import TrainConfig
    from keras_medimg.runs import create_run
    from keras_medimg.training.trainer import fit_plan, set_seed

    set_seed(0)
    run = create_run("t", "train", project=run_dir)
    config = TrainConfig(epochs=2, learning_rate=0.05, verbose=0, early_stopping_patience=0, distribution=mode)
    train, val = make_dataset(*make_images(64)), make_dataset(*make_images(32, seed=1))
    plan = fit_plan(tiny_classifier, train, val, config=config, run=run, weights=None)
    print(json.dumps({"replicas": plan.replicas, "loss": plan.fits[0].history["loss"]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
