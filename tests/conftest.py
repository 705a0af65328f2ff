"""Shared test settings: every test runs on the backend named by KERAS_BACKEND (CI runs each one)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `medimg` sets it: see apps/cli.py

# Importing the package first installs its import-order guard (Triton before TensorFlow), so a test module that
# imports tensorflow at its top cannot crash the torch backend.
import keras_medimg  # noqa: E402,F401
