"""Chats -> token ids + loss labels through the tokenizer's chat template; packing; batches.

Which tokens carry loss is decided on the *rendered text*, not by re-tokenising pieces:

1. ``full = apply_chat_template(messages)`` is tokenised once, with character offsets.
2. For assistant turn i, ``prompt_i = render(messages[:i], add_generation_prompt=True)`` and
   ``through_i = render(messages[:i+1])``; the characters ``[len(prompt_i), len(through_i))`` of
   ``full`` are the answer *including whatever the template closes the turn with* (EOS,
   ``<|im_end|>``, ``<|eot_id|>``). Tokens overlapping that range get labels.
3. Templates that rewrite history (DeepSeek-R1 drops old ``<think>`` blocks) break the prefix
   property; then the answer text is searched in ``full`` and the special tokens right after it
   are added.
4. If a turn's labelled tokens do not end in a special token, the template does not close
   assistant turns, and the model would never learn to stop: an EOS is inserted and trained.

This works for any template (seekforge's, Llama-3's, Qwen's, a user's Jinja file) without the
``{% generation %}`` markers that HF's ``return_assistant_tokens_mask`` needs.

Packing concatenates short examples into rows of ``max_len`` tokens with ``segment_ids`` (seekforge
models: block-diagonal attention, no cross-talk between examples) and ``position_ids`` restarting
at 0 per example (HF models whose mask builder detects packed position ids). The first label of
every segment is masked so no example is trained to predict the next example's first token.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import torch

from seekforge.finetune.datasets import DataError, Example

log = logging.getLogger("seekforge.finetune")

IGNORE = -100
MARKER = "\x00seekforge-answer\x00"  # stands in for an answer when locating it
TRAIN_ON = ("assistant", "last", "all")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to learn after truncation
    eos_added: int = 0
    tokens: int = 0
    label_tokens: int = 0


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False,
           tools: list[dict] | None = None) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )


class ChatEncoder:
    """Turns :class:`Example` s into :class:`Encoded` ids/labels for one tokenizer + template."""

    def __init__(self, tokenizer, max_len: int, train_on: str = "assistant") -> None:
        if train_on not in TRAIN_ON:
            raise DataError(f"train_on must be one of {', '.join(TRAIN_ON)} (got {train_on!r})")
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(
                "sft needs a fast (Rust) tokenizer for character offsets; this one is "
                f"{type(tokenizer).__name__}. Save it with tokenizer.json (tokenizers library)."
            )
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "the tokenizer has no chat template; set 'chat_template' in the config "
                "(a Jinja file or string)"
            )
        self.tok = tokenizer
        self.max_len = max_len
        self.train_on = train_on
        self.special_ids = set(tokenizer.all_special_ids)
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        self.stats = EncodeStats()
        self._tools: list[dict] | None = None  # the tools of the example being encoded

    # -- spans --------------------------------------------------------------------------------
    def answer_spans(self, messages: list[dict[str, str]], full: str) -> list[tuple[int, int]]:
        """Character ranges of ``full`` that the model must produce (one per assistant turn)."""
        spans = []
        cursor = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = render(self.tok, messages[:i], add_generation_prompt=True, tools=self._tools)
            through = render(self.tok, messages[: i + 1], tools=self._tools)
            if full.startswith(through) and through.startswith(prompt) and len(prompt) >= cursor:
                start, end = len(prompt), len(through)
            else:
                start, end = self._marker_span(messages, i, full)
            spans.append((start, end))
            cursor = end
        return spans

    def _marker_span(self, messages: list[dict[str, str]], i: int, full: str) -> tuple[int, int]:
        """Where answer i lands in ``full`` when the template rewrites it (e.g. drops ``<think>``).

        Render the chat again with answer i replaced by a marker: the text before and after the
        marker is the same as in ``full``, so what lies between is the answer as rendered.
        """
        marked = [dict(m) for m in messages]
        marked[i]["content"] = MARKER
        text = render(self.tok, marked, tools=self._tools)
        if text.count(MARKER) != 1:
            raise DataError(
                "the chat template drops or duplicates an assistant answer; cannot tell which "
                "tokens to train. Use another template or train_on=all."
            )
        before, after = text.split(MARKER)
        if not (full.startswith(before) and full.endswith(after) and len(before) + len(after) <= len(full)):
            raise DataError(
                "the chat template renders earlier turns differently depending on later ones; "
                "cannot tell which tokens to train. Use another template or train_on=all."
            )
        start, end = len(before), len(full) - len(after)
        # Take the special tokens the template closes the turn with (EOS / end-of-turn markers).
        specials = sorted(
            (s for s in self.tok.all_special_tokens if s and s != self.tok.bos_token), key=len, reverse=True
        )
        while True:
            rest = full[end:]
            stripped = rest.lstrip(" \n")
            hit = next((s for s in specials if stripped.startswith(s)), None)
            if hit is None:
                return start, end
            end += (len(rest) - len(stripped)) + len(hit)
            if hit == self.tok.eos_token:
                return start, end

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, ex: Example) -> Encoded | None:
        """ids + labels of one example, or None if truncation left nothing to learn."""
        self.stats.examples += 1
        if ex.is_text:
            ids = self.tok(ex.text, add_special_tokens=False)["input_ids"]
            ids = ([self.bos_id] if self.bos_id is not None else []) + ids + [self.eos_id]
            labels = list(ids)
        else:
            self._tools = ex.tools  # every render of this example shows the same tool list
            ids, labels = self._encode_chat(ex.messages)
        if len(ids) > self.max_len:
            self.stats.truncated += 1
            ids, labels = ids[: self.max_len], labels[: self.max_len]
        # labels[0] is never a target (nothing precedes it), so it does not count.
        if all(label == IGNORE for label in labels[1:]):
            self.stats.dropped += 1
            return None
        self.stats.tokens += len(ids)
        self.stats.label_tokens += sum(label != IGNORE for label in labels[1:])
        return Encoded(ids, labels, ex.source)

    def _encode_chat(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        full = render(self.tok, messages, tools=self._tools)
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        if self.train_on == "all":
            return ids, list(ids)
        spans = self.answer_spans(messages, full)
        if self.train_on == "last":
            spans = spans[-1:]
        labels = [IGNORE] * len(ids)
        token_spans = []
        for start, end in spans:
            hit = [k for k, (s, e) in enumerate(offsets) if s < end and e > start]
            for k in hit:
                labels[k] = ids[k]
            if hit:
                token_spans.append((hit[0], hit[-1] + 1))
        # Insert EOS after answers whose last non-blank token is not special (walk backwards so the
        # indices of earlier spans stay valid).
        for a, b in reversed(token_spans):
            last = next(
                (
                    k
                    for k in range(b - 1, a - 1, -1)
                    if full[offsets[k][0] : offsets[k][1]].strip() or ids[k] in self.special_ids
                ),
                None,
            )
            if last is not None and ids[last] not in self.special_ids:
                ids.insert(b, self.eos_id)
                labels.insert(b, self.eos_id)
                self.stats.eos_added += 1
        return ids, labels

    def encode_all(self, examples: list[Example]) -> list[Encoded]:
        out = [e for e in (self.encode(ex) for ex in examples) if e is not None]
        s = self.stats
        if s.truncated:
            log.warning(
                "%d of %d examples were longer than max_len=%d tokens and were truncated%s; "
                "raise max_len if answers get cut",
                s.truncated,
                s.examples,
                self.max_len,
                f" ({s.dropped} lost every answer token and were dropped)" if s.dropped else "",
            )
        if s.eos_added:
            log.info(
                "the chat template does not close assistant turns with a special token; added EOS "
                "to %d turns so the model learns to stop",
                s.eos_added,
            )
        if not out:
            raise DataError(f"no example has an answer token within max_len={self.max_len}")
        return out

    def preview(self, enc: Encoded, max_chars: int = 600) -> str:
        """The example as text with the trained parts in [[double brackets]] (logged at start)."""
        pieces, run, trained = [], [], None
        for tid, lab in zip(enc.input_ids, enc.labels):
            t = lab != IGNORE
            if trained is not None and t != trained:
                pieces.append((trained, run))
                run = []
            run.append(tid)
            trained = t
        if run:
            pieces.append((trained, run))
        text = "".join(("[[" + self.tok.decode(r) + "]]") if t else self.tok.decode(r) for t, r in pieces)
        return text if len(text) <= max_chars else text[:max_chars] + "..."


# ---------------------------------------------------------------------------------------------
# Packing and batches


@dataclass
class Row:
    """One training row: one example, or several packed ones."""

    input_ids: list[int]
    labels: list[int]
    segment_ids: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def single_rows(encoded: list[Encoded]) -> list[Row]:
    return [Row(e.input_ids, e.labels, [0] * len(e), list(range(len(e)))) for e in encoded]


def pack(encoded: list[Encoded], max_len: int) -> list[Row]:
    """Best-fit-decreasing packing of examples into rows of at most ``max_len`` tokens."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = len(encoded[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_len - n, len(bins) - 1))
    rows = []
    for members in bins:
        ids, labels, seg, pos = [], [], [], []
        for s, i in enumerate(members):
            e = encoded[i]
            ids += e.input_ids
            labels += [IGNORE] + e.labels[1:]  # never predict a segment's first token from the last one
            seg += [s] * len(e)
            pos += list(range(len(e)))
        rows.append(Row(ids, labels, seg, pos))
    return rows


def collate(rows: list[Row], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad rows into tensors. Padding gets label -100, its own segment, fresh positions.

    Right padding needs no attention mask with causal attention: real tokens never look right.
    """
    T = pad_to or max(len(r) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    segment_ids = torch.zeros((B, T), dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r)
        input_ids[b, :n] = torch.tensor(r.input_ids)
        labels[b, :n] = torch.tensor(r.labels)
        segment_ids[b, :n] = torch.tensor(r.segment_ids)
        position_ids[b, :n] = torch.tensor(r.position_ids)
        if n < T:
            segment_ids[b, n:] = (max(r.segment_ids) + 1) if n else 0
            position_ids[b, n:] = torch.arange(T - n)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "segment_ids": segment_ids,
        "position_ids": position_ids,
    }
