"""Coverage-guided fuzzing (atheris / libFuzzer) of the DICOM and image readers.

`python fuzz_readers.py SECONDS REPORT.json [CORPUS_DIR]`: mutates the seed files (pydicom's test files plus
small PNG, JPEG and TIFF files made here) for SECONDS and feeds each input to `read_dicom` and `read_image`.
Only `InvalidInputError` may come out; anything else is counted as an escape (the first 50 kept with their whole
input, zlib-compressed and base64-encoded, and the traceback) and the run goes on, so the report says how many distinct escapes a run found. A slow input (> 5 s) is an escape
too; one still running after HANG_SECONDS stops the run (libFuzzer's timeout), its input left in REPORT.current. Memory: the readers refuse headers claiming more than `MAX_PIXELS` before decoding, so libFuzzer's
`-rss_limit_mb` (12 GiB: one CI run grew to 7.2 GB over 20 s, though its last input alone peaks at 85 MB; the growth is not yet explained) guards the rest.
The report records libFuzzer's seed; `MEDIMG_FUZZ_SEED=N` replays a run's mutations (the same inputs, as far as
the time allows).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import traceback
import zlib
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from keras_medimg.errors import InvalidInputError
    from keras_medimg.io import dicom, images

SLOW_SECONDS = 5.0
HANG_SECONDS = 30  # an input still running after this is a hang: libFuzzer stops the run with "timeout"
_state = {"executions": 0, "escapes": {}, "slow": 0, "report": None, "started": time.monotonic()}
# The files each input is written to, beside the report: libFuzzer leaves through C's exit(), so a temporary
# folder of its own would outlive every run (one was left in /tmp per CI run).
_scratch = Path(".")


def _seeds(corpus: Path) -> None:
    import cv2
    import numpy as np

    corpus.mkdir(parents=True, exist_ok=True)
    try:
        from pydicom.data import get_testdata_files

        for i, path in enumerate(sorted(get_testdata_files("*.dcm"))):
            if os.path.getsize(path) < 200_000:
                (corpus / f"pydicom{i}.dcm").write_bytes(Path(path).read_bytes())
    except Exception:  # noqa: BLE001 - pydicom's test files are optional seeds
        pass
    pixels = (np.arange(32 * 24) % 251).reshape(32, 24).astype(np.uint8)
    for suffix in (".png", ".jpg", ".tif", ".bmp"):
        cv2.imwrite(str(corpus / f"seed{suffix}"), pixels)
    cv2.imwrite(str(corpus / "seed16.png"), pixels.astype(np.uint16) * 257)


def _write_report() -> None:
    # libFuzzer leaves through C's exit(), past Python's atexit: the report is rewritten as the run goes.
    if _state["report"] is not None:
        _state["report"].write_text(json.dumps({
            "seed": _state.get("seed"), "executions": _state["executions"],
            "seconds": round(time.monotonic() - _state["started"], 1),
            "escapes": _state["escapes"], "slow_inputs": _state["slow"]}, indent=2))


def test_one_input(data: bytes) -> None:
    _state["executions"] += 1
    if _state["report"] is not None:  # what a hang (libFuzzer -timeout) was reading when it was stopped
        _state["report"].with_suffix(".current").write_bytes(data)
    escapes = len(_state["escapes"])
    for reader, name in ((dicom.read_dicom, "x.dcm"), (images.read_image, "x.png"), (images.read_image, "x.tif")):
        path = _scratch / name
        path.write_bytes(data)
        started = time.monotonic()
        try:
            reader(path)
        except InvalidInputError:
            pass
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - an escape is what we count (Rust panics are BaseExceptions)
            key = f"{reader.__module__}.{reader.__name__}: {type(exc).__name__}: {str(exc)[:120]}"
            if key not in _state["escapes"] and len(_state["escapes"]) < 50:
                # The whole input, compressed (fuzzed DICOMs are mostly their seed), so a CI log can reproduce it.
                _state["escapes"][key] = {"input_zlib_b64": base64.b64encode(zlib.compress(data, 9)).decode(),
                                          "traceback": traceback.format_exc()[-1500:]}
        if time.monotonic() - started > SLOW_SECONDS:
            _state["slow"] += 1
    if _state["executions"] % 100 == 0 or len(_state["escapes"]) != escapes:
        _write_report()


def main() -> None:
    global _scratch
    seconds, report = int(sys.argv[1]), Path(sys.argv[2])
    _scratch = report.parent / f"{report.stem}_scratch"
    _scratch.mkdir(parents=True, exist_ok=True)
    corpus = Path(sys.argv[3]) if len(sys.argv) > 3 else _scratch / "corpus"
    _seeds(corpus)
    _state["report"], _state["started"] = report, time.monotonic()
    # libFuzzer's mutation seed, recorded so that a run can be replayed: MEDIMG_FUZZ_SEED=N python fuzz_readers.py ...
    _state["seed"] = int(os.environ.get("MEDIMG_FUZZ_SEED") or int.from_bytes(os.urandom(4), "little") % 2**31 or 1)
    _write_report()
    atheris.Setup([sys.argv[0], f"-seed={_state['seed']}", f"-max_total_time={seconds}", "-rss_limit_mb=12288", "-max_len=65536", f"-timeout={HANG_SECONDS}",
                   "-print_final_stats=0", str(corpus)], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
