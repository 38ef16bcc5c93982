"""Small Chinese + English sample data shipped inside the package, so the README's examples run
without downloading anything.

    seekforge demo --samples samples        # writes the files below to ./samples and lists them

=====================  =====================================================================
``tang_poems.jsonl``   70 Tang poems (public domain), one per line: ``title``, ``author``,
                       ``text`` (simplified characters, one couplet per line), ``id``
``english.jsonl``      18 English texts: 13 in the public domain (Lincoln, Shakespeare, Austen,
                       Dickens, Melville, the King James Psalm 23 ...) and five Aesop fables
                       retold for seekforge; same fields
``sft_zh_en.json``     60 instruction/answer pairs in alpaca format (30 English, 30 Chinese),
                       written for seekforge
``identity.json``      16 "who are you" pairs (English and Chinese) with ``{{name}}`` and
                       ``{{author}}`` placeholders for ``seekforge sft configs/sft_identity.yaml``
=====================  =====================================================================

They are far too small to train a useful model; they exist to exercise every stage quickly.
"""

from __future__ import annotations

from pathlib import Path

from seekforge.utils import atomic_write_bytes

SAMPLES_DIR = Path(__file__).resolve().parent
SAMPLE_FILES = ("tang_poems.jsonl", "english.jsonl", "sft_zh_en.json", "identity.json")


def sample_path(name: str) -> Path:
    """The installed path of one sample file (read it in place)."""
    if name not in SAMPLE_FILES:
        raise FileNotFoundError(f"no sample named {name!r}; the samples are: {', '.join(SAMPLE_FILES)}")
    return SAMPLES_DIR / name


def write_samples(dest: str | Path) -> list[Path]:
    """Copy every sample file into ``dest`` (created if needed); returns the written paths."""
    dest = Path(dest)
    out = []
    for name in SAMPLE_FILES:
        atomic_write_bytes(dest / name, sample_path(name).read_bytes())
        out.append(dest / name)
    return out
