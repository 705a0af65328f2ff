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
