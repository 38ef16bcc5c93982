"""Per-request sampling parameters and the batched sampler of the inference engine.

Every request in the running batch has its own :class:`SamplingParams`. The sampler turns the
batch's next-token logits ``[B, V]`` into next tokens in a handful of vectorised tensor ops:

    raw logits -> (logprobs for the response, taken here: OpenAI reports the *model's* distribution)
               -> logit_bias (per-request token id -> additive bias, OpenAI's field)
               -> repetition / presence / frequency penalties   (per-slot token statistics)
               -> temperature (0 = greedy) -> top-k -> top-p -> min-p -> sample

Reproducibility: each request owns a ``torch.Generator`` seeded from its ``seed`` and draws exactly
one uniform number per sampled token, so its output does not depend on which other requests share
the batch (a single shared generator would make every result depend on the batch composition).
Sampling uses the inverse CDF with that one uniform, which keeps the rest of the work batched.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from seekforge.infer.constraints import Constraint


class InvalidParam(ValueError):
    """A request parameter is out of range. ``param`` names it (it becomes the API error's ``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class SamplingParams:
    """How to pick tokens for one request. Field names follow the OpenAI / vLLM request fields."""

    max_tokens: int | None = 256  # None: until the context is full
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF/CTRL style, on prompt + output tokens; 1 = off
    presence_penalty: float = 0.0  # OpenAI style, on output tokens
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # None = off; 0 = chosen token only; k = also the top-k alternatives
    prompt_logprobs: int | None = None  # same, for every prompt token (completions `echo` + `logprobs`)
    # Output must match this grammar (JSON object / JSON Schema / regex / EBNF), see infer/constraints.py.
    # A constrained request ends when its grammar is complete: EOS is allowed only there, ignore_eos
    # does not apply.
    constraint: Constraint | None = None
    # OpenAI's logit_bias: token id -> a bias in [-100, 100] added to its logit (-100 bans, 100 forces).
    logit_bias: dict[int, float] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`InvalidParam` for values no sampler can honour."""
        if self.max_tokens is not None and self.max_tokens < 0:
            raise InvalidParam("max_tokens", f"max_tokens must be >= 0, got {self.max_tokens}")
        checks = [
            ("temperature", 0.0 <= self.temperature <= 100.0, "between 0 and 100"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("top_k", self.top_k >= -1, "-1, 0 (off) or a positive integer"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "in [0, 1]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0, "in (0, 10]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "between -2 and 2"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "between -2 and 2"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "between 0 and 20"),
            ("prompt_logprobs", self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
             "between 0 and 20"),
        ]
        for name, ok, expected in checks:
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and math.isnan(value)):
                raise InvalidParam(name, f"{name} must be {expected}, got {value}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidParam("stop", "stop strings must be non-empty strings")
        if len(self.stop) > 16:
            raise InvalidParam("stop", f"at most 16 stop strings, got {len(self.stop)}")
        for tid, bias in self.logit_bias.items():
            if isinstance(tid, bool) or not isinstance(tid, int) or tid < 0:
                raise InvalidParam("logit_bias", f"logit_bias keys must be token ids >= 0, got {tid!r}")
            if not -100.0 <= bias <= 100.0:  # also rejects NaN
                raise InvalidParam("logit_bias", f"logit_bias values must be in [-100, 100], got {bias}")
        if self.constraint is not None:
            from seekforge.infer.constraints import Constraint

            if not isinstance(self.constraint, Constraint):
                raise InvalidParam("constraint", "constraint must be a seekforge.infer.Constraint, got "
                                   f"{type(self.constraint).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes) -> SamplingParams:
        return dataclasses.replace(self, **changes)


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and (optionally) the top alternatives, as (id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class PenaltyState:
    """Per-slot token statistics for the penalties, preallocated like the KV cache.

    ``counts[slot, v]`` = how often token v was generated; ``seen[slot, v]`` = v occurred in prompt or
    output. Keeping them per slot (instead of per request) lets one ``index_put_`` update the whole
    batch after every step. They are only allocated when a request actually uses a penalty.
    """

    def __init__(self, num_slots: int, vocab_size: int, device: torch.device) -> None:
        self.num_slots, self.vocab_size, self.device = num_slots, vocab_size, device
        self.counts: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def _ensure(self) -> None:
        if self.counts is None:
            self.counts = torch.zeros(self.num_slots, self.vocab_size, device=self.device)
            self.seen = torch.zeros(self.num_slots, self.vocab_size, dtype=torch.bool, device=self.device)

    def reset(self, slot: int, prompt_ids: list[int], params: SamplingParams) -> None:
        uses = (params.repetition_penalty != 1.0 or params.presence_penalty != 0.0
                or params.frequency_penalty != 0.0)
        if not uses and self.counts is None:
            return
        self._ensure()
        self.counts[slot].zero_()
        self.seen[slot].zero_()
        if prompt_ids:
            ids = torch.tensor(prompt_ids, device=self.device).clamp_(0, self.vocab_size - 1)
            self.seen[slot, ids] = True

    def update(self, slots: torch.Tensor, tokens: torch.Tensor) -> None:
        if self.counts is None:
            return
        self.counts.index_put_((slots, tokens), torch.ones_like(tokens, dtype=self.counts.dtype),
                               accumulate=True)
        self.seen[slots, tokens] = True


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


def apply_logit_bias(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Add each row's ``logit_bias`` (a sparse scatter: only the listed token ids move)."""
    rows = [(i, t, b) for i, p in enumerate(params) for t, b in p.logit_bias.items()]
    if not rows:
        return logits
    r, t, b = zip(*rows)
    bias = torch.zeros_like(logits)
    bias[torch.tensor(r, device=logits.device), torch.tensor(t, device=logits.device)] = \
        torch.tensor(b, dtype=logits.dtype, device=logits.device)
    return logits + bias


def apply_penalties(logits: torch.Tensor, params: list[SamplingParams], slots: torch.Tensor,
                    state: PenaltyState) -> torch.Tensor:
    if state.counts is None:
        return logits
    rep = [p.repetition_penalty for p in params]
    pres = [p.presence_penalty for p in params]
    freq = [p.frequency_penalty for p in params]
    if any(r != 1.0 for r in rep):
        r = _column(rep, logits.device)
        seen = state.seen[slots]
        # CTRL rule: shrink positive logits, push negative ones further down.
        penalised = torch.where(logits > 0, logits / r, logits * r)
        logits = torch.where(seen, penalised, logits)
    if any(pres) or any(freq):
        counts = state.counts[slots]
        logits = logits - _column(freq, logits.device) * counts \
            - _column(pres, logits.device) * (counts > 0).float()
    return logits


def filter_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p, each skipped when no row of the batch uses it.

    Greedy rows (temperature 0) are divided by 1 here; the caller takes their argmax.
    """
    device = logits.device
    temps = [p.temperature if p.temperature > 0 else 1.0 for p in params]
    if any(t != 1.0 for t in temps):
        logits = logits / _column(temps, device)
    ks = [p.top_k if p.top_k > 0 else 0 for p in params]
    if any(ks):
        kmax = min(max(ks), logits.shape[-1])
        top = torch.topk(logits, kmax, dim=-1).values
        idx = torch.tensor([min(k, kmax) - 1 if k else kmax - 1 for k in ks], device=device)
        thresh = top.gather(1, idx.unsqueeze(1))
        thresh = torch.where(torch.tensor(ks, device=device).unsqueeze(1) > 0, thresh,
                             torch.full_like(thresh, -math.inf))
        logits = logits.masked_fill(logits < thresh, -math.inf)
    if any(p.top_p < 1.0 for p in params):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass *before* it already reaches top_p (so the first always stays).
        drop = (probs.cumsum(-1) - probs) >= _column([p.top_p for p in params], device)
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(1, order, sorted_logits)
    if any(p.min_p > 0 for p in params):
        probs = logits.softmax(-1)
        floor = _column([p.min_p for p in params], device) * probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, -math.inf)
    return logits


def draw_uniforms(generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    """One U[0, 1) per row from that row's own generator."""
    return torch.stack([torch.rand((), generator=g, device=g.device) for g in generators]).to(device)


def sample_from(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row i takes the first token whose cumulative mass exceeds u_i."""
    cdf = probs.cumsum(-1)
    # Scale u by the row total instead of trusting float32 sums to reach exactly 1.
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def top_logprobs(logprobs: torch.Tensor, chosen: torch.Tensor,
                 ks: list[int | None]) -> list[TokenLogprob | None]:
    """Per row: the chosen token's logprob and its top-k alternatives (None where not requested)."""
    out: list[TokenLogprob | None] = [None] * len(ks)
    rows = [i for i, k in enumerate(ks) if k is not None]
    if not rows:
        return out
    chosen_lp = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
    kmax = max(ks[i] for i in rows)
    top_v, top_i = (torch.topk(logprobs, kmax, dim=-1) if kmax else (None, None))
    top_v = top_v.tolist() if top_v is not None else None
    top_i = top_i.tolist() if top_i is not None else None
    chosen_ids = chosen.tolist()
    for i in rows:
        k = ks[i]
        top = list(zip(top_i[i][:k], top_v[i][:k])) if k else []
        out[i] = TokenLogprob(chosen_ids[i], chosen_lp[i], top)
    return out


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [B] long
    logprobs: list[TokenLogprob | None]


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator],
           slots: torch.Tensor, penalties: PenaltyState,
           draft: torch.Tensor | None = None) -> tuple[SampleResult, torch.Tensor | None]:
    """Pick one token per row of ``logits [B, V]``.

    With ``draft [B]`` (a deterministic 1-token speculation, e.g. from the MTP head) this is the
    verification step of speculative sampling and also returns ``accepted [B] bool``. A point-mass
    draft q = δ_d gives the exact rule: accept d with probability p(d), otherwise sample from p with d
    removed — the output distribution is exactly p. For greedy rows this reduces to
    "accept iff argmax == d", so greedy output is unchanged by speculation.
    """
    want_lp = [p.logprobs for p in params]
    plain_greedy = all(p.greedy and k is None for p, k in zip(params, want_lp))
    biased = any(p.logit_bias for p in params)
    if draft is None and penalties.counts is None and plain_greedy and not biased:
        # Plain greedy batch (the common case for evaluation and bs=1 benchmarks): the argmax is the
        # whole answer, so skip the fp32 copy, filters and softmax over the vocabulary.
        return SampleResult(logits.argmax(-1), [None] * len(params)), None
    logits = logits.float()
    raw_lp = logits.log_softmax(-1) if any(k is not None for k in want_lp) else None
    logits = apply_logit_bias(logits, params)
    logits = apply_penalties(logits, params, slots, penalties)
    greedy = torch.tensor([p.greedy for p in params], device=logits.device)
    filtered = filter_logits(logits, params)
    probs = filtered.softmax(-1)
    u = draw_uniforms(generators, logits.device) if not bool(greedy.all()) else None
    accepted = None
    if draft is not None:
        p_draft = probs.gather(1, draft.unsqueeze(1)).squeeze(1)
        argmax = filtered.argmax(-1)
        if u is not None:
            accepted = torch.where(greedy, argmax == draft, u < p_draft)
            # A rejected row resamples from p without d; draw a fresh uniform for it.
            u = draw_uniforms(generators, logits.device)
        else:
            accepted = argmax == draft
        probs = probs.scatter(1, draft.unsqueeze(1), 0.0)
        filtered = filtered.scatter(1, draft.unsqueeze(1), -math.inf)
    tokens = filtered.argmax(-1)
    if u is not None:
        tokens = torch.where(greedy, tokens, sample_from(probs, u))
    if accepted is not None:
        tokens = torch.where(accepted, draft, tokens)
    lps = top_logprobs(raw_lp, tokens, want_lp) if raw_lp is not None else [None] * len(params)
    return SampleResult(tokens, lps), accepted


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A request's own RNG; unseeded requests get a random seed so they still do not share state."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return g
