"""The root `medimg` command: global options and logging, `info`, `prepare`, and one sub-group per app.

Nothing here imports Keras, TensorFlow or torch: `medimg --help` stays instant, `--backend` can still choose,
and the logging set up here (which hides TensorFlow's start-up noise) is in place before TensorFlow loads.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

import keras_medimg
from keras_medimg.errors import ConfigError, MedImgError
from keras_medimg.logs import setup_logging

from keras_medimg.apps.brats.cli import brats
from keras_medimg.apps.concepts.cli import concepts
from keras_medimg.apps.mamclip.cli import mamclip
from keras_medimg.apps.roi.cli import roi
from keras_medimg.apps.xray.cli import xray


# Named, not __name__: run as `python -m keras_medimg.apps.cli` this module is __main__, outside keras_medimg.
log = logging.getLogger("keras_medimg.apps.cli")


class MedImgGroup(click.Group):
    """A group that prints user errors as `error: ...` with exit status 2.

    User errors are `MedImgError`s and `OSError`s (a folder that cannot be created, a full disk, no
    permission: the machine, not the code). Any other exception is a bug and keeps its traceback. `--debug`
    (or MEDIMG_DEBUG=1) shows the traceback of user errors too.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (MedImgError, OSError) as exc:
            if os.environ.get("MEDIMG_DEBUG") == "1":
                raise
            message = _os_error_message(exc) if isinstance(exc, OSError) else str(exc)
            click.echo(f"error: {message}", err=True)
            ctx.exit(2)


def _os_error_message(exc: OSError) -> str:
    """'Not a directory: afile.txt/sub. ...' rather than Python's "[Errno 20] Not a directory: 'afile.txt/sub'"."""
    where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    what = exc.strerror or str(exc)
    return (f"{what}: {where}. " if where else f"{what}. ") + "Check the path and its permissions (--debug shows the traceback)."


@click.group(cls=MedImgGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(keras_medimg.__version__, prog_name="keras-medimg")
@click.option(
    "--backend",
    type=click.Choice(["tensorflow", "torch", "jax"]),
    default=None,
    help="Keras backend (default: $KERAS_BACKEND, else tensorflow). Set before anything imports Keras.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print warnings and errors only (results such as `info` still print).")
@click.option("-v", "--verbose", is_flag=True, help="Print keras-medimg's debug messages too.")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the full traceback of errors, and TensorFlow's start-up messages (oneDNN, CUDA probing), which are "
    "hidden otherwise.",
)
def cli(backend: str | None, quiet: bool, verbose: bool, debug: bool) -> None:
    """keras-medimg: five published medical-imaging studies as reproducible Keras 3 pipelines.

    Every app follows `medimg APP MODE [OPTIONS]`; run `medimg APP --help` for its modes. Without --data,
    training runs on a small demo dataset in the study's on-disk format. `medimg prepare` turns DICOM or
    PNG files into windowed 16-bit PNGs for any app. Messages go to stderr, results to stdout.
    """
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose contradict each other; give one of them.")
    if debug:
        os.environ["MEDIMG_DEBUG"] = "1"
    setup_logging(
        logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO,
        debug=os.environ.get("MEDIMG_DEBUG") == "1",
    )
    if backend is not None:
        from keras_medimg.backend import set_backend

        set_backend(backend)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(as_json: bool) -> None:
    """Print package versions, the Keras backend and the devices each backend sees."""
    from keras_medimg.backend import describe

    report = describe()
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"keras-medimg {report['keras-medimg']}  (Python {report['python']})")
    click.echo(f"Keras backend: {report['backend']}")
    click.echo("Versions:")
    for dist, version in report["versions"].items():
        click.echo(f"  {dist:<17} {version or 'not installed'}")
    click.echo("Devices:")
    for backend, devices in report["devices"].items():
        click.echo(f"  {backend:<17} {', '.join(devices)}")


APP_GROUPS = (brats, concepts, mamclip, roi, xray)


def _parse_window(ctx: click.Context, param: click.Parameter, value: str | None) -> str | int | list | None:
    """auto | minmax | none | N | CENTER,WIDTH[,FUNCTION] -> what `prepare.Settings.window` takes."""
    if value is None:
        return None
    text = value.strip()
    if text.lower() in ("auto", "minmax", "none"):
        return text.lower()
    if text.isdigit():
        return int(text)
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) in (2, 3):
            window: list[float | str] = [float(parts[0]), float(parts[1])]
            if len(parts) == 3:
                window.append(parts[2].upper())
            return window
    except ValueError:
        pass
    raise click.BadParameter(
        f"'{value}' is not a window. Give auto, minmax, none, the index of a window in the file (0, 1, ...), "
        "or CENTER,WIDTH[,FUNCTION] such as 40,400 or 2047,4096,SIGMOID."
    )


def _prepare_defaults(app: str | None, config_file: str | None) -> dict[str, Any]:
    """The `prepare` section of --config FILE, else of the app's packaged config; empty without either."""
    from keras_medimg.config import defaults_path, read_yaml

    if config_file is not None:
        source, data = f"the config file {config_file}", read_yaml(config_file)
    elif app is not None:
        path = defaults_path(app)
        source, data = f"the {app} app's config", read_yaml(path) if path.is_file() else {}
    else:
        return {}
    section = data.get("prepare")
    if not isinstance(section, dict):
        raise ConfigError(
            f"{source[0].upper()}{source[1:]} has no `prepare` section, so it gives medimg prepare no defaults. "
            "Leave out --app/--config and choose the options yourself (see medimg prepare --help)."
        )
    return section


def _default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


@cli.command(context_settings={"max_content_width": 110})
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "-o", "--out", required=True, type=click.Path(file_okay=False),
    help="Output folder: images/*.png, manifest.csv, skipped.csv, prepare.json. It may not overlap an input folder.",
)
@click.option(
    "--app", type=click.Choice([group.name for group in APP_GROUPS]), default=None,
    help="Take the defaults of the options below from that app's `prepare` config section (an error if it has none).",
)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="Take the defaults from the `prepare` section of this YAML file instead (e.g. a run's config.yaml).",
)
@click.option(
    "--window", callback=_parse_window, default=None, metavar="auto|minmax|none|N|C,W[,F]",
    help="DICOM VOI window. auto: the file's first window, else its first VOI LUT, else min-max [default]; "
    "minmax: the image's own range; none: the full stored range; N: the file's N-th window (0-based); "
    "C,W[,F]: center and width in modality units (e.g. HU), function LINEAR (default), LINEAR_EXACT or SIGMOID. "
    "MONOCHROME1 images are inverted so dense tissue is bright. PNG/JPEG/TIFF inputs are only rescaled to [0, 1].",
)
@click.option("--crop/--no-crop", default=None, help="Crop each image to its foreground (Otsu threshold, largest region) [default: no-crop].")
@click.option(
    "--margin", type=click.FloatRange(0, 0.5, max_open=True), default=None,
    help="Crop margin, a fraction of the image height and width [default: 0.02].",
)
@click.option("--clahe/--no-clahe", default=None, help="Contrast-limited adaptive histogram equalisation (luminance of colour images) [default: no-clahe].")
@click.option("--clip-limit", type=click.FloatRange(0, min_open=True), default=None, help="CLAHE clip limit: the most a histogram bin may hold, in multiples of a flat histogram's bin (256 bins at any bit depth) [default: 2.0].")
@click.option(
    "--size", type=click.IntRange(min=0), default=None,
    help="Resize so the longer side has this many pixels, keeping the aspect ratio (after the crop, before CLAHE); "
    "0 keeps the size [default: 0].",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="Worker processes, one core each [default: the cores available, at most 8].",
)
@click.option(
    "--cluster", default=None, metavar="tcp://HOST:PORT|local:N",
    help="Run the per-file work on Dask instead of local processes (pip install 'keras-medimg[cluster]'): the address "
    "of a running `dask scheduler`, whose workers have this keras-medimg version and see SOURCES and --out at the same "
    "paths; or local:N to start N worker processes on this machine. Same outputs and resume as a local run.",
)
@click.option("--strict", is_flag=True, help="Stop at the first unreadable file instead of listing it in skipped.csv.")
def prepare(
    sources: tuple[str, ...],
    out: str,
    app: str | None,
    config_file: str | None,
    window: str | int | list | None,
    crop: bool | None,
    margin: float | None,
    clahe: bool | None,
    clip_limit: float | None,
    size: int | None,
    workers: int | None,
    cluster: str | None,
    strict: bool,
) -> None:
    """Convert DICOM, PNG, JPEG or TIFF files into windowed 16-bit PNGs and a manifest, for any app.

    SOURCES are folders (searched recursively; DICOM files without a suffix are found by their header),
    image files, or CSV manifests with a `path` column (paths relative to the CSV; an `id` column names the
    outputs; other columns, such as labels, are copied into the output manifest).

    Each file is decoded once (DICOM: modality LUT, VOI window, MONOCHROME1 inverted; every frame of a
    multi-frame file becomes its own PNG), optionally cropped to the body, resized and CLAHE-enhanced, and
    written as a 16-bit PNG under OUT/images/. OUT/manifest.csv lists each output with its source, size,
    crop box, scale, modality, view and laterality; no patient-identifying DICOM field is written anywhere.
    Unreadable files are listed in OUT/skipped.csv and the rest carry on.

    Rerunning the same command is resumable: outputs newer than their source and made with the same settings
    are kept, so an interrupted run continues where it stopped. Other settings convert everything again.

    \b
    Examples:
      medimg prepare dicoms/ --out prepared/ --crop --clahe --size 1024
      medimg prepare scans.csv --out prepared/ --window 40,400 --workers 4
      medimg prepare /shared/dicoms --out /shared/prepared --cluster tcp://scheduler:8786
    """
    from keras_medimg.config import from_dict
    from keras_medimg.datasets.prepare import Settings, prepare_images

    given = {"window": window, "crop": crop, "margin": margin, "clahe": clahe, "clip_limit": clip_limit, "size": size}
    values = {**_prepare_defaults(app, config_file), **{k: v for k, v in given.items() if v is not None}}
    if values.get("size") == 0:
        values["size"] = None
    settings = from_dict(Settings, values, prefix="prepare.")
    if cluster is not None and workers is not None:
        raise click.UsageError("--workers counts local processes and --cluster's workers do the work; give one of them.")
    result = prepare_images(
        [Path(s) for s in sources], out, **vars(settings), workers=1 if cluster else workers or _default_workers(),
        cluster=cluster, strict=strict,
    )
    log.info(
        "Prepared %d image(s): %d file(s) converted, %d kept from an earlier run.", len(result.rows), result.converted, result.reused
    )
    if result.skipped:
        log.warning("%d unreadable file(s) were skipped; see %s.", len(result.skipped), result.skipped_csv)
    log.info("Manifest: %s", result.manifest)


for group in APP_GROUPS:
    cli.add_command(group)


def main() -> None:
    """Console entry point of `medimg`."""
    # Idle OpenMP threads must sleep, not spin: torch's spinning threads starve tf.data's on a small CPU (a torch
    # training step fed by tf.data was measured 20x slower on 2 cores). Read once when torch loads, so set it here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cli(prog_name="medimg")


if __name__ == "__main__":
    sys.exit(main())
