"""Pretraining data: token shards -> fixed-length packed rows, deterministic and resumable.

Packing as in DeepSeek-V3 (technical report, arXiv:2412.19437, §4.1: documents are packed into
sequences and no cross-sample attention mask is used): every epoch the documents of the split
are put in a seeded random order and concatenated
(each already starts with BOS), the stream is cut into rows of ``seq_len`` tokens after a seeded
random offset, and the rows are visited in a seeded random order. Nothing is padded or dropped
except < ``seq_len`` tokens at the ends of each epoch.

Why shuffle *rows* and not only documents: a corpus that is one big document (a novel, a .txt
file read whole) would otherwise be visited front to back, so consecutive optimizer steps would
see correlated text (nanoGPT samples random windows for the same reason). The per-epoch offset
makes later epochs of a small corpus see different cuts.

Everything is a pure function of ``(seed, absolute row index)``. The only state is the number
of rows consumed, which makes resuming exact and the world size irrelevant: optimizer step ``s``
uses global rows ``[s·R, (s+1)·R)`` (R = rows per step); rank ``r`` reads, for micro-batch ``m``,
rows ``(m·world + r)·B ...`` of that range, and nothing else ("each rank reads its own share").
1 process with 2 micro-batches and 2 processes with 1 each therefore see the same rows.
:class:`StepLoader` owns that arithmetic and the resume state for every training loader
(pretraining here, SFT and distillation in :mod:`seekforge.finetune.sft`); a loader only says
how a list of absolute row indices becomes a batch.

Evaluation reads the validation split front to back in rows that overlap by one token, so every
token except the very first is predicted exactly once; special tokens (BOS/EOS/PAD: zero bytes of
text) are not scored. The UTF-8 byte count of exactly the text scored then turns the summed loss
into bits per byte.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seekforge.data.shards import TokenShards

IGNORE_INDEX = -100


@dataclass
class _Epoch:
    doc_order: np.ndarray  # document ids in stream order
    cum: np.ndarray  # stream offset of each document in doc_order, plus the total
    offset: int  # tokens skipped at the start of the stream
    row_order: np.ndarray | None  # row visit order (None = sequential)


class PackedRows:
    """Random access to the ``seq_len``-token rows of every epoch of a token split."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int, shuffle: bool = True) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (got {seq_len})")
        self.shards, self.seq_len, self.seed, self.shuffle = shards, seq_len, seed, shuffle
        n = shards.num_tokens
        if n < 2 * seq_len:
            raise ValueError(f"{shards.path} ({shards.split}) has {n} tokens, fewer than 2 rows of seq_len "
                             f"{seq_len}: use more data or a smaller seq_len")
        starts = shards.doc_starts()
        self.doc_start = starts
        self.doc_len = np.diff(np.append(starts, n))
        self._epoch_sizes: list[int] = []  # rows per epoch, extended lazily
        self._cache: dict[int, _Epoch] = {}

    # -- layout of one epoch
    def _offset(self, epoch: int) -> int:
        if not self.shuffle:
            return 0
        return int(np.random.default_rng([self.seed, epoch, 1]).integers(self.seq_len))

    def rows_in_epoch(self, epoch: int) -> int:
        return (self.shards.num_tokens - self._offset(epoch)) // self.seq_len

    def _layout(self, epoch: int) -> _Epoch:
        if epoch not in self._cache:
            if len(self._cache) >= 2:  # keep the current and the next epoch only
                self._cache.pop(min(self._cache))
            rng = np.random.default_rng([self.seed, epoch, 0])
            n_docs = len(self.doc_len)
            order = rng.permutation(n_docs) if self.shuffle else np.arange(n_docs)
            cum = np.concatenate([[0], np.cumsum(self.doc_len[order])])
            rows = self.rows_in_epoch(epoch)
            row_order = rng.permutation(rows) if self.shuffle else None
            self._cache[epoch] = _Epoch(order, cum, self._offset(epoch), row_order)
        return self._cache[epoch]

    def locate(self, index: int) -> tuple[int, int]:
        """Absolute row index -> (epoch, row within the epoch)."""
        epoch, first = 0, 0
        while True:
            if epoch == len(self._epoch_sizes):
                self._epoch_sizes.append(self.rows_in_epoch(epoch))
            size = self._epoch_sizes[epoch]
            if index < first + size:
                return epoch, index - first
            first += size
            epoch += 1

    def row(self, index: int) -> np.ndarray:
        """The tokens of absolute row ``index`` (int64, length ``seq_len``)."""
        epoch, j = self.locate(index)
        lay = self._layout(epoch)
        if lay.row_order is not None:
            j = int(lay.row_order[j])
        pos = lay.offset + j * self.seq_len
        end = pos + self.seq_len
        out = np.empty(self.seq_len, dtype=np.int64)
        i = int(np.searchsorted(lay.cum, pos, side="right")) - 1
        filled = 0
        while pos < end:  # copy the pieces of the documents this row spans
            doc = int(lay.doc_order[i])
            inner = pos - int(lay.cum[i])
            take = min(end - pos, int(self.doc_len[doc]) - inner)
            a = int(self.doc_start[doc]) + inner
            out[filled:filled + take] = self.shards.tokens(a, a + take)
            filled += take
            pos += take
            i += 1
        return out

    def rows(self, start: int, count: int) -> np.ndarray:
        return np.stack([self.row(k) for k in range(start, start + count)])

    def epoch_of(self, index: int) -> float:
        """Fractional epoch reached after ``index`` rows (for logging)."""
        epoch, j = self.locate(index)
        return epoch + j / max(1, self._epoch_sizes[epoch])


class EvalHooks:
    """What the training loop asks every loader around evaluations; no-ops unless the loader's
    sampling depends on training (a loss-driven mixture re-weights its sources)."""

    @property
    def needs_initial_eval(self) -> bool:
        """Whether the loop should evaluate before the first step and pass the result to observe_eval."""
        return False

    def observe_eval(self, results: dict[str, Any]) -> None:
        """Called with every evaluation's results (e.g. to re-weight a mixture)."""

    def eval_record(self) -> dict[str, Any]:
        """Extra numbers logged with every evaluation (e.g. the realised mixture)."""
        return {}


class StepLoader(EvalHooks):
    """This rank's micro-batches of each optimizer step; state = global rows consumed (``position``).

    Subclasses implement :meth:`batch` (absolute row indices -> tensors), :attr:`epoch` and
    :meth:`identity` (the settings a saved position is only valid with).
    """

    def __init__(self, micro_batch_size: int, grad_accum: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> None:
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")
        self.position = 0  # global rows consumed by all ranks together

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size

    def step_indices(self) -> list[list[int]]:
        """Absolute row indices of this rank's micro-batches in the next optimizer step."""
        B = self.micro_batch_size
        firsts = [self.position + (m * self.world_size + self.rank) * B for m in range(self.grad_accum)]
        return [list(range(first, first + B)) for first in firsts]

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """The ``grad_accum`` micro-batches of the next optimizer step for this rank."""
        batches = [self._to_device(self.batch(indices)) for indices in self.step_indices()]
        self.position += self.rows_per_step
        return batches

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":  # pinned host memory: the copy overlaps with compute
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def epoch(self) -> float:
        """Fractional epoch reached (for logging)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Settings that decide which row an index means; resuming under others would repeat/skip data."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"position": self.position, **self.identity()}

    def load_state_dict(self, state: dict) -> None:
        mine = self.identity()
        saved = {k: state.get(k) for k in mine}
        if saved != mine:
            show = ", ".join
            raise ValueError(
                f"data position was saved with {show(f'{k}={v}' for k, v in saved.items())}; this run has "
                f"{show(f'{k}={v}' for k, v in mine.items())}{self.identity_hint}. Resuming would "
                "repeat/skip data: keep them equal, or start a new out_dir")
        self.position = int(state["position"])

    identity_hint = ""  # what changes the identity, for the error message


class PretrainLoader(StepLoader):
    """Packed pretraining rows; labels are the inputs (the model shifts them)."""

    def __init__(self, rows: PackedRows, micro_batch_size: int, grad_accum: int, rank: int = 0,
                 world_size: int = 1, device: torch.device | None = None) -> None:
        super().__init__(micro_batch_size, grad_accum, rank, world_size, device)
        self.rows = rows

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.stack([self.rows.row(i) for i in indices]))
        return {"input_ids": ids, "labels": ids}

    @property
    def epoch(self) -> float:
        return self.rows.epoch_of(self.position)

    def identity(self) -> dict[str, Any]:
        return {"seq_len": self.rows.seq_len, "seed": self.rows.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("sources"):  # its position counts rows of several sources, not of this one
            raise ValueError(f"data position was saved by a mixture of sources {state['sources']}; this run "
                             "has a single data.train. Resuming would repeat/skip data: use the same "
                             "data.train, or start a new out_dir")
        super().load_state_dict(state)


class MixtureLoader(StepLoader):
    """Packed rows from several sources, mixed by (possibly changing) weights.

    Each optimizer step, the step's weights (from the schedule, at progress step / max_steps) are
    turned into whole rows per source by :func:`seekforge.train.mixture.allocate_rows`; the rows
    are put in a seeded random order (so sources interleave over micro-batches and ranks), and
    source ``i`` serves its next rows from its own :class:`PackedRows` (over- or under-sampling:
    a source read faster than others simply goes through more epochs). Every rank computes the same
    plan from the same state and reads only its share of it. The state, saved in checkpoints, is
    the rows consumed per source, the carried rounding remainders, the schedule's state and the
    per-source rows at the last evaluation (for the logged mixture of each eval interval).
    """

    def __init__(self, rows: list[PackedRows], names: list[str], schedule, max_steps: int,
                 micro_batch_size: int, grad_accum: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> None:
        super().__init__(micro_batch_size, grad_accum, rank, world_size, device)
        self.sources, self.names, self.schedule, self.max_steps = rows, names, schedule, max_steps
        self.seed, self.seq_len = rows[0].seed, rows[0].seq_len
        k = len(rows)
        self.source_rows = np.zeros(k, dtype=np.int64)  # rows consumed per source
        self.carry = np.zeros(k, dtype=np.float64)  # rows owed but not yet given (rounding)
        self.rows_at_eval = np.zeros(k, dtype=np.int64)
        self._plan: list[tuple[int, int]] = []  # this step: (source, row within the source) per global row

    @property
    def step(self) -> int:
        return self.position // self.rows_per_step

    def current_weights(self) -> np.ndarray:
        return self.schedule.weights(self.step / self.max_steps)

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        from seekforge.train.mixture import allocate_rows

        counts, self.carry = allocate_rows(self.current_weights(), self.rows_per_step, self.carry)
        order = np.repeat(np.arange(len(counts)), counts)
        order = order[np.random.default_rng([self.seed, self.step, 3]).permutation(len(order))]
        seen = np.zeros_like(self.source_rows)
        plan = []
        for src in order.tolist():
            plan.append((src, int(self.source_rows[src] + seen[src])))
            seen[src] += 1
        self._plan = plan
        batches = super().next_step()
        self.source_rows += counts
        return batches

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = []
        for i in indices:
            src, j = self._plan[i - self.position]
            rows.append(self.sources[src].row(j))
        ids = torch.from_numpy(np.stack(rows))
        return {"input_ids": ids, "labels": ids}

    @property
    def epoch(self) -> float:
        """The most-repeated source's fractional epoch."""
        return max(r.epoch_of(int(n)) for r, n in zip(self.sources, self.source_rows))

    def identity(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "seed": self.seed, "sources": ",".join(self.names)}

    identity_hint = " (the sources are the names in data.train)"

    def state_dict(self) -> dict:
        return {**super().state_dict(), "source_rows": self.source_rows.tolist(),
                "carry": self.carry.tolist(), "rows_at_eval": self.rows_at_eval.tolist(),
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.source_rows = np.array(state["source_rows"], dtype=np.int64)
        self.carry = np.array(state["carry"], dtype=np.float64)
        self.rows_at_eval = np.array(state["rows_at_eval"], dtype=np.int64)
        self.schedule.load_state_dict(state["schedule"])

    # -- hooks
    @property
    def needs_initial_eval(self) -> bool:
        return self.schedule.needs_reference

    def observe_eval(self, results: dict[str, Any]) -> None:
        if not self.schedule.uses_eval:
            return
        missing = [n for n in self.names if f"val_bpb/{n}" not in results]
        if missing:
            raise ValueError(f"no validation bits/byte for source(s) {', '.join(missing)}: the loss-driven "
                             "schedule needs a val split for every source in data.train")
        self.schedule.observe(np.array([results[f"val_bpb/{n}"] for n in self.names]))

    def eval_record(self) -> dict[str, Any]:
        """Per source: target weight now, share of the tokens since the last eval, tokens so far, epoch."""
        interval = self.source_rows - self.rows_at_eval
        total = max(int(interval.sum()), 1)
        record: dict[str, Any] = {}
        for i, name in enumerate(self.names):
            record[f"mix_weight/{name}"] = float(self.current_weights()[i])
            record[f"mix_share/{name}"] = int(interval[i]) / total
            record[f"mix_tokens/{name}"] = int(self.source_rows[i]) * self.seq_len
            record[f"epoch/{name}"] = round(self.sources[i].epoch_of(int(self.source_rows[i])), 4)
        self.rows_at_eval = self.source_rows.copy()
        return record


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalSet:
    """The validation tokens that are scored, and the UTF-8 bytes of exactly their text."""

    shards: TokenShards
    num_tokens: int  # tokens [0, num_tokens) of the split are read
    num_bytes: int
    special_ids: list[int]


def make_eval_set(shards: TokenShards, max_tokens: int | None, tokenizer=None,
                  special_ids: list[int] | None = None) -> EvalSet:
    """Whole split (bytes from the manifest), or whole documents up to ``max_tokens`` (bytes by
    decoding them with the tokenizer: the manifest only has per-shard byte counts)."""
    specials = sorted({i for i in (special_ids or []) if i is not None}
                      | {i for i in (shards.bos_token_id, shards.eos_token_id) if i is not None})
    total = shards.num_tokens
    if total < 2:
        raise ValueError(f"{shards.path}: validation split {shards.split!r} has {total} tokens; nothing to "
                         "evaluate")
    if max_tokens is None or max_tokens >= total:
        return EvalSet(shards, total, shards.num_bytes, specials)
    starts = np.append(shards.doc_starts(), total)
    n_docs = max(1, int(np.searchsorted(starts, max_tokens, side="right")) - 1)
    end = int(starts[n_docs])
    if end >= total:
        return EvalSet(shards, total, shards.num_bytes, specials)
    if tokenizer is None:
        raise ValueError("eval_tokens < the validation split needs a tokenizer to count the bytes of the "
                         "evaluated documents (set `tokenizer`), or set eval_tokens: null to use the whole "
                         "split")
    nbytes = 0
    for d in range(n_docs):
        ids = shards.doc(d).tolist()
        nbytes += len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
    return EvalSet(shards, end, nbytes, specials)


def eval_batches(es: EvalSet, seq_len: int, batch_size: int,
                 pad_id: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) [B, T]: rows overlap by one token so targets tile positions 1..N-1."""
    stride = seq_len - 1
    n_rows = math.ceil((es.num_tokens - 1) / stride)
    special = torch.tensor(es.special_ids, dtype=torch.long)
    for b0 in range(0, n_rows, batch_size):
        rows = []
        for r in range(b0, min(n_rows, b0 + batch_size)):
            a = r * stride
            piece = es.shards.tokens(a, min(a + seq_len, es.num_tokens))
            rows.append(torch.from_numpy(piece.astype(np.int64)))
        ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            labels[i, : len(r)] = r
        if len(special):
            labels[torch.isin(labels, special)] = IGNORE_INDEX
        yield ids, labels
