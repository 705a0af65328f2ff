"""Load Triton before TensorFlow, so both frameworks can live in one process.

The CUDA build of torch ships Triton, and torch imports it lazily (Keras' torch backend does so through
torch._dynamo; so may Ultralytics). If TensorFlow's shared libraries are loaded first, loading Triton's afterwards
crashes the process with a segmentation fault (measured here: `import tensorflow; import torch._dynamo` dies,
the reverse order works). keras-medimg uses tf.data under every Keras backend, so the order has to be right
everywhere: this finder waits for the first `import tensorflow` and loads Triton just before it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


class _TritonBeforeTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one shot: the rest of TensorFlow's imports go straight through
        if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
            import triton  # noqa: F401
        return None  # let the normal finders import TensorFlow


def install() -> None:
    """Install the finder once, unless TensorFlow is already loaded (then it is too late to help)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _TritonBeforeTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _TritonBeforeTensorFlow())
