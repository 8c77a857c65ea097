"""When a run directory's checkpoint may be resumed, and from which file.

``checkpoints/last.pt`` is written atomically after every epoch and every
``trainer.checkpoint_every_s``; ``last.prev.pt`` keeps the one before it, so a resume
takes the newest that loads. A resume is refused when the configuration changes what the
checkpoint already computed (:data:`RESUMABLE_CHANGES` lists what may change).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rnnreg import RnnregError
from rnnreg.config.schema import EXECUTION_SETTINGS, is_evaluation_key
from rnnreg.records.checkpoint import LAST, load_checkpoint, previous_checkpoint

log = logging.getLogger(__name__)


#: Settings a resumed run may change beside the evaluation settings
#: (:func:`rnnreg.config.schema.is_evaluation_key`): they extend the run or say how it runs
#: or is recorded, not what its checkpoint already holds (everything else must match the
#: checkpoint's config: model, variant, optimizer, dataset, seed, batches).
RESUMABLE_CHANGES = (
    *(f"trainer.{name}" for name in (*EXECUTION_SETTINGS, "epochs", "max_steps")),
    "model.compile",
    "model.compile_mode",
    "model.compile_block",
    "model.lstm_impl",
    "dataset.data_dir",
    "dataset.cache_dir",
)


def resumable(key: str) -> bool:
    """Whether a resume may change ``key``: :data:`RESUMABLE_CHANGES`, an evaluation
    setting, or the trackers (``logger.*``)."""
    return key in RESUMABLE_CHANGES or is_evaluation_key(key) or key.startswith("logger.")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between a checkpoint's config and this run's,
    leaving out :data:`RESUMABLE_CHANGES` and keys only one side knows (a setting added
    to the schema since the checkpoint was written keeps its old behaviour by default)."""
    old, new = _flatten(saved), _flatten(current)
    return sorted(
        key for key in old.keys() & new.keys() if not resumable(key) and old[key] != new[key]
    )


def _outcome_settings(config: Any) -> Any:
    """A resolved config without :data:`EXECUTION_SETTINGS`."""
    if not isinstance(config, dict) or not isinstance(config.get("trainer"), dict):
        return config
    trainer = {k: v for k, v in config["trainer"].items() if k not in EXECUTION_SETTINGS}
    return {**config, "trainer": trainer}


def resumable_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The resumable checkpoints, newest first: ``last.pt``, then ``last.prev.pt``."""
    last = ckpt_dir / LAST
    return [path for path in (last, previous_checkpoint(last)) if path.is_file()]


def should_resume(run_dir: Path, resume: bool, auto_resume: bool) -> bool:
    """Whether a run starts from its checkpoint; a new run never overwrites one."""
    found = bool(resumable_checkpoints(run_dir / "checkpoints"))
    if found and not (resume or auto_resume):
        raise RnnregError(
            f"{run_dir} already holds a run; add trainer.resume=true to continue it, "
            "or choose another hydra.run.dir"
        )
    return resume or found


def load_resumable(run_dir: Path, config: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run_dir`` that loads (one logged line for each one
    passed over), refused with one line if its config differs from ``config`` in a
    setting outside :data:`RESUMABLE_CHANGES`.

    It is loaded on the CPU, whatever device wrote it or will continue it: the run's parts
    move what they restore onto their device, and the random generators' states stay the
    CPU ByteTensors that torch restores them from (``TrainedParts.load_state_dict``)."""
    candidates = resumable_checkpoints(run_dir / "checkpoints")
    if not candidates:
        raise RnnregError(
            f"trainer.resume=true but {run_dir} has no checkpoint; pass the run's "
            "directory as hydra.run.dir=<dir>, or drop trainer.resume to start anew"
        )
    failures = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, map_location="cpu")
            break
        except RnnregError as exc:
            failures.append(path)
            if path is not candidates[-1]:
                log.warning("%s; resuming from the previous checkpoint instead", exc)
    else:
        raise RnnregError(
            f"no readable checkpoint: {' and '.join(str(p) for p in failures)} "
            f"{'is' if len(failures) == 1 else 'are'} unreadable (corrupt or truncated); "
            "delete the run directory to start over"
        )
    changed = changed_settings(ckpt.get("config", {}), config)
    if changed:
        raise RnnregError(
            f"cannot resume {run_dir}: these settings differ from its checkpoint: "
            f"{', '.join(changed)}; resume with the run's own config (see its "
            ".hydra/overrides.yaml) or start a new run directory"
        )
    return path, ckpt


def completed_summary(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run directory's summary when it records this very configuration, completed.

    Lets a sweep be launched again (``trainer.auto_resume``) without re-evaluating the
    runs that are done; a changed setting (say, more epochs) resumes the run instead.
    """
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("status") != "completed" or not (run_dir / "checkpoints" / LAST).exists():
        return None
    current = json.loads(json.dumps(config))
    same = _outcome_settings(summary.get("config")) == _outcome_settings(current)
    return summary if same else None
