"""The `medimg concepts` app."""
