"""Pruning: unstructured magnitude, structured FFN channels / attention heads, routed experts; iterative.

* ``magnitude``: zero the smallest-|w| weights of the decoder layers' matrices (the quantization
  targets plus ``kv_b_proj``: every linear and routed expert; embeddings, head, router and norms are
  kept), over all of them at once (``scope="global"``) or the same fraction per matrix (``"layer"``).
  The matrices keep their shape: the file does not shrink (sparse storage is not implemented).
* ``structured``: remove whole SwiGLU channels, ranked by ``|gate row|_1 + |up row|_1 + |down
  column|_1``: the dense MLPs lose ``ratio`` of ``intermediate_size``, every routed expert and the
  shared experts the same number of their own ``moe_intermediate_size`` channels (transformers'
  DeepseekV3 config has one width for all experts, so each expert keeps its own best channels but
  the same count). The matrices become smaller and ``config.json`` records the new widths.
  ``structure="heads"`` (or ``"both"``) removes whole attention heads instead (or as well), ranked
  by the L1 mass of each head's query rows, ``kv_b_proj`` rows and ``o_proj`` columns (MLA: the
  latent projections are shared by all heads and stay); ``num_attention_heads`` shrinks.
* ``experts``: drop the least-used routed experts of each MoE layer, counted by the router on
  calibration text (DeepSeek's node-limited routing needs equal groups, so the same number is
  dropped from each of the ``n_group`` groups). The router rows and ``e_score_correction_bias`` are
  re-indexed and ``n_routed_experts`` updated.

Iterative pruning (Han et al. 2015, arXiv:1506.02626; Zhu & Gupta 2017, arXiv:1710.01878): K rounds of
a smaller step, each followed by a short recovery run of the pretraining trainer on the given text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from seekforge.compress.data import TokenWindows
from seekforge.config import ConfigError, closest
from seekforge.model.model import RoutedExperts

METHODS = ("magnitude", "structured", "experts")
STRUCTURES = ("ffn", "heads", "both")


@dataclass
class PruneSettings:
    method: str = "magnitude"
    ratio: float = 0.25  # final fraction removed
    scope: str = "global"  # magnitude: global | layer
    structure: str = "ffn"  # structured: ffn (SwiGLU channels) | heads (attention heads) | both
    iterations: int = 1
    recover_steps: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            near = closest(self.method, METHODS)
            hint = f" Did you mean {near!r}?" if near else ""
            raise ConfigError(f"unknown pruning method {self.method!r}.{hint} Choose one of: "
                              f"{', '.join(METHODS)}")
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"ratio must be in (0, 1) (the fraction to remove), got {self.ratio}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if self.structure not in STRUCTURES:
            raise ConfigError(f"structure must be one of {', '.join(STRUCTURES)}, got {self.structure!r}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.recover_steps < 0:
            raise ConfigError(f"recover_steps must be >= 0, got {self.recover_steps}")

    def step_ratio(self, round_index: int) -> float:
        """Fraction of what is left to remove in round ``round_index`` (0-based) so that after all
        rounds ``ratio`` is gone: the kept fraction shrinks geometrically."""
        keep_after = (1 - self.ratio) ** ((round_index + 1) / self.iterations)
        keep_before = (1 - self.ratio) ** (round_index / self.iterations)
        return 1 - keep_after / keep_before


# =============================================================================================
# magnitude
# =============================================================================================


def prunable_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Decoder-layer matrices: linear weights and stacked expert weights."""
    out = {}
    for name, mod in model.named_modules():
        if not name.startswith("model.layers."):
            continue
        if type(mod) is nn.Linear:
            out[f"{name}.weight"] = mod.weight
        elif isinstance(mod, RoutedExperts):  # the reference class or the kernels subclass
            out[f"{name}.gate_up_proj"] = mod.gate_up_proj
            out[f"{name}.down_proj"] = mod.down_proj
    return out


@torch.no_grad()
def magnitude_prune(model: nn.Module, ratio: float, scope: str = "global") -> float:
    """Zero the fraction ``ratio`` of smallest-|w| entries (counting already-zero ones); returns the
    achieved sparsity of the prunable matrices."""
    tensors = prunable_tensors(model)
    if scope == "global":
        flat = torch.cat([t.detach().abs().flatten().float() for t in tensors.values()])
        k = int(ratio * flat.numel())
        threshold = flat.kthvalue(k).values if k > 0 else torch.tensor(-1.0)
        for t in tensors.values():
            t.masked_fill_(t.abs() <= threshold.to(t.dtype), 0)
    else:
        for t in tensors.values():
            k = int(ratio * t.numel())
            if k > 0:
                threshold = t.abs().flatten().float().kthvalue(k).values
                t.masked_fill_(t.abs() <= threshold.to(t.dtype), 0)
    return sparsity(model)


def sparsity(model: nn.Module) -> float:
    tensors = prunable_tensors(model)
    zeros = sum(int((t == 0).sum()) for t in tensors.values())
    return zeros / max(sum(t.numel() for t in tensors.values()), 1)


# =============================================================================================
# structured (FFN channels)
# =============================================================================================


def _keep_channels(gate: Tensor, up: Tensor, down: Tensor, keep: int) -> Tensor:
    """Indices (sorted) of the ``keep`` SwiGLU channels with the largest L1 weight mass."""
    score = gate.abs().sum(-1).float() + up.abs().sum(-1).float() + down.abs().sum(0).float()
    return score.topk(keep).indices.sort().values


@torch.no_grad()
def _shrink_mlp(mlp: nn.Module, keep: int) -> None:
    idx = _keep_channels(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, keep)
    for name in ("gate_proj", "up_proj"):
        old = getattr(mlp, name)
        new = nn.Linear(old.in_features, keep, bias=False, device=old.weight.device, dtype=old.weight.dtype)
        new.weight.copy_(old.weight[idx])
        setattr(mlp, name, new)
    old = mlp.down_proj
    new = nn.Linear(keep, old.out_features, bias=False, device=old.weight.device, dtype=old.weight.dtype)
    new.weight.copy_(old.weight[:, idx])
    mlp.down_proj = new


@torch.no_grad()
def _shrink_experts(experts: nn.Module, keep: int) -> None:
    E, two_i, d = experts.gate_up_proj.shape
    I = two_i // 2
    gate_up, down = [], []
    for e in range(E):
        gate, up = experts.gate_up_proj[e, :I], experts.gate_up_proj[e, I:]
        idx = _keep_channels(gate, up, experts.down_proj[e], keep)
        gate_up.append(torch.cat([gate[idx], up[idx]]))
        down.append(experts.down_proj[e][:, idx])
    experts.gate_up_proj = nn.Parameter(torch.stack(gate_up))
    experts.down_proj = nn.Parameter(torch.stack(down))


def structured_prune(model: nn.Module, ratio: float) -> None:
    """Remove ``ratio`` of the FFN channels (dense MLPs, shared and routed experts); updates config."""
    cfg = model.config
    dense_keep = max(1, round(cfg.intermediate_size * (1 - ratio)))
    moe_keep = max(1, round(cfg.moe_intermediate_size * (1 - ratio)))
    for layer in model.model.layers:
        if not layer.is_moe:
            _shrink_mlp(layer.mlp, dense_keep)
            continue
        _shrink_experts(layer.mlp.experts, moe_keep)
        if hasattr(layer.mlp, "shared_experts"):
            _shrink_mlp(layer.mlp.shared_experts, moe_keep * cfg.n_shared_experts)
    model.config = dataclasses.replace(cfg, intermediate_size=dense_keep, moe_intermediate_size=moe_keep)
    _share_config(model)


def _head_scores(attn: nn.Module) -> Tensor:
    """L1 weight mass of each MLA head: its query rows (``q_b_proj`` or ``q_proj``: d_n + d_r per
    head), its ``kv_b_proj`` rows (W_UK and W_UV: d_n + d_v) and its ``o_proj`` input columns (d_v)."""
    H = attn.n_heads
    q = (attn.q_b_proj if attn.q_lora_rank is not None else attn.q_proj).weight
    o = attn.o_proj.weight
    return (q.view(H, -1).abs().sum(-1).float() + attn.kv_b_proj.weight.view(H, -1).abs().sum(-1).float()
            + o.view(o.shape[0], H, -1).abs().sum((0, 2)).float())


def _linear_from(weight: Tensor) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    return new


@torch.no_grad()
def _shrink_heads(attn: nn.Module, keep: int) -> None:
    """Keep the ``keep`` heads with the largest L1 mass (each layer its own); the shared latent
    projections (q_a, kv_a) and the per-head sizes are unchanged."""
    H = attn.n_heads
    idx = _head_scores(attn).topk(keep).indices.sort().values
    name = "q_b_proj" if attn.q_lora_rank is not None else "q_proj"
    q = getattr(attn, name).weight
    setattr(attn, name, _linear_from(q.view(H, -1, q.shape[1])[idx].reshape(-1, q.shape[1])))
    kv = attn.kv_b_proj.weight
    attn.kv_b_proj = _linear_from(kv.view(H, -1, kv.shape[1])[idx].reshape(-1, kv.shape[1]))
    o = attn.o_proj.weight
    attn.o_proj = _linear_from(o.view(o.shape[0], H, -1)[:, idx].reshape(o.shape[0], -1))
    attn.n_heads = keep


def prune_heads(model: nn.Module, ratio: float) -> None:
    """Remove ``ratio`` of the attention heads of every layer (main and MTP; the config has one head
    count, so every layer keeps the same number, each its own best by L1 mass); updates config."""
    cfg = model.config
    keep = max(1, round(cfg.num_attention_heads * (1 - ratio)))
    if keep == cfg.num_attention_heads:
        raise ValueError(f"ratio {ratio} removes no head of {cfg.num_attention_heads}; use a larger ratio")
    for layer in model.model.layers:
        _shrink_heads(layer.self_attn, keep)
    model.config = dataclasses.replace(cfg, num_attention_heads=keep)
    _share_config(model)


def _share_config(model: nn.Module) -> None:
    """Modules that hold the config (router, MoE, rope) must see the updated one."""
    for mod in model.modules():
        if mod is not model and hasattr(mod, "cfg"):
            mod.cfg = model.config


# =============================================================================================
# experts
# =============================================================================================


@torch.no_grad()
def expert_usage(model: nn.Module, batches: list[Tensor]) -> Tensor:
    """Tokens routed to each expert, [n_moe_layers, E], main layers then MTP layers (the MTP modules
    run through the training forward with labels)."""
    device = next(model.parameters()).device
    total = None
    for ids in batches:
        ids = ids[None].to(device)
        loads = model(ids, labels=ids).expert_loads.float().cpu()
        total = loads if total is None else total + loads
    return total


def experts_to_drop(cfg, ratio: float) -> int:
    """Experts removed per layer: a multiple of n_group (equal groups), routing still possible."""
    E, G = cfg.n_routed_experts, max(cfg.n_group, 1)
    drop = round(E * ratio / G) * G
    if drop == 0:
        raise ValueError(f"ratio {ratio} removes no expert: with n_routed_experts={E} and n_group={G} "
                         f"the same number must go from every group, so the smallest step is {G / E:.3g}")
    per_group_left = (E - drop) // G
    if per_group_left < 2 and G > 1 and cfg.topk_method == "noaux_tc":
        raise ValueError(f"ratio {ratio} leaves {per_group_left} expert per group; group scoring needs >= 2")
    if min(cfg.topk_group, G) * per_group_left < cfg.num_experts_per_tok:
        raise ValueError(f"ratio {ratio} leaves too few experts for num_experts_per_tok="
                         f"{cfg.num_experts_per_tok} (topk_group={cfg.topk_group} groups of "
                         f"{per_group_left})")
    return drop


def expert_rounds(cfg, ratio: float, iterations: int) -> list[int]:
    """Experts dropped per layer in each round: whole steps of n_group, spread over the rounds."""
    G = max(cfg.n_group, 1)
    steps = experts_to_drop(cfg, ratio) // G
    if steps < iterations:
        raise ValueError(f"experts: {steps * G} experts to drop cannot be split into {iterations} rounds "
                         f"of whole groups (n_group={G}); use --iterations {max(steps, 1)} or less")
    return [G * (steps * (i + 1) // iterations - steps * i // iterations) for i in range(iterations)]


@torch.no_grad()
def expert_prune(model: nn.Module, drop: int, batches: list[Tensor]) -> Tensor:
    """Drop ``drop`` least-used experts per layer (drop / n_group from each group); returns the usage
    that decided it."""
    cfg = model.config
    usage = expert_usage(model, batches)
    E, G = cfg.n_routed_experts, max(cfg.n_group, 1)
    size = E // G
    for layer, load in zip(model.moe_layers, usage):
        keep = []
        for g in range(G):
            group = load[g * size : (g + 1) * size]
            keep += (group.topk(size - drop // G).indices.sort().values + g * size).tolist()
        keep_t = torch.tensor(keep, device=layer.mlp.gate.weight.device)
        experts, gate = layer.mlp.experts, layer.mlp.gate
        experts.gate_up_proj = nn.Parameter(experts.gate_up_proj[keep_t].clone())
        experts.down_proj = nn.Parameter(experts.down_proj[keep_t].clone())
        gate.weight = nn.Parameter(gate.weight[keep_t].clone())
        gate.e_score_correction_bias = gate.e_score_correction_bias[keep_t].clone()
        gate.n_experts = E - drop
    model.config = dataclasses.replace(cfg, n_routed_experts=E - drop)
    _share_config(model)
    return usage


# =============================================================================================
# rounds with recovery
# =============================================================================================


@dataclass
class PruneReport:
    """What one ``prune`` run did (printed by the CLI)."""

    params_before: int
    params_after: int  # non-zero parameters for magnitude pruning
    bpb_before: float | None
    bpb_after: float | None
    sparsity: float | None = None  # magnitude: zero fraction of the prunable matrices
    n_routed_experts: int | None = None


def nonzero_parameters(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def recover(model: nn.Module, tokenizer_dir: Path, data: str, steps: int, work: Path,
            lr: float = 3e-4) -> nn.Module:
    """A short pretraining run (the one trainer loop) from ``model`` on the text ``data``."""
    from seekforge.config import load_config
    from seekforge.model import load_model, save_model
    from seekforge.train.config import QUIET_RUN, TrainConfig
    from seekforge.train.objective import PretrainObjective
    from seekforge.train.trainer import Trainer

    start = save_model(model, work / "start", tokenizer=tokenizer_dir)
    overrides = [*QUIET_RUN, f"model={start}", f"tokenizer={start}", f"data.train={data}",
                 f"max_steps={steps}", f"out_dir={work / 'run'}", f"lr={lr}", "warmup_steps=0", "seq_len=256",
                 "micro_batch_size=4", "batch_tokens=1024", "log_every=1000"]
    summary = Trainer(load_config(TrainConfig, None, overrides), PretrainObjective()).run()
    return load_model(summary["checkpoint"], device="cpu", dtype=torch.float32)


def prune_model(model: nn.Module, settings: PruneSettings, windows: TokenWindows | None = None,
                data: str | None = None, tokenizer_dir: Path | None = None,
                work: Path | None = None, lr: float = 3e-4) -> tuple[nn.Module, PruneReport]:
    """All rounds of ``settings`` (with recovery runs when ``recover_steps`` > 0)."""
    from seekforge.compress.data import bits_per_byte

    settings.validate()
    if settings.method == "experts" and windows is None:
        raise ValueError("method experts needs calibration text (--data PATH) to count expert usage")
    if settings.recover_steps and not data:
        raise ValueError("--recover-steps needs --data PATH (the text to recover on)")
    before = bits_per_byte(model, windows) if windows else None
    params_before = model.num_parameters()
    experts = settings.method == "experts"
    drops = expert_rounds(model.config, settings.ratio, settings.iterations) if experts else []
    for i in range(settings.iterations):
        if settings.method == "magnitude":
            target = 1 - (1 - settings.ratio) ** ((i + 1) / settings.iterations)
            magnitude_prune(model, target, settings.scope)
        elif settings.method == "structured":
            if settings.structure in ("ffn", "both"):
                structured_prune(model, settings.step_ratio(i))
            if settings.structure in ("heads", "both"):
                prune_heads(model, settings.step_ratio(i))
        else:
            expert_prune(model, drops[i], windows.rows)
        if settings.recover_steps:
            magnitude = settings.method == "magnitude"
            mask = {k: t == 0 for k, t in prunable_tensors(model).items()} if magnitude else {}
            model = recover(model, tokenizer_dir, data, settings.recover_steps, work / f"round{i}", lr)
            with torch.no_grad():  # recovery may regrow pruned weights: keep them pruned
                for k, t in prunable_tensors(model).items():
                    if k in mask:
                        t.masked_fill_(mask[k], 0)
    after = bits_per_byte(model, windows) if windows else None
    magnitude = settings.method == "magnitude"
    report = PruneReport(params_before, nonzero_parameters(model) if magnitude else model.num_parameters(),
                         before, after, sparsity(model) if magnitude else None, model.config.n_routed_experts)
    return model, report


__all__ = ["METHODS", "STRUCTURES", "PruneSettings", "PruneReport", "prune_model", "recover",
           "magnitude_prune", "structured_prune", "prune_heads", "expert_prune", "expert_usage",
           "expert_rounds", "experts_to_drop", "sparsity", "prunable_tensors", "nonzero_parameters"]
