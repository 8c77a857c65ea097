"""Plug-in variants: rules installed as packages, found through the entry-point group
``rnnreg.variants`` (docs/extending.md).

An entry point names a :class:`~rnnreg.model.rule.Rule` subclass::

    [project.entry-points."rnnreg.variants"]
    variational_zoneout = "my_regularizer.rule:VariationalZoneout"

Discovery only reads the attributes every rule has (``name``, ``settings``, ``masks``,
``conf``, ``space``); it does not import :mod:`rnnreg.model` itself, so the configuration
stays below the model (ARCHITECTURE.md). Loading a plug-in imports its module, and so
torch; nothing is loaded when none is installed.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rnnreg import RnnregError

GROUP = "rnnreg.variants"


class PluginError(RnnregError):
    """A plug-in variant that cannot be used as installed."""


@functools.cache
def plugins() -> dict[str, Any]:
    """Every installed plug-in rule by variant name, checked (:func:`check_plugin`)."""
    found: dict[str, Any] = {}
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        try:
            rule = point.load()
        except Exception as exc:  # an installed package that does not import
            raise PluginError(
                f"plug-in variant {point.name!r} ({point.value}) does not load: "
                f"{type(exc).__name__}: {exc}; fix or uninstall its package"
            ) from exc
        check_plugin(point.name, rule)
        found[point.name] = rule
    return found


def check_plugin(name: str, rule: Any) -> None:
    """One line for each way a plug-in can be incomplete: its name, settings dataclass,
    mask declarations (each rate a field of the settings) and variant YAML."""
    where = f"plug-in variant {name!r}"
    if getattr(rule, "name", None) != name:
        raise PluginError(
            f"{where}: its rule's name is {getattr(rule, 'name', None)!r}; "
            "make Rule.name equal the entry point's name"
        )
    settings = getattr(rule, "settings", None)
    if settings is None or not dataclasses.is_dataclass(settings):
        raise PluginError(f"{where}: Rule.settings must be a dataclass of its settings")
    keys = {f.name for f in dataclasses.fields(settings)}
    for spec in getattr(rule, "masks", ()):
        if spec.rate not in keys:
            raise PluginError(
                f"{where}: mask {spec.name!r} reads the rate {spec.rate!r}, "
                f"which is not a field of {settings.__name__}"
            )
    conf = getattr(rule, "conf", None)
    if conf is None or not Path(conf).is_file():
        raise PluginError(
            f"{where}: Rule.conf must be the path of its variant YAML "
            f"(got {conf}); ship it in the package"
        )


def plugin_conf(name: str) -> Path:
    """The variant YAML of plug-in ``name``."""
    return Path(plugins()[name].conf)


def plugin_space(name: str) -> Path | None:
    """The tuning space YAML of plug-in ``name`` (None when it ships none)."""
    rule = plugins().get(name)
    space = None if rule is None else getattr(rule, "space", None)
    return None if space is None else Path(space)
