"""Shared test settings: every test runs on the backend named by KERAS_BACKEND (CI runs each one)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("YOLO_OFFLINE", "1")
