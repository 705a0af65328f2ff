"""The five study applications of keras-medimg, installed as `keras_medimg.apps` (one package per app).

Each app has `cli.py` (Click commands only) and `pipeline.py` (the study as plain functions). Apps compose the
library in `keras_medimg`; the library never imports them.
"""
