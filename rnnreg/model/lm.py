"""The language model wiring: embedding -> LSTM (or GRU) layers -> decoder, with the masks
between.

    e_t       = (E ∘ z_embedding)[w_t]                   (p_embedding, word types, per
                                                          pass or per row and window)
    x^1_t     = e_t ∘ z_input                             (p_input)
    h^l_t     = LSTM_l(x^l_t, h^l_{t-1}, c^l_{t-1})        (in-step masks: rnnreg.model.lstm;
                                                          model.cell=gru: rnnreg.model.gru)
    x^{l+1}_t = h^l_t ∘ z_between                         (p_between)
    y_t       = D (h^L_t ∘ z_output) + b_D                (p_output)

Each layer is its own single-layer LSTM so regularizers can sit between layers. With
untied gate masks the input masks z_input / z_between move inside the layers (one per
gate); tied, they are one mask applied here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from rnnreg.config.schema import (
    Cell,
    GateMasks,
    InitScheme,
    ModelConfig,
    Precision,
    VariantConfig,
    plugin_settings,
)
from rnnreg.core.precision import autocast
from rnnreg.model.gru import GRULayer
from rnnreg.model.layer import RecurrentLayer
from rnnreg.model.lstm import InStepDropout, LSTMLayer
from rnnreg.model.regularizers import ActivationDropout
from rnnreg.model.regularizers.embedding import embed_with_type_dropout
from rnnreg.model.regularizers.masks import MCDropout, rng_state, set_rng_state
from rnnreg.model.regularizers.pool import MaskPlan, pooled, recording
from rnnreg.model.rule import Rule

State = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Activations:
    """The last layer's output h^L (T, B, H) and h^L ∘ z_output, filled by a forward pass."""

    last: torch.Tensor | None = None
    last_dropped: torch.Tensor | None = None


def in_step_dropout(variant: VariantConfig, layer_index: int) -> InStepDropout:
    """What layer ``layer_index`` (0-based) drops inside itself under ``variant``."""
    return InStepDropout.for_layer(
        variant,
        p_input=variant.p_input if layer_index == 0 else variant.p_between,
        granularity=variant.activation_granularity,
        untied=variant.gate_masks is GateMasks.untied,
    )


def plugin_rule(variant: VariantConfig) -> Rule | None:
    """The plug-in rule of ``variant`` with its settings (rnnreg/config/plugins.py), or
    None for a built-in variant."""
    settings = plugin_settings(variant)
    return None if settings is None else type(variant).rule(settings)  # type: ignore[attr-defined]


class LanguageModel(nn.Module):
    """An LSTM language model whose regularization is given by a :class:`VariantConfig`."""

    def __init__(
        self,
        vocab_size: int,
        model: ModelConfig,
        variant: VariantConfig,
        precision: Precision = Precision.fp32,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        #: Every forward runs under :func:`rnnreg.core.precision.autocast` of this precision.
        self.precision = precision
        self.p_embedding = variant.p_embedding
        self.embedding_granularity = variant.embedding_granularity
        self.embedding = nn.Embedding(vocab_size, model.embedding_size)
        output_sizes = [model.hidden_size] * (model.num_layers - 1) + [model.output_size]
        input_sizes = [model.embedding_size, *output_sizes[:-1]]
        layer_type: type[RecurrentLayer] = GRULayer if model.cell is Cell.gru else LSTMLayer
        self.cell = model.cell
        self.layers = nn.ModuleList(
            layer_type(
                n_in, n_out, in_step_dropout(variant, index), model.lstm_impl, plugin_rule(variant)
            )
            for index, (n_in, n_out) in enumerate(zip(input_sizes, output_sizes, strict=True))
        )
        if model.compile:
            mode = model.compile_mode.value
            options = {} if mode == "default" else {"mode": mode}
            block = model.compile_block or 35  # the trainer passes its window's length
            for layer in self.layers:
                layer.compile_loop(block=block, **options)
        untied = variant.gate_masks is GateMasks.untied
        granularity = variant.activation_granularity
        self.input_dropout = ActivationDropout(
            0.0 if untied else variant.p_input, granularity, variant.scale
        )
        self.between_dropout = ActivationDropout(
            0.0 if untied else variant.p_between, granularity, variant.scale
        )
        self.output_dropout = ActivationDropout(variant.p_output, granularity, variant.scale)
        self.decoder = nn.Linear(model.output_size, vocab_size)
        if model.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters(model.init_range, model.init_scheme)
        #: The masks a training window of each shape draws (rnnreg/model/regularizers/pool.py).
        self._mask_plans: dict[tuple[tuple[int, ...], torch.device], MaskPlan] = {}

    @property
    def lstm_path(self) -> str:
        """``fused``, ``loop``, ``generic``, or ``mixed`` when layers differ."""
        paths = {layer.path.value for layer in self.layers}
        return paths.pop() if len(paths) == 1 else "mixed"

    @property
    def loop_mode(self) -> str | None:
        """``compiled`` / ``eager`` for the loop path's training (``mixed`` when layers
        differ: one fell back to eager); None on the fused path."""
        modes = {layer.loop_mode for layer in self.layers} - {None}
        if not modes:
            return None
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def compilations(self) -> int:
        """Graphs compiled for the loop path's layers (layers of one configuration share)."""
        shared = {layer._trained.key: layer for layer in self.layers}
        return sum(layer.compilations for layer in shared.values())

    def reset_parameters(self, init_range: float, scheme: InitScheme = InitScheme.uniform) -> None:
        """Initialise as the papers do (see :class:`InitScheme`)."""
        with torch.no_grad():
            if scheme is InitScheme.uniform:
                for parameter in self.parameters():
                    parameter.uniform_(-init_range, init_range)
                return
            self.embedding.weight.uniform_(-init_range, init_range)
            self.decoder.weight.uniform_(-init_range, init_range)
            self.decoder.bias.zero_()
            for layer in self.layers:
                layer.rnn.reset_parameters()  # U(-1/sqrt(H), 1/sqrt(H))

    def init_state(self, batch_size: int) -> State:
        """Zero (h, c) for every layer, each of shape (1, B, H); a GRU's c is empty,
        (1, B, 0): it has no memory cell (rnnreg/model/gru.py)."""
        weight = self.decoder.weight
        return [
            (
                weight.new_zeros(1, batch_size, layer.hidden_size),
                weight.new_zeros(1, batch_size, 0 if layer.cell == "gru" else layer.hidden_size),
            )
            for layer in self.layers
        ]

    def forward(
        self,
        tokens: torch.Tensor,
        state: State,
        activations: Activations | None = None,
        mc: MCDropout | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Logits (T, B, V) for ``tokens`` (T, B), and the state after the last step.

        ``activations``, when given, receives the last layer's output before and after
        its output mask (for AR/TAR). ``mc`` (MC-dropout evaluation) keeps the masks on
        outside training; see :class:`~rnnreg.model.regularizers.masks.MCDropout`.
        Under ``bf16`` the products run in bfloat16 (``rnnreg/core/precision.py``); the logits
        and ``activations`` come back in fp32, so the loss is computed in fp32.
        """
        if any(layer._trained.cudagraphs for layer in self.layers):
            torch.compiler.cudagraph_mark_step_begin()  # a window: a new round of replays
        with autocast(self.precision, tokens.device.type), self._masks_at_once(tokens, state, mc):
            logits, new_state = self._forward(tokens, state, activations, mc)
        if self.precision is Precision.bf16:
            logits = logits.float()
            if activations is not None:
                assert activations.last is not None and activations.last_dropped is not None
                activations.last = activations.last.float()
                activations.last_dropped = activations.last_dropped.float()
        return logits, new_state

    def _masks_at_once(
        self, tokens: torch.Tensor, state: State, mc: MCDropout | None
    ) -> contextlib.AbstractContextManager[object]:
        """A training forward pass draws all its masks in one random draw
        (rnnreg/model/regularizers/pool.py): the plan of a window shape is recorded once,
        by a forward pass up to the decoder whose draws are put back (the generators' state
        restored). MC
        evaluation and CUDA graphs draw each mask on its own."""
        cudagraphs = any(getattr(layer._trained, "cudagraphs", False) for layer in self.layers)
        if not self.training or mc is not None or cudagraphs:
            return contextlib.nullcontext()
        key = (tuple(tokens.shape), tokens.device)
        if key not in self._mask_plans:
            saved = rng_state()
            try:
                with recording() as recorder:
                    self._forward(tokens, state, None, None, decode=False)
            finally:
                set_rng_state(saved)
            self._mask_plans[key] = MaskPlan(recorder.draws)
        plan = self._mask_plans[key]
        return pooled(plan) if plan.poolable else contextlib.nullcontext()

    def _forward(
        self,
        tokens: torch.Tensor,
        state: State,
        activations: Activations | None,
        mc: MCDropout | None,
        decode: bool = True,
    ) -> tuple[torch.Tensor, State]:
        """Logits and the new state; ``decode=False`` stops before the decoder (which draws
        no mask) and returns the dropped last output instead (recording a mask plan)."""
        embedded = embed_with_type_dropout(
            self.embedding,
            tokens,
            self.p_embedding,
            training=self.training or (mc is not None and mc.embedding),
            granularity=self.embedding_granularity,
            replicas=1 if mc is None else mc.replicas,
            held=None if mc is None else mc.held,
        )
        x = self.input_dropout(embedded, mc=_scope(mc, "input"))
        new_state: State = []
        for index, layer in enumerate(self.layers):
            if index > 0:
                x = self.between_dropout(x, mc=_scope(mc, ("between", index)))
            x, (h, c) = layer(x, state[index], mc=_scope(mc, ("layer", index)))
            new_state.append((h, c))
        dropped = self.output_dropout(x, mc=_scope(mc, "output"))
        if activations is not None:
            activations.last, activations.last_dropped = x, dropped
        return (self.decoder(dropped) if decode else dropped), new_state


def _scope(mc: MCDropout | None, key: object) -> MCDropout | None:
    """Each module's own held masks within one MC sample."""
    return None if mc is None else mc.scope(key)


def detach_state(state: State) -> State:
    """Cut the graph between BPTT windows; the values are carried on."""
    return [(h.detach(), c.detach()) for h, c in state]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, a tied matrix counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
