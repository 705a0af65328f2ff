"""The `medimg xray` app."""
