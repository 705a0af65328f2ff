"""Click options that every app shares, and the one way a command turns them into a resolved config."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from keras_medimg.config import load_config

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("keras_medimg.apps.options")


def _set_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        from keras_medimg.backend import set_backend

        set_backend(value)
    return value


backend_option = click.option(
    "--backend",
    type=click.Choice(["tensorflow", "torch", "jax"]),
    default=None,
    expose_value=False,
    is_eager=True,
    callback=_set_backend,
    help="Keras backend for this command (default: $KERAS_BACKEND, else tensorflow).",
)


def config_options(func: F) -> F:
    """--config FILE and repeated --set KEY=VALUE."""
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override one config value, e.g. --set train.epochs=5 (repeatable; value parsed as YAML).",
    )(func)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML config replacing the app's defaults (e.g. a run's saved config.yaml).",
    )(func)


def run_options(func: F) -> F:
    """--project, --name, --exist-ok: where the run folder goes."""
    func = click.option("--exist-ok", is_flag=True, help="Reuse the run folder if it exists instead of numbering a new one.")(func)
    func = click.option("--name", default=None, help="Run folder name (default: the mode, numbered train, train2, ...).")(func)
    return click.option(
        "--project", type=click.Path(file_okay=False), default=None, help="Root of the run folders (default: ./runs)."
    )(func)


def common_options(func: F) -> F:
    """The options of every training-like command: config, run folder, data, seed, strictness, backend."""
    func = backend_option(func)
    func = click.option("--strict", is_flag=True, default=None, help="Stop at the first bad input file instead of skipping it.")(func)
    func = click.option("--seed", type=int, default=None, help="Random seed (splits, augmentation, weights).")(func)
    func = click.option(
        "--data", type=click.Path(file_okay=False), default=None, help="Dataset folder (default: built-in demo data)."
    )(func)
    return config_options(run_options(func))


resume_option = click.option(
    "--resume",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Continue a killed or finished run folder from its last completed epoch, with its saved config.yaml "
    "(--set still overrides, e.g. more epochs).",
)


def resolve_config(
    cls: type[T],
    app: str,
    config_file: str | None,
    overrides: Sequence[str],
    options: Mapping[str, Any] | None = None,
) -> T:
    """Defaults (or --config), then typed options (dotted key -> value; None means not given), then --set."""
    return load_config(cls, app=app, file=config_file, options=options, overrides=overrides)


def print_run_summary(run_dir: Path) -> None:
    """End every command the same way: how many input files were skipped (a warning, so `--quiet` keeps it),
    then where the results are (a message, so `--quiet` drops it)."""
    skipped = run_dir / "skipped.csv"
    count = max(0, len(skipped.read_text(encoding="utf-8").splitlines()) - 1) if skipped.is_file() else 0
    if count:
        log.warning("%d unreadable file(s) were skipped; see %s.", count, skipped)
    log.info("Results saved to %s", run_dir)
