"""The `medimg roi` app."""
