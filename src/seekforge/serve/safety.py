"""Content safety for the server: a user-editable term/regex policy plus an optional semantic classifier.

The policy file (``seekforge serve --safety FILE``) is YAML. Its minimal form is

    categories:
      violence: [kill yourself, 杀人]

and every category may instead be a mapping with ``terms``, ``regexes`` and a ``severity`` (low,
medium, high; default high). Top-level keys: ``allow`` (phrases whose inside never matches, e.g.
``assassin`` when ``ass`` is listed), ``block_at`` (the lowest severity that blocks; lower ones are
only reported by ``/v1/moderations``), ``apply_to`` (``[input, output]``), ``hold_chars`` (the
stream look-behind window, below) and ``classifier`` (below).

Matching is meant to survive the usual evasions without flagging innocent words:

* text is folded per character: NFKC (full-width ``ｋｉｌｌ`` -> ``kill``, ligatures), case folding,
  traditional -> simplified Chinese (OpenCC ``t2s``), invisible format characters dropped;
* terms are matched on the *skeleton* of letters and digits, so spaces or punctuation inserted
  between characters (``k.i.l.l``, ``杀 人``) do not hide a term;
* terms written in a spaced script (Latin, Cyrillic, digits) must start and end on a word boundary,
  so ``ass`` does not match ``class`` or ``assassin``; a run of one-letter words (``c l a s s``) is
  read as one word, so spacing a harmless word out does not expose a listed substring either.
  Chinese has no spaces, so Chinese terms match anywhere (use ``allow`` for known false positives).

Regexes run on the folded text (separators kept, so write ``\\s*`` where you expect them).

Streams: :class:`StreamGuard` holds back the last ``hold_chars`` characters of an answer, so a term
split across chunks is caught before any of it is sent; clean text is delayed by at most that
window. The semantic classifier (a Hugging Face sequence-classification directory, or any
OpenAI-compatible ``/v1/moderations`` endpoint) checks prompts and whole answers; a flagged
non-streamed answer is withheld, while in a stream it runs once the answer is complete, so it can
withhold the held window and change the finish reason, not unsend text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import threading
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from seekforge.infer import RequestHandle, StreamEvent
from seekforge.serve.protocol import APIError

log = logging.getLogger("seekforge.serve")

SEVERITIES = {"low": 1, "medium": 2, "high": 3}
SCORES = {1: 0.34, 2: 0.67, 3: 1.0}
REGEX_LOOKBACK = 256  # characters of already-checked text a streamed regex match may start in


# --- folding ------------------------------------------------------------------------------------------
def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FFFF
            or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF)


@functools.lru_cache(maxsize=1)
def _t2s() -> Any:
    import opencc  # only needed when a policy is loaded

    return opencc.OpenCC("t2s")


@functools.lru_cache(maxsize=65536)
def _fold_char(ch: str) -> str:
    """One input character -> its folded form ("" for invisible format characters)."""
    if unicodedata.category(ch) == "Cf":  # zero-width space/joiner, soft hyphen, bidi marks
        return ""
    out = unicodedata.normalize("NFKC", ch).casefold()
    if any(_is_cjk(c) for c in out):
        out = "".join(_t2s().convert(c) if _is_cjk(c) else c for c in out)
    return out


class Folded:
    """The folded form of a growing text, built incrementally (streams append chunk by chunk).

    ``norm``: the folded text (for regexes); ``skel``: its letters and digits only, with ``src`` (the
    index in the original text of each skeleton character) and ``sep`` (whether a separator stood
    before it). Word boundaries are derived from ``sep`` when a match is checked.
    """

    def __init__(self) -> None:
        self.raw_len = 0
        self.norm: list[str] = []
        self.norm_src: list[int] = []
        self.skel: list[str] = []
        self.src: list[int] = []
        self.sep: list[bool] = []
        self._pending_sep = False

    def extend(self, text: str) -> None:
        for offset, ch in enumerate(text):
            i = self.raw_len + offset
            for c in _fold_char(ch):
                self.norm.append(c)
                self.norm_src.append(i)
                if c.isalnum():
                    self.skel.append(c)
                    self.src.append(i)
                    self.sep.append(self._pending_sep)
                    self._pending_sep = False
                elif unicodedata.category(c)[0] != "M":  # combining marks are part of the letter
                    self._pending_sep = True
        self.raw_len += len(text)

    @classmethod
    def of(cls, text: str) -> Folded:
        f = cls()
        f.extend(text)
        return f

    # Word boundaries in the skeleton (only spaced scripts have them; see the module docstring).
    def _spaced(self, j: int) -> bool:
        return not _is_cjk(self.skel[j])

    def _single(self, j: int) -> bool:
        """The skeleton character j is a one-letter word."""
        n = len(self.skel)
        left = j == 0 or self.sep[j] or not self._spaced(j - 1)
        right = j + 1 == n or self.sep[j + 1] or not self._spaced(j + 1)
        return left and right

    def boundary(self, i: int) -> bool:
        """Is there a word boundary just before skeleton position ``i`` (``i == len`` = the end)?"""
        if i == 0 or i == len(self.skel):
            return True
        if not (self._spaced(i - 1) and self._spaced(i)):
            return True
        if not self.sep[i]:
            return False
        return not (self._single(i - 1) and self._single(i))


def fold_term(term: str) -> str:
    return "".join(Folded.of(term).skel)


# --- the policy -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    category: str
    text: str  # as written in the file
    skeleton: str
    start_boundary: bool  # a spaced-script first / last character needs a word boundary
    end_boundary: bool


@dataclass(frozen=True)
class Match:
    category: str
    term: str  # the listed term or regex
    start: int  # character span in the checked text
    end: int


@dataclass
class Verdict:
    """The result of checking one text: which categories matched, with a score per category."""

    matches: list[Match] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # category -> score in [0, 1]
    blocked_categories: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return bool(self.blocked_categories)

    @property
    def first_start(self) -> int:
        """Where the earliest match starts (the text before it is safe to keep)."""
        return min((m.start for m in self.matches if m.category in self.blocked_categories), default=0)


@dataclass
class Category:
    name: str
    severity: int
    terms: list[str]
    regexes: list[re.Pattern]


class SafetyPolicy:
    """Term and regex categories (see the module docstring), plus an optional :class:`Classifier`."""

    def __init__(self, categories: list[Category], allow: Iterable[str] = (), block_at: int = 1,
                 apply_to: Iterable[str] = ("input", "output"), hold_chars: int = 32,
                 classifier: Classifier | None = None, classifier_threshold: float = 0.5) -> None:
        self.categories = {c.name: c for c in categories}
        self.block_at, self.apply_to, self.hold_chars = block_at, set(apply_to), hold_chars
        self.classifier, self.classifier_threshold = classifier, classifier_threshold
        self.terms: dict[str, list[Term]] = {}
        for c in categories:
            for t in c.terms:
                sk = fold_term(t)
                term = Term(c.name, t, sk, not _is_cjk(sk[0]), not _is_cjk(sk[-1]))
                self.terms.setdefault(sk, []).append(term)
        self.allow = sorted({fold_term(a) for a in allow} - {""}, key=len, reverse=True)
        self.max_allow = max((len(a) for a in self.allow), default=0)
        self.max_term = max((len(s) for s in self.terms), default=0)
        self.blocked_total = 0  # requests or answers blocked (input + output), for metrics
        self._hooks: list[Callable[[str, list[str]], None]] = []
        self._lock = threading.Lock()

    # -- loading --
    @classmethod
    def from_file(cls, path: str | Path) -> SafetyPolicy:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"safety policy {path}: no such file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"safety policy {path}: invalid YAML: {e}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "safety policy") -> SafetyPolicy:
        def fail(what: str) -> ValueError:
            return ValueError(f"{where}: {what}")

        cats_spec = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(cats_spec, dict) or not cats_spec:
            raise fail("expected a mapping with 'categories: {NAME: [term, ...]}'")
        known = {"categories", "allow", "block_at", "apply_to", "hold_chars", "classifier"}
        if unknown := set(data) - known:
            raise fail(f"unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
        cats = [_category(name, spec, fail) for name, spec in data["categories"].items()]
        allow = data.get("allow") or []
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise fail("'allow' must be a list of strings")
        block_at = data.get("block_at", "low")
        if block_at not in SEVERITIES:
            raise fail(f"'block_at' must be one of {list(SEVERITIES)}, got {block_at!r}")
        apply_to = data.get("apply_to", ["input", "output"])
        if not isinstance(apply_to, list) or not set(apply_to) <= {"input", "output"}:
            raise fail("'apply_to' must be a list of 'input' and/or 'output'")
        hold = data.get("hold_chars", 32)
        if not isinstance(hold, int) or isinstance(hold, bool) or hold < 0:
            raise fail(f"'hold_chars' must be an integer >= 0, got {hold!r}")
        classifier, threshold = _classifier(data.get("classifier"), fail)
        return cls(cats, allow, SEVERITIES[block_at], apply_to, hold, classifier, threshold)

    # -- counting --
    def on_block(self, hook: Callable[[str, list[str]], None]) -> None:
        """Call ``hook(where, categories)`` ("input" or "output") whenever something is blocked."""
        self._hooks.append(hook)

    def record_block(self, where: str, categories: list[str]) -> None:
        with self._lock:
            self.blocked_total += 1
        for hook in self._hooks:
            hook(where, categories)

    # -- checking --
    def check(self, text: str) -> Verdict:
        """Terms and regexes over a whole text (no classifier; see :meth:`classify`)."""
        folded = Folded.of(text)
        return self._verdict(self.scan(folded, 0, 0, final=True)[0])

    def scan(self, f: Folded, skel_from: int, norm_from: int, final: bool) -> tuple[list[Match], int]:
        """Matches in ``f`` that end at or after skeleton index ``skel_from`` / folded index ``norm_from``.

        Returns the matches and, when not ``final``, the earliest raw index a later character could
        still turn into a match (a spaced-script term at the very end awaits its word boundary).
        """
        skel = "".join(f.skel)
        n = len(skel)
        matches: list[Match] = []
        pending = f.raw_len
        # Re-read the last max_term + 1 characters: a term ending there may have awaited its boundary.
        lo = max(0, skel_from - self.max_term - 1)
        allowed = self._allowed_spans(skel, max(0, lo - self.max_allow))
        for sk, terms in self.terms.items():
            pos = skel.find(sk, lo)
            while pos != -1:
                end = pos + len(sk)
                if any(a <= pos and end <= b for a, b in allowed):
                    pos = skel.find(sk, pos + 1)
                    continue
                for t in terms:
                    if t.start_boundary and not f.boundary(pos):
                        continue
                    if t.end_boundary and end + 1 >= n and not final:
                        pending = min(pending, f.src[pos])  # "ass" may yet become "assert"
                        continue
                    if t.end_boundary and not f.boundary(end):
                        continue
                    matches.append(Match(t.category, t.text, f.src[pos], f.src[end - 1] + 1))
                pos = skel.find(sk, pos + 1)
        if any(c.regexes for c in self.categories.values()):
            start = max(0, norm_from - REGEX_LOOKBACK)
            norm = "".join(f.norm[start:])
            for c in self.categories.values():
                for rx in c.regexes:
                    for m in rx.finditer(norm):
                        if m.end() > m.start() and start + m.end() > norm_from:
                            a, b = start + m.start(), start + m.end() - 1
                            matches.append(Match(c.name, rx.pattern, f.norm_src[a], f.norm_src[b] + 1))
        return matches, pending

    def _allowed_spans(self, skel: str, lo: int) -> list[tuple[int, int]]:
        spans = []
        for a in self.allow:
            pos = skel.find(a, lo)
            while pos != -1:
                spans.append((pos, pos + len(a)))
                pos = skel.find(a, pos + 1)
        return spans

    def _verdict(self, matches: list[Match], scores: dict[str, float] | None = None) -> Verdict:
        v = Verdict(matches=matches, scores=dict(scores or {}))
        for m in matches:
            sev = self.categories[m.category].severity
            v.scores[m.category] = max(v.scores.get(m.category, 0.0), SCORES[sev])
        for name, score in v.scores.items():
            cat = self.categories.get(name)
            if cat is not None and any(m.category == name for m in matches):
                if cat.severity >= self.block_at:
                    v.blocked_categories.append(name)
            elif score >= self.classifier_threshold:  # a classifier label
                v.blocked_categories.append(name)
        return v

    def classify(self, texts: list[str]) -> list[dict[str, float]]:
        """The classifier's category scores per text ({} each without a classifier). Blocking I/O."""
        if self.classifier is None:
            return [{} for _ in texts]
        return self.classifier.scores(texts)

    def moderate(self, texts: list[str]) -> list[Verdict]:
        """Terms, regexes and the classifier over whole texts (blocking; run it off the event loop)."""
        cls_scores = self.classify(texts)
        out = []
        for text, extra in zip(texts, cls_scores):
            matches = self.scan(Folded.of(text), 0, 0, final=True)[0]
            out.append(self._verdict(matches, extra))
        return out

    def category_names(self) -> list[str]:
        names = list(self.categories)
        if self.classifier is not None:
            names += [n for n in self.classifier.labels if n not in self.categories]
        return names

    def stream_guard(self) -> StreamGuard:
        return StreamGuard(self)


def _category(name: Any, spec: Any, fail: Callable[[str], ValueError]) -> Category:
    if not isinstance(name, str) or not name:
        raise fail(f"category names must be non-empty strings, got {name!r}")
    where = f"categories.{name}"
    if isinstance(spec, list):
        spec = {"terms": spec}
    if not isinstance(spec, dict):
        raise fail(f"{where}: expected a list of terms or a mapping with 'terms', 'regexes', 'severity'")
    if unknown := set(spec) - {"terms", "regexes", "severity"}:
        raise fail(f"{where}: unknown key(s) {sorted(unknown)}; expected terms, regexes, severity")
    terms, regexes = spec.get("terms") or [], spec.get("regexes") or []
    for key, values in (("terms", terms), ("regexes", regexes)):
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise fail(f"{where}.{key}: expected a list of non-empty strings")
    if not terms and not regexes:
        raise fail(f"{where}: lists no terms and no regexes")
    for t in terms:
        if not fold_term(t):
            raise fail(f"{where}.terms: {t!r} has no letters or digits to match")
    severity = spec.get("severity", "high")
    if severity not in SEVERITIES:
        raise fail(f"{where}.severity: expected one of {list(SEVERITIES)}, got {severity!r}")
    compiled = []
    for r in regexes:
        try:
            compiled.append(re.compile(r, re.IGNORECASE))
        except re.error as e:
            raise fail(f"{where}.regexes: {r!r} is not a valid regex: {e}") from None
    return Category(name, SEVERITIES[severity], terms, compiled)


# --- streams -----------------------------------------------------------------------------------------------
@dataclass
class GuardStep:
    """What a stream may send now, and the verdict once something is blocked."""

    text: str
    verdict: Verdict | None = None


class StreamGuard:
    """Per-answer incremental check: feed the text as it streams, send what :meth:`feed` returns.

    The last ``hold_chars`` characters (and any spaced-script term still waiting for its word
    boundary) are held back; everything before them has been checked with all its context.
    """

    def __init__(self, policy: SafetyPolicy) -> None:
        self.policy = policy
        self.folded = Folded()
        self.raw: list[str] = []
        self.sent = 0  # raw characters released
        self.checked_skel = 0
        self.checked_norm = 0
        self.blocked: Verdict | None = None

    def feed(self, text: str, final: bool = False) -> GuardStep:
        if self.blocked is not None:
            return GuardStep("", self.blocked)
        self.raw.append(text)
        self.folded.extend(text)
        matches, pending = self.policy.scan(self.folded, self.checked_skel, self.checked_norm, final)
        self.checked_skel, self.checked_norm = len(self.folded.skel), len(self.folded.norm)
        verdict = self.policy._verdict(matches)
        full = "".join(self.raw)
        self.raw = [full]
        if verdict.blocked:
            self.blocked = verdict
            cut = max(self.sent, verdict.first_start)  # what was sent stays sent
            out, self.sent = full[self.sent:cut], cut
            return GuardStep(out, verdict)
        upto = len(full) if final else max(self.sent, min(len(full) - self.policy.hold_chars, pending))
        out, self.sent = full[self.sent:upto], upto
        return GuardStep(out)

    def finish(self) -> GuardStep:
        """The end of the answer: release the held window after the final check."""
        return self.feed("", final=True)

    @property
    def text(self) -> str:
        return "".join(self.raw)


# --- semantic classifiers ---------------------------------------------------------------------------------
class Classifier(Protocol):
    labels: list[str]

    def scores(self, texts: list[str]) -> list[dict[str, float]]: ...


class HFClassifier:
    """A Hugging Face ``AutoModelForSequenceClassification`` directory; its ``id2label`` names the
    categories. Single-label models are read with softmax, ``multi_label_classification`` ones with
    sigmoid; labels listed in ``ignore_labels`` (e.g. ``safe``) never flag."""

    def __init__(self, model_dir: str, ignore_labels: Iterable[str] = ("safe", "neutral", "ok", "clean"),
                 max_length: int = 512) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        id2label = self.model.config.id2label
        self.all_labels = [id2label[i] for i in range(len(id2label))]
        ignore = {x.lower() for x in ignore_labels}
        self.labels = [lab for lab in self.all_labels if lab.lower() not in ignore]
        self.multi = self.model.config.problem_type == "multi_label_classification"
        self.max_length = max_length
        self._lock = threading.Lock()  # one forward at a time: the model is shared by all requests

    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        with self._lock, torch.no_grad():
            logits = self.model(**batch).logits.float()
        probs = logits.sigmoid() if self.multi else logits.softmax(-1)
        keep = [i for i, lab in enumerate(self.all_labels) if lab in self.labels]
        return [{self.all_labels[i]: float(row[i]) for i in keep} for row in probs.tolist()]


class RemoteModeration:
    """Any OpenAI-compatible ``/v1/moderations`` endpoint, called through the one model client
    (``seekforge.llm_client``): one retry on 429/5xx/timeouts, a short timeout, since a request
    waits on the verdict. The key is only the policy's ``api_key`` (never the environment's, which
    may hold this server's own key)."""

    def __init__(self, base_url: str, api_key: str = "none", model: str | None = None,
                 timeout: float = 10.0) -> None:
        from seekforge.llm_client import EndpointConfig, LLMClient

        self.client = LLMClient(EndpointConfig(endpoint=base_url, api_key=api_key, model=model,
                                               timeout_s=timeout, max_retries=1, backoff_s=0.2))
        self.labels: list[str] = []

    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        from seekforge.llm_client import RequestFailed

        try:
            return self.client.moderate(texts)
        except RequestFailed as e:
            raise ClassifierUnavailable(f"{self.client.cfg.base_url}/moderations: {e}") from None


class ClassifierUnavailable(RuntimeError):
    """The remote classifier did not answer. The server fails closed: a prompt gets a 503 and an
    answer is withheld (``content_filter``), since an unchecked text is what the policy forbids."""


def _unavailable(e: ClassifierUnavailable) -> APIError:
    return APIError(503, f"the safety classifier is unavailable, so the text was not checked ({e})",
                    type="server_error", code="classifier_unavailable")


def _classifier(spec: Any, fail: Callable[[str], ValueError]) -> tuple[Classifier | None, float]:
    if spec is None:
        return None, 0.5
    if not isinstance(spec, dict) or ("model" in spec) == ("url" in spec):
        raise fail("'classifier' must be a mapping with either 'model: DIR' (a Hugging Face sequence "
                   "classifier) or 'url: BASE_URL' (an OpenAI-compatible /v1/moderations endpoint)")
    known = {"model", "url", "api_key", "remote_model", "threshold", "ignore_labels"}
    if unknown := set(spec) - known:
        raise fail(f"classifier: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
    threshold = spec.get("threshold", 0.5)
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise fail(f"classifier.threshold must be in (0, 1], got {threshold!r}")
    if "model" in spec:
        if not Path(spec["model"]).is_dir():
            raise fail(f"classifier.model: {spec['model']} is not a directory")
        ignore = spec.get("ignore_labels", ["safe", "neutral", "ok", "clean"])
        return HFClassifier(spec["model"], ignore), float(threshold)
    remote = RemoteModeration(spec["url"], spec.get("api_key", "none"), spec.get("remote_model"))
    return remote, float(threshold)


# --- the OpenAI moderation response -------------------------------------------------------------------------
def moderation_result(policy: SafetyPolicy, verdict: Verdict) -> dict[str, Any]:
    """One entry of ``results`` in OpenAI's ``/v1/moderations`` shape."""
    names = policy.category_names()
    names += [n for n in verdict.scores if n not in names]  # labels of a remote classifier
    scores = {n: round(verdict.scores.get(n, 0.0), 6) for n in names}
    flagged = {n: n in verdict.blocked_categories or (n in policy.categories and verdict.scores.get(n, 0) > 0)
               for n in names}
    return {"flagged": any(flagged.values()), "categories": flagged, "category_scores": scores,
            "category_applied_input_types": {n: ["text"] for n in names}}


# --- the server's hooks ------------------------------------------------------------------------------
async def check_input(policy: SafetyPolicy | None, texts: list[str], param: str) -> None:
    """Raise OpenAI's 400 ``content_policy_violation`` when a prompt text is blocked."""
    if policy is None or "input" not in policy.apply_to or not texts:
        return
    try:
        if policy.classifier is not None or sum(map(len, texts)) > 20_000:
            # Folding runs in Python, character by character: keep long prompts off the event loop.
            verdicts = await asyncio.to_thread(policy.moderate, texts)
        else:
            verdicts = policy.moderate(texts)
    except ClassifierUnavailable as e:
        raise _unavailable(e) from None
    blocked = sorted({c for v in verdicts for c in v.blocked_categories})
    if blocked:
        policy.record_block("input", blocked)
        raise APIError(400, "Your request was rejected by this server's content policy (categories: "
                       f"{', '.join(blocked)}).", param=param, code="content_policy_violation")


@dataclass
class _Held:
    """One choice's events waiting for the guard to clear their text."""

    guard: StreamGuard
    events: list[tuple[StreamEvent, int]] = field(default_factory=list)  # (event, raw end offset)
    length: int = 0
    done: bool = False


def _cut(ev: StreamEvent, keep: int, finish: str) -> StreamEvent:
    return dataclasses.replace(ev, text=ev.text[:max(0, keep)], finish_reason=finish, error=None)


async def moderated(policy: SafetyPolicy | None, handles: list[RequestHandle],
                    events: AsyncIterator[tuple[int, Any]],
                    stream: bool = True) -> AsyncIterator[tuple[int, Any]]:
    """Output moderation over ``(choice index, event)`` pairs (``(-1, None)`` pings pass through).

    Whole events are held until the guard has cleared their text (so token ids, logprobs and tool-call
    markers stay with their text); a block releases the text before the match, ends the choice with
    ``finish_reason: "content_filter"`` and cancels its request, which frees the engine slot. With
    ``stream=False`` nothing is released before the end, so a classifier verdict (which does not
    say where) withholds the whole answer; a stream can only withhold what it still holds.
    """
    if policy is None or "output" not in policy.apply_to:
        async for item in events:
            yield item
        return
    held = [_Held(policy.stream_guard()) for _ in handles]
    async for i, ev in events:
        if ev is None:
            yield i, ev
            continue
        h = held[i]
        if h.done:
            continue
        h.length += len(ev.text)
        h.events.append((ev, h.length))
        if ev.error:  # an engine error ends the choice as it is
            h.done = True
            for e, _ in h.events:
                yield i, e
            continue
        released = h.guard.sent if stream else 0
        final = ev.finish_reason is not None
        verdict = h.guard.feed(ev.text, final=final).verdict
        if verdict is None and final and policy.classifier is not None:
            try:
                scores = (await asyncio.to_thread(policy.classify, [h.guard.text]))[0]
            except ClassifierUnavailable as e:  # fail closed: withhold what is still held
                log.warning("%s; answer withheld", e)
                scores = {"classifier_unavailable": 1.0}
            if (v := policy._verdict([], scores)).blocked:
                verdict = v  # no matches: first_start is 0, so all that is still held is withheld
        if verdict is not None:
            h.done = True
            handles[i].cancel()
            policy.record_block("output", verdict.blocked_categories)
            for item in _release_until(h.events, max(released, verdict.first_start)):
                yield i, item
            continue
        while h.events and (stream or final) and h.events[0][1] <= h.guard.sent:
            yield i, h.events.pop(0)[0]


def _release_until(events: list[tuple[StreamEvent, int]], cut: int) -> list[StreamEvent]:
    """The held events up to raw offset ``cut``, the last one cut there and ending the choice with
    ``content_filter`` (an empty closing event when ``cut`` falls between events)."""
    out = []
    for ev, end in events:
        begin = end - len(ev.text)
        if end <= cut and ev.finish_reason is None:
            out.append(ev)
            continue
        if begin < cut or ev.finish_reason is not None:
            out.append(_cut(ev, cut - begin, "content_filter"))
            return out
        break
    out.append(StreamEvent("", [], finish_reason="content_filter"))
    return out


def moderation_inputs(body: dict[str, Any]) -> list[str]:
    """``input``: a string, a list of strings, or a list of ``{"type": "text", "text": ...}`` parts."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        out = []
        for part in raw:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                out.append(part["text"])
            else:
                raise APIError(400, "'input' items must be strings or {\"type\": \"text\", \"text\": ...} "
                               "parts (images are not supported)", param="input", code="invalid_value")
        return out
    raise APIError(400, "'input' must be a string or a non-empty list of strings", param="input",
                   code="invalid_type")


async def moderation_response(policy: SafetyPolicy, body: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /v1/moderations`` answer for a request body."""
    texts = moderation_inputs(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", param="model", code="invalid_type")
    slow = policy.classifier is not None or sum(map(len, texts)) > 20_000
    try:
        verdicts = await asyncio.to_thread(policy.moderate, texts) if slow else policy.moderate(texts)
    except ClassifierUnavailable as e:
        raise _unavailable(e) from None
    return {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": model or "seekforge-safety",
            "results": [moderation_result(policy, v) for v in verdicts]}
