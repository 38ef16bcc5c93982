"""Log-likelihood scoring: token pairs as lm-evaluation-harness builds them, and the models that score them.

One request is (context text, continuation text). It is tokenised exactly as lm-eval 0.4's causal
models do (``_encode_pair``): trailing whitespace of the context moves onto the continuation, then
``continuation = enc(context + continuation)[len(enc(context)):]``; ``enc`` adds the tokenizer's
default special tokens (BOS where the tokenizer adds one), unless ``add_bos`` overrides it or the
text already starts with the BOS string. A pair longer than the model's window is left-truncated
(lm-eval's ``(context + continuation)[-(max_length + 1):]``, the last token being the prediction
target only) and counted.

Every backend answers one question, :meth:`Scorer.score`: the log-probabilities of the last ``n``
tokens of each sequence given everything before them.

- :class:`LocalScorer` for models in this process. Sequences with the same input (the four
  one-token answer letters of a question) share one row; rows are batched, and
  :class:`SeekforgeScorer` runs the rows' longest common token prefix (description + few-shot
  examples) once through the model's latent MLA cache (``forward_cached``, the cache the inference
  engine decodes with), keeps it cached for the next batch, and runs only each row's own tokens
  after it. Token-identical prefixes give identical keys and values, so this is exact.
  :class:`TransformersScorer` runs any other ``transformers`` causal LM with plain right-padded
  batches (causal attention never looks at the padding to the right).
- :class:`EndpointScorer`: an OpenAI-compatible ``/v1/completions`` with ``echo`` + ``logprobs``
  (seekforge serve, vLLM), prompts sent as token ids from a local tokenizer, as lm-eval's
  ``local-completions`` model does, through the one model client (``seekforge.llm_client``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from seekforge.llm_client import LLMClient

log = logging.getLogger("seekforge.eval")


class TokenPair(NamedTuple):
    """A scored request after tokenisation and truncation: the sequence and how many tail tokens count."""

    tokens: list[int]
    n_scored: int
    truncated: bool


class Tokens:
    """lm-eval's causal ``tok_encode``/``_encode_pair`` over a transformers tokenizer."""

    def __init__(self, tokenizer: Any, add_bos: bool | None = None) -> None:
        self.tokenizer, self.add_bos = tokenizer, add_bos
        bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.bos_text = tokenizer.decode([bos_id]) if bos_id is not None else None

    def encode(self, text: str) -> list[int]:
        kwargs: dict[str, bool] = {}
        if self.add_bos is not None:
            kwargs["add_special_tokens"] = self.add_bos
        elif self.bos_text and text.startswith(self.bos_text):
            kwargs["add_special_tokens"] = False  # the text carries its own BOS: don't add a second one
        return self.tokenizer.encode(text, **kwargs)

    def pair(self, context: str, continuation: str, window: int) -> TokenPair:
        """Tokenise like lm-eval and keep the last ``window`` tokens of context + continuation."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        cont = whole[len(ctx) :]
        if not cont:
            raise ValueError(f"the continuation {continuation!r} encodes to no tokens after its context")
        tokens = ctx + cont
        if len(cont) >= window:
            raise ValueError(
                f"a continuation of {len(cont)} tokens does not fit the {window - 1}-token window"
            )
        return TokenPair(tokens[-window:], len(cont), len(tokens) > window)


class Scorer:
    """Log-probabilities of sequence tails. ``window``: tokens per sequence a pair may keep."""

    window: int
    name: str

    def score(self, pairs: Sequence[TokenPair]) -> list[list[float]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return n


# Fixed cost of one more forward, in tokens' worth of compute: on small-moe with 2 CPU threads a
# cached forward after a 450-token prefix took ~20 ms + ~0.18 ms per token (bench/eval_speed.py's setup).
BATCH_OVERHEAD_TOKENS = 100


def plan_batches(lengths: Sequence[int], max_rows: int) -> list[list[int]]:
    """Split rows into right-padded batches of at most ``max_rows`` that waste the least padding.

    Rows are sorted longest first (as lm-eval's hf model sorts its requests), then cut into
    consecutive runs by dynamic programming over the cost ``rows x longest row + overhead`` per
    batch: a few long questions no longer pad a batch of short ones to their length.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[k]: cost of the first k rows in order
    cut = [0] * (n + 1)
    for k in range(1, n + 1):
        for start in range(max(0, k - max_rows), k):
            cost = best[start] + (k - start) * lengths[order[start]] + BATCH_OVERHEAD_TOKENS
            if cost < best[k]:
                best[k], cut[k] = cost, start
    batches: list[list[int]] = []
    k = n
    while k > 0:
        batches.append(order[cut[k] : k])
        k = cut[k]
    return batches[::-1]


class LocalScorer(Scorer):
    """Scoring with a model in this process: dedupe rows, batch them, gather target log-probs."""

    def __init__(self, model: torch.nn.Module, max_length: int, batch_size: int, name: str) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.max_length = max_length
        self.window = max_length + 1  # the last token is only a target, never an input
        self.batch_size = max(1, batch_size)
        self.name = name

    @torch.inference_mode()
    def score(self, pairs: Sequence[TokenPair]) -> list[list[float]]:
        # row = model input (tokens minus the last); several pairs may share one row
        row_of: dict[tuple[tuple[int, ...], int], int] = {}
        rows: list[list[int]] = []
        n_last: list[int] = []
        pairs_of_row: list[list[int]] = []
        for j, p in enumerate(pairs):
            key = (tuple(p.tokens[:-1]), p.n_scored)
            if key not in row_of:
                row_of[key] = len(rows)
                rows.append(p.tokens[:-1])
                n_last.append(p.n_scored)
                pairs_of_row.append([])
            pairs_of_row[row_of[key]].append(j)
        out: list[list[float]] = [[] for _ in pairs]
        for batch in plan_batches([len(r) for r in rows], self.batch_size):
            logprobs = self._last_logprobs([rows[i] for i in batch], [n_last[i] for i in batch])
            for i, lp in zip(batch, logprobs):  # the row's [n, vocab] log-softmax, dropped once gathered
                for j in pairs_of_row[i]:
                    targets = torch.tensor(pairs[j].tokens[-pairs[j].n_scored :], device=lp.device)
                    out[j] = lp.gather(-1, targets[:, None])[:, 0].tolist()
        return out

    def _last_logprobs(self, rows: list[list[int]], n_last: list[int]) -> list[torch.Tensor]:
        """For each row, float32 log-softmax of its last ``n`` positions: [n, vocab]."""
        raise NotImplementedError


class TransformersScorer(LocalScorer):
    """Any ``transformers`` causal LM: one right-padded forward per batch (like lm-eval's ``hf``)."""

    def _last_logprobs(self, rows: list[list[int]], n_last: list[int]) -> list[torch.Tensor]:
        T = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=self.device)
        logits = self.model(ids).logits
        return [
            logits[i, len(r) - n : len(r)].float().log_softmax(-1)
            for i, (r, n) in enumerate(zip(rows, n_last))
        ]


class SeekforgeScorer(LocalScorer):
    """A seekforge (DeepSeek-V3) model: the batch's shared token prefix runs once in the MLA cache.

    Slot 0 of the cache holds the prefix and survives between batches: when the next batch of the
    same subject starts with the same tokens (the few-shot block), only its new tokens run. Rows use
    slots 1..B, which get a copy of the prefix latents (d_c + d_r numbers per token and layer).
    """

    def __init__(self, model: torch.nn.Module, max_length: int, batch_size: int, name: str) -> None:
        super().__init__(model, max_length, batch_size, name)
        self.cache = None
        self.cached: list[int] = []  # tokens whose latents sit in slot 0

    def _ensure_cache(self, slots: int, length: int) -> None:
        """Grow the cache when a batch needs more slots or positions, keeping slot 0's prefix."""
        old = self.cache
        if old is not None and old.num_slots >= slots and old.max_len >= length:
            return
        slots = max(slots, old.num_slots if old else 0)
        length = min(max(length, 2 * old.max_len if old else 0), self.max_length + 1)  # grow by doubling
        self.cache = self.model.new_cache(slots, length)
        if old is not None:
            for new_buf, old_buf in zip((*self.cache.kv, *self.cache.pe), (*old.kv, *old.pe)):
                new_buf[0, : old.max_len] = old_buf[0]

    def _prefill_prefix(self, prefix: list[int]) -> None:
        keep = _common_prefix([self.cached, prefix]) if self.cached else 0
        if keep == len(prefix):  # already in slot 0
            return
        if 2 * keep < len(prefix):
            # Mostly new tokens (another subject's few-shot block shares little more than BOS): a
            # prefill from position 0 runs causal SDPA over expanded heads, cheaper than attending
            # from hundreds of new tokens to the cache through the absorbed path.
            keep = 0
        new = torch.tensor([prefix[keep:]], device=self.device)
        self.model.forward_cached(
            new,
            self.cache,
            torch.tensor([0], device=self.device),
            torch.tensor([keep], device=self.device),
            with_logits=False,  # nothing is scored inside the prefix
        )
        self.cached = list(prefix)

    def _last_logprobs(self, rows: list[list[int]], n_last: list[int]) -> list[torch.Tensor]:
        B = len(rows)
        # Each row's scored positions must come after the prefix (their logits are computed below).
        P = min(_common_prefix(rows), min(len(r) - n for r, n in zip(rows, n_last)))
        self._ensure_cache(B + 1, max(len(r) for r in rows))
        slots = torch.arange(1, B + 1, device=self.device)
        if P > 0:
            self._prefill_prefix(rows[0][:P])
            for kv in (*self.cache.kv, *self.cache.pe):
                kv[1 : B + 1, :P] = kv[0, :P]
        S = max(len(r) for r in rows) - P
        ids = torch.tensor([r[P:] + [0] * (S - len(r) + P) for r in rows], device=self.device)
        hidden = self.model.forward_cached(
            ids, self.cache, slots, torch.full((B,), P, device=self.device), with_logits=False
        ).hidden
        # The head runs only at the scored positions (one per row for a one-token answer letter),
        # not at every suffix position: on a small model it costs as much as several layers.
        ends = [len(r) - P for r in rows]
        scored = torch.cat([hidden[i, end - n : end] for i, (end, n) in enumerate(zip(ends, n_last))])
        logprobs = self.model.lm_head(scored).float().log_softmax(-1)
        return list(logprobs.split(n_last))


NO_LOGPROBS = (
    "this endpoint cannot score log-likelihoods (seekforge serve and vLLM can; llama.cpp's server "
    "cannot). Use it for --gen only, or evaluate the model directory."
)


class EndpointError(ValueError):
    """The endpoint answered with an error or without what scoring needs."""


class EndpointScorer(Scorer):
    """``/v1/completions`` with ``echo`` and ``logprobs``: the prompt's own token log-probs.

    Sends token-id prompts (``max_tokens`` 1, ``temperature`` 0, as lm-eval's ``local-completions``)
    in batches of ``batch_size`` prompts, up to the client's ``concurrency`` batches in flight, all
    through :class:`seekforge.llm_client.LLMClient` (retries, budgets, cache, report). The server
    must accept token-id prompts and return prompt log-probs with echo.
    """

    def __init__(self, client: LLMClient, max_length: int, batch_size: int) -> None:
        self.client = client
        self.url = client.cfg.base_url + "/completions"
        self.window = max_length  # the echoed prompt itself must fit the server's context
        self.batch_size = max(1, batch_size)
        self.name = client.model

    def score(self, pairs: Sequence[TokenPair]) -> list[list[float]]:
        chunks = [pairs[i : i + self.batch_size] for i in range(0, len(pairs), self.batch_size)]
        workers = min(self.client.cfg.concurrency, len(chunks))
        if workers <= 1:
            return [lp for chunk in chunks for lp in self._score_chunk(chunk)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [lp for scored in pool.map(self._score_chunk, chunks) for lp in scored]

    def _score_chunk(self, chunk: Sequence[TokenPair]) -> list[list[float]]:
        from seekforge.llm_client import RequestFailed

        request = {
            "prompt": [p.tokens for p in chunk],
            "max_tokens": 1,
            "logprobs": 1,
            "echo": True,
            "temperature": 0,
        }
        try:
            reply = self.client.complete(request)
        except RequestFailed as e:
            raise EndpointError(
                f"{self.url}: {e}\nThe endpoint refused a log-likelihood request (echo=true + logprobs "
                f"over token ids): {NO_LOGPROBS}"
            ) from None
        choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(chunk):
            raise EndpointError(f"{self.url}: {len(choices)} choices for {len(chunk)} prompts")
        out = []
        for p, ch in zip(chunk, choices):
            lps = (ch.get("logprobs") or {}).get("token_logprobs")
            if not lps or len(lps) < len(p.tokens):
                raise EndpointError(
                    f"{self.url} returned no prompt log-probabilities for echo=true + logprobs: {NO_LOGPROBS}"
                )
            tail = lps[len(p.tokens) - p.n_scored : len(p.tokens)]
            if any(v is None for v in tail):
                raise EndpointError(f"{self.url}: a scored token came back without a log-probability")
            out.append([float(v) for v in tail])
        return out

    def close(self) -> None:
        self.client.close()


def scorer_class(model: torch.nn.Module) -> type[LocalScorer]:
    """The MLA-cache scorer for seekforge's DeepSeek-V3/V2 models; one full forward per batch for
    anything else (transformers models, and DeepSeek-V4, whose compressed cache cannot share a
    prefix between slots by copying it)."""
    if hasattr(model, "forward_cached") and getattr(model.config, "model_type", "") != "deepseek_v4":
        return SeekforgeScorer
    return TransformersScorer

