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
from rnnreg.precision import apply_precision
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
from rnnreg.run_state import Outcome, StepTotals, TrainedParts, TrainingProgress, run_summary
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
        #: What every backend's fp32 arithmetic was set to (summary.json: backend_precision).
        self.backend_precision = apply_precision(run.trainer.precision)
        seed_everything(run.seed)
        t = run.trainer
        self.parts = TrainedParts.build(run, self.corpus.vocab_size, self.device)
        self.penalty_sum = torch.zeros(2, device=self.device)  # AR, TAR since the last log
        self.train_data = batchify(self.corpus.train, t.batch_size).to(self.device)
        self.valid_data = batchify(self.corpus.valid, run.eval.batch_size).to(self.device)
        self.test_data = batchify(self.corpus.test, run.eval.test_batch_size).to(self.device)
        self.stop = StopRequest()
        self.progress = TrainingProgress()
        self.totals = StepTotals(self.device)  # the steps' sums, on the device
        self.meter = IntervalMeter()
        self.interval_start = time.monotonic()
        self.diverged_at: int | None = None  # the first step that was not finite
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
        """``last.pt``, keeping the one it replaces as ``last.prev.pt``. Called only with
        nothing left on the device to read (:meth:`_flush`), every step seen finite."""
        assert self.totals.steps == 0, "save() before the device's sums were read"
        state = {**self.parts.state_dict(), **self.progress.state_dict()}
        state["elapsed_s"] = self._elapsed()
        state["hidden"] = None if self.state is None else [list(hc) for hc in self.state]
        state["config"] = as_plain_dict(self.run)
        save_checkpoint(self.ckpt_dir / LAST, state, keep_previous=True)

    def restore(self) -> None:
        path, ckpt = load_resumable(self.run_dir, as_plain_dict(self.run))
        self.parts.load_state_dict(ckpt, path)
        self.progress.load_state_dict(ckpt)
        hidden, device = ckpt["hidden"], self.device
        self.state = None if hidden is None else [(h.to(device), c.to(device)) for h, c in hidden]
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

    def _train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One optimizer step on a window, without waiting for the device.

        loss = NLL (token mean; × L with ``loss_sum_over_time``) + AR + TAR. With variable
        BPTT the step's learning rate is scaled by L / bptt. The window's summed NLL, its
        gradient norm and whether both were finite go to :attr:`totals` on the device,
        read at each log interval and before each checkpoint (:meth:`_flush`); a step
        that is not finite changes no weight (:class:`~rnnreg.optim.FiniteSGD`).
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
        finite = torch.isfinite(nll) & torch.isfinite(grad_norm)
        scale = inputs.size(0) / run.trainer.bptt if run.trainer.variable_bptt else 1.0
        self.optimizer.step(lr_scale=scale, finite=finite)
        self.averaging.update(self.model)
        step, tokens = self.progress.step + 1, targets.numel()
        self.totals.add(nll.detach() * tokens, grad_norm, finite, step, tokens)

    def _flush(self) -> bool:
        """Read :attr:`totals` (one synchronisation) into the progress and the interval's
        meter; False, with one logged line, when a step since the last read was not
        finite: the run has diverged, and nothing of it is checkpointed any more."""
        if self.totals.steps == 0:
            return True
        nll, grad_norm, bad_step, steps, tokens = self.totals.read()
        now = time.monotonic()
        self.progress.add_totals(nll, now - self.interval_start)
        self.interval_start = now
        self.meter.add(nll, tokens, steps, grad_norm)
        if bad_step is None:
            return True
        self.diverged_at = bad_step
        log.error(
            "training diverged at epoch %d, step %d (a non-finite loss or gradient; that "
            "step and the ones after it changed no weight); the last good checkpoint is %s; "
            "try a smaller optim.lr or optim.clip_grad_norm",
            *(self.progress.epochs_done + 1, bad_step, self.ckpt_dir / LAST),
        )
        return False

    def _next_length(self) -> int:
        t = self.run.trainer
        return variable_bptt_length(self.parts.length_rng, t.bptt) if t.variable_bptt else t.bptt

    def _run_epoch(self) -> Outcome:
        """Train the rest of the current epoch; say how it ended. Every way out reads the
        device's sums first (:meth:`_flush`), so a checkpoint is never written over steps
        that were not seen to be finite."""
        t, p = self.run.trainer, self.progress
        if p.position == 0:
            self.state = self.model.init_state(t.batch_size)
            p.start_epoch()
        self.model.train()
        self.meter, last_checkpoint = IntervalMeter(), time.monotonic()
        self.interval_start = time.monotonic()
        last_row = self.train_data.size(0) - 1
        mode = t.progress
        show = mode is Progress.bar or (mode is Progress.auto and sys.stderr.isatty())
        bar = epoch_bar(show, self.windows_per_epoch, p.position // t.bptt, p.epochs_done + 1)
        try:
            while p.position < last_row:
                inputs, targets = window_at(self.train_data, p.position, self._next_length())
                self._train_step(inputs, targets)
                p.add_step(targets.numel(), inputs.size(0))
                if bar is not None:
                    bar.update(1)
                if p.step % t.log_every_steps == 0:
                    if not self._flush():
                        return Outcome.diverged
                    self._log_interval(bar, last_row)
                ended = self._ended_early()
                if ended is not None:
                    return ended if self._flush() else Outcome.diverged
                due = time.monotonic() - last_checkpoint >= t.checkpoint_every_s
                if t.checkpoint_every_s and p.position < last_row and due:
                    if not self._flush():
                        return Outcome.diverged
                    self.save()
                    last_checkpoint = self.interval_start = time.monotonic()
        finally:
            if bar is not None:
                bar.close()
        return Outcome.done if self._flush() else Outcome.diverged

    def _ended_early(self) -> Outcome | None:
        """``max_steps`` reached or a stop signal received, else None."""
        t, p = self.run.trainer, self.progress
        if t.max_steps is not None and p.step >= t.max_steps:
            return Outcome.max_steps
        return Outcome.stopped if self.stop else None

    def _log_interval(self, bar: Any, last_row: int) -> None:
        """The interval's scalars and log line (or the progress bar's figure)."""
        p, meter = self.progress, self.meter
        scalars = meter.scalars(self._lr())
        if self.run.variant.ar_alpha or self.run.variant.tar_beta:
            ar, tar = (self.penalty_sum / meter.steps).tolist()
            scalars.update({"train/ar": ar, "train/tar": tar})
        self.penalty_sum.zero_()
        if bar is not None:
            bar.set_postfix(ppl=f"{p.epoch_ppl:.1f}")
        line = (p.epochs_done + 1, p.position, last_row, self._lr())
        self.recorder.interval(p.step, meter, scalars, line if bar is None else None)
        self.interval_start = time.monotonic()  # the records' I/O is not training time

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
        best = load_checkpoint(best_path)["model"] if best_path.exists() else None
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
            self.parts.start_from_best(str(t.init_from))
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
            backend_precision=self.backend_precision,
            diverged_at_step=self.diverged_at,
            run_dir=str(self.run_dir),
        )
