"""setup.cfg lists every package; the YAML defaults ship inside keras_medimg.configs."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return {line.strip() for line in parser["options"]["packages"].splitlines() if line.strip()}


def _found_packages() -> set[str]:
    found = set()
    for top, prefix in (("keras_medimg", "keras_medimg"), ("apps", "keras_medimg.apps"), ("configs", "keras_medimg.configs")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((prefix, *rel)))
    return found


def test_every_package_is_declared():
    assert _found_packages() == _declared_packages()


def test_configs_are_installed_with_the_package():
    from importlib import resources

    files = {p.name for p in resources.files("keras_medimg.configs").iterdir()}
    yamls = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert yamls <= files
