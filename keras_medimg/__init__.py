"""keras-medimg: five published medical-imaging studies as Keras 3 pipelines.

Importing this package is cheap: Keras, TensorFlow and torch are imported lazily by the modules that need
them, so the backend can still be chosen after `import keras_medimg`.
"""

from pathlib import Path as _Path

from keras_medimg import _import_order

__version__ = "0.1.0"

_import_order.install()

# setup.cfg installs the top-level `apps/` and `configs/` folders as `keras_medimg.apps` and
# `keras_medimg.configs`. When Python imports this package straight from a source checkout (the repo root is
# the working directory, as under `python -m pytest`), that mapping is not in force, so the checkout root is
# added to the package path: `keras_medimg.apps` then resolves to `<checkout>/apps`, exactly as when installed.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "setup.cfg").is_file() and (_checkout / "apps" / "cli.py").is_file():
    __path__.append(str(_checkout))
