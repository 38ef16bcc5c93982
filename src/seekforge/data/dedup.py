"""Deduplication: exact (normalised-text hash) and near-duplicate (MinHash + LSH), plus
n-gram decontamination against evaluation sets.

Shingles are language-aware: Chinese/Japanese text has no spaces, so it is shingled in
character n-grams; everything else in word n-grams (FineWeb: word 5-grams). Both are computed
without a Python loop over shingles: the simplified text becomes an array of code points,
words are located with numpy, and n-gram hashes are polynomial rolling hashes over uint64
(wrapping arithmetic), finished with the splitmix64 mixer.

MinHash: ``num_bands × rows_per_band`` hash functions ``h_i(x) = a_i·x + b_i (mod 2^64)`` with
odd ``a_i`` (a bijection of the 64-bit space, so the minimum over a document's shingles is a
valid min-hash), signatures computed in chunks to bound memory on huge documents. A band key is
a hash of its rows; two documents sharing any band key are duplicates (as in datatrove, without
a Jaccard re-check). With the default 14 bands × 8 rows a pair with Jaccard 0.8 is caught with
probability 1-(1-0.8^8)^14 = 0.924, 0.75 → 0.77, 0.5 → 0.05.

The index (``LSHIndex``) keeps the first document of every cluster, in input order, so the
result does not depend on how many workers computed the signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xxhash

from seekforge.data.text import CJK_LANGS, simplify

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_BASE = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: odd, good spread as polynomial base
_BASE2 = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class DedupConfig:
    exact: bool = True  # drop documents whose simplified text was seen before
    minhash: bool = True  # drop near-duplicates (MinHash LSH)
    word_ngram: int = 5  # shingle size for space-separated languages (FineWeb: 5)
    # Shingle size for Chinese/Japanese in characters. A Chinese word is ~1.5 characters, so
    # 7 characters is about FineWeb's 5 words. NeMo's warning that character n-grams below 20
    # give ~5% false positives is about English, where 20 characters are only ~4 words.
    char_ngram: int = 7
    num_bands: int = 14  # FineWeb: 14 buckets x 8 hashes = 112 permutations
    rows_per_band: int = 8
    seed: int = 1
    clusters_in_report: int = 10  # largest near-duplicate clusters shown in the report

    def validate(self) -> None:
        from seekforge.config import ConfigError

        for name in ("word_ngram", "char_ngram", "num_bands", "rows_per_band"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dedup.{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def num_perm(self) -> int:
        return self.num_bands * self.rows_per_band

    def candidate_probability(self, jaccard: float) -> float:
        """P(two documents with this Jaccard similarity share at least one band)."""
        return 1.0 - (1.0 - jaccard**self.rows_per_band) ** self.num_bands


# --------------------------------------------------------------------------- hashing primitives


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: turns structured integers into well-mixed 64-bit hashes."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _rolling(values: np.ndarray, n: int, base: np.uint64) -> np.ndarray:
    """Polynomial hash of every window of ``n`` consecutive values (uint64, wrapping)."""
    m = len(values) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * base + values[k : k + m]
    return h


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def token_hashes(simplified: str, lang: str) -> np.ndarray:
    """One uint64 per token of simplified text: characters (CJK langs) or words (others)."""
    if not simplified:
        return np.zeros(0, dtype=np.uint64)
    cps = _codepoints(simplified)
    if lang in CJK_LANGS:
        # Every non-space character is a token; Latin words inside Chinese text are short
        # runs of characters too, which is fine for resemblance.
        return splitmix64(cps[cps != 32])
    # Words: split at the single spaces simplify() left. The hash of the word cp[s:e] is the
    # polynomial sum cp[j]·B^(j-s), obtained for all words at once from prefix sums of
    # cp[j]·B^j times B^(-s) (B is odd, so it is invertible modulo 2^64).
    n = len(cps)
    is_space = cps == 32
    starts = np.flatnonzero(~is_space & np.concatenate([[True], is_space[:-1]]))
    ends = np.flatnonzero(~is_space & np.concatenate([is_space[1:], [True]])) + 1
    pw, inv = _powers(n)
    with np.errstate(over="ignore"):
        prefix = np.concatenate([[np.uint64(0)], np.cumsum(cps * pw, dtype=np.uint64)])
        return splitmix64((prefix[ends] - prefix[starts]) * inv[starts])


_POW_CACHE: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B^j and B^-j (mod 2^64) for j < n, cached and grown by doubling."""
    if not _POW_CACHE or len(_POW_CACHE[0]) < n:
        size = max(n, 2 * len(_POW_CACHE[0]) if _POW_CACHE else 1 << 16)
        with np.errstate(over="ignore"):
            one = np.ones(1, dtype=np.uint64)
            pw = np.concatenate([one, np.cumprod(np.full(size - 1, _BASE, dtype=np.uint64), dtype=np.uint64)])
            binv = np.uint64(pow(int(_BASE), -1, 1 << 64))
            inv = np.concatenate([one, np.cumprod(np.full(size - 1, binv, dtype=np.uint64), dtype=np.uint64)])
        _POW_CACHE[:] = [pw, inv]
    return _POW_CACHE[0][:n], _POW_CACHE[1][:n]


def shingle_hashes(simplified: str, lang: str, cfg: DedupConfig) -> np.ndarray:
    """uint64 hash per shingle (character or word n-gram); a short text is one shingle."""
    toks = token_hashes(simplified, lang)
    n = cfg.char_ngram if lang in CJK_LANGS else cfg.word_ngram
    if len(toks) == 0:
        return toks
    if len(toks) < n:
        n = len(toks)
    return splitmix64(_rolling(toks, n, _BASE))


class MinHasher:
    """Computes MinHash signatures and LSH band keys for a DedupConfig."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.a = rng.integers(1, 2**63, size=cfg.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=cfg.num_perm, dtype=np.uint64)
        # Salt per band so that equal rows in different bands give different keys.
        self.band_salt = rng.integers(1, 2**63, size=cfg.num_bands, dtype=np.uint64)

    def signature(self, shingles: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """[num_perm] uint64 min-hashes (all-ones for a document without shingles)."""
        sig = np.full(self.cfg.num_perm, _M64, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i in range(0, len(shingles), chunk):
                block = shingles[i : i + chunk, None] * self.a[None, :] + self.b[None, :]
                np.minimum(sig, block.min(axis=0), out=sig)
        return sig

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """[..., num_bands] uint64 keys, one per band of ``rows_per_band`` consecutive min-hashes
        (a polynomial over the band's rows, salted per band, finished with splitmix64)."""
        rows = sigs.reshape(*sigs.shape[:-1], self.cfg.num_bands, self.cfg.rows_per_band)
        h = np.broadcast_to(self.band_salt, rows.shape[:-1]).copy()
        with np.errstate(over="ignore"):
            for j in range(self.cfg.rows_per_band):
                h = h * _BASE + rows[..., j]
        return splitmix64(h)

    def signatures(self, shingle_sets: list[np.ndarray], chunk: int = 8192) -> np.ndarray:
        """[len(shingle_sets), num_perm] signatures for many documents with few numpy calls:
        shingles are concatenated and reduced per document with ``np.minimum.reduceat``
        (per-document numpy overhead dominates on short texts such as poems or chat turns)."""
        sigs = np.full((len(shingle_sets), self.cfg.num_perm), _M64, dtype=np.uint64)
        nonempty = [i for i, s in enumerate(shingle_sets) if len(s)]
        if not nonempty:
            return sigs
        allsh = np.concatenate([shingle_sets[i] for i in nonempty])
        starts = np.cumsum([0] + [len(shingle_sets[i]) for i in nonempty[:-1]])
        # Process whole documents per chunk so reduceat segments never straddle chunks.
        lo = 0
        while lo < len(nonempty):
            hi, size = lo, 0
            while hi < len(nonempty) and (size == 0 or size + len(shingle_sets[nonempty[hi]]) <= chunk):
                size += len(shingle_sets[nonempty[hi]])
                hi += 1
            a, b = starts[lo], starts[lo] + size
            with np.errstate(over="ignore"):
                block = allsh[a:b, None] * self.a[None, :] + self.b[None, :]
            sigs[nonempty[lo:hi]] = np.minimum.reduceat(block, starts[lo:hi] - a, axis=0)
            lo = hi
        return sigs

    def keys_for(self, text: str, lang: str) -> np.ndarray:
        return self.band_keys(self.signature(shingle_hashes(simplify(text), lang, self.cfg)))

    def keys_for_many(self, texts: list[str], langs: list[str], simplified: bool = False) -> np.ndarray:
        """[len(texts), num_bands] band keys (same values as keys_for, batched). Pass
        ``simplified=True`` when the texts already went through ``simplify``."""
        shingles = [shingle_hashes(t if simplified else simplify(t), lang, self.cfg)
                    for t, lang in zip(texts, langs)]
        return self.band_keys(self.signatures(shingles))


def exact_key(text: str) -> bytes:
    """128-bit hash of the simplified text (64 bits would collide somewhere past ~10^9 docs)."""
    return exact_key_simplified(simplify(text))


def exact_key_simplified(simplified: str) -> bytes:
    return xxhash.xxh3_128_digest(simplified.encode("utf-8"))


# --------------------------------------------------------------------------- the index


class LSHIndex:
    """Band key -> index of the first document that had it (its cluster representative), one
    dict per band; plus normalised-text hash -> first document for exact dedup."""

    def __init__(self, num_bands: int):
        self.num_bands = num_bands
        self.bands: list[dict[int, int]] = [{} for _ in range(num_bands)]
        self.exact: dict[bytes, int] = {}

    def find_exact(self, key: bytes) -> int | None:
        return self.exact.get(key)

    def add_exact(self, key: bytes, doc: int) -> None:
        self.exact.setdefault(key, doc)

    def query_and_add(self, keys: np.ndarray, doc: int) -> int | None:
        """Representative of the first earlier document sharing a band, else None. The keys
        are added either way, so chains of near-duplicates join one cluster."""
        hit = None
        # setdefault inserts or returns the existing entry in one lookup per band
        for band, key in zip(self.bands, keys.tolist()):
            rep = band.setdefault(key, doc)
            if rep != doc and hit is None:
                hit = rep
        return hit


# --------------------------------------------------------------------------- decontamination


@dataclass
class DecontamConfig:
    """Drop training documents that share an n-gram with an evaluation set (GPT-3 style)."""

    paths: list[str] = field(default_factory=list)  # eval files/folders (any readable format)
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    ngram: int = 13  # GPT-3 used 13-grams; words for spaced languages, characters for CJK


def ngram_set(texts, lang_of, n: int) -> tuple[np.ndarray, int]:
    """Sorted unique uint64 hashes of all ``n``-grams of ``texts``; also how many texts were
    too short to contribute (fewer than ``n`` tokens)."""
    parts = []
    short = 0
    for text in texts:
        lang = lang_of(text)
        toks = token_hashes(simplify(text), lang)
        if len(toks) < n:
            short += 1
            continue
        parts.append(splitmix64(_rolling(toks, n, _BASE)))
    if not parts:
        return np.zeros(0, dtype=np.uint64), short
    return np.unique(np.concatenate(parts)), short


def contaminated(text: str, lang: str, eval_ngrams: np.ndarray, n: int) -> bool:
    if len(eval_ngrams) == 0:
        return False
    toks = token_hashes(simplify(text), lang)
    if len(toks) < n:
        return False
    grams = splitmix64(_rolling(toks, n, _BASE))
    pos = np.searchsorted(eval_ngrams, grams)
    pos[pos == len(eval_ngrams)] = 0
    return bool(np.any(eval_ngrams[pos] == grams))
