"""seekforge's cleaning, language-aware filters, PII scrubbing and MinHash shingling as
datatrove (>= 0.10) pipeline blocks, for running the same pipeline on a cluster.

``seekforge data prepare`` is one machine, all cores. For tens of TB, datatrove's executors
(Local/Slurm/Ray) shard the work over tasks and its four MinHash stages deduplicate with files
on disk instead of an in-memory index. datatrove's own Gopher/C4/FineWeb filters count
whitespace-free Chinese as one word and need spaCy (plus jieba) for any language; these blocks
use seekforge's rules instead (see filters.py) and need neither::

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from seekforge.data.datatrove_blocks import (SeekforgeClean, SeekforgeLanguage,
        SeekforgeQualityFilter, SeekforgePII)

    LocalPipelineExecutor([
        JsonlReader("raw/"), SeekforgeClean(), SeekforgeLanguage(languages=["zh", "en"]),
        SeekforgeQualityFilter(), SeekforgePII(), JsonlWriter("filtered/"),
    ], tasks=8, workers=2, logging_dir="logs/filter").run()

``SeekforgeMinhashSignature`` replaces datatrove's stage-1 ``MinhashDedupSignature`` with
seekforge's shingling (CJK character n-grams, word n-grams elsewhere) and leaves stages 2–4
(``MinhashDedupBuckets``, ``MinhashDedupCluster``, ``MinhashDedupFilter``) unchanged. The full
cluster recipe is in docs/data.md.
"""

from __future__ import annotations

from collections import Counter

try:
    from datatrove.data import Document
    from datatrove.io import get_datafolder
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.formatters.base import BaseFormatter
    from datatrove.utils.hashing import create_hash_func
except ImportError as e:  # pragma: no cover - only without the optional dependency
    raise ImportError("datatrove_blocks needs datatrove: pip install 'seekforge[cluster]'") from e

import numpy as np

from seekforge.data.clean import CleanConfig, clean_text
from seekforge.data.dedup import DedupConfig, shingle_hashes
from seekforge.data.filters import FiltersConfig, run_filters
from seekforge.data.pii import PIIConfig, scrub
from seekforge.data.text import LanguageIdentifier, simplify

LANG_KEY = "language"  # document metadata key shared by the blocks (and by our output files)


def _lang(doc: Document) -> str:
    lang = doc.metadata.get(LANG_KEY)
    if not lang:
        lang = LanguageIdentifier()(doc.text)
        doc.metadata[LANG_KEY] = lang
    return lang


class SeekforgeClean(BaseFormatter):
    """Mojibake repair, HTML removal, CJK-safe Unicode normalisation, whitespace (clean.py)."""

    name = "🧽 seekforge clean"

    def __init__(self, config: CleanConfig | None = None):
        super().__init__()
        self.config = config or CleanConfig()

    def format(self, text: str) -> str:
        return clean_text(text, self.config)


class SeekforgeLanguage(BaseFilter):
    """Tags ``metadata["language"]`` (script-based zh/ja/ko/en/other, or fastText lid.176 when
    ``fasttext_model`` is given) and drops documents outside ``languages`` (if non-empty)."""

    name = "🌐 seekforge language"

    def __init__(self, languages: list[str] | None = None, fasttext_model: str | None = None,
                 min_score: float = 0.65, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages = set(languages or [])
        self.lid = LanguageIdentifier(fasttext_model, min_score)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = self.lid(doc.text)
        doc.metadata[LANG_KEY] = lang
        self.stat_update(f"lang_{lang}")
        if self.languages and lang not in self.languages:
            return False, "language.not_kept"
        return True


class SeekforgeQualityFilter(BaseFilter):
    """Length, Gopher repetition/quality, C4 and FineWeb rules with English and Chinese
    thresholds (filters.py). Uses ``metadata["language"]`` (detected if absent). The C4 step
    may remove lines, so surviving documents can come out shorter."""

    name = "🀄 seekforge quality"

    def __init__(self, config: FiltersConfig | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.config = config or FiltersConfig()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        res = run_filters(doc.text, _lang(doc), self.config)
        for reason, n in res.c4_lines_removed.items():
            self.stat_update(f"c4_lines_removed_{reason}", value=n)
        if res.text is None:
            return False, res.reason
        doc.text = res.text
        return True


class SeekforgePII(BaseFormatter):
    """Typed placeholders for e-mails, phones (incl. mainland-China mobiles), IPv4, Chinese
    resident IDs (checksum-validated) and payment cards (Luhn-validated)."""

    name = "🕶 seekforge PII"

    def __init__(self, config: PIIConfig | None = None):
        super().__init__()
        self.config = config or PIIConfig()

    def format(self, text: str) -> str:
        counts: Counter = Counter()
        text = scrub(text, self.config, counts)
        for kind, n in counts.items():
            self.stat_update(f"pii_{kind}", value=n)
        return text


class SeekforgeMinhashSignature(MinhashDedupSignature):
    """datatrove MinHash stage 1 with seekforge's shingles: character ``char_ngram``-grams for
    Chinese/Japanese, word ``config.n_grams``-grams otherwise, on seekforge's normalisation.

    datatrove's own stage 1 loads a word tokenizer for one fixed ``language`` (spaCy for
    English and Chinese), so a mixed zh/en corpus cannot be shingled correctly in one pass;
    here each document's script decides. Signatures, buckets and clusters stay datatrove's.
    """

    name = "🎯 seekforge MinHash stage 1"

    def __init__(self, output_folder, config: MinhashConfig | None = None, char_ngram: int = 7,
                 skip_existing_sigs: bool = False):
        # Not calling MinhashDedupSignature.__init__: it would load a (spaCy) word tokenizer.
        # The attributes below are the ones its run()/get_signature() use (datatrove 0.10).
        PipelineStep.__init__(self)
        self.output_folder = get_datafolder(output_folder)
        self.config = config or MinhashConfig()
        self.num_hashes = self.config.num_buckets * self.config.hashes_per_bucket
        self._parameters = None
        self._hash_func = create_hash_func(self.config.hash_config)
        self.language = "multilingual"
        self.word_tokenizer = None
        self.skip_existing_sigs = skip_existing_sigs
        self.shingle_config = DedupConfig(word_ngram=self.config.n_grams, char_ngram=char_ngram)

    def get_shingles(self, text: str) -> np.ndarray:
        lang = LanguageIdentifier()(text)
        shingles = shingle_hashes(simplify(text), lang, self.shingle_config)
        # datatrove's permutations are modulo the Mersenne prime 2^61-1: keep shingles below it
        # (as its own 64-bit hash config effectively does) so a·x+b stays well distributed.
        shingles = shingles & np.uint64((1 << 61) - 2)
        return shingles.reshape(-1, 1)


__all__ = ["SeekforgeClean", "SeekforgeLanguage", "SeekforgeQualityFilter", "SeekforgePII",
           "SeekforgeMinhashSignature", "LANG_KEY"]
