"""What a stage may read of the configuration, and a record of what it did read.

A stage's cache key holds the configuration keys its declaration in `voc_pipeline.graph` lists. A stage
that read a key its declaration leaves out would be reused after that key changed: a stale result shown
as current. So each stage runs on a `ConfigView` of the resolved configuration, which refuses every key
outside the declaration (an `UndeclaredConfigKeyError`, a bug in the package, not in the user's input)
and records every key it hands out; the record is saved in the stage's `run_info.json`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

# Keys that say where a stage reads and writes, not what it computes: the content hashes of the run
# folder's artifacts and the fingerprints of the data already stand for what is found there.
LOCATION_KEYS = ("run_name", "runs_dir", "data.root")


class UndeclaredConfigKeyError(RuntimeError):
    """A stage read a configuration key that its declaration in voc_pipeline/graph.py does not list."""


def covers(entries: Iterable[str], key: str) -> bool:
    """Whether `key` is one of `entries` (sections or dotted keys) or lies under one."""
    return any(key == entry or key.startswith(entry + ".") for entry in entries)


def declares(declared: Iterable[str], key: str, left_out: Iterable[str] = ()) -> bool:
    """Whether a declaration (sections or dotted keys, less the keys it leaves out) covers `key`."""
    return key in LOCATION_KEYS or (covers(declared, key) and not covers(left_out, key))


class ConfigView:
    """A read-only view of a configuration (or of one of its sections) that hands out declared keys only.

    Attribute access works as on the dataclass: a section comes back as a view of that section, a value
    as itself, and a property (such as `Config.run_dir`) is computed through the view, so the keys it
    uses are checked and recorded too.
    """

    __slots__ = ("_target", "_stage", "_declared", "_left_out", "_prefix", "_reads")

    def __init__(self, target: Any, stage: str, declared: Iterable[str], prefix: str = "",
                 reads: set[str] | None = None, left_out: Iterable[str] = ()):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_declared", tuple(declared))
        object.__setattr__(self, "_left_out", tuple(left_out))
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_reads", set() if reads is None else reads)

    def __getattr__(self, name: str) -> Any:
        target = object.__getattribute__(self, "_target")
        attribute = getattr(type(target), name, None)
        if isinstance(attribute, property):
            return attribute.fget(self)
        value = getattr(target, name)
        key = self._prefix + name
        if dataclasses.is_dataclass(value):
            return ConfigView(value, self._stage, self._declared, key + ".", self._reads, self._left_out)
        self._read(key)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: the configuration is frozen")

    def __repr__(self) -> str:
        return f"ConfigView({self._target!r}, stage={self._stage!r})"

    def _read(self, key: str) -> None:
        if not declares(self._declared, key, self._left_out):
            left_out = f", less {', '.join(self._left_out)}" if self._left_out else ""
            raise UndeclaredConfigKeyError(
                f"stage {self._stage} read the configuration key {key!r}, which its declaration in "
                f"voc_pipeline/graph.py does not list ({', '.join(self._declared) or 'nothing'}{left_out}): add it "
                f"there, or the stage would be reused after {key} changed")
        self._reads.add(key)

    def unwrap(self) -> Any:
        """The dataclass behind the view, every leaf key under it recorded as read (and checked), except the
        keys the declaration leaves out: the caller must not use those (see `without_keys`)."""
        for key in leaf_keys(self._target, self._prefix):
            if not covers(self._left_out, key):
                self._read(key)
        return self._target

    @property
    def reads(self) -> list[str]:
        """Every key handed out so far, by this view and the views of its sections, sorted."""
        return sorted(self._reads)


def leaf_keys(section: Any, prefix: str = "") -> list[str]:
    """The dotted keys of every value (not section) under a configuration dataclass."""
    keys = []
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            keys += leaf_keys(value, f"{prefix}{item.name}.")
        else:
            keys.append(prefix + item.name)
    return keys


def unwrapped(config: Any) -> Any:
    """A configuration dataclass as it is, or the one behind a view (recording that all of it was read)."""
    return config.unwrap() if isinstance(config, ConfigView) else config


def without_keys(values: dict, prefix: str, left_out: Iterable[str]) -> dict:
    """A nested configuration dict (at dotted `prefix`) without the keys a declaration leaves out."""
    result = {}
    for name, value in values.items():
        key = prefix + name
        if covers(left_out, key):
            continue
        result[name] = without_keys(value, key + ".", left_out) if isinstance(value, dict) else value
    return result
