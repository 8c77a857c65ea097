"""The training loop: epochs of BPTT windows, validation, checkpoints, resume.

Per window: the loss of :mod:`rnnreg.training.loss` (the papers' convention), global-norm clipping
and an SGD step; the hidden state is carried to the
next window, detached, and reset at every epoch. What the run has done is a
:class:`~rnnreg.training.state.TrainingProgress`; what it writes goes through a
:class:`~rnnreg.records.recorder.RunRecorder`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rnnreg.config.schema import Averaging, RunConfig, Stage, as_plain_dict
from rnnreg.core.files import remove_orphaned_temporaries
from rnnreg.core.precision import apply_precision
from rnnreg.core.process import RunClock, StopRequest, exclusive_run
from rnnreg.core.runtime import seed_everything, select_device
from rnnreg.core.testhooks import pause_point
from rnnreg.data.batching import batched_splits, num_windows, variable_bptt_length, window_at
from rnnreg.data.corpus import Corpus, load_corpus
from rnnreg.evaluation.final import evaluate_run
from rnnreg.evaluation.perplexity import evaluate
from rnnreg.model.lm import State
from rnnreg.records.checkpoint import LAST
from rnnreg.records.launch import LaunchRecord
from rnnreg.records.loggers import open_tracker
from rnnreg.records.provenance import git_commit, this_machine
from rnnreg.records.recorder import EpochRecord, IntervalMeter, RunRecorder, epoch_bar
from rnnreg.training.checkpointing import best_weights, restore_last, save_best, save_last
from rnnreg.training.parts import TrainedParts
from rnnreg.training.resume import completed_summary, should_resume
from rnnreg.training.state import Outcome, TrainingProgress
from rnnreg.training.step import WindowStep
from rnnreg.training.summary import run_summary

log = logging.getLogger(__name__)


def log_divergence(epoch: int, step: int, checkpoint: Path) -> None:
    log.error(
        "training diverged at epoch %d, step %d (a non-finite loss or gradient; that step "
        "and the ones after it changed no weight); the last good checkpoint is %s; try a "
        "smaller optim.lr or optim.clip_grad_norm",
        *(epoch, step, checkpoint),
    )


class Trainer:
    """Trains one run in ``run_dir``; :meth:`fit` returns the summary it writes."""

    def __init__(
        self,
        run: RunConfig,
        run_dir: Path,
        corpus: Corpus | None = None,
        labels: dict[str, Any] | None = None,
        launch: LaunchRecord | None = None,
        epoch_hook: Callable[[int, float], bool] | None = None,
        score_test: bool = True,
    ) -> None:
        """``epoch_hook(epoch, val_ppl)`` is called after each validation; True ends the
        run as ``pruned`` (rnnreg/tuning/study.py reports to Optuna through it).
        ``score_test=False`` ends a completed run without its final evaluation: a tuning
        trial is scored on validation alone and never reads the test split."""
        self.run, self.run_dir, self.labels = run, run_dir, dict(labels or {})
        self.launch, self.epoch_hook, self.score_test = launch, epoch_hook, score_test
        self.ckpt_dir = run_dir / "checkpoints"
        self.device = select_device(run.trainer.device)
        if run.trainer.threads:
            torch.set_num_threads(run.trainer.threads)
        self.corpus = corpus if corpus is not None else load_corpus(run.dataset)
        #: What every backend's fp32 arithmetic was set to (summary.json: backend_precision).
        self.backend_precision = apply_precision(run.trainer.precision)
        seed_everything(run.seed)
        self.parts = TrainedParts.build(run, self.corpus.vocab_size, self.device)
        b = batched_splits(self.corpus, run, self.device)
        self.train_data, self.valid_data, self.test_data = b.train, b.valid, b.test
        self.stop = StopRequest()
        self.progress = TrainingProgress()
        self.step = WindowStep(run, self.parts, self.device)
        self.totals = self.step.totals  # the steps' sums, on the device
        #: Training time leaves out the time the process was stopped (SIGSTOP, SLURM's suspend).
        self.clock = RunClock()
        self.meter = IntervalMeter(self.clock.now)
        self.interval_start = self.clock.now()
        self.diverged_at: int | None = None  # the first step that was not finite
        self.state: State | None = None  # the hidden state carried between windows
        self.recorder: RunRecorder  # opened by fit()
        self.start_time = self.clock.now()
        self.git_commit = git_commit()  # the code this process runs, read once at start

    model = property(lambda self: self.parts.model)
    optimizer = property(lambda self: self.parts.optimizer)
    averaging = property(lambda self: self.parts.averaging)
    _lr = property(lambda self: self.optimizer.param_groups[0]["lr"])
    #: BPTT windows in an epoch of fixed-length windows (the progress bar's total).
    windows_per_epoch = property(lambda self: num_windows(self.train_data, self.run.trainer.bptt))

    def _elapsed(self) -> float:
        return self.progress.elapsed_s + self.clock.now() - self.start_time

    def save(self) -> None:
        """``last.pt``, keeping the one it replaces as ``last.prev.pt``. Called only with
        nothing left on the device to read (:meth:`_flush`), every step seen finite."""
        assert self.totals.steps == 0, "save() before the device's sums were read"
        config = as_plain_dict(self.run)
        save_last(self.ckpt_dir, self.parts, self.progress, self.state, self._elapsed(), config)

    def restore(self) -> None:
        config = as_plain_dict(self.run)
        self.state = restore_last(self.run_dir, config, self.parts, self.progress, self.device)

    def _train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One step on the window (rnnreg/training/step.py), no read from the device."""
        assert self.state is not None
        self.state = self.step(inputs, targets, self.state, self.progress.step + 1)

    def _flush(self) -> bool:
        """Read :attr:`totals` (one synchronisation) into the progress and the interval's
        meter; False, with one logged line, when a step since the last read was not
        finite: the run has diverged, and nothing of it is checkpointed any more."""
        now, since = self.clock.now(), self.interval_start
        self.interval_start = now
        bad_step = self.totals.read_into(self.progress, self.meter, now - since)
        if bad_step is None:
            return True
        self.diverged_at = bad_step
        log_divergence(self.progress.epochs_done + 1, bad_step, self.ckpt_dir / LAST)
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
        self.meter, last_checkpoint = IntervalMeter(self.clock.now), time.monotonic()
        self.interval_start = self.clock.now()
        last_row = self.train_data.size(0) - 1
        bar = epoch_bar(t.progress, self.windows_per_epoch, p.position // t.bptt, p.epochs_done + 1)
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
                    last_checkpoint, self.interval_start = time.monotonic(), self.clock.now()
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
        scalars = meter.scalars(self._lr)
        if self.run.variant.ar_alpha or self.run.variant.tar_beta:
            scalars.update(self.step.penalties(meter.steps))
        if bar is not None:
            bar.set_postfix(ppl=f"{p.epoch_ppl:.1f}")
        line = (p.epochs_done + 1, p.position, last_row, self._lr)
        self.recorder.interval(p.step, meter, scalars, line if bar is None else None)
        self.interval_start = self.clock.now()  # the records' I/O is not training time

    def _end_epoch(self) -> None:
        """Validate, record the epoch, keep the best weights, step the schedule, checkpoint."""
        p, epoch = self.progress, self.progress.epochs_done + 1
        averaged = self.averaging.active
        evaluated = self.averaging.eval_model(self.model)
        val = evaluate(evaluated, self.valid_data, self.run.eval.bptt)
        pause_point("validation")  # validated, nothing of the epoch's end recorded yet
        rate, lr = p.epoch_tokens / max(p.epoch_seconds, 1e-9), self._lr
        finetune = self.run.trainer.stage is Stage.finetune
        nt_asgd = self.run.optim.averaging is Averaging.nonmonotone
        rules = (val.loss, epoch, self.model, finetune, nt_asgd)
        p.finished, switched = self.averaging.after_validation(*rules)
        if switched:
            log.info("epoch %d: validation stalled, switching to averaged SGD", epoch)
            self.recorder.scalars(p.step, {"epoch/asgd_switch_epoch": epoch})
        self.recorder.epoch(
            EpochRecord(
                *(epoch, p.step, lr, p.epoch_ppl, val.perplexity, val.loss, rate),
                *(self._elapsed(), averaged, self.averaging.switch_epoch),
            )
        )
        if p.end_epoch(val.perplexity):
            weights, config = evaluated.state_dict(), as_plain_dict(self.run)
            save_best(self.ckpt_dir, weights, epoch, val.perplexity, config)
        self.state = None
        self.parts.schedule.step(val.loss)
        self.save()
        self.recorder.summary(self._summary("running"))  # progress the ledger can read

    def fit(self) -> dict[str, Any]:
        """Train (or resume) to the end; write ``summary.json``; return the summary.

        The run directory is locked meanwhile: a second process on it raises ``RunInUse``.
        """
        with exclusive_run(self.run_dir):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        t = self.run.trainer
        done = completed_summary(self.run_dir, as_plain_dict(self.run)) if t.auto_resume else None
        if done is not None:
            log.info("%s already completed with this configuration; nothing to do", self.run_dir)
            return done
        resumed = should_resume(self.run_dir, t.resume, t.auto_resume)
        for orphan in remove_orphaned_temporaries(self.ckpt_dir):  # the lock is held
            log.info("removed %s, left by a process killed while writing it", orphan.name)
        if resumed:
            self.restore()
        elif t.stage is Stage.finetune:
            self.parts.start_from_best(str(t.init_from))
        self.progress.note_machine(this_machine(self.device))
        if self.launch is not None:
            self.launch.write(self.run_dir, resumed)
        tracker = open_tracker(self.run.logger, self.run_dir, as_plain_dict(self.run))
        self.recorder = RunRecorder(
            self.run_dir, self.progress.step, self.progress.epochs_done, tracker
        )
        self.recorder.summary(self._summary("running"))
        try:
            with self.stop.installed(), self.clock.running():
                outcome = self._train_epochs()
            return self._finish(outcome)
        finally:
            self.recorder.close()

    def _train_epochs(self) -> Outcome:
        """Epochs until the planned number, max_steps, a stop, divergence or a finished
        fine-tuning stage."""
        t, p, outcome = self.run.trainer, self.progress, Outcome.done
        while not p.finished and p.epochs_done < t.epochs:
            if t.max_steps is not None and p.step >= t.max_steps:
                break
            outcome = self._run_epoch()
            if outcome in (Outcome.stopped, Outcome.diverged):
                break
            self._end_epoch()
            if self.epoch_hook is not None and self.epoch_hook(p.epochs_done, p.last_val_ppl):
                return Outcome.pruned
            if p.finished:
                log.info("fine-tuning stopped improving after epoch %d", p.epochs_done)
            if outcome is Outcome.max_steps:
                break
        return outcome

    def _finish(self, outcome: Outcome) -> dict[str, Any]:
        """The summary of how training ended; the final evaluation when it is complete."""
        if outcome is Outcome.stopped:
            self.save()
            log.warning(
                "interrupted; resume with: trainer.resume=true hydra.run.dir=%s", self.run_dir
            )
            summary = self.recorder.summary(self._summary("interrupted"))
            self.stop.forward()
            return summary
        if outcome in (Outcome.diverged, Outcome.pruned):
            return self.recorder.summary(self._summary(outcome.value))
        if not self.score_test:
            return self.recorder.summary(self._summary("completed", {"test_scored": False}))
        final = self.averaging.eval_model(self.model).state_dict()
        splits = (self.valid_data, self.test_data, self.corpus)
        results = evaluate_run(
            self.model, final, best_weights(self.ckpt_dir), splits, self.run.eval
        )
        summary = self._summary("completed", results)
        self.recorder.final(self.progress.step, summary, results)
        return self.recorder.summary(summary)

    def _summary(self, status: str, final: dict[str, float] | None = None) -> dict[str, Any]:
        facts = dict(self.labels, device=self.device, wall_time_s=self._elapsed())
        facts |= dict(stopped_s=round(self.clock.stopped_s, 1))  # this process's, left out
        facts |= dict(git_commit=self.git_commit, backend_precision=self.backend_precision)
        facts |= dict(diverged_at_step=self.diverged_at, run_dir=str(self.run_dir))
        tokens = (self.train_data.size(0) - 1) * self.train_data.size(1)
        args = (status, self.run, self.progress, self.parts, final or {})
        return run_summary(*args, **facts, tokens_per_epoch=tokens)
