"""The recorder behind the apps' "every config key is read" tests catches a key that nothing reads."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from keras_medimg.config import dump_yaml

from .config_reads import leaf_keys, record_reads, unread


@dataclass
class _Inner:
    used: int = 1
    forgotten: int = 2


@dataclass
class _Root:
    seed: int = 0
    inner: _Inner = field(default_factory=_Inner)


def _run(cfg: _Root) -> int:
    shifted = replace(cfg.inner, used=cfg.inner.used + 1)  # replace copies every field: not a use
    dump_yaml(cfg)  # saving the config reads every key: not a use
    return cfg.seed + shifted.used


def test_a_key_nothing_reads_is_reported():
    with record_reads(_Root) as reads:
        assert _run(_Root()) == 2
    assert leaf_keys(_Root) == {"seed", "inner.used", "inner.forgotten"}
    assert unread(_Root, reads) == ["inner.forgotten"]


def test_the_hooks_are_removed_afterwards():
    with record_reads(_Root) as reads:
        pass
    _Root().inner.forgotten  # noqa: B018 - a read after the block must not be recorded
    assert reads == set()
    assert "__getattribute__" not in _Inner.__dict__
