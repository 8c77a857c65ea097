"""Variational zoneout: zoneout (Krueger et al. 2017) with one mask per sequence.

Each unit keeps its previous value for the whole BPTT window with probability
``zoneout_seq_cell`` (memory) or ``zoneout_seq_hidden`` (output), one mask per batch row
held over the window, as Gal's variational masks are:

    ĉ_t = f ∘ c_{t-1} + i ∘ g,            ĥ_t = o ∘ tanh(ĉ_t)
    c_t = z^c ∘ c_{t-1} + (1 - z^c) ∘ ĉ_t,  h_t = z^h ∘ h_{t-1} + (1 - z^h) ∘ ĥ_t

with z^c, z^h ~ Bernoulli(rate), (1, B, H). At evaluation z is its expectation, the rate.
On a GRU (``model.cell=gru``), which has no memory, only z^h acts, on its update h̃_t:

    h_t = z^h ∘ h_{t-1} + (1 - z^h) ∘ h̃_t
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rnnreg.model.rule import Gates, GRUGates, LinearPoint, Masks, MaskSpec, Rule

HERE = Path(__file__).parent


@dataclass
class VariationalZoneoutSettings:
    """The rule's settings: they join ``variant.*`` (``variant.zoneout_seq_cell=0.3``)."""

    zoneout_seq_cell: float = 0.0
    zoneout_seq_hidden: float = 0.0


class VariationalZoneout(Rule):
    name = "variational_zoneout"
    cells = ("lstm", "gru")
    settings = VariationalZoneoutSettings
    masks = (
        MaskSpec("cell", rate="zoneout_seq_cell", granularity="sequence", keep=True),
        MaskSpec("hidden", rate="zoneout_seq_hidden", granularity="sequence", keep=True),
    )
    linear_point = LinearPoint.state
    conf = HERE / "variational_zoneout.yaml"
    space = HERE / "space.yaml"

    def check_cell(self, cell: str) -> None:
        if cell == "gru" and self.values.zoneout_seq_cell > 0:
            raise ValueError("a GRU has no memory cell; set variant.zoneout_seq_cell=0")

    def post(
        self, gates: Gates, h: torch.Tensor, c: torch.Tensor, z: Masks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h_new, c_new = super().post(gates, h, c, z)  # the plain LSTM: ĥ_t, ĉ_t
        if z["cell"] is not None:
            c_new = torch.lerp(c_new, c, z["cell"])  # z c + (1 - z) ĉ
        if z["hidden"] is not None:
            h_new = torch.lerp(h_new, h, z["hidden"])
        return h_new, c_new

    def post_gru(self, gates: GRUGates, h: torch.Tensor, z: Masks) -> torch.Tensor:
        h_new = super().post_gru(gates, h, z)  # the plain GRU: h̃_t
        return h_new if z["hidden"] is None else torch.lerp(h_new, h, z["hidden"])
