"""Streaming text out of a token stream: incremental detokenization and stop strings.

Two footguns this file exists for:

* **Split characters.** A byte-level BPE token can end in the middle of a UTF-8 character
  (a Chinese character is 3 bytes and often spans two tokens). Decoding such a prefix yields
  U+FFFD. :class:`IncrementalDecoder` holds text back until the character is complete, so a
  streamed chunk never contains half a character (and never a spurious "�").
* **Stop strings across tokens.** ``stop=["\\n\\nUser:"]`` may arrive as ``"\\n"``, ``"\\nUs"``,
  ``"er:"``. :class:`StopMatcher` holds back any tail that could still become a stop string and
  never emits the stop text itself.

Decoding always includes a few tokens of left context, because SentencePiece-style decoders drop a
leading space when a sequence starts at a word piece ("▁the" alone decodes to "the").
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turns token ids, one at a time, into text pieces whose concatenation is the full decode."""

    def __init__(self, tokenizer, context_ids: list[int] | None = None,
                 skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids: list[int] = list(context_ids or [])[-4:]  # left context only, never emitted
        self.prefix = 0  # ids[prefix:read] = context already turned into text
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special,
                                     clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add a token; return the newly completed text (often "", e.g. after half a character)."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        full = self._decode(self.ids[self.prefix:])
        if len(full) > len(before) and not full.endswith(REPLACEMENT):
            new = full[len(before):]
            # Keep a short window: decoding stays O(1) per token instead of O(length).
            self.prefix, self.read = self.read, len(self.ids)
            return new
        return ""

    def flush(self) -> str:
        """The held-back tail at the end of generation (a truly incomplete character stays U+FFFD)."""
        before = self._decode(self.ids[self.prefix:self.read])
        full = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return full[len(before):] if len(full) > len(before) else ""


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Per-token text pieces of ``ids`` that concatenate to the decoded text (for text offsets).

    A token that only completes part of a character gets "" and the next token carries the
    character, so offsets always point at character boundaries.
    """
    dec = IncrementalDecoder(tokenizer, skip_special_tokens=False)
    pieces = [dec.push(t) for t in ids]
    if pieces:
        pieces[-1] += dec.flush()
    return pieces


class StopMatcher:
    """Finds stop strings in streamed text; emits only text that can no longer be part of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return ``(text safe to emit, stopped)``; on a stop, the stop text and all after it are dropped."""
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[:min(hits)], True
        keep = self._partial_tail(buf)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out
