"""Judging: the numbers the studies report (classification reports, bootstrap intervals, ImageCLEF scores,
detection P/R/F1/mAP), as plain JSON-ready values. Files and plots of those numbers live in `reporting`."""
