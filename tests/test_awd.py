"""AWD-LSTM: model size, AR/TAR, variable BPTT, NT-ASGD, fine-tuning."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch

from rnnreg import RnnregError
from rnnreg.data.batching import variable_bptt_length
from rnnreg.evaluation.perplexity import Evaluation
from rnnreg.model.lm import LanguageModel, count_parameters
from rnnreg.model.regularizers.activations import activation_regularization
from rnnreg.records.checkpoint import BEST, LAST, load_checkpoint
from rnnreg.training.averaging import NonMonotoneAveraging
from rnnreg.training.trainer import Trainer
from tests.conftest import at_step, write_tiny_corpus


def test_awd_model_has_the_papers_24m_parameters(make_config) -> None:
    run = make_config("experiment=awd_ptb", "model.embedding_size=400", "model.hidden_size=1150")
    model = LanguageModel(10_000, run.model, run.variant)
    assert count_parameters(model) == 24_221_600
    assert model.decoder.weight is model.embedding.weight
    assert [layer.hidden_size for layer in model.layers] == [1150, 1150, 400]
    assert model.lstm_path == "fused"  # weight-drop keeps the library kernel
    assert model.embedding.weight.abs().max() <= 0.1
    assert torch.all(model.decoder.bias == 0)
    for layer in model.layers:  # U(-1/sqrt(H), 1/sqrt(H))
        bound = 1 / math.sqrt(layer.hidden_size)
        assert layer.lstm.weight_hh_l0.abs().max() <= bound
        assert layer.lstm.weight_hh_l0.abs().max() > 0.9 * bound


def test_awd_variant_and_optimizer_settings() -> None:
    from hydra import compose, initialize_config_dir

    from rnnreg.config.schema import CONF_DIR, to_run_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = to_run_config(compose("config", overrides=["experiment=awd_ptb"]))
    v = run.variant
    assert (v.p_weight, v.p_embedding, v.p_input, v.p_between, v.p_output) == (
        0.5,
        0.1,
        0.4,
        0.25,
        0.4,
    )
    assert v.activation_granularity.value == "sequence" and (v.ar_alpha, v.tar_beta) == (2, 1)
    o = run.optim
    assert (o.lr, o.weight_decay, o.clip_grad_norm, o.nonmono) == (30.0, 1.2e-6, 0.25, 5)
    assert not o.loss_sum_over_time and o.averaging.value == "nonmonotone"
    assert run.trainer.variable_bptt and run.trainer.bptt == 70
    assert (run.eval.batch_size, run.eval.test_batch_size) == (10, 1)


def test_ar_and_tar_equal_hand_computed_values() -> None:
    last = torch.tensor([[[1.0, 2.0]], [[3.0, 5.0]]])  # (T=2, B=1, H=2)
    dropped = torch.tensor([[[2.0, 0.0]], [[0.0, 10.0]]])
    # AR = α · mean(4, 0, 0, 100) = 26 α ; TAR = β · mean((3-1)², (5-2)²) = 6.5 β
    ar, tar = activation_regularization(last, dropped, 2.0, 1.0)
    assert (ar.item(), tar.item()) == (pytest.approx(52.0), pytest.approx(6.5))
    ar, tar = activation_regularization(last, dropped, 0.0, 0.5)
    assert (ar.item(), tar.item()) == (0.0, pytest.approx(3.25))


def test_variable_bptt_lengths_follow_the_distribution() -> None:
    rng = random.Random(0)
    lengths = [variable_bptt_length(rng, 70) for _ in range(40_000)]
    short = sum(length < 52 for length in lengths) / len(lengths)  # the bptt/2 branch
    assert 0.04 < short < 0.06
    mean = sum(lengths) / len(lengths)
    assert abs(mean - (0.95 * 70 + 0.05 * 35 - 0.5)) < 0.15  # int() truncates: -0.5 on average
    assert min(variable_bptt_length(rng, 8) for _ in range(5000)) == 5  # never below 5


def test_variable_bptt_truncates_the_sampled_length_as_awd_does() -> None:
    """AWD's main.py: seq_len = max(5, int(np.random.normal(bptt, 5))), not rounded."""
    ours, theirs = random.Random(3), random.Random(3)
    for _ in range(2000):
        base = 70 if theirs.random() < 0.95 else 35
        assert variable_bptt_length(ours, 70) == max(5, int(theirs.gauss(base, 5)))


def test_variable_bptt_scales_the_learning_rate_of_the_step(make_config, tmp_path, monkeypatch):
    trainer = Trainer(
        make_config(
            "trainer.variable_bptt=true",
            "optim.loss_sum_over_time=false",
            "trainer.bptt=10",
            "trainer.max_steps=30",
        ),
        tmp_path / "run",
    )
    seen = []  # the step hook sees the scaled rate, once per step (FiniteSGD.finite_step)
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))])  # plain SGD's step hooked too
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"])
    )
    lengths = []
    next_length = trainer._next_length

    def remember():
        lengths.append(next_length())
        return lengths[-1]

    monkeypatch.setattr(trainer, "_next_length", remember)
    trainer.fit()
    assert len(set(lengths)) > 3
    assert seen == pytest.approx([length / 10 for length in lengths[: len(seen)]])
    assert trainer.optimizer.param_groups[0]["lr"] == 1.0  # the schedule's rate is untouched


def test_nonmonotone_trigger_follows_the_rule() -> None:
    losses = [5.0, 4.0, 3.0, 2.9, 2.8, 2.7, 2.6, 2.95, 2.65, 3.1, 2.0]
    averaging = NonMonotoneAveraging(nonmono=5)
    model = torch.nn.Linear(2, 2)
    switched = [averaging.observe(loss, epoch, model) for epoch, loss in enumerate(losses, 1)]
    # epoch 8: 2.95 > min(5, 4)? no. epoch 10: 3.1 > min(5, 4, 3, 2.9) = 2.9: yes
    assert switched.index(True) == 9 and sum(switched) == 1
    assert averaging.switch_epoch == 10 and averaging.active


def test_averaged_weights_are_the_mean_of_the_iterates_after_the_switch() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    averaging = NonMonotoneAveraging(nonmono=5)
    averaging.start(model, epoch=3)
    for value in (2.0, 4.0, 9.0):
        with torch.no_grad():
            model.weight.fill_(value)
        averaging.update(model)
    evaluated = averaging.eval_model(model)
    assert evaluated is not model
    assert evaluated.weight.item() == pytest.approx(5.0)
    assert model.weight.item() == 9.0  # the trained weights are untouched


def scripted_validation(monkeypatch, losses: list[float]) -> list[torch.nn.Module]:
    """Make the trainer's validations return ``losses`` in turn (then 1.0, for the test
    split); record which model each evaluation was given."""
    evaluated: list[torch.nn.Module] = []
    queue = list(losses)

    def fake_evaluate(model, source, bptt):
        evaluated.append(model)
        return Evaluation((queue.pop(0) if queue else 1.0) * 100, 100)

    monkeypatch.setattr("rnnreg.training.trainer.evaluate", fake_evaluate)
    return evaluated


NTASGD = ("optim=ntasgd", "optim.lr=1", "optim.nonmono=1", "trainer.epochs=5")
#: With nonmono = 1: epoch 3 (2.5) is not worse than min(3.0); epoch 4 (2.4) is worse than
#: min(3.0, 2.0): averaging starts after epoch 4, and epoch 5 trains and evaluates averaged.
LOSSES = [3.0, 2.0, 2.5, 2.4, 2.3]


def test_trainer_switches_and_evaluates_and_saves_averaged_weights(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    evaluated = scripted_validation(monkeypatch, LOSSES)
    trainer = Trainer(make_config(*NTASGD), tmp_path / "run")
    summary = trainer.fit()
    assert summary["asgd_switch_epoch"] == 4
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["averaged"] for row in rows] == ["0", "0", "0", "0", "1"]
    assert [row["asgd_switch_epoch"] for row in rows] == ["", "", "", "4", "4"]
    averaged = trainer.averaging.averaged
    assert averaged is not None
    assert evaluated[3] is trainer.model and evaluated[4] is averaged.module
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / BEST)
    assert best["epoch"] == 2  # loss 2.0, before the switch
    # the averaged weights differ from the last iterate
    assert any(
        not torch.equal(a, b)
        for a, b in zip(averaged.module.parameters(), trainer.model.parameters(), strict=True)
    )


def test_resume_after_the_switch_continues_averaging(make_config, tmp_path, monkeypatch):
    losses = LOSSES
    scripted_validation(monkeypatch, losses)
    Trainer(make_config(*NTASGD), tmp_path / "whole").fit()
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / LAST)

    scripted_validation(monkeypatch, losses)
    # step 450: inside epoch 5, after the switch
    original = at_step(monkeypatch, 450, lambda trainer: setattr(trainer.stop, "signal", 15))
    cut = Trainer(make_config(*NTASGD), tmp_path / "cut").fit()
    assert cut["status"] == "interrupted" and cut["asgd_switch_epoch"] == 4
    assert cut["epochs"] == 4
    monkeypatch.setattr(Trainer, "_train_step", original)
    scripted_validation(monkeypatch, losses[4:])
    Trainer(make_config(*NTASGD, "trainer.resume=true"), tmp_path / "cut").fit()
    resumed = load_checkpoint(tmp_path / "cut" / "checkpoints" / LAST)
    assert (
        resumed["averaging"]["averaged"]["n_averaged"]
        == whole["averaging"]["averaged"]["n_averaged"]
    )
    for key, value in whole["averaging"]["averaged"].items():
        assert torch.equal(resumed["averaging"]["averaged"][key], value), key


def test_finetune_starts_from_the_given_weights(make_config, tmp_path: Path) -> None:
    Trainer(make_config("trainer.epochs=1"), tmp_path / "trained").fit()
    trained = load_checkpoint(tmp_path / "trained" / "checkpoints" / BEST)["model"]
    finetune = Trainer(
        make_config(
            "optim=ntasgd",
            "optim.lr=1",
            "trainer.stage=finetune",
            f"trainer.init_from={tmp_path / 'trained'}",
            "trainer.epochs=3",
        ),
        tmp_path / "finetune",
    )
    finetune.parts.start_from_best(str(tmp_path / "trained"))
    for key, value in finetune.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert finetune.averaging.active
    finetune.parts.averaging = NonMonotoneAveraging(finetune.run.optim.nonmono)  # fit() starts it
    summary = finetune.fit()
    assert summary["status"] == "completed" and summary["stage"] == "finetune"
    with open(tmp_path / "finetune" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["averaged"] for row in rows} == {"1"}
    assert {row["asgd_switch_epoch"] for row in rows} == {"0"}  # averaged from the start
    data = json.loads((tmp_path / "finetune" / "summary.json").read_text())
    assert data["init_from"] == str(tmp_path / "trained")


def test_finetune_stops_by_the_nonmonotone_rule(make_config, tmp_path, monkeypatch) -> None:
    Trainer(make_config("trainer.epochs=1"), tmp_path / "trained").fit()
    scripted_validation(monkeypatch, [2.0, 1.9, 2.1, 1.0, 1.0])
    summary = Trainer(
        make_config(
            "optim=ntasgd",
            "optim.lr=1",
            "optim.nonmono=1",
            "trainer.stage=finetune",
            f"trainer.init_from={tmp_path / 'trained'}",
            "trainer.epochs=5",
        ),
        tmp_path / "finetune",
    ).fit()
    assert summary["epochs"] == 3  # 2.1 > min(2.0): stop after the third epoch


def test_finetune_needs_a_source(make_config) -> None:
    with pytest.raises(RnnregError, match="init_from"):
        make_config("trainer.stage=finetune")


def test_wikitext2_preset_reads_its_files(make_config, tmp_path: Path) -> None:
    root = tmp_path / "wt"
    write_tiny_corpus(root, name="wikitext2")
    run = make_config("dataset=wikitext2", f"dataset.data_dir={root}", "trainer.max_steps=2")
    summary = Trainer(run, tmp_path / "run").fit()
    assert summary["dataset"] == "wikitext2" and summary["status"] == "completed"


def test_ar_and_tar_are_logged(make_config, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = make_config("variant=awd", "trainer.max_steps=10", "trainer.log_every_steps=5")
    Trainer(run, tmp_path / "run").fit()
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    ar = [e.value for e in events.Scalars("train/ar")]
    tar = [e.value for e in events.Scalars("train/tar")]
    assert len(ar) == len(tar) == 2 and all(v > 0 for v in ar + tar)


def test_variable_bptt_and_evaluation_run_compiled_a_bounded_number_of_times(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    """The loop is compiled in blocks, so an epoch of variable-length windows, the short
    last window, validation, test and MC evaluation reuse a few compilations."""
    lengths: list[int] = []
    original = Trainer._next_length

    def record(self):
        lengths.append(original(self))
        return lengths[-1]

    monkeypatch.setattr(Trainer, "_next_length", record)
    run = make_config(
        "variant=gal",
        "trainer.variable_bptt=true",
        "optim.loss_sum_over_time=false",
        "trainer.epochs=2",
        "eval.mc_samples=2",
    )
    trainer = Trainer(run, tmp_path / "run")
    for layer in trainer.model.layers:
        # the trainer's ladder (blocks of 8, 5, 1); dynamo counts graphs whatever the backend
        layer.compile_loop(block=run.trainer.bptt, backend="eager")
    summary = trainer.fit()
    assert summary["loop_mode"] == "compiled"
    assert len(set(lengths)) >= 10  # window lengths: each one compiled anew before
    # for each of the 3 block lengths (8, 5, 1): training's forward and backward (batch
    # dynamic), and evaluation without masks at batch > 1 (dynamic), at batch 1 (a size of
    # 1 is always specialized) and with MC masks: 3 x (1 + 1 + 3)
    assert 0 < summary["compilations"] <= 15, summary["compilations"]


def test_variable_bptt_with_the_loss_summed_over_time_is_refused(make_config) -> None:
    """Both would scale the step by the window length L: one line says so."""
    from rnnreg import RnnregError

    with pytest.raises(RnnregError, match="count twice"):
        make_config("trainer.variable_bptt=true", "optim.loss_sum_over_time=true")
    make_config("trainer.variable_bptt=true", "optim.loss_sum_over_time=false")
