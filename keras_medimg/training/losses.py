"""Cross-entropy on probability heads that keeps its gradient on every backend.

Keras' cross-entropies with `from_logits=False` clip the probabilities to [eps, 1 - eps] before the log. Under
TensorFlow that clip is rarely reached: the loss finds the logits behind a softmax/sigmoid op and uses them.
Under torch and JAX it is taken literally, and the clip passes no gradient: once one large step saturates the head
on a wrong class (its probability below 1e-7), no sample moves the model again and training sits at a constant
loss (seen in mamclip's k-fold fine-tuning under torch: macro F1 0.13 where TensorFlow reached 1.0).

`LogitsOfProbabilities` wraps the same Keras loss built with `from_logits=True` and hands it logits recovered from
the probabilities with `log(p + eps)` (softmax) or `log(p + eps) - log(1 - p + eps)` (sigmoid), whose gradient
never vanishes while the probability is representable. The loss value equals the clipped one to within eps.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="keras_medimg")
class LogitsOfProbabilities(keras.losses.Loss):
    """`inner` (a loss with `from_logits=True`) on logits recovered from a probability head's output.

    Args:
        inner: the Keras loss, built with `from_logits=True` (its label smoothing, focal gamma, sparse labels
            and class weights all apply as usual).
        binary: the probabilities are independent sigmoids (binary / multi-label losses); else a softmax.
    """

    def __init__(self, inner: keras.losses.Loss, *, binary: bool, name: str | None = None, **kwargs: Any):
        super().__init__(name=name or inner.name, reduction=inner.reduction, **kwargs)
        self.inner = inner
        self.binary = binary

    def call(self, y_true, y_pred):
        p = ops.cast(y_pred, "float32")
        if self.binary:
            logits = ops.log(p + EPSILON) - ops.log(1.0 - p + EPSILON)
        else:
            logits = ops.log(p + EPSILON)  # log-softmax of these is log p, renormalised
        return self.inner.call(y_true, logits)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "binary": self.binary, "inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LogitsOfProbabilities:
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner"))
        return cls(inner, **config)


def on_probabilities(make: Any, *, binary: bool, **kwargs: Any) -> keras.losses.Loss:
    """The Keras loss class `make` for a probability head: itself with `from_logits=False` under TensorFlow (which
    finds the logits behind the softmax/sigmoid op), wrapped in `LogitsOfProbabilities` under torch and JAX."""
    if keras.backend.backend() == "tensorflow":
        return make(from_logits=False, **kwargs)
    return LogitsOfProbabilities(make(from_logits=True, **kwargs), binary=binary)
