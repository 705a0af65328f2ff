"""The `medimg mamclip` app."""
