"""``rnnreg verify``: every built-in variant passes, and each planted bug fails it."""

from __future__ import annotations

import pytest
import torch

from rnnreg.cli.verify import _compose, main
from rnnreg.config.schema import group_options
from rnnreg.model import recurrence, rule
from rnnreg.verification.checks import all_checks
from rnnreg.verification.runs import composition_check, resume_check

BUILTINS = [
    "awd",
    "gal",
    "gal_untied",
    "moon",
    "none",
    "semeniuta",
    "weight_drop",
    "zaremba",
    "zoneout",
]


def test_the_nine_builtins_are_the_conf_variants() -> None:
    assert set(BUILTINS) <= set(group_options("variant"))


def _failed(variant: str, *overrides: str) -> dict[str, str]:
    run = _compose([f"variant={variant}", *overrides])
    rows = [*all_checks(run.variant), composition_check(run.variant)]
    assert len(rows) >= 6
    return {row.name: row.detail for row in rows if not row.ok}


@pytest.mark.parametrize("variant", BUILTINS)
def test_every_builtin_variant_passes(variant: str) -> None:
    assert _failed(variant) == {}


def test_moon_in_memory_has_no_linear_point_and_prints_its_gap() -> None:
    run = _compose(["variant=moon", "variant.memory_scale=in_memory"])
    names = [row.name for row in all_checks(run.variant)]
    assert "gap c_t" in names and "gap h_t" in names and "evaluation h_t" not in names


def test_a_wrong_sign_in_one_backward_term_fails_the_fast_path_check(monkeypatch) -> None:
    right = recurrence.backward_steps

    def wrong(*args):
        deltas, dh, dc = right(*args)
        flip = torch.ones(4, dtype=deltas.dtype)
        flip[1] = -1.0  # δ_f with the wrong sign; (T, B, 4, H) when tied
        return deltas * flip.view(1, 1, 4, 1), dh, dc

    assert _failed("gal") == {}
    monkeypatch.setattr(recurrence, "backward_steps", wrong)
    assert list(_failed("gal")) == ["fast path"]


def _planted_draw(monkeypatch, **forced) -> None:
    right = rule.draw_activation_mask

    def planted(shape, p, granularity, **kwargs):
        granularity = forced.get("granularity", granularity)
        kwargs["scale"] = forced.get("scale", kwargs.get("scale", True))
        return right(shape, p, granularity, **kwargs)

    monkeypatch.setattr(rule, "draw_activation_mask", planted)


def test_a_mask_drawn_per_step_where_declared_per_sequence_fails(monkeypatch) -> None:
    _planted_draw(monkeypatch, granularity="step")
    failed = _failed("gal")
    assert list(failed) == ["mask hidden"]
    assert "varies over time True" in failed["mask hidden"]


def test_a_missing_scale_fails_the_kept_value_and_the_mean(monkeypatch) -> None:
    _planted_draw(monkeypatch, scale=False)
    failed = _failed("semeniuta")  # E[z] = 1 - p: evaluation (z = 1) is off as well
    assert list(failed) == ["mask update", "evaluation c_t"]
    assert "kept ≠ 1.333" in failed["mask update"]


def test_the_cli_prints_a_table_and_exits_1_on_a_failure(monkeypatch, capsys) -> None:
    assert main(["variant=zoneout", "--no-resume"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    _planted_draw(monkeypatch, scale=False)
    assert main(["variant=semeniuta", "--no-resume"]) == 1
    out = capsys.readouterr().out
    assert "| mask update | **FAIL** |" in out and "FAILED: mask update, evaluation c_t" in out


def test_bad_input_gets_one_line_and_exit_2(capsys) -> None:
    assert main(["variant=nope", "--no-resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnreg: error: unknown variant 'nope'") and "\n" not in err
    assert main(["variant=gal", "variant.p_hiden=0.2", "--no-resume"]) == 2
    assert "p_hiden" in capsys.readouterr().err
    assert main(["--fast"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["zaremba", "gal"])  # the fused path, the loop path
def test_a_killed_and_resumed_run_gives_the_same_numbers(variant: str) -> None:
    row = resume_check([f"variant={variant}"])
    assert row.ok, row.detail
