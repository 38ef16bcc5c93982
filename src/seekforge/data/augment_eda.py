"""EDA: Easy Data Augmentation (Wei & Zou 2019, https://arxiv.org/abs/1901.11196) for English and Chinese.

Four operations, each applied with a rate ``alpha`` in [0, 1] that sets how many words change,
``n = max(1, int(alpha * words))`` as in the paper:

- ``sr`` synonym replacement: ``n`` distinct non-stop-words with a synonym are replaced by one;
- ``ri`` random insertion: ``n`` times, a synonym of a random non-stop-word is inserted at a
  random position;
- ``rs`` random swap: ``n`` times, two random words trade places;
- ``rd`` random deletion: every word is deleted with probability ``alpha`` (one survives).

Each variant uses one operation (they take turns, from a random start per record, so ``--n 4``
with all four rates set gives one variant per operation). Words are jieba words for Chinese
(:func:`seekforge.data.text` uses the same segmenter) and letter/digit runs for other languages;
whitespace and punctuation stay where they are, so line breaks and sentence marks survive.
Synonyms come from :mod:`.augment_synonyms` or a user file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import regex

from seekforge.data.augment_synonyms import builtin_synonyms, parse_groups
from seekforge.data.text import _segmenter, detect_language

OPS = ("sr", "ri", "rs", "rd")

# Function words never replaced or used as insertion sources (EDA skips stop words the same way:
# swapping "the" for a synonym adds noise, not variety).
EN_STOP = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been
being it its this that these those i you he she we they me him her us them my your his our their
not no do does did have has had will would can could should may might must shall so than then
there here what which who whom whose when where why how all any each few more most other some such
only own same too very just""".split()
)
ZH_STOP = frozenset(
    """的 了 和 是 在 就 都 而 及 与 着 或 一个 没有 我们 你们 他们 她们 它们 我 你 他 她 它
这 那 这个 那个 之 也 又 把 被 让 给 从 向 对 吗 呢 吧 啊 呀 么 于 以 及其 并 等 上 下 中""".split()
)

_WORD = regex.compile(r"[\p{L}\p{N}]")
_EN_TOKEN = regex.compile(r"\s+|[\p{L}\p{N}]+(?:['’-][\p{L}\p{N}]+)*|[^\s\p{L}\p{N}]")


@dataclass
class EDAConfig:
    sr: float = 0.1  # synonym replacement rate
    ri: float = 0.1  # random insertion rate
    rs: float = 0.1  # random swap rate
    rd: float = 0.1  # random deletion probability
    synonyms: str | None = None  # extra synonym file (one group per line)

    def validate(self) -> None:
        for op in OPS:
            value = getattr(self, op)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{op}: EDA rates must be in [0, 1], got {value}")
        if not any(getattr(self, op) for op in OPS):
            raise ValueError("EDA: all rates (--sr --ri --rs --rd) are 0, nothing would change")

    @property
    def active(self) -> list[str]:
        return [op for op in OPS if getattr(self, op) > 0]


def tokenize(text: str, lang: str) -> list[str]:
    """Tokens that concatenate back to ``text``: jieba words for Chinese, else words, single
    punctuation marks and whitespace runs."""
    if lang == "zh":
        return list(_segmenter()(text))
    return _EN_TOKEN.findall(text)


def is_word(token: str) -> bool:
    return _WORD.search(token) is not None


class EDA:
    """Makes EDA variants of texts; one instance per run (the synonym tables are built once)."""

    def __init__(self, cfg: EDAConfig):
        cfg.validate()
        self.cfg = cfg
        self.synonyms = {"zh": builtin_synonyms("zh"), "en": builtin_synonyms("en")}
        if cfg.synonyms:
            from pathlib import Path

            path = Path(cfg.synonyms)
            if not path.is_file():
                raise FileNotFoundError(f"--synonyms: {path} does not exist")
            extra = parse_groups(path.read_text(encoding="utf-8"))
            for table in self.synonyms.values():
                for word, others in extra.items():
                    table.setdefault(word, [])
                    table[word] += [o for o in others if o not in table[word]]

    def _table(self, lang: str) -> dict[str, list[str]]:
        return self.synonyms["zh" if lang == "zh" else "en"]

    def _synonyms_of(self, token: str, lang: str) -> list[str]:
        stop = ZH_STOP if lang == "zh" else EN_STOP
        key = token if lang == "zh" else token.lower()
        if key in stop:
            return []
        found = self._table(lang).get(key, [])
        if lang != "zh" and token[:1].isupper():
            found = [s[:1].upper() + s[1:] for s in found]
        return found

    def variant(self, text: str, op: str, rng: random.Random, lang: str | None = None) -> str:
        """``text`` changed by one operation (``sr``/``ri``/``rs``/``rd``)."""
        lang = lang or detect_language(text)
        tokens = tokenize(text, lang)
        words = [i for i, t in enumerate(tokens) if is_word(t)]
        if not words:
            return text
        rate = getattr(self.cfg, op)
        n = max(1, int(rate * len(words)))
        if op == "sr":
            candidates = [i for i in words if self._synonyms_of(tokens[i], lang)]
            for i in rng.sample(candidates, min(n, len(candidates))):
                tokens[i] = rng.choice(self._synonyms_of(tokens[i], lang))
        elif op == "ri":
            sources = [tokens[i] for i in words if self._synonyms_of(tokens[i], lang)]
            for _ in range(n if sources else 0):
                new = rng.choice(self._synonyms_of(rng.choice(sources), lang))
                at = rng.choice([i for i, t in enumerate(tokens) if is_word(t)] + [len(tokens)])
                tokens[at:at] = [new] if lang == "zh" else ([new, " "] if at < len(tokens) else [" ", new])
        elif op == "rs":
            for _ in range(n if len(words) > 1 else 0):
                a, b = rng.sample(words, 2)
                tokens[a], tokens[b] = tokens[b], tokens[a]
        elif op == "rd":
            keep = [i for i in words if rng.random() >= rate] or [rng.choice(words)]
            drop = set(words) - set(keep)
            for i in sorted(drop):  # a dropped word takes one adjacent space with it (not a newline)
                if i + 1 < len(tokens) and tokens[i + 1] == " " and i + 1 not in drop:
                    drop.add(i + 1)
                elif i > 0 and tokens[i - 1] == " " and i - 1 not in drop:
                    drop.add(i - 1)
            tokens = [t for i, t in enumerate(tokens) if i not in drop]
        else:
            raise ValueError(f"unknown EDA operation {op!r}; expected one of {', '.join(OPS)}")
        return "".join(tokens)

    def ops_for(self, n: int, rng: random.Random) -> list[str]:
        """Which operation each of ``n`` variants uses: the active ones in turn, random start."""
        active = self.cfg.active
        start = rng.randrange(len(active))
        return [active[(start + k) % len(active)] for k in range(n)]
