"""Upstream's time-series diffusion transformer (minGPT-style decoder with a condition encoder).

The attention layers mirror ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
with ``batch_first=True, norm_first=True, activation='gelu'``, down to their parameter names
(``self_attn.in_proj_weight`` packs q, k, v), so upstream checkpoints load unchanged.
"""

import logging
import math

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from diffusion_policy_mlx.model.common.activation import Mish
from diffusion_policy_mlx.model.diffusion.positional_embedding import SinusoidalPosEmb

logger = logging.getLogger(__name__)


def _additive_mask(allowed: mx.array) -> mx.array:
    """Boolean "may attend" -> torch's additive float mask (0 where allowed, -inf elsewhere)."""
    return mx.where(allowed, mx.array(0.0), mx.array(-math.inf))


class MultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention(batch_first=True)`` with the same parameter names.

    ``query`` (B, L, E), ``key``/``value`` (B, S, E), ``mask`` additive (L, S) or None
    -> (B, L, E). ``dropout`` applies to the attention weights in training mode.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"MultiheadAttention: embed_dim={embed_dim} is not divisible by "
                f"num_heads={num_heads}"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        # torch's own init: xavier-uniform packed projection, zero biases.
        bound = math.sqrt(6.0 / (embed_dim + 3 * embed_dim))
        self.in_proj_weight = mx.random.uniform(-bound, bound, (3 * embed_dim, embed_dim))
        self.in_proj_bias = mx.zeros((3 * embed_dim,))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj.bias = mx.zeros((embed_dim,))
        self.attn_drop = nn.Dropout(dropout)

    def __call__(
        self, query: mx.array, key: mx.array, value: mx.array, mask: mx.array | None = None
    ) -> mx.array:
        e = self.embed_dim
        if query is key and key is value:
            # Self-attention: one matmul with the packed projection.
            q, k, v = mx.split(
                mx.addmm(self.in_proj_bias, query, self.in_proj_weight.T), 3, axis=-1
            )
        else:
            w, b = self.in_proj_weight, self.in_proj_bias
            q = mx.addmm(b[:e], query, w[:e].T)
            if key is value:
                k, v = mx.split(mx.addmm(b[e:], key, w[e:].T), 2, axis=-1)
            else:
                k = mx.addmm(b[e : 2 * e], key, w[e : 2 * e].T)
                v = mx.addmm(b[2 * e :], value, w[2 * e :].T)

        batch, n_q, n_kv = query.shape[0], query.shape[1], key.shape[1]
        head_dim = e // self.num_heads
        q = q.reshape(batch, n_q, self.num_heads, head_dim).transpose(0, 2, 1, 3)
        k = k.reshape(batch, n_kv, self.num_heads, head_dim).transpose(0, 2, 1, 3)
        v = v.reshape(batch, n_kv, self.num_heads, head_dim).transpose(0, 2, 1, 3)
        scale = head_dim**-0.5

        if self.training and self.dropout > 0:
            # The fused kernel has no dropout on the attention weights; spell it out.
            scores = (q * scale) @ k.transpose(0, 1, 3, 2)
            if mask is not None:
                scores = scores + mask
            weights = self.attn_drop(mx.softmax(scores, axis=-1, precise=True))
            out = weights @ v
        else:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(batch, n_q, e)
        return self.out_proj(out)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm self-attention + GELU feed-forward block, torch-named. (B, L, E) -> (B, L, E)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        h = self.norm1(x)
        x = x + self.dropout1(self.self_attn(h, h, h, mask))
        h = self.linear2(self.dropout(nn.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout2(h)


class TransformerDecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to ``memory`` and feed-forward, torch-named.

    ``x`` (B, L, E), ``memory`` (B, S, E), masks additive (L, L) / (L, S) -> (B, L, E).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def __call__(
        self,
        x: mx.array,
        memory: mx.array,
        tgt_mask: mx.array | None = None,
        memory_mask: mx.array | None = None,
    ) -> mx.array:
        h = self.norm1(x)
        x = x + self.dropout1(self.self_attn(h, h, h, tgt_mask))
        x = x + self.dropout2(self.multihead_attn(self.norm2(x), memory, memory, memory_mask))
        h = self.linear2(self.dropout(nn.gelu(self.linear1(self.norm3(x)))))
        return x + self.dropout3(h)


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerEncoderLayer` (names ``layers.i.*``), no final norm."""

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = [TransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers)]

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class TransformerDecoder(nn.Module):
    """A stack of :class:`TransformerDecoderLayer` (names ``layers.i.*``), no final norm."""

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = [TransformerDecoderLayer(**layer_kwargs) for _ in range(num_layers)]

    def __call__(
        self,
        x: mx.array,
        memory: mx.array,
        tgt_mask: mx.array | None = None,
        memory_mask: mx.array | None = None,
    ) -> mx.array:
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask)
        return x


class TransformerForDiffusion(nn.Module):
    """Denoiser over action sequences: a transformer conditioned on the step and observations.

    ``__call__(sample (B, T, input_dim), timestep (B,) or scalar, cond (B, To, cond_dim) = None)
    -> (B, T, output_dim)``, ``T <= horizon``, ``To <= n_obs_steps``.

    With ``time_as_cond`` (default) the diffusion step (and, if ``cond_dim > 0``, one token per
    observation step) forms the memory of a decoder over the action tokens; the memory passes
    through an MLP, or through ``n_cond_layers`` encoder layers. Without it, the step is a
    prefix token of a BERT-style encoder. ``causal_attn`` lets token ``t`` see only tokens
    ``<= t`` and observation tokens up to ``t + 1``. As upstream, ``obs_as_cond`` is implied by
    ``cond_dim > 0`` whatever is passed.

    The causal masks are stored (frozen) as ``mask`` / ``memory_mask`` like upstream's buffers,
    so they appear in the state_dict exactly as upstream's do.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        horizon: int,
        n_obs_steps: int | None = None,
        cond_dim: int = 0,
        n_layer: int = 12,
        n_head: int = 12,
        n_emb: int = 768,
        p_drop_emb: float = 0.1,
        p_drop_attn: float = 0.1,
        causal_attn: bool = False,
        time_as_cond: bool = True,
        obs_as_cond: bool = False,
        n_cond_layers: int = 0,
    ):
        super().__init__()
        if n_obs_steps is None:
            n_obs_steps = horizon

        t_main = horizon
        t_cond = 1
        if not time_as_cond:
            t_main += 1
            t_cond -= 1
        obs_as_cond = cond_dim > 0
        if obs_as_cond:
            if not time_as_cond:
                raise ValueError(
                    "TransformerForDiffusion: cond_dim > 0 (observations as condition) "
                    "requires time_as_cond=True"
                )
            t_cond += n_obs_steps

        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = mx.zeros((1, t_main, n_emb))
        self.drop = nn.Dropout(p_drop_emb)

        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if obs_as_cond else None

        layer_kwargs = {
            "d_model": n_emb,
            "nhead": n_head,
            "dim_feedforward": 4 * n_emb,
            "dropout": p_drop_attn,
        }
        self.cond_pos_emb = None
        self.decoder = None
        encoder_only = t_cond == 0
        if not encoder_only:
            self.cond_pos_emb = mx.zeros((1, t_cond, n_emb))
            if n_cond_layers > 0:
                self.encoder = TransformerEncoder(n_cond_layers, **layer_kwargs)
            else:
                # Names encoder.0 / encoder.2, like upstream's Sequential(Linear, Mish, Linear).
                self.encoder = [nn.Linear(n_emb, 4 * n_emb), Mish(), nn.Linear(4 * n_emb, n_emb)]
            self.decoder = TransformerDecoder(n_layer, **layer_kwargs)
        else:
            self.encoder = TransformerEncoder(n_layer, **layer_kwargs)

        self.mask = None
        self.memory_mask = None
        if causal_attn:
            steps = mx.arange(t_main)
            self.mask = _additive_mask(steps[:, None] >= steps[None, :])
            if time_as_cond and obs_as_cond:
                # Memory token s is observation s-1 (token 0 is the time step).
                self.memory_mask = _additive_mask(steps[:, None] >= mx.arange(t_cond)[None, :] - 1)
            # Buffers, not parameters: saved and loaded, never trained.
            self.freeze(keys=["mask", "memory_mask"], recurse=False, strict=False)

        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, output_dim)

        self.T = t_main
        self.T_cond = t_cond
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.time_as_cond = time_as_cond
        self.obs_as_cond = obs_as_cond
        self.encoder_only = encoder_only
        self.n_cond_layers = n_cond_layers

        self._init_weights()
        logger.info(
            "number of parameters: %e",
            sum(v.size for _, v in tree_flatten(self.trainable_parameters())),
        )

    def _init_weights(self) -> None:
        """Upstream's init: N(0, 0.02) weights, zero biases, unit LayerNorms (MLX's default)."""
        normal = nn.init.normal(std=0.02)
        for _, m in self.named_modules():
            if isinstance(m, nn.Linear):
                m.update({"weight": normal(m.weight), "bias": mx.zeros_like(m.bias)})
            elif isinstance(m, MultiheadAttention):
                m.update(
                    {
                        "in_proj_weight": normal(m.in_proj_weight),
                        "in_proj_bias": mx.zeros_like(m.in_proj_bias),
                    }
                )
        self.pos_emb = normal(self.pos_emb)
        # Upstream draws cond_pos_emb only when observations are a condition; else it stays 0.
        if self.cond_obs_emb is not None:
            self.cond_pos_emb = normal(self.cond_pos_emb)

    def get_optim_groups(self, weight_decay: float = 1e-3) -> list[dict]:
        """Upstream's weight-decay split, as parameter names (paths of ``trainable_parameters``).

        Weights of Linear and attention layers decay; biases, LayerNorm weights and the
        position embeddings do not. Returns ``[{"params": [names], "weight_decay":
        weight_decay}, {"params": [names], "weight_decay": 0.0}]``.
        """
        trainable = {k for k, _ in tree_flatten(self.trainable_parameters())}
        decay, no_decay = set(), set()
        for mn, m in self.named_modules():
            for pn, value in m.items():
                fpn = f"{mn}.{pn}" if mn else pn
                if not isinstance(value, mx.array) or fpn not in trainable:
                    continue
                if pn.endswith("bias"):
                    no_decay.add(fpn)
                elif pn.endswith("weight") and isinstance(m, nn.Linear | MultiheadAttention):
                    decay.add(fpn)
                elif pn.endswith("weight") and isinstance(m, nn.LayerNorm | nn.Embedding):
                    no_decay.add(fpn)
        no_decay.add("pos_emb")
        if self.cond_pos_emb is not None:
            no_decay.add("cond_pos_emb")
        unassigned = trainable - decay - no_decay
        if unassigned or decay & no_decay:
            raise RuntimeError(
                f"TransformerForDiffusion.get_optim_groups: parameters without a weight-decay "
                f"group {sorted(unassigned)} or in both {sorted(decay & no_decay)}"
            )
        return [
            {"params": sorted(decay), "weight_decay": weight_decay},
            {"params": sorted(no_decay), "weight_decay": 0.0},
        ]

    def configure_optimizers(
        self,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
    ) -> optim.MultiOptimizer:
        """AdamW applying :meth:`get_optim_groups`'s split, for ``optimizer.update(self, grads)``.

        Two torch-equivalent AdamW (bias-corrected, decoupled decay) behind an
        ``mlx.optimizers.MultiOptimizer`` that routes each parameter by its path.
        """
        decay_group, _ = self.get_optim_groups(weight_decay=weight_decay)
        decay_names = frozenset(decay_group["params"])

        def adamw(wd: float) -> optim.AdamW:
            return optim.AdamW(
                learning_rate=learning_rate,
                betas=list(betas),
                weight_decay=wd,
                bias_correction=True,
            )

        return optim.MultiOptimizer(
            [adamw(weight_decay), adamw(0.0)], filters=[lambda path, _: path in decay_names]
        )

    def __call__(
        self,
        sample: mx.array,
        timestep: mx.array | int | float,
        cond: mx.array | None = None,
        **kwargs,
    ) -> mx.array:
        self._check_inputs(sample, cond)
        t = timestep if isinstance(timestep, mx.array) else mx.array(timestep)
        time_emb = self.time_emb(mx.broadcast_to(t, (sample.shape[0],)))[:, None, :]
        input_emb = self.input_emb(sample)
        n = sample.shape[1]

        if self.encoder_only:
            x = mx.concatenate([time_emb, input_emb], axis=1)
            x = self.drop(x + self.pos_emb[:, : n + 1])
            mask = None if self.mask is None else self.mask[: n + 1, : n + 1]
            x = self.encoder(x, mask)[:, 1:]
        else:
            c = time_emb
            if self.obs_as_cond:
                c = mx.concatenate([c, self.cond_obs_emb(cond)], axis=1)
            n_cond = c.shape[1]
            c = self.drop(c + self.cond_pos_emb[:, :n_cond])
            if self.n_cond_layers > 0:
                memory = self.encoder(c)
            else:
                memory = c
                for layer in self.encoder:
                    memory = layer(memory)
            x = self.drop(input_emb + self.pos_emb[:, :n])
            mask = None if self.mask is None else self.mask[:n, :n]
            memory_mask = None if self.memory_mask is None else self.memory_mask[:n, :n_cond]
            x = self.decoder(x, memory, tgt_mask=mask, memory_mask=memory_mask)

        return self.head(self.ln_f(x))

    def _check_inputs(self, sample: mx.array, cond: mx.array | None) -> None:
        if sample.ndim != 3 or sample.shape[-1] != self.input_emb.weight.shape[1]:
            raise ValueError(
                f"TransformerForDiffusion: sample must be (B, T, "
                f"input_dim={self.input_emb.weight.shape[1]}), got {tuple(sample.shape)}"
            )
        if sample.shape[1] > self.horizon:
            raise ValueError(
                f"TransformerForDiffusion: sample has {sample.shape[1]} steps, more than "
                f"horizon={self.horizon}"
            )
        if self.obs_as_cond:
            if cond is None or cond.ndim != 3 or cond.shape[1] > self.n_obs_steps:
                raise ValueError(
                    f"TransformerForDiffusion: cond must be (B, To <= n_obs_steps="
                    f"{self.n_obs_steps}, cond_dim), got "
                    f"{'None' if cond is None else tuple(cond.shape)}"
                )
