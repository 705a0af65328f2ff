"""Detection stages: Ultralytics YOLO detectors (`yolo`) and SAM box-prompted segmentation (`sam`)."""
