"""Settings dataclasses built in Python take an enum's name (or value) as a string and
turn it into the member, or refuse it with one line: before, a string stayed a string and
an ``is`` comparison with the member silently took the other branch."""

from __future__ import annotations

import pytest

from rnnreg import RnnregError
from rnnreg.config.dropout import Granularity, InStepDropout, LayerDropout, MemoryScale
from rnnreg.config.schema import (
    CacheConfig,
    CompileMode,
    EvalConfig,
    LoggerConfig,
    LoggerName,
    MaskDraw,
    ModelConfig,
    OptimConfig,
    Precision,
    Schedule,
    Similarity,
    TrainerConfig,
    VariantConfig,
)
from rnnreg.config.tune import Pruner, TuneConfig

CASES = [
    (
        InStepDropout,
        {"memory_scale": "on_output", "p_memory": 0.5},
        "memory_scale",
        MemoryScale.on_output,
        "layer",
    ),
    (
        LayerDropout,
        {"hidden_granularity": "batch"},
        "hidden_granularity",
        Granularity.batch,
        "variant",
    ),
    (
        VariantConfig,
        {"activation_granularity": "step"},
        "activation_granularity",
        Granularity.step,
        "variant",
    ),
    (
        ModelConfig,
        {"name": "m", "compile_mode": "reduce-overhead"},
        "compile_mode",
        CompileMode.reduce_overhead,
        "model",
    ),
    (OptimConfig, {"schedule": "plateau"}, "schedule", Schedule.plateau, "optim"),
    (TrainerConfig, {"precision": "bf16"}, "precision", Precision.bf16, "trainer"),
    (EvalConfig, {"mc_mask_draw": "stream"}, "mc_mask_draw", MaskDraw.stream, "eval"),
    (CacheConfig, {"similarity": "cosine"}, "similarity", Similarity.cosine, "eval.cache"),
    (LoggerConfig, {"name": "mlflow"}, "name", LoggerName.mlflow, "logger"),
    (TuneConfig, {"pruner": "median"}, "pruner", Pruner.median, "tune"),
]


@pytest.mark.parametrize(
    "cls, given, field, member, owner", CASES, ids=[case[0].__name__ for case in CASES]
)
def test_an_enum_given_as_its_name_becomes_the_member_or_is_refused_in_one_line(
    cls, given, field, member, owner
) -> None:
    settings = cls(**given)
    assert getattr(settings, field) is member
    bad = dict(given, **{field: "sideways"})
    with pytest.raises(RnnregError) as refused:
        cls(**bad)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{owner}.{field}='sideways'")
    assert member.value in message  # the choices are listed


def test_a_string_memory_scale_runs_the_form_it_names() -> None:
    """InStepDropout(memory_scale="on_output") is the on_output layer: the same settings,
    hash and loop key as the member (before, the string ran the in_memory form)."""
    import torch

    from rnnreg.model.lstm import LSTMLayer

    by_name = InStepDropout(p_memory=0.5, memory_scale="on_output")
    by_member = InStepDropout(p_memory=0.5, memory_scale=MemoryScale.on_output)
    other = InStepDropout(p_memory=0.5, memory_scale=MemoryScale.in_memory)
    assert by_name == by_member and hash(by_name) == hash(by_member)

    def train_output(settings: InStepDropout) -> torch.Tensor:
        torch.manual_seed(0)
        layer = LSTMLayer(4, 6, settings).train()
        x = torch.randn(5, 3, 4)
        state = (torch.zeros(1, 3, 6), torch.ones(1, 3, 6))
        torch.manual_seed(1)
        return layer(x, state)[0]

    assert torch.equal(train_output(by_name), train_output(by_member))
    assert not torch.allclose(train_output(by_name), train_output(other))
