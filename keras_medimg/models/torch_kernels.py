"""Faster 2-D convolution, batch normalisation and Adam/AdamW updates for Keras' torch backend (same arithmetic).

Keras 3's torch backend keeps tensors channels-last (NHWC) and, for every `Conv2D`, copies the input to a
contiguous NCHW tensor and then copies it again to torch's channels-last memory format before calling
`conv2d`; its `BatchNormalization` is a dozen separate element-wise tensors (mean, square, subtract, rsqrt, ...)
each with its own autograd node. On a CPU DenseNet-121 training step those copies and element-wise kernels cost
more than half the step (see `benchmarks/train_step.py`).

A permuted NHWC tensor *is* an NCHW tensor in torch's channels-last memory format, which oneDNN (CPU) and cuDNN
convolve and normalise natively. So `install()` replaces:

- `keras.src.backend.torch.nn.conv` for 2-D channels-last inputs: permute (a view), `torch.nn.functional.conv2d`
  with TensorFlow's "same" padding, permute back (a view);
- `keras.layers.BatchNormalization.call` for 4-D channels-last inputs in the common configuration (no mask,
  renorm or synchronisation): one fused `torch.native_batch_norm`, and the moving statistics updated from its
  batch mean and (biased) variance exactly as Keras updates them;
- the Adam / AdamW update (`keras.optimizers.Adam` and `AdamW` on torch) for CPU tensors: torch's fused Adam
  kernel, one pass over each variable with its gradient and moments. Keras' own update is ten `torch._foreach_*`
  calls, half of which allocate a new tensor per variable; on a CPU MAM-CLIP step (28 M parameters) those
  temporaries and their page faults made the update cost 4x plain PyTorch's `AdamW` and a third of the step.
  Keras adds epsilon to sqrt(v) before the bias correction and torch after it, so the kernel is given
  epsilon / sqrt(1 - beta_2^t), which is Keras' update exactly (up to float round-off). Weight decay stays
  Keras' own (an in-place multiply before the update, as torch's AdamW does it); AMSGrad, GPU tensors and mixed
  dtypes keep Keras' update.

Everything else (other ranks, channels-first, masks, renorm, ...) goes to the original Keras code, and so does
code that torch.compile traces (`jit_compile=True`): it fuses the element-wise ops itself, and Inductor fails on
these paths with dynamic shapes (measured on DenseNet-121: "cannot determine truth value of Relational"). Outputs,
gradients and moving statistics agree with the originals to float32 round-off (`tests/models/
test_torch_kernels.py`). Models and `.keras` files are untouched: the layers stay stock Keras layers.

`install()` does nothing on the TensorFlow and JAX backends, or when `MEDIMG_TORCH_KERNELS=0`;
`build_backbone` and `load_model` call it, so every model keras-medimg builds or loads gets it. `uninstall()`
restores Keras' own functions.
"""

from __future__ import annotations

import logging
import math
import os

logger = logging.getLogger(__name__)

_ORIGINAL: dict = {}


def enabled() -> bool:
    """True when the fast kernels are (to be) used: torch backend and not switched off by the environment."""
    import keras

    return keras.backend.backend() == "torch" and os.environ.get("MEDIMG_TORCH_KERNELS", "1") != "0"


def installed() -> bool:
    return bool(_ORIGINAL)


def install() -> bool:
    """Route Keras' torch 2-D convolution, batch normalisation and Adam update through the fast paths; returns
    whether they are.

    Idempotent. Where this Keras version does not have the functions being replaced, nothing is changed.
    """
    if installed():
        return True
    if not enabled():
        return False
    import keras

    try:
        from keras.src.backend.torch import nn as torch_nn
    except ImportError:  # pragma: no cover - a Keras layout this module was not written against
        logger.debug("keras.src.backend.torch.nn not found; keeping Keras' own torch kernels")
        return False
    if not callable(getattr(torch_nn, "conv", None)):  # pragma: no cover
        return False
    from keras.src.backend.torch.optimizers import torch_adam

    _ORIGINAL["conv"] = torch_nn.conv
    _ORIGINAL["batch_norm_call"] = keras.layers.BatchNormalization.call
    _ORIGINAL["adam_update"] = torch_adam.Adam._parallel_update_step
    torch_nn.conv = _conv
    keras.layers.BatchNormalization.call = _batch_norm_call
    torch_adam.Adam._parallel_update_step = _adam_update
    return True


def uninstall() -> None:
    """Restore Keras' own functions."""
    if not installed():
        return
    import keras
    from keras.src.backend.torch import nn as torch_nn
    from keras.src.backend.torch.optimizers import torch_adam

    torch_nn.conv = _ORIGINAL.pop("conv")
    keras.layers.BatchNormalization.call = _ORIGINAL.pop("batch_norm_call")
    torch_adam.Adam._parallel_update_step = _ORIGINAL.pop("adam_update")


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis: (before, after), the odd pixel after."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """`keras.ops.conv` on torch for 2-D channels-last inputs without copying the input twice."""
    import keras
    import torch
    import torch.nn.functional as F

    data_format = data_format or keras.config.image_data_format()
    if (
        data_format != "channels_last"
        or getattr(inputs, "ndim", None) != 4
        or padding not in ("same", "valid")
        or torch.compiler.is_compiling()  # torch.compile fuses Keras' own ops itself (and needs them: see above)
    ):
        return _ORIGINAL["conv"](inputs, kernel, strides, padding, data_format, dilation_rate)
    from keras.src.backend.torch.core import convert_to_tensor

    x = convert_to_tensor(inputs).permute(0, 3, 1, 2)  # NCHW view of NHWC memory: torch's channels_last
    weight = convert_to_tensor(kernel).permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    if x.shape[1] % weight.shape[1]:
        raise ValueError(f"Input channels ({x.shape[1]}) must be divisible by kernel input channels ({weight.shape[1]})")
    stride, dilation = _pair(strides), _pair(dilation_rate)
    pad = (0, 0)
    if padding == "same":
        (top, bottom), (left, right) = (
            _same_padding(x.shape[axis + 2], weight.shape[axis + 2], stride[axis], dilation[axis]) for axis in (0, 1)
        )
        if top == bottom and left == right:
            pad = (top, left)
        else:
            x = F.pad(x, (left, right, top, bottom))
    out = F.conv2d(x, weight, stride=stride, padding=pad, dilation=dilation, groups=x.shape[1] // weight.shape[1])
    if not out.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out.permute(0, 2, 3, 1)


def _batch_norm_call(self, inputs, training=None, mask=None):
    """`BatchNormalization.call` as one fused torch kernel for 4-D channels-last inputs."""
    import keras
    import torch

    fast = (
        not torch.compiler.is_compiling()
        and mask is None
        and getattr(inputs, "ndim", None) == 4
        and list(self._reduction_axes) == [0, 1, 2]
        and not self.renorm
        and not self.synchronized
        and isinstance(inputs, torch.Tensor)
        and inputs.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and self.moving_mean.dtype == "float32"
    )
    if not fast:
        return _ORIGINAL["batch_norm_call"](self, inputs, training=training, mask=mask)
    # BN is prone to overflow in float16/bfloat16, so Keras normalises in float32; so do we.
    x = inputs.float().permute(0, 3, 1, 2)
    gamma = self.gamma.value.float() if self.scale else None
    beta = self.beta.value.float() if self.center else None
    if training and self.trainable:
        out, mean, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, self.epsilon)
        with torch.no_grad():
            variance = invstd.pow(-2) - self.epsilon  # the biased batch variance, as Keras' moments give
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean.value * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance.value * momentum + variance * (1.0 - momentum))
    else:
        out = torch.nn.functional.batch_norm(
            x, self.moving_mean.value, self.moving_variance.value, gamma, beta, False, 0.0, self.epsilon
        )
    if not out.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    out = out.permute(0, 2, 3, 1)
    return out if self.compute_dtype == "float32" else keras.ops.cast(out, self.compute_dtype)


def _adam_update(self, grads, variables, learning_rate):
    """Keras' torch `Adam._parallel_update_step` (AdamW inherits it) as torch's fused Adam kernel on CPU tensors."""
    import keras
    import torch

    values = [v.value for v in variables]
    dtype = values[0].dtype if values else None
    fast = (
        values
        and not self.amsgrad
        and all(isinstance(h, (int, float)) for h in (self.beta_1, self.beta_2, self.epsilon))  # not callables
        and not torch.compiler.is_compiling()
        and dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        and all(
            v.device.type == "cpu" and v.dtype == dtype and g is not None and g.dtype == dtype
            and g.layout == torch.strided
            for v, g in zip(values, grads)
        )
    )
    if not fast:
        return _adam_fallback(self, grads, variables, learning_rate)
    index = self._get_variable_index
    momentums = [self._momentums[index(v)].value for v in variables]
    velocities = [self._velocities[index(v)].value for v in variables]
    step = float(keras.ops.convert_to_numpy(self.iterations)) + 1.0  # Keras' local_step: counted after the update
    # Keras: var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps); torch's kernel divides sqrt(v) by
    # sqrt(1 - b2^t) before adding its epsilon, so the same update takes eps / sqrt(1 - b2^t).
    epsilon = self.epsilon / math.sqrt(1.0 - float(self.beta_2) ** step)
    steps = list(torch.full((len(values),), step, dtype=torch.float32).unbind())
    torch._fused_adam_(
        values, [g.contiguous() for g in grads], momentums, velocities, [], steps,
        lr=float(learning_rate), beta1=float(self.beta_1), beta2=float(self.beta_2), weight_decay=0.0, eps=epsilon,
        amsgrad=False, maximize=False,
    )


def _adam_fallback(self, grads, variables, learning_rate):
    """Keras' own update, for the cases the fused kernel does not cover."""
    return _ORIGINAL["adam_update"](self, grads, variables, learning_rate)
