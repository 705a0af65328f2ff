"""Record which keys of an app's config tree a run really reads, so a key that changes nothing is caught.

Every dataclass class of the tree gets a recording `__getattribute__` for the duration of the `with` block.
Reads made by generic machinery do not count: `dataclasses.replace`/`asdict` and the generated `__init__`,
`__repr__` and `__eq__` (they touch every field), and `keras_medimg.config` (loading, validating and saving
the config reads every key by design). What is left is code that uses a value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import typing
from collections.abc import Iterator

import keras_medimg.config as config_module

_IGNORED_FILES = {dataclasses.__file__, config_module.__file__, "<string>"}


def _tree(cls: type, prefix: str = "") -> dict[type, str]:
    """Each dataclass class of the tree -> its dotted prefix (every class appears once in an app's tree)."""
    found = {cls: prefix}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            found.update(_tree(tp, f"{prefix}{f.name}."))
    return found


def leaf_keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted key of the tree that holds a value (not a section)."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys |= leaf_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


@contextlib.contextmanager
def record_reads(root: type) -> Iterator[set[str]]:
    """Yield the set of dotted keys read (outside the generic machinery) while the block runs."""
    reads: set[str] = set()
    classes = _tree(root)
    originals = {cls: cls.__dict__.get("__getattribute__") for cls in classes}
    field_names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in classes}

    def make(cls: type, prefix: str):
        def __getattribute__(self, name):  # noqa: N807 - the hook's own name
            if name in field_names[cls] and type(self) is cls:
                caller = sys._getframe(1).f_code.co_filename
                if caller not in _IGNORED_FILES:
                    reads.add(prefix + name)
            return object.__getattribute__(self, name)

        return __getattribute__

    for cls, prefix in classes.items():
        cls.__getattribute__ = make(cls, prefix)
    try:
        yield reads
    finally:
        for cls, original in originals.items():
            if original is None:
                del cls.__getattribute__
            else:
                cls.__getattribute__ = original


def unread(root: type, reads: set[str]) -> list[str]:
    """The leaf keys of `root` that no recorded run read, sorted."""
    return sorted(key for key in leaf_keys(root) if key not in reads)

