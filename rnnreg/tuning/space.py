"""A variant's search space, declared in ``conf/tune/space/<variant>.yaml``:

    variant.p_input: {low: 0.0, high: 0.7}
    optim.lr: {low: 0.3, high: 2.0, log: true}
    optim.name: {choices: [sgd, ntasgd]}

Each key is a dotted key of the run config; a range gives ``low``, ``high`` and optionally
``log`` or ``step``; a categorical gives ``choices``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rnnreg import RnnregError
from rnnreg.config.schema import CONF_DIR, RunConfig, flat_settings

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
        integer = all(float(v).is_integer() for v in (self.low, self.high, self.step or 1))
        if integer and isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(
                self.key, self.low, self.high, log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)


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
    """The search space of ``variant``, checked: every key exists, every rate in [0, 1)."""
    source = folder / f"{variant}.yaml"
    if not source.is_file():
        have = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise RnnregError(f"no search space for {variant!r}: write {source} (spaces: {have})")
    spec = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
    schema = OmegaConf.to_container(OmegaConf.structured(RunConfig), resolve=False)
    assert isinstance(spec, dict) and isinstance(schema, dict)
    known = flat_settings(schema)
    return [_param(str(key), value, known, source) for key, value in spec.items()]
