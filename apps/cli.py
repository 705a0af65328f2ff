"""The root `medimg` command: global options, `info`, and one sub-group per app.

Nothing here imports Keras, TensorFlow or torch: `medimg --help` stays instant and `--backend` can still choose.
"""

from __future__ import annotations

import os
import sys

import click

import keras_medimg
from keras_medimg.errors import MedImgError

from keras_medimg.apps.brats.cli import brats
from keras_medimg.apps.concepts.cli import concepts
from keras_medimg.apps.mamclip.cli import mamclip
from keras_medimg.apps.roi.cli import roi
from keras_medimg.apps.xray.cli import xray


class MedImgGroup(click.Group):
    """A group that prints user errors (`MedImgError`) as `error: ...` with exit status 2.

    Any other exception is a bug and keeps its traceback. `--debug` (or MEDIMG_DEBUG=1) shows the traceback of
    user errors too.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MedImgError as exc:
            if os.environ.get("MEDIMG_DEBUG") == "1":
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=MedImgGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(keras_medimg.__version__, prog_name="keras-medimg")
@click.option(
    "--backend",
    type=click.Choice(["tensorflow", "torch", "jax"]),
    default=None,
    help="Keras backend (default: $KERAS_BACKEND, else tensorflow). Set before anything imports Keras.",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
def cli(backend: str | None, debug: bool) -> None:
    """keras-medimg: five published medical-imaging studies as reproducible Keras 3 pipelines.

    Every app follows `medimg APP MODE [OPTIONS]`; run `medimg APP --help` for its modes. Without --data,
    training runs on a small demo dataset in the study's on-disk format.
    """
    if debug:
        os.environ["MEDIMG_DEBUG"] = "1"
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


for group in (brats, concepts, mamclip, roi, xray):
    cli.add_command(group)


def main() -> None:
    """Console entry point of `medimg`."""
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) hides our own output; users can set it back.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Idle OpenMP threads must sleep, not spin: torch's spinning threads starve tf.data's on a small CPU (a torch
    # training step fed by tf.data was measured 20x slower on 2 cores). Read once when torch loads, so set it here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cli(prog_name="medimg")


if __name__ == "__main__":
    sys.exit(main())
