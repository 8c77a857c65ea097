"""The training loop: epochs of BPTT windows, validation, checkpoints, resume, records.

Per window of length L the loss is the papers' convention,

    loss = Σ_{t=1..L} (1/B) Σ_b -log p(w_{t+1,b} | w_{≤t,b})   (= L · token-mean NLL),

followed by global-norm clipping and an SGD step; the hidden state is carried to the
next window, detached, and reset at every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rnnreg import RnnregError
from rnnreg.config import (
    Averaging,
    MaskDraw,
    Progress,
    RunConfig,
    Stage,
    TestWeights,
    as_plain_dict,
)
from rnnreg.data import (
    Corpus,
    batchify,
    load_corpus,
    num_windows,
    variable_bptt_length,
    window_at,
)
from rnnreg.evaluate import evaluate, evaluate_mc
from rnnreg.model import Activations, LanguageModel, State, count_parameters, detach_state
from rnnreg.optim import NonMonotoneAveraging, build_optimizer
from rnnreg.records import (
    MetricsCsv,
    TensorBoard,
    git_commit,
    load_checkpoint,
    previous_checkpoint,
    save_checkpoint,
    write_summary,
)
from rnnreg.regularizers.activations import activation_regularization
from rnnreg.runtime import (
    StopRequest,
    cpu_model,
    device_name,
    exclusive_run,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
)
from rnnreg.testhooks import inject_nan, pause_point

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"


#: Trainer settings that say how a run is executed, not what it computes.
EXECUTION_SETTINGS = (
    "resume",
    "auto_resume",
    "progress",
    "threads",
    "device",
    "log_every_steps",
    "checkpoint_every_s",
)


#: Settings a resumed run may change: they extend the run or say how it runs or is
#: evaluated afterwards, not what its checkpoint already holds (everything else must
#: match the checkpoint's config: model, variant, optimizer, dataset, seed, batches).
RESUMABLE_CHANGES = (
    *(f"trainer.{name}" for name in (*EXECUTION_SETTINGS, "epochs", "max_steps")),
    "model.compile",
    "model.lstm_impl",
    "dataset.data_dir",
    "dataset.cache_dir",
    *(
        f"eval.{name}"
        for name in (
            "test_batch_size",
            "bptt",
            "mc_samples",
            "mc_replicas_per_pass",
            "mc_mask_draw",
            "mc_embedding_dropout",
            "test_weights",
        )
    ),
)


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
        key
        for key in old.keys() & new.keys()
        if key not in RESUMABLE_CHANGES and old[key] != new[key]
    )


def _outcome_settings(config: Any) -> Any:
    """A resolved config without :data:`EXECUTION_SETTINGS`."""
    if not isinstance(config, dict) or not isinstance(config.get("trainer"), dict):
        return config
    trainer = {k: v for k, v in config["trainer"].items() if k not in EXECUTION_SETTINGS}
    return {**config, "trainer": trainer}


class Trainer:
    """Trains one run in ``run_dir``; :meth:`fit` returns the summary it writes."""

    def __init__(
        self,
        run: RunConfig,
        run_dir: Path,
        corpus: Corpus | None = None,
        labels: dict[str, Any] | None = None,
    ) -> None:
        self.run = run
        self.labels = dict(labels or {})
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.device = select_device(run.trainer.device)
        if run.trainer.threads:
            torch.set_num_threads(run.trainer.threads)
        self.corpus = corpus if corpus is not None else load_corpus(run.dataset)
        if run.model.vocab_size is not None and run.model.vocab_size != self.corpus.vocab_size:
            raise RnnregError(
                f"model.vocab_size={run.model.vocab_size} but the corpus has "
                f"{self.corpus.vocab_size} words; remove the override"
            )
        seed_everything(run.seed)
        model_cfg = run.model
        if run.trainer.variable_bptt:  # each new window length would compile the loop again
            model_cfg = dataclasses.replace(model_cfg, compile=False)
        self.model = LanguageModel(self.corpus.vocab_size, model_cfg, run.variant).to(self.device)
        if run.model.compile and run.trainer.variable_bptt and self.model.lstm_path != "fused":
            log.info("variable BPTT: the loop path trains eagerly, not compiled")
        self.optimizer, self.schedule = build_optimizer(run.optim, self.model.parameters())
        self.averaging = NonMonotoneAveraging(run.optim.nonmono)
        self.penalty_sum = torch.zeros(2, device=self.device)  # AR, TAR since the last log
        self.length_rng = random.Random(run.seed)  # variable BPTT lengths
        t = run.trainer
        self.train_data = batchify(self.corpus.train, t.batch_size).to(self.device)
        self.valid_data = batchify(self.corpus.valid, run.eval.batch_size).to(self.device)
        self.test_data = batchify(self.corpus.test, run.eval.test_batch_size).to(self.device)
        self.stop = StopRequest()
        # Progress, restored from a checkpoint on resume.
        self.epochs_done = 0
        self.position = 0  # the first row of the next window in the current epoch
        self.step = 0
        self.state: State | None = None
        self.epoch_nll = 0.0
        self.epoch_tokens = 0
        self.epoch_seconds = 0.0
        self.train_seconds = 0.0
        self.train_tokens = 0
        self.elapsed_before = 0.0
        self.best_val_ppl = math.inf
        self.best_epoch = 0
        self.last_val_ppl = math.nan  # the last epoch's validation (final weights)
        self.finished = False  # a fine-tuning stage that stopped improving
        self.start_time = time.monotonic()
        self.git_commit = git_commit()  # the code this process runs, read once at start

    # --- checkpoints ------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.start_time

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "averaging": self.averaging.state_dict(),
            "rng": rng_state(),
            "length_rng": self.length_rng.getstate(),
            "epochs_done": self.epochs_done,
            "position": self.position,
            "hidden": None if self.state is None else [list(hc) for hc in self.state],
            "epoch_nll": self.epoch_nll,
            "epoch_tokens": self.epoch_tokens,
            "epoch_seconds": self.epoch_seconds,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "train_tokens": self.train_tokens,
            "elapsed_s": self._elapsed(),
            "best_val_ppl": self.best_val_ppl,
            "best_epoch": self.best_epoch,
            "last_val_ppl": self.last_val_ppl,
            "finished": self.finished,
            "config": as_plain_dict(self.run),
        }

    def save(self) -> None:
        """``last.pt``, keeping the one it replaces as ``last.prev.pt``."""
        save_checkpoint(self.ckpt_dir / LAST, self._checkpoint_state(), keep_previous=True)

    def _checkpoints(self) -> list[Path]:
        """The resumable checkpoints, newest first: ``last.pt``, then ``last.prev.pt``."""
        last = self.ckpt_dir / LAST
        return [path for path in (last, previous_checkpoint(last)) if path.is_file()]

    def _load_newest_good(self) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint that loads; one logged line for each one passed over."""
        candidates = self._checkpoints()
        if not candidates:
            raise RnnregError(
                f"trainer.resume=true but {self.run_dir} has no checkpoint; pass the run's "
                "directory as hydra.run.dir=<dir>, or drop trainer.resume to start anew"
            )
        failures = []
        for path in candidates:
            try:
                return path, load_checkpoint(path, map_location=self.device)
            except RnnregError as exc:
                failures.append(path)
                if path is not candidates[-1]:
                    log.warning("%s; resuming from the previous checkpoint instead", exc)
        raise RnnregError(
            f"no readable checkpoint: {' and '.join(str(p) for p in failures)} "
            f"{'is' if len(failures) == 1 else 'are'} unreadable (corrupt or truncated); "
            "delete the run directory to start over"
        )

    def restore(self) -> None:
        path, ckpt = self._load_newest_good()
        changed = changed_settings(ckpt.get("config", {}), as_plain_dict(self.run))
        if changed:
            raise RnnregError(
                f"cannot resume {self.run_dir}: these settings differ from its checkpoint: "
                f"{', '.join(changed)}; resume with the run's own config (see its "
                ".hydra/overrides.yaml) or start a new run directory"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt["schedule"])
            self.averaging.load_state_dict(ckpt["averaging"], self.model)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise RnnregError(
                f"checkpoint {path} does not fit this configuration ({str(exc).splitlines()[0]}); "
                "resume with the run's own config (see its .hydra/overrides.yaml)"
            ) from exc
        set_rng_state(ckpt["rng"])
        self.length_rng.setstate(ckpt["length_rng"])
        for key in (
            "epochs_done",
            "position",
            "epoch_nll",
            "epoch_tokens",
            "epoch_seconds",
            "step",
            "train_seconds",
            "train_tokens",
            "best_val_ppl",
            "best_epoch",
            "finished",
        ):
            setattr(self, key, ckpt[key])
        self.last_val_ppl = ckpt.get("last_val_ppl", math.nan)  # absent before 2026-11
        self.elapsed_before = ckpt["elapsed_s"]
        hidden = ckpt["hidden"]
        self.state = None if hidden is None else [(h, c) for h, c in hidden]
        log.info(
            "resumed from %s: %d epochs done, row %d, step %d",
            path,
            self.epochs_done,
            self.position,
            self.step,
        )

    # --- the loop -----------------------------------------------------------------------

    @property
    def windows_per_epoch(self) -> int:
        """BPTT windows in an epoch of fixed-length windows (the progress bar's total)."""
        return num_windows(self.train_data, self.run.trainer.bptt)

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _show_bar(self) -> bool:
        mode = self.run.trainer.progress
        return mode is Progress.bar or (mode is Progress.auto and sys.stderr.isatty())

    def _train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """One optimizer step on a window; returns (summed token NLL, gradient norm).

        loss = NLL (token mean; × L with ``loss_sum_over_time``) + AR + TAR. With variable
        BPTT the step's learning rate is scaled by L / bptt.
        """
        assert self.state is not None
        run = self.run
        variant = run.variant
        regularize = variant.ar_alpha > 0 or variant.tar_beta > 0
        activations = Activations() if regularize else None
        logits, state = self.model(inputs, self.state, activations)
        self.state = detach_state(state)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        if inject_nan(run.seed, self.step + 1):
            nll = nll * math.nan
        loss = nll * inputs.size(0) if run.optim.loss_sum_over_time else nll
        if activations is not None:
            assert activations.last is not None and activations.last_dropped is not None
            ar, tar = activation_regularization(
                activations.last, activations.last_dropped, variant.ar_alpha, variant.tar_beta
            )
            loss = loss + ar + tar
            self.penalty_sum += torch.stack([ar, tar]).detach()  # no sync: read when logged
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        pause_point("step")  # inside a step: gradients computed, weights not yet updated
        max_norm = run.optim.clip_grad_norm or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        value = nll.item()
        if not math.isfinite(value):
            return value, float(grad_norm)
        scale = inputs.size(0) / run.trainer.bptt if run.trainer.variable_bptt else 1.0
        base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] *= scale
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr
        self.averaging.update(self.model)
        return value * targets.numel(), float(grad_norm)

    def _next_length(self) -> int:
        t = self.run.trainer
        return variable_bptt_length(self.length_rng, t.bptt) if t.variable_bptt else t.bptt

    def _run_epoch(self, tb: TensorBoard) -> str:
        """Train the rest of the current epoch.

        Returns ``done``, ``max_steps``, ``stopped`` (a signal) or ``diverged``.
        """
        t = self.run.trainer
        epoch = self.epochs_done + 1
        if self.position == 0:
            self.state = self.model.init_state(t.batch_size)
            self.epoch_nll, self.epoch_tokens, self.epoch_seconds = 0.0, 0, 0.0
        self.model.train()
        last_checkpoint = time.monotonic()
        bar = None
        if self._show_bar():
            bar = tqdm(
                total=self.windows_per_epoch,
                initial=self.position // t.bptt,
                desc=f"epoch {epoch}",
                unit="win",
                dynamic_ncols=True,
                leave=False,
            )
        interval_nll, interval_tokens, interval_start = 0.0, 0, time.monotonic()
        interval_steps = 0
        try:
            last_row = self.train_data.size(0) - 1
            while self.position < last_row:
                inputs, targets = window_at(self.train_data, self.position, self._next_length())
                started = time.monotonic()
                nll_sum, grad_norm = self._train_step(inputs, targets)
                if not math.isfinite(nll_sum):
                    log.error(
                        "training diverged at epoch %d, step %d (loss %s); the last good "
                        "checkpoint is %s; try a smaller optim.lr or optim.clip_grad_norm",
                        epoch,
                        self.step + 1,
                        nll_sum,
                        self.ckpt_dir / LAST,
                    )
                    return "diverged"
                seconds = time.monotonic() - started
                self.step += 1
                self.position += inputs.size(0)
                n = targets.numel()
                self.epoch_nll += nll_sum
                self.epoch_tokens += n
                self.epoch_seconds += seconds
                self.train_seconds += seconds
                self.train_tokens += n
                interval_nll += nll_sum
                interval_tokens += n
                interval_steps += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(ppl=f"{math.exp(self.epoch_nll / self.epoch_tokens):.1f}")
                if self.step % t.log_every_steps == 0:
                    rate = interval_tokens / max(time.monotonic() - interval_start, 1e-9)
                    ppl = math.exp(interval_nll / interval_tokens)
                    tb.scalars(
                        self.step,
                        {
                            "train/loss": interval_nll / interval_tokens,
                            "train/ppl": ppl,
                            "train/grad_norm": grad_norm,
                            "train/lr": self._lr(),
                            "train/tokens_per_s": rate,
                        },
                    )
                    if self.run.variant.ar_alpha or self.run.variant.tar_beta:
                        ar, tar = (self.penalty_sum / interval_steps).tolist()
                        tb.scalars(self.step, {"train/ar": ar, "train/tar": tar})
                    self.penalty_sum.zero_()
                    if bar is None:
                        log.info(
                            "epoch %d  row %d/%d  step %d  lr %.4g  ppl %.2f  %.0f tok/s",
                            epoch,
                            self.position,
                            last_row,
                            self.step,
                            self._lr(),
                            ppl,
                            rate,
                        )
                    interval_nll, interval_tokens, interval_start = 0.0, 0, time.monotonic()
                    interval_steps = 0
                if t.max_steps is not None and self.step >= t.max_steps:
                    return "max_steps"
                if self.stop:
                    return "stopped"
                if (
                    t.checkpoint_every_s
                    and self.position < last_row
                    and time.monotonic() - last_checkpoint >= t.checkpoint_every_s
                ):
                    self.save()
                    last_checkpoint = time.monotonic()
        finally:
            if bar is not None:
                bar.close()
        return "done"

    def _end_epoch(self, tb: TensorBoard, metrics: MetricsCsv) -> bool:
        """Validate, record the epoch, keep the best weights, checkpoint.

        Returns True when a fine-tuning stage has stopped improving (AWD's rule).
        """
        epoch = self.epochs_done + 1
        averaged = self.averaging.active
        evaluated = self.averaging.eval_model(self.model)
        val = evaluate(evaluated, self.valid_data, self.run.eval.bptt)
        pause_point("validation")  # validated, nothing of the epoch's end recorded yet
        train_ppl = math.exp(self.epoch_nll / max(self.epoch_tokens, 1))
        rate = self.epoch_tokens / max(self.epoch_seconds, 1e-9)
        lr = self._lr()
        if self.run.trainer.stage is Stage.finetune:
            self.finished = self.averaging.stalled(val.loss)
            self.averaging.history.append(val.loss)
        elif self.run.optim.averaging is Averaging.nonmonotone:
            if self.averaging.observe(val.loss, epoch, self.model):
                log.info("epoch %d: validation stalled, switching to averaged SGD", epoch)
                tb.scalars(self.step, {"epoch/asgd_switch_epoch": epoch})
        metrics.append(
            {
                "epoch": epoch,
                "step": self.step,
                "lr": lr,
                "train_ppl": round(train_ppl, 4),
                "val_ppl": round(val.perplexity, 4),
                "tokens_per_s": round(rate, 1),
                "elapsed_s": round(self._elapsed(), 1),
                "averaged": int(averaged),
                "asgd_switch_epoch": self.averaging.switch_epoch or "",
            }
        )
        tb.scalars(
            self.step,
            {
                "epoch/train_ppl": train_ppl,
                "val/ppl": val.perplexity,
                "val/loss": val.loss,
                "epoch/lr": lr,
                "epoch/tokens_per_s": rate,
                "epoch/epoch": epoch,
                "epoch/averaged": float(averaged),
            },
        )
        log.info(
            "epoch %d done: lr %.4g  train ppl %.2f  val ppl %.2f%s  %.0f tok/s",
            epoch,
            lr,
            train_ppl,
            val.perplexity,
            " (averaged weights)" if averaged else "",
            rate,
        )
        self.last_val_ppl = val.perplexity
        if val.perplexity < self.best_val_ppl:
            self.best_val_ppl, self.best_epoch = val.perplexity, epoch
            save_checkpoint(
                self.ckpt_dir / BEST,
                {
                    "model": evaluated.state_dict(),
                    "epoch": epoch,
                    "val_ppl": val.perplexity,
                    "config": as_plain_dict(self.run),
                },
            )
        tb.flush()
        self.epochs_done = epoch
        self.position = 0
        self.state = None
        self.schedule.step(val.loss)
        self.save()
        self._write_summary("running", None)  # progress a reader (the ledger) can see
        return self.finished

    def _start_finetune(self) -> None:
        """Load the best weights of ``trainer.init_from`` and average from the first step."""
        source = Path(str(self.run.trainer.init_from)).expanduser()
        path = source if source.suffix == ".pt" else source / "checkpoints" / BEST
        ckpt = load_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise RnnregError(
                f"{path} does not fit this model ({str(exc).splitlines()[0]}); fine-tune with "
                "the same model and dataset as the trained run"
            ) from exc
        self.averaging.start(self.model, epoch=0)
        log.info("fine-tuning from %s (its epoch %s)", path, ckpt.get("epoch"))

    def _final_evaluation(self) -> dict[str, float]:
        """Test perplexity of the final and of the best-validation weights; ``test_ppl``
        (and MC dropout, with ``eval.mc_samples``) uses those of ``eval.test_weights``.

        ``final``: the weights after the last step (averaged under NT-ASGD), as Zaremba's
        and Gal's Lua code test them; ``best``: the best validation epoch's (AWD-LSTM).
        """
        e = self.run.eval
        final_model = self.averaging.eval_model(self.model)
        results = {"test_ppl_final": evaluate(final_model, self.test_data, e.bptt).perplexity}
        pause_point("test")  # in the final evaluation
        final_weights = {k: v.detach().clone() for k, v in final_model.state_dict().items()}
        best = self.ckpt_dir / BEST
        if best.exists():
            self.model.load_state_dict(load_checkpoint(best, map_location=self.device)["model"])
            results["test_ppl_best"] = evaluate(self.model, self.test_data, e.bptt).perplexity
        else:  # no validation was ever better than inf: the final weights are the best
            self.model.load_state_dict(final_weights)
            results["test_ppl_best"] = results["test_ppl_final"]
        if e.test_weights is TestWeights.final:
            self.model.load_state_dict(final_weights)
        results["test_ppl"] = results[f"test_ppl_{e.test_weights.value}"]
        if e.mc_samples > 0:
            for split, source in (("val", self.valid_data), ("test", self.test_data)):
                mc = evaluate_mc(
                    self.model,
                    source,
                    e.bptt,
                    e.mc_samples,
                    e.mc_replicas_per_pass,
                    hold_masks=e.mc_mask_draw is MaskDraw.stream,
                    embedding_dropout=e.mc_embedding_dropout,
                )
                results[f"{split}_ppl_mc"] = mc.perplexity
        return results

    def fit(self) -> dict[str, Any]:
        """Train (or resume) to the end; write ``summary.json``; return the summary.

        The run directory is locked meanwhile: a second process on it raises ``RunInUse``.
        """
        with exclusive_run(self.run_dir):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        t = self.run.trainer
        done = self._completed_summary() if t.auto_resume else None
        if done is not None:
            log.info("%s already completed with this configuration; nothing to do", self.run_dir)
            return done
        if t.resume or (t.auto_resume and self._checkpoints()):
            self.restore()
        elif self._checkpoints():
            raise RnnregError(
                f"{self.run_dir} already holds a run; add trainer.resume=true to continue it, "
                "or choose another hydra.run.dir"
            )
        elif t.stage is Stage.finetune:
            self._start_finetune()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsCsv(self.run_dir / "metrics.csv")
        resumed = self.step > 0
        if resumed:
            metrics.truncate_after(self.epochs_done)
        tb = TensorBoard(self.run_dir / "tb", purge_step=self.step if resumed else None)
        self._write_summary("running", None)
        outcome = "done"
        try:
            with self.stop.installed():
                while (
                    not self.finished
                    and self.epochs_done < t.epochs
                    and not (t.max_steps is not None and self.step >= t.max_steps)
                ):
                    outcome = self._run_epoch(tb)
                    if outcome in ("stopped", "diverged"):
                        break
                    if self._end_epoch(tb, metrics):
                        log.info("fine-tuning stopped improving after epoch %d", self.epochs_done)
                        break
                    if outcome == "max_steps":
                        break
            if outcome == "stopped":
                self.save()
                log.warning(
                    "interrupted; resume with: trainer.resume=true hydra.run.dir=%s", self.run_dir
                )
                summary = self._write_summary("interrupted", None)
                self.stop.forward()
                return summary
            if outcome == "diverged":
                return self._write_summary("diverged", None)
            final = self._final_evaluation()
            tb.scalars(self.step, {key.replace("_", "/", 1): v for key, v in final.items()})
            tb.hparams(self._hparams(), {"best_val_ppl": self.best_val_ppl, **final})
            log.info(
                "best val ppl %.2f (epoch %d); %s",
                self.best_val_ppl,
                self.best_epoch,
                ", ".join(f"{key} {value:.2f}" for key, value in final.items()),
            )
            return self._write_summary("completed", final)
        finally:
            tb.close()

    def _completed_summary(self) -> dict[str, Any] | None:
        """The run directory's summary when it records this very configuration, completed.

        Lets a sweep be launched again (``trainer.auto_resume``) without re-evaluating the
        runs that are done; a changed setting (say, more epochs) resumes the run instead.
        """
        path = self.run_dir / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if summary.get("status") != "completed" or not (self.ckpt_dir / LAST).exists():
            return None
        current = json.loads(json.dumps(as_plain_dict(self.run)))
        return (
            summary
            if _outcome_settings(summary.get("config")) == _outcome_settings(current)
            else None
        )

    def _hparams(self) -> dict[str, Any]:
        """The knobs a comparison varies: names, sizes, rates, optimizer, seed."""
        run = self.run
        params: dict[str, Any] = {
            "dataset": run.dataset.name,
            "model": run.model.name,
            "variant": run.variant.name,
            "seed": run.seed,
            "hidden_size": run.model.hidden_size,
            "num_layers": run.model.num_layers,
            "lstm_path": self.model.lstm_path,
            "optim": run.optim.name,
            "lr": run.optim.lr,
            "epochs": run.trainer.epochs,
            "batch_size": run.trainer.batch_size,
            "bptt": run.trainer.bptt,
            "stage": run.trainer.stage.value,
        }
        params.update(run.variant.rates())
        return params

    def _write_summary(self, status: str, final: dict[str, float] | None) -> dict[str, Any]:
        run = self.run
        final = final or {}
        summary = {
            "status": status,
            **self.labels,
            "dataset": run.dataset.name,
            "model": run.model.name,
            "variant": run.variant.name,
            "seed": run.seed,
            "dropout": run.variant.rates(),
            "params": count_parameters(self.model),
            "epochs": self.epochs_done,
            "epochs_planned": run.trainer.epochs,
            "steps": self.step,
            "best_val_ppl": None if math.isinf(self.best_val_ppl) else self.best_val_ppl,
            "best_epoch": self.best_epoch,
            "test_ppl": final.get("test_ppl"),
            "test_weights": run.eval.test_weights.value,
            "test_ppl_best": final.get("test_ppl_best"),
            "test_ppl_final": final.get("test_ppl_final"),
            "last_val_ppl": None if math.isnan(self.last_val_ppl) else self.last_val_ppl,
            "mc_samples": run.eval.mc_samples,
            "mc_mask_draw": run.eval.mc_mask_draw.value,
            "val_ppl_mc": final.get("val_ppl_mc"),
            "test_ppl_mc": final.get("test_ppl_mc"),
            "lstm_path": self.model.lstm_path,
            "loop_mode": self.model.loop_mode,
            "stage": run.trainer.stage.value,
            "init_from": run.trainer.init_from,
            "asgd_switch_epoch": self.averaging.switch_epoch,
            "tokens_per_s": self.train_tokens / self.train_seconds if self.train_seconds else None,
            "wall_time_s": self._elapsed(),
            "torch_version": torch.__version__,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "cpu_model": cpu_model(),
            "threads": torch.get_num_threads(),
            "train_tokens": self.train_tokens,
            "tokens_per_epoch": (self.train_data.size(0) - 1) * self.train_data.size(1),
            "git_commit": self.git_commit,
            "run_dir": str(self.run_dir),
            "config": as_plain_dict(run),
        }
        write_summary(self.run_dir / "summary.json", summary)
        return summary
