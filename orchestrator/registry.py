"""Registries keyed by name: how a plug-in (an expert backend, a router, a strategy, an
aggregator, a swap rule, a dataset format) becomes usable from YAML and from Python.

    BACKENDS = Registry[type[ExpertBackend]]("expert backend", "pool.experts[].backend.type")
    BACKENDS.add("vllm", "workers.vllm_backend:VLLMBackend")   # lazy: imported on first use
    BACKENDS.add("mine", MyBackend)                              # or the object itself
    BACKENDS.get("vllm")                                         # -> the class

Built-in entries are lazy `"module:attr"` strings, so naming a registry imports none of
its heavy implementations (vLLM, Ray, litellm) until one is used. A duplicate name is an
error unless `replace=True`; an unknown name raises a `ConfigError` listing the names that
exist. Plug-ins outside the package register when their module is imported: name the
module in the config's `plugins` list (imported before the rest of the config is
validated) or import it yourself before building a `Conclave`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar, cast

from orchestrator.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one extension point; values are objects or lazy "module:attr"."""

    def __init__(self, kind: str, where: str) -> None:
        #: what an entry is ("strategy"), for error messages
        self.kind = kind
        #: where a user names one ("eval --strategies"), for error messages
        self.where = where
        self._entries: dict[str, T | str] = {}

    def add(self, name: str, entry: T | str, *, replace: bool = False) -> None:
        """Register `entry` (an object, or "module:attr" imported on first `get`)."""
        if not name or not name.strip():
            raise ConfigError(f"a {self.kind} needs a non-empty name")
        if name in self._entries and not replace:
            raise ConfigError(
                f"{self.kind} {name!r} is already registered; pick another name, or pass "
                "replace=True to override it"
            )
        if isinstance(entry, str) and ":" not in entry:
            raise ConfigError(
                f"{self.kind} {name!r}: a lazy entry is 'module:attribute', got {entry!r}"
            )
        self._entries[name] = entry

    def remove(self, name: str) -> None:
        """Forget `name` (tests that register temporary entries)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry called `name`, imported now if it was registered lazily."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r} in {self.where}; registered: "
                f"{', '.join(self.names()) or '(none)'}. A plug-in registers when its module "
                "is imported: list the module under `plugins` in the config"
            ) from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            try:
                value = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(
                    f"{self.kind} {name!r} is registered as {entry!r}, which cannot be "
                    f"imported ({exc}); install what it needs or fix the entry"
                ) from exc
            self._entries[name] = value
            return cast(T, value)
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def ordered(self) -> list[str]:
        """Names in registration order (for registries tried in turn)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_plugins(modules: list[str]) -> None:
    """Import each plug-in module (it registers its entries as it is imported)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"plugins: module {module!r} cannot be imported ({exc}); put it on "
                "PYTHONPATH or install its package"
            ) from exc
