"""Keras callbacks the training tests share."""

from __future__ import annotations

import keras


class Kill(keras.callbacks.Callback):
    """Stands in for a killed process: raises once `epoch` has finished and been saved."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")
