"""Plug-in rules: discovery checks, their settings in the variant schema, and a model that
runs one in training, evaluation and MC dropout (rnnreg/config/plugins.py, rnnreg/model/rule.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from rnnreg import RnnregError
from rnnreg.config.plugins import PluginError, check_plugin
from rnnreg.config.schema import ModelConfig, plugin_variant_schema
from rnnreg.model.lm import LanguageModel
from rnnreg.model.regularizers.masks import HeldMasks, MCDropout
from rnnreg.model.rule import LinearPoint, MaskSpec, Rule

YAML = Path(__file__).with_name("plugin_rule.yaml")


@dataclass
class SeqZoneoutSettings:
    zoneout_seq_cell: float = 0.0


class SeqZoneout(Rule):
    """Zoneout of the memory with one mask per sequence (the example's rule, cut down)."""

    name = "seq_zoneout"
    settings = SeqZoneoutSettings
    masks = (MaskSpec("cell", rate="zoneout_seq_cell", granularity="sequence", keep=True),)
    linear_point = LinearPoint.state
    conf = YAML

    def post(self, gates, h, c, z):
        h_new, c_new = super().post(gates, h, c, z)
        return h_new, c_new if z["cell"] is None else torch.lerp(c_new, c, z["cell"])


def test_an_incomplete_plugin_is_refused_with_one_line(tmp_path: Path) -> None:
    check_plugin("seq_zoneout", SeqZoneout)
    with pytest.raises(PluginError, match="make Rule.name equal"):
        check_plugin("other", SeqZoneout)

    class NoConf(SeqZoneout):
        conf = tmp_path / "missing.yaml"

    with pytest.raises(PluginError, match="variant YAML"):
        check_plugin("seq_zoneout", NoConf)

    class WrongRate(SeqZoneout):
        masks = (MaskSpec("cell", rate="zoneout_sq_cell"),)

    with pytest.raises(PluginError, match="'zoneout_sq_cell', which is not a field"):
        check_plugin("seq_zoneout", WrongRate)


def test_its_settings_join_a_closed_variant_schema() -> None:
    schema = plugin_variant_schema(SeqZoneout)
    node = OmegaConf.merge(OmegaConf.structured(schema), {"name": "seq_zoneout"})
    node.zoneout_seq_cell = 0.3
    with pytest.raises(ConfigAttributeError):
        node.zoneout_seq_cel = 0.3  # a typo fails
    variant = OmegaConf.to_object(node)
    assert variant.zoneout_seq_cell == 0.3 and variant.p_weight == 0.0
    with pytest.raises(RnnregError, match=r"variant.zoneout_seq_cell=1.5 is not a probability"):
        schema(zoneout_seq_cell=1.5)

    @dataclass
    class Clashing:
        p_hidden: float = 0.0

    class Clash(SeqZoneout):
        settings = Clashing

    with pytest.raises(RnnregError, match="already variant settings"):
        plugin_variant_schema(Clash)


def _model(**rates: float) -> LanguageModel:
    torch.manual_seed(0)
    variant = plugin_variant_schema(SeqZoneout)(name="seq_zoneout", **rates)
    config = ModelConfig(name="tiny", embedding_size=6, hidden_size=6, compile=False)
    return LanguageModel(20, config, variant)


def test_a_model_runs_the_plugin_in_training_evaluation_and_mc() -> None:
    model = _model(zoneout_seq_cell=0.5, p_output=0.3, activation_granularity="sequence")
    assert model.lstm_path == "generic"
    tokens = torch.randint(20, (7, 4))
    state = model.init_state(4)
    torch.manual_seed(1)
    first, _ = model(tokens, state)
    second, _ = model(tokens, state)
    assert not torch.allclose(first, second)  # fresh masks every pass
    model.eval()
    with torch.no_grad():
        eval_a, _ = model(tokens, state)
        eval_b, _ = model(tokens, state)
        torch.testing.assert_close(eval_a, eval_b)  # E[z] = 0.5: deterministic
        held = MCDropout(replicas=2, held=HeldMasks())
        doubled = tokens.repeat(1, 2)
        mc_a, _ = model(doubled, model.init_state(8), mc=held)
        mc_b, _ = model(doubled, model.init_state(8), mc=held)
    torch.testing.assert_close(mc_a, mc_b)  # the sample's sequence masks are held
    assert not torch.allclose(mc_a[:, :4], mc_a[:, 4:])  # two replicas, two draws
    assert not torch.allclose(mc_a[:, :4], eval_a)


def test_the_plugin_gets_gradients_through_every_parameter() -> None:
    model = _model(zoneout_seq_cell=0.5)
    logits, _ = model(torch.randint(20, (5, 3)), model.init_state(3))
    logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
