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


# === Pieces every app's command module composes ===


def import_named(path: str) -> Any:
    """The object named `"package.module:attribute"` (a config class, a writer), imported when first needed, so
    `--help` stays fast."""
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run_place(project: str | None, name: str | None, exist_ok: bool):
    """Where a command's run folder goes (`--project`, `--name`, `--exist-ok`); the pipeline creates it once its
    checks have passed, so a bad input leaves no empty folder."""
    from keras_medimg.runs import RunPlace

    return RunPlace(project, name, exist_ok)


def resolve_train(
    config: str,
    app: str,
    *,
    resume: str | None,
    config_file: str | None,
    overrides: Sequence[str],
    options: Mapping[str, Any],
    project: str | None,
    name: str | None,
    exist_ok: bool,
) -> tuple[Any, Any]:
    """The config and run folder of a `train` command: a new place, or (`--resume FOLDER`) that run with its saved
    config.yaml under the given options and --set overrides.

    Args:
        config: the app's config class as `"package.module:ClassName"`.
        app: the app name (defaults file, run-folder layout).

    Returns:
        (resolved config, `Run` to resume or `RunPlace` for a new run).
    """
    from keras_medimg.runs import open_run

    cls = import_named(config)
    if resume:
        run = open_run(resume, app, "train")
        return resolve_config(cls, app, config_file or str(run.dir / "config.yaml"), overrides, options), run
    return resolve_config(cls, app, config_file, overrides, options), run_place(project, name, exist_ok)


def add_demo_data_command(group: click.Group, app: str, config: str, make: str, what: str) -> click.Command:
    """Register `medimg <app> demo-data OUT_DIR [--seed N] [--config/--set]` on `group`.

    Args:
        group: the app's Click group.
        app: the app name.
        config: the app's config class as `"package.module:ClassName"`.
        make: the writer as `"package.module:function"`, called `function(out_dir, cfg)` and returning the folder.
        what: the first line of the command's help (what the set holds).
    """

    @group.command("demo-data", help=f"{what}\n\nSizes come from the data.demo_* keys of the config.")
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @click.option("--seed", type=int, default=None, help="Random seed of the generator.")
    @config_options
    def demo_data(out_dir: str, seed: int | None, config_file: str | None, overrides: tuple[str, ...]) -> None:
        cfg = resolve_config(import_named(config), app, config_file, overrides, {"seed": seed})
        root = import_named(make)(out_dir, cfg)
        click.echo(f"Demo data written to {root} (train with: medimg {app} train --data {root})")

    return demo_data


class AppCommands:
    """The config wiring of one app's command module: resolve its config, its train run, its demo-data command.

    Args:
        app: the app name (`configs/<app>.yaml`, `runs/<app>/`).
        config: the app's config class as `"package.module:ClassName"` (imported when a command runs).

    Example:
        APP = AppCommands("brats", "keras_medimg.apps.brats.config:BratsConfig")
        cfg = APP.resolve(config_file, overrides, {"predict.weights": weights})
    """

    def __init__(self, app: str, config: str):
        self.app = app
        self.config = config

    def resolve(self, config_file: str | None, overrides: Sequence[str], options: Mapping[str, Any] | None = None) -> Any:
        """Defaults (or --config), then the command's typed options, then --set (see `resolve_config`)."""
        return resolve_config(import_named(self.config), self.app, config_file, overrides, options)

    def resolve_train(self, *, resume: str | None, config_file: str | None, overrides: Sequence[str],
                      options: Mapping[str, Any], project: str | None, name: str | None, exist_ok: bool) -> tuple[Any, Any]:
        """(config, run) of a train command, as `resolve_train`."""
        return resolve_train(self.config, self.app, resume=resume, config_file=config_file, overrides=overrides,
                             options=options, project=project, name=name, exist_ok=exist_ok)

    def trained_step(self, given: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[Any, Any]:
        """The resolved config and the run place of a command decorated with `trained_run_options`.

        Args:
            given: the command's keyword arguments from those options (config_file, overrides, project, name,
                exist_ok, and strict when the command has it).
            options: the command's own typed options as dotted config keys (None = not given).
        """
        cfg = self.resolve(given["config_file"], given["overrides"], {**options, "strict": given.get("strict")})
        return cfg, run_place(given["project"], given["name"], given["exist_ok"])

    def add_demo_data(self, group: click.Group, make: str, what: str) -> click.Command:
        """Register the app's `demo-data` command (see `add_demo_data_command`)."""
        return add_demo_data_command(group, self.app, self.config, make, what)


strict_option = click.option(
    "--strict", is_flag=True, default=None, help="Stop at the first unreadable image instead of skipping it."
)


def trained_run_options(weights_help: str, *, strict: bool = True) -> Callable[[F], F]:
    """The options of a command that uses a trained run: required --weights, --strict (unless `strict=False`),
    --backend, --config/--set and the run-folder options."""

    def decorate(func: F) -> F:
        func = run_options(config_options(backend_option(func)))
        if strict:
            func = strict_option(func)
        return click.option("--weights", "weights", required=True, type=click.Path(), help=weights_help)(func)

    return decorate
