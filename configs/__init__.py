"""Packaged, commented defaults of every app: `keras_medimg.configs/<app>.yaml`."""
