"""Speed of `medimg concepts predict`: end to end (read, preprocess, infer, write) against the model alone.

Usage:
    python benchmarks/concepts_predict.py [--weights RUN_OR_KERAS] [--images N] [--repeat 3] [--out FILE.json]

End to end is what `predict` does after loading the model: decode the JPEG files and resize them (tf.data),
normalise, run the model in batches, threshold, and write submission.csv, predictions.csv and skipped.csv. The
model alone runs `model.predict` on the same images already decoded into one array. Both are warmed up first
(tracing is not counted) and the best of `--repeat` runs is kept. Target: end to end >= 0.8x the model alone.

Without --weights a randomly initialised detector is built with the demo defaults (DenseNet-121, 64x64, the
demo concept list): speed does not depend on the weights. The images are the demo set's test split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _random_detector(scratch: Path, backbone: str, image_size: int):
    from keras_medimg.apps.concepts.detector import CONCEPTS_FILE, ConceptModel, normalization, save_concepts
    from keras_medimg.datasets.synthetic.concepts import CUI_NAMES
    from keras_medimg.models.classifier import build_classifier

    concepts = sorted(CUI_NAMES)
    model = build_classifier(backbone, len(concepts), input_shape=(image_size, image_size, 3), multilabel=True, hidden_units=512)
    import numpy as np

    folder = scratch / "weights"
    folder.mkdir()
    model.save(folder / "best.keras")
    detector = ConceptModel(model, concepts, np.full(len(concepts), 0.5), dict(CUI_NAMES), image_size,
                            normalization(backbone).to_dict(), backbone=backbone)  # fmt: skip
    save_concepts(folder / CONCEPTS_FILE, detector)
    return folder / "best.keras"


def _best(seconds: list[float]) -> float:
    return min(seconds)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="a `concepts train` run folder or .keras file (default: random DenseNet-121)")
    parser.add_argument("--backbone", default="densenet121", help="backbone of the random detector")
    parser.add_argument("--image-size", type=int, default=64, help="input side of the random detector")
    parser.add_argument("--images", type=int, default=256, help="number of demo test images to predict")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best is kept")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import keras
    import numpy as np

    from keras_medimg.apps.concepts.detector import load_detector
    from keras_medimg.datasets.pipeline import load_images_numpy
    from keras_medimg.datasets.records import Skipped
    from keras_medimg.datasets.sources import list_images
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        weights = args.weights or _random_detector(scratch, args.backbone, args.image_size)
        detector = load_detector(weights)
        data = generate_concepts(scratch / "data", n_train=0, n_valid=0, n_test=args.images, seed=0)
        samples = list_images(data / "test")

        def end_to_end() -> float:
            started = time.perf_counter()
            detector.probabilities(samples, batch_size=args.batch_size, skipped=Skipped(), strict=False)
            return time.perf_counter() - started

        images, _ = load_images_numpy(samples, image_size=detector.image_size, channels=3,
                                      normalization=detector.normalization_object(), batch_size=args.batch_size)  # fmt: skip

        def model_alone() -> float:
            started = time.perf_counter()
            np.asarray(detector.model.predict(images, batch_size=args.batch_size, verbose=0))
            return time.perf_counter() - started

        end_to_end(), model_alone()  # warm-up: tracing, thread pools, file cache
        # Interleaved, so a change in the load of a shared machine hits both the same way.
        timings = [(end_to_end(), model_alone()) for _ in range(args.repeat)]
        e2e = _best([t[0] for t in timings])
        alone = _best([t[1] for t in timings])

    n = len(samples)
    result = {
        "backend": keras.backend.backend(),
        "backbone": detector.backbone,
        "image_size": detector.image_size,
        "images": n,
        "batch_size": args.batch_size,
        "end_to_end_images_per_second": n / e2e,
        "model_alone_images_per_second": n / alone,
        "ratio": alone / e2e,
        "target_ratio": 0.8,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    print(f"{'backend':<11}{'model':<18}{'images':>7}{'end to end img/s':>18}{'model alone img/s':>19}{'ratio':>7}")
    print(f"{result['backend']:<11}{detector.backbone + '@' + str(detector.image_size):<18}{n:>7}"
          f"{result['end_to_end_images_per_second']:>18.1f}{result['model_alone_images_per_second']:>19.1f}{result['ratio']:>7.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
