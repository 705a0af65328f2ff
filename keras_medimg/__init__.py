"""keras-medimg: five published medical-imaging studies as Keras 3 pipelines.

Importing this package is cheap: Keras, TensorFlow and torch are imported lazily by the modules that need
them, so the backend can still be chosen after `import keras_medimg`.
"""

__version__ = "0.1.0"
