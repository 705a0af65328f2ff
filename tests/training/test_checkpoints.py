"""training.checkpoints.epoch_checkpoint: last every epoch, best on a lower val_loss, resumable state."""

import json

import keras
import numpy as np

from keras_medimg.training.checkpoints import epoch_checkpoint


class _Run:
    def __init__(self, root):
        self.dir = root

    def path(self, *parts):
        out = self.dir.joinpath(*parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        return out


def test_saves_last_and_best_and_the_resume_state(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    run = _Run(tmp_path)
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[epoch_checkpoint(run, best=None)])
    state = json.loads((tmp_path / "state.json").read_text())
    best = json.loads((tmp_path / "weights" / "best.json").read_text())
    assert state["next_epoch"] == 3 and best["epoch"] == 3  # the loss falls every epoch here
    assert np.isclose(state["best_val_loss"], best["val_loss"])
    assert (tmp_path / "weights" / "last.keras").is_file()
    # Resumed with a best no epoch can reach: no new best.keras written.
    (tmp_path / "weights" / "best.json").unlink()
    model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0, callbacks=[epoch_checkpoint(run, best=-1.0)])
    assert not (tmp_path / "weights" / "best.json").exists()
    assert json.loads((tmp_path / "state.json").read_text())["best_val_loss"] == -1.0


def test_resume_state_drops_the_rows_of_an_epoch_whose_checkpoint_was_not_finished(tmp_path):
    from keras_medimg.training.checkpoints import resume_state

    run = _Run(tmp_path)
    assert resume_state(run) is None  # a run killed before its first checkpoint starts afresh
    # CSVLogger wrote epoch 2's row, then the process died inside epoch 2's checkpoint: state.json still says 2.
    (tmp_path / "results.csv").write_text("epoch,loss\n0,1.0\n1,0.8\n2,0.7\n")
    (tmp_path / "state.json").write_text(json.dumps({"next_epoch": 2, "best_val_loss": 0.8}))
    state = resume_state(run)
    assert state == {"next_epoch": 2, "best_val_loss": 0.8}
    assert (tmp_path / "results.csv").read_text().splitlines() == ["epoch,loss", "0,1.0", "1,0.8"]
    (tmp_path / "state.json").write_text(json.dumps({"next_epoch": 0, "best_val_loss": None}))
    resume_state(run)
    assert not (tmp_path / "results.csv").exists()  # no finished epoch: no rows, no header-only file


def test_plain_fit_loops_on_datasets_of_unknown_length_run_without_the_ran_out_of_data_warning():
    import contextlib
    import warnings

    import tensorflow as tf

    from keras_medimg.training.trainer import epochs_end_with_the_data

    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    # As our datasets: files that fail to decode are dropped, so tf.data cannot know the length before a pass.
    data = tf.data.Dataset.from_tensor_slices((x, x.sum(axis=1))).filter(lambda a, b: True).batch(4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")

    def warned(around) -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with around():
                model.fit(data, epochs=2, verbose=0)
        return any("ran out of data" in str(w.message) for w in caught)

    assert warned(contextlib.nullcontext)  # what every mamclip pretrain epoch and label-count fold printed
    assert not warned(epochs_end_with_the_data)
