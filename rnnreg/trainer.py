"""The training loop: epochs of BPTT windows, validation, checkpoints, resume.

Per window: the loss of :mod:`rnnreg.loss` (the papers' convention), global-norm clipping
and an SGD step; the hidden state is carried to the
next window, detached, and reset at every epoch. What the run has done is a
:class:`~rnnreg.run_state.TrainingProgress`; what it writes goes through a
:class:`~rnnreg.records.RunRecorder`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rnnreg import RnnregError
from rnnreg.config import Averaging, Progress, RunConfig, Stage, as_plain_dict
from rnnreg.data import Corpus, batchify, load_corpus, num_windows, variable_bptt_length, window_at
from rnnreg.evaluate import evaluate
from rnnreg.final_eval import extra_evaluations, final_evaluation
from rnnreg.loss import window_loss
from rnnreg.model import State, detach_state
from rnnreg.optim import step_with_lr_scale
from rnnreg.records import (
    BEST,
    LAST,
    EpochRecord,
    IntervalMeter,
    LaunchRecord,
    RunRecorder,
    epoch_bar,
    load_checkpoint,
    save_checkpoint,
)
from rnnreg.resume import completed_summary, load_resumable, should_resume
from rnnreg.run_state import Outcome, TrainedParts, TrainingProgress, run_summary
from rnnreg.runtime import StopRequest, exclusive_run, git_commit, seed_everything, select_device
from rnnreg.testhooks import inject_nan, pause_point

log = logging.getLogger(__name__)


class Trainer:
    """Trains one run in ``run_dir``; :meth:`fit` returns the summary it writes."""

    def __init__(
        self,
        run: RunConfig,
        run_dir: Path,
        corpus: Corpus | None = None,
        labels: dict[str, Any] | None = None,
        launch: LaunchRecord | None = None,
    ) -> None:
        self.run, self.run_dir, self.labels = run, run_dir, dict(labels or {})
        self.launch = launch
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
        t = run.trainer
        self.parts = TrainedParts.build(run, self.corpus.vocab_size, self.device)
        self.penalty_sum = torch.zeros(2, device=self.device)  # AR, TAR since the last log
        self.train_data = batchify(self.corpus.train, t.batch_size).to(self.device)
        self.valid_data = batchify(self.corpus.valid, run.eval.batch_size).to(self.device)
        self.test_data = batchify(self.corpus.test, run.eval.test_batch_size).to(self.device)
        self.stop = StopRequest()
        self.progress = TrainingProgress()
        self.state: State | None = None  # the hidden state carried between windows
        self.recorder: RunRecorder  # opened by fit()
        self.start_time = time.monotonic()
        self.git_commit = git_commit()  # the code this process runs, read once at start

    model = property(lambda self: self.parts.model)
    optimizer = property(lambda self: self.parts.optimizer)
    averaging = property(lambda self: self.parts.averaging)

    # --- checkpoints ------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self.progress.elapsed_s + time.monotonic() - self.start_time

    def save(self) -> None:
        """``last.pt``, keeping the one it replaces as ``last.prev.pt``."""
        state = {**self.parts.state_dict(), **self.progress.state_dict()}
        state["elapsed_s"] = self._elapsed()
        state["hidden"] = None if self.state is None else [list(hc) for hc in self.state]
        state["config"] = as_plain_dict(self.run)
        save_checkpoint(self.ckpt_dir / LAST, state, keep_previous=True)

    def restore(self) -> None:
        path, ckpt = load_resumable(self.run_dir, as_plain_dict(self.run), self.device)
        self.parts.load_state_dict(ckpt, path)
        self.progress.load_state_dict(ckpt)
        hidden = ckpt["hidden"]
        self.state = None if hidden is None else [(h, c) for h, c in hidden]
        p = self.progress
        log.info(
            "resumed from %s: %d epochs done, row %d, step %d",
            *(path, p.epochs_done, p.position, p.step),
        )

    # --- the loop -----------------------------------------------------------------------

    @property
    def windows_per_epoch(self) -> int:
        """BPTT windows in an epoch of fixed-length windows (the progress bar's total)."""
        return num_windows(self.train_data, self.run.trainer.bptt)

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """One optimizer step on a window; returns (summed token NLL, gradient norm).

        loss = NLL (token mean; × L with ``loss_sum_over_time``) + AR + TAR. With variable
        BPTT the step's learning rate is scaled by L / bptt.
        """
        assert self.state is not None
        run = self.run
        w = window_loss(
            self.model, inputs, targets, self.state, run.variant, run.optim.loss_sum_over_time
        )
        self.state = detach_state(w.state)
        loss, nll = w.loss, w.nll
        if inject_nan(run.seed, self.progress.step + 1):
            loss, nll = loss * math.nan, nll * math.nan
        if w.penalties is not None:
            self.penalty_sum += w.penalties  # no sync: read when logged
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        pause_point("step")  # inside a step: gradients computed, weights not yet updated
        max_norm = run.optim.clip_grad_norm or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        value = nll.item()
        if not math.isfinite(value):
            return value, float(grad_norm)
        scale = inputs.size(0) / run.trainer.bptt if run.trainer.variable_bptt else 1.0
        step_with_lr_scale(self.optimizer, scale)
        self.averaging.update(self.model)
        return value * targets.numel(), float(grad_norm)

    def _next_length(self) -> int:
        t = self.run.trainer
        return variable_bptt_length(self.parts.length_rng, t.bptt) if t.variable_bptt else t.bptt

    def _run_epoch(self) -> Outcome:
        """Train the rest of the current epoch; say how it ended."""
        t, p = self.run.trainer, self.progress
        if p.position == 0:
            self.state = self.model.init_state(t.batch_size)
            p.start_epoch()
        self.model.train()
        meter, last_checkpoint = IntervalMeter(), time.monotonic()
        last_row = self.train_data.size(0) - 1
        mode = t.progress
        show = mode is Progress.bar or (mode is Progress.auto and sys.stderr.isatty())
        bar = epoch_bar(show, self.windows_per_epoch, p.position // t.bptt, p.epochs_done + 1)
        try:
            while p.position < last_row:
                inputs, targets = window_at(self.train_data, p.position, self._next_length())
                started = time.monotonic()
                nll_sum, grad_norm = self._train_step(inputs, targets)
                if not math.isfinite(nll_sum):
                    log.error(
                        "training diverged at epoch %d, step %d (loss %s); the last good "
                        "checkpoint is %s; try a smaller optim.lr or optim.clip_grad_norm",
                        *(p.epochs_done + 1, p.step + 1, nll_sum, self.ckpt_dir / LAST),
                    )
                    return Outcome.diverged
                p.add_step(nll_sum, targets.numel(), time.monotonic() - started, inputs.size(0))
                meter.add(nll_sum, targets.numel())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(ppl=f"{p.epoch_ppl:.1f}")
                if p.step % t.log_every_steps == 0:
                    scalars = meter.scalars(grad_norm, self._lr())
                    if self.run.variant.ar_alpha or self.run.variant.tar_beta:
                        ar, tar = (self.penalty_sum / meter.steps).tolist()
                        scalars.update({"train/ar": ar, "train/tar": tar})
                    self.penalty_sum.zero_()
                    line = (p.epochs_done + 1, p.position, last_row, self._lr())
                    self.recorder.interval(p.step, meter, scalars, line if bar is None else None)
                if t.max_steps is not None and p.step >= t.max_steps:
                    return Outcome.max_steps
                if self.stop:
                    return Outcome.stopped
                due = time.monotonic() - last_checkpoint >= t.checkpoint_every_s
                if t.checkpoint_every_s and p.position < last_row and due:
                    self.save()
                    last_checkpoint = time.monotonic()
        finally:
            if bar is not None:
                bar.close()
        return Outcome.done

    def _end_epoch(self) -> None:
        """Validate, record the epoch, keep the best weights, step the schedule, checkpoint."""
        p, epoch = self.progress, self.progress.epochs_done + 1
        averaged = self.averaging.active
        evaluated = self.averaging.eval_model(self.model)
        val = evaluate(evaluated, self.valid_data, self.run.eval.bptt)
        pause_point("validation")  # validated, nothing of the epoch's end recorded yet
        rate, lr = p.epoch_tokens / max(p.epoch_seconds, 1e-9), self._lr()
        if self.run.trainer.stage is Stage.finetune:
            p.finished = self.averaging.stalled(val.loss)
            self.averaging.history.append(val.loss)
        elif self.run.optim.averaging is Averaging.nonmonotone:
            if self.averaging.observe(val.loss, epoch, self.model):
                log.info("epoch %d: validation stalled, switching to averaged SGD", epoch)
                self.recorder.scalars(p.step, {"epoch/asgd_switch_epoch": epoch})
        self.recorder.epoch(
            EpochRecord(
                *(epoch, p.step, lr, p.epoch_ppl, val.perplexity, val.loss, rate),
                *(self._elapsed(), averaged, self.averaging.switch_epoch),
            )
        )
        if p.end_epoch(val.perplexity):
            best = {"model": evaluated.state_dict(), "epoch": epoch, "val_ppl": val.perplexity}
            save_checkpoint(self.ckpt_dir / BEST, {**best, "config": as_plain_dict(self.run)})
        self.state = None
        self.parts.schedule.step(val.loss)
        self.save()
        self.recorder.summary(self._summary("running"))  # progress the ledger can read

    def _final_evaluation(self) -> dict[str, float]:
        final = self.averaging.eval_model(self.model).state_dict()
        final_weights = {key: value.detach().clone() for key, value in final.items()}
        best_path, e = self.ckpt_dir / BEST, self.run.eval
        best = load_checkpoint(best_path, self.device)["model"] if best_path.exists() else None
        results = final_evaluation(
            self.model, final_weights, best, self.valid_data, self.test_data, e
        )
        if e.cache.enabled or e.dynamic.enabled:  # both at batch 1, on the tested weights
            splits = {"val": self.corpus.valid, "test": self.corpus.test}
            streams = {name: batchify(s, 1).to(self.device) for name, s in splits.items()}
            results |= extra_evaluations(self.model, streams, self.corpus.train, e)
        return results

    def fit(self) -> dict[str, Any]:
        """Train (or resume) to the end; write ``summary.json``; return the summary.

        The run directory is locked meanwhile: a second process on it raises ``RunInUse``.
        """
        with exclusive_run(self.run_dir):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        t, p = self.run.trainer, self.progress
        done = completed_summary(self.run_dir, as_plain_dict(self.run)) if t.auto_resume else None
        if done is not None:
            log.info("%s already completed with this configuration; nothing to do", self.run_dir)
            return done
        resumed = should_resume(self.run_dir, t.resume, t.auto_resume)
        if resumed:
            self.restore()
        elif t.stage is Stage.finetune:
            self.parts.start_from_best(str(t.init_from), self.device)
        if self.launch is not None:
            self.launch.write(self.run_dir, resumed)
        self.recorder = RunRecorder(self.run_dir, p.step, p.epochs_done)
        self.recorder.summary(self._summary("running"))
        outcome = Outcome.done
        try:
            with self.stop.installed():
                while not p.finished and p.epochs_done < t.epochs:
                    if t.max_steps is not None and p.step >= t.max_steps:
                        break
                    outcome = self._run_epoch()
                    if outcome in (Outcome.stopped, Outcome.diverged):
                        break
                    self._end_epoch()
                    if p.finished:
                        log.info("fine-tuning stopped improving after epoch %d", p.epochs_done)
                    if outcome is Outcome.max_steps:
                        break
            if outcome is Outcome.stopped:
                self.save()
                log.warning(
                    "interrupted; resume with: trainer.resume=true hydra.run.dir=%s", self.run_dir
                )
                summary = self.recorder.summary(self._summary("interrupted"))
                self.stop.forward()
                return summary
            if outcome is Outcome.diverged:
                return self.recorder.summary(self._summary("diverged"))
            results = self._final_evaluation()
            summary = self._summary("completed", results)
            self.recorder.final(p.step, summary, results)
            return self.recorder.summary(summary)
        finally:
            self.recorder.close()

    def _summary(self, status: str, final: dict[str, float] | None = None) -> dict[str, Any]:
        return run_summary(
            status,
            self.run,
            self.progress,
            self.parts,
            final or {},
            **self.labels,
            device=self.device,
            wall_time_s=self._elapsed(),
            tokens_per_epoch=(self.train_data.size(0) - 1) * self.train_data.size(1),
            git_commit=self.git_commit,
            run_dir=str(self.run_dir),
        )
