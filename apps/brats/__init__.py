"""The `medimg brats` app."""
