"""Exact and MinHash near-duplicate detection (English and Chinese) and decontamination."""

from __future__ import annotations

import random

import numpy as np

from seekforge.data.dedup import (
    DedupConfig,
    LSHIndex,
    MinHasher,
    contaminated,
    exact_key,
    ngram_set,
    shingle_hashes,
    token_hashes,
)
from seekforge.data.text import detect_language, simplify

EN_WORDS = str.split("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
                     "rho "
            "sigma tau upsilon phi chi psi omega apple river stone cloud music paper light green")
ZH_CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
            "同工也能下过子说产种面而方后多定行学法所民得经")


def en_doc(seed: int, n: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(EN_WORDS) + str(rng.randint(0, 50)) for _ in range(n))


def zh_doc(seed: int, n: int = 600) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(ZH_CHARS) for _ in range(n))


def edit(text: str, frac: float, seed: int, sep: str) -> str:
    """Replace a fraction of the tokens (words for English, characters for Chinese)."""
    rng = random.Random(seed)
    toks = text.split(sep) if sep else list(text)
    for i in rng.sample(range(len(toks)), int(frac * len(toks))):
        toks[i] = "X" if sep else "龘"
    return sep.join(toks)


def is_dup(mh: MinHasher, a: str, b: str, lang: str) -> bool:
    return bool((mh.keys_for(a, lang) == mh.keys_for(b, lang)).any())


def test_exact_key_ignores_case_punctuation_whitespace_and_width():
    assert exact_key("Hello,  World!") == exact_key("hello world")
    assert exact_key("你好，世界！") == exact_key("你好 世界")
    assert exact_key("ＡＢＣ１２") == exact_key("abc00")  # digits normalised to 0
    assert exact_key("hello world") != exact_key("hello there")


def test_word_tokens_hash_by_content():
    h = token_hashes(simplify("the cat sat on the mat"), "en")
    assert len(h) == 6 and h[0] == h[4] and h[1] != h[5]
    assert token_hashes(simplify("中文abc"), "zh").shape == (5,)  # CJK: one token per character


def test_near_duplicates_found_in_english_and_chinese():
    mh = MinHasher(DedupConfig())
    a_en, a_zh = en_doc(1), zh_doc(1)
    assert detect_language(a_zh) == "zh"
    # ~3% of tokens changed: Jaccard of 5-gram/7-gram shingles ~0.8 -> caught with P > 0.9
    assert is_dup(mh, a_en, edit(a_en, 0.03, 2, " "), "en")
    assert is_dup(mh, a_zh, edit(a_zh, 0.02, 2, ""), "zh")
    # unrelated documents are not
    assert not is_dup(mh, a_en, en_doc(3), "en")
    assert not is_dup(mh, a_zh, zh_doc(3), "zh")
    # heavy edits are not near-duplicates
    assert not is_dup(mh, a_en, edit(a_en, 0.5, 4, " "), "en")


def test_minhash_estimates_jaccard():
    cfg = DedupConfig(num_bands=32, rows_per_band=8)
    mh = MinHasher(cfg)
    a = en_doc(5, 600)
    b = edit(a, 0.05, 6, " ")
    sa, sb = (shingle_hashes(simplify(t), "en", cfg) for t in (a, b))
    true = len(set(sa.tolist()) & set(sb.tolist())) / len(set(sa.tolist()) | set(sb.tolist()))
    est = float((mh.signature(sa) == mh.signature(sb)).mean())
    assert abs(est - true) < 0.12, (est, true)


def test_batched_signatures_equal_single():
    mh = MinHasher(DedupConfig())
    texts = [en_doc(i, 20 + 40 * i) for i in range(6)] + [zh_doc(i, 30) for i in range(4)] + ["", "短"]
    langs = ["en"] * 6 + ["zh"] * 6
    many = mh.keys_for_many(texts, langs)
    for t, lang, k in zip(texts, langs, many):
        assert (mh.keys_for(t, lang) == k).all()


def test_candidate_probability_matches_fineweb_numbers():
    cfg = DedupConfig()
    assert round(cfg.candidate_probability(0.8), 3) == 0.924
    assert round(cfg.candidate_probability(0.75), 2) == 0.77


def test_lsh_index_keeps_first_of_cluster():
    idx = LSHIndex(num_bands=3)
    k = np.array([1, 2, 3], dtype=np.uint64)
    assert idx.query_and_add(k, 0) is None
    keys = lambda *v: np.array(v, dtype=np.uint64)  # noqa: E731
    assert idx.query_and_add(keys(9, 2, 8), 1) == 0  # shares band 1 with doc 0
    assert idx.query_and_add(keys(9, 7, 7), 2) == 1  # chain: shares band 0 with doc 1
    assert idx.query_and_add(keys(2, 1, 3), 3) == 0  # equal values in other bands do not count; band 2 hits


def test_decontamination_13grams():
    question = "What is the capital city of the country that hosted the first modern Olympic Games in 1896"
    grams, short = ngram_set([question, "too short"], detect_language, 13)
    assert short == 1 and len(grams) > 0
    leaked = "Here is some text. " + question.upper() + "? Athens, of course."
    assert contaminated(leaked, "en", grams, 13)
    other = "A completely different text about cooking rice and beans at home today"
    assert not contaminated(other, "en", grams, 13)
    zh_q = "下列哪一项是中国古代四大发明之一请从选项中选出正确答案并说明理由"
    zgrams, _ = ngram_set([zh_q], detect_language, 13)
    assert contaminated("题目：" + zh_q[3:20] + "。", "zh", zgrams, 13)
    assert not contaminated("今天天气很好我们一起去公园散步然后回家吃饭", "zh", zgrams, 13)
