"""Reading and writing medical images and their annotations (no Keras here)."""
