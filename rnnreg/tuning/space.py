"""A variant's search space, declared in ``conf/tune/space/<variant>.yaml``:

    variant.p_input: {low: 0.0, high: 0.7}
    optim.lr: {low: 0.3, high: 2.0, log: true}
    optim.name: {choices: [sgd, ntasgd]}

Each key is a dotted key of the run config; a range gives ``low``, ``high`` and optionally
``log`` or ``step``; a categorical gives ``choices``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rnnreg import RnnregError
from rnnreg.config.plugins import plugin_space, plugins
from rnnreg.config.schema import CONF_DIR, RunConfig, flat_settings, plugin_variant_schema

SPACE_DIR = CONF_DIR / "tune" / "space"


@dataclass(frozen=True)
class Param:
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """The trial's value (Optuna's ``suggest_*``)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.integer:
            return trial.suggest_int(
                self.key, self.low, self.high, log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    @property
    def integer(self) -> bool:
        """Drawn with ``suggest_int`` (integer bounds and step)."""
        if not (isinstance(self.low, int) and isinstance(self.high, int)):
            return False
        return float(self.step or 1).is_integer()

    def points(self) -> float:
        """How many values the parameter can take (``inf`` for a continuous range)."""
        if self.choices is not None:
            return len(self.choices)
        assert self.low is not None and self.high is not None
        step = self.step or (1 if self.integer else None)
        if step is None:
            return math.inf if self.high > self.low else 1
        return math.floor((self.high - self.low) / step + 1e-9) + 1

    def from_unit(self, u: float) -> Any:
        """The value at ``u`` in [0, 1) of the parameter's range, as a start-up design
        places it: a choice or a step by index ⌊u·n⌋, a log range by
        exp(log low + u (log high − log low)), else low + u (high − low)."""
        if self.choices is not None:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        assert self.low is not None and self.high is not None
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
            value = min(max(value, self.low), self.high)
            return round(value) if self.integer else value
        count = self.points()
        if math.isinf(count):
            return self.low + u * (self.high - self.low)
        step = self.step or 1
        index = min(int(u * count), int(count) - 1)
        value = self.low + index * step
        return int(value) if self.integer else round(value, 12)


def unit_to_values(space: list[Param], point: list[float]) -> dict[str, Any]:
    """The values of a point of the unit cube, one coordinate per parameter."""
    return {param.key: param.from_unit(u) for param, u in zip(space, point, strict=True)}


def space_points(space: list[Param]) -> float:
    """How many distinct configurations ``space`` holds (``inf`` with a continuous range)."""
    return math.prod(param.points() for param in space)


def _param(key: str, spec: Any, known: dict[str, Any], source: Path) -> Param:
    if key not in known:
        raise RnnregError(
            f"{source}: unknown key {key!r}; name a run config key such as variant.p_input"
        )
    if not isinstance(spec, dict) or not ({"low", "high"} <= spec.keys() or "choices" in spec):
        raise RnnregError(f"{source}: {key} needs low and high, or choices")
    if "choices" in spec:
        return Param(key, choices=tuple(spec["choices"]))
    param = Param(key, spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step"))
    rate = key.rsplit(".", 1)[-1].startswith(("p_", "zoneout_"))
    if param.low > param.high or (rate and not (0 <= param.low and param.high < 1)):
        raise RnnregError(
            f"{source}: {key} range [{param.low}, {param.high}] is not a valid "
            f"{'drop rate range inside [0, 1)' if rate else 'range (low <= high)'}"
        )
    return param


def load_space(variant: str, folder: Path = SPACE_DIR) -> list[Param]:
    """The search space of ``variant``, checked: every key exists, every rate in [0, 1).

    A plug-in variant's space is the YAML its rule ships (``Rule.space``), its keys
    checked against the variant schema with the plug-in's settings."""
    source = folder / f"{variant}.yaml"
    plugin = variant in plugins() and not source.is_file()
    if plugin:
        source = plugin_space(variant) or source
    if not source.is_file():
        have = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise RnnregError(f"no search space for {variant!r}: write {source} (spaces: {have})")
    spec = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
    structured = OmegaConf.structured(RunConfig)
    if plugin:
        structured.variant = OmegaConf.structured(plugin_variant_schema(plugins()[variant]))
    schema = OmegaConf.to_container(structured, resolve=False)
    assert isinstance(spec, dict) and isinstance(schema, dict)
    known = flat_settings(schema)
    return [_param(str(key), value, known, source) for key, value in spec.items()]
