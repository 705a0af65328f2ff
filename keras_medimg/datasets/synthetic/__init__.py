"""Demo-data generators: small, deterministic datasets in each study's real on-disk format.

`medimg <app> train` without `--data` trains on one of these, read by the same readers as the real data. Each
generator writes into a folder it is given; `ensure_demo_data` caches its output under
`medimg_home()/demo/<name>-<hash of the parameters>` ($MEDIMG_HOME, else ~/.cache/keras-medimg).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keras_medimg.backend import medimg_home

log = logging.getLogger(__name__)


def ensure_demo_data(name: str, generate: Callable[..., Any], **params: Any) -> Path:
    """Return the folder of a demo dataset, generating it the first time.

    The dataset is generated into a temporary folder beside its final place and renamed into place in one
    step, so an interrupted generation leaves nothing half-written, and two processes generating at once both
    end up with one complete copy (the loser's is removed).

    Args:
        name: the dataset's name (`brain`, `concepts`, ...), the first part of the folder name.
        generate: `generate(out_dir, **params)` writes the dataset into `out_dir`. Its `version` attribute, if
            any, is part of the cache key, so a changed generator does not reuse old files.
        params: the generator's keyword arguments; every distinct set gets its own folder.

    Returns:
        The dataset folder.
    """
    key = json.dumps(
        {"params": params, "generator": f"{generate.__module__}.{generate.__qualname__}", "version": getattr(generate, "version", 1)},
        sort_keys=True,
        default=str,
    )
    target = medimg_home() / "demo" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if target.is_dir():
        return target
    from keras_medimg.runs import staged_folder

    with staged_folder(target) as staging:
        generate(staging, **params)
    return target


def demo_data(name: str, generate: Callable[..., Any], out_dir: str | Path | None = None, **params: Any) -> Path:
    """Write a demo set into `out_dir`, or (None) return the cached copy made by `ensure_demo_data`.

    Args:
        name: the dataset's name (`brain`, `concepts`, ...).
        generate: `generate(out_dir, **params)` writes the dataset.
        out_dir: the folder to write to; None uses the shared demo-data cache.
        params: the generator's keyword arguments.

    Returns:
        The dataset folder.
    """
    if out_dir is None:
        return ensure_demo_data(name, generate, **params)
    generate(Path(out_dir), **params)
    return Path(out_dir)


def dataset_root(root: str | Path | None, make_demo: Callable[[], Path], *, holds: str, what: str) -> Path:
    """The dataset folder the user gave, or (none given) the demo set, made on first use.

    Args:
        root: the `data.root` setting (None or empty: the demo data).
        make_demo: called without arguments to make (or find) the demo set.
        holds: what the folder must hold, for the error message (e.g. "Training/ and Testing/").
        what: the demo set's description for the log line (e.g. "synthetic brain-MRI").

    Raises:
        InvalidInputError: `root` is given but is not a folder.
    """
    from keras_medimg.errors import InvalidInputError

    if root:
        folder = Path(root)
        if not folder.is_dir():
            raise InvalidInputError(folder, f"the dataset folder does not exist; pass the folder that holds {holds} "
                                    "with --data, or leave --data out to use the demo data.")
        return folder
    log.info(f"No --data given: using the built-in {what} demo set.")
    return Path(make_demo())
