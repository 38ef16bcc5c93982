"""Language-aware heuristic quality filters: length, Gopher repetition/quality, C4, FineWeb.

The rules are those of Gopher (Rae et al. 2021, table A1 and §A.1.1), C4 (Raffel et al. 2020,
via the TFDS code) and FineWeb (Penedo et al. 2024), with datatrove 0.10's defaults for
English. The thresholds for Chinese are FineWeb-2's ``cmn_Hani`` values (huggingface/fineweb-2
``configs/cmn_Hani.yml``), which were computed on jieba-segmented words; we segment Chinese
with jieba too (``text.split_words``). Where line shape matters (C4's words per line, FineWeb's
newlines per word) the zh tables count CJK units instead (:func:`count_units`: a character, or
a run of other letters/digits), because jieba's word count for verse, names and list items is
unstable, and verse, anthologies and dialogue must keep every line. The English tables keep
datatrove's thresholds but, like the Chinese ones, judge the structure of verse, plays,
dialogue, songs and outlines as structure: a speaker label is a line of its speech, a repeated
chorus counts once, short sentences and titles are not link text, punctuation tokens are not
words, numbered headings are not n-grams. Where seekforge departs from a source it says so next
to the value (and in docs/data.md, which also gives the settings that restore FineWeb exactly).

Every rule table exists per language group: ``en``, ``zh`` (Chinese, also used for Japanese
and other CJK text, segmented per character) and ``other`` (everything else: the English
table without the stop-word rule, since we have no function-word list for it).

A filter returns ``None`` to keep a document or a reason string ``"<filter>.<rule>"`` to drop
it; the C4 filter may also remove lines and so returns the new text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import regex

from seekforge.config import ConfigError
from seekforge.data.text import (
    CJK_LANGS,
    count_sentences,
    ends_with_terminal,
    is_symbol_token,
    split_words,
)

# --------------------------------------------------------------------------- rule tables


@dataclass
class LengthConfig:
    """Document length in characters (language-neutral, cheap, runs first)."""

    enabled: bool = True
    min_chars: int | None = 10  # below this nothing is learnable; Tang quatrains are 24+ chars
    max_chars: int | None = None  # e.g. 1_000_000 to drop logs/dumps; off so books survive


@dataclass
class GopherQualityRules:
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1  # "#" per word, and ellipses per word
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8  # datatrove calls it max_non_alpha_words_ratio
    min_stop_words: int | None = 2
    stop_words: list[str] | None = None  # None: the built-in list of the language group
    # Short texts need fewer: one stop word per this many characters, up to min_stop_words
    # (None: always min_stop_words, as Gopher, whose rule was set on documents of 50+ words).
    stop_word_chars: int | None = None
    # Leave punctuation tokens out of the alpha-words ratio (they are tokens of their own in
    # segmented CJK text, so short lines - dialogue, verse - look "non-alphabetic").
    alpha_ratio_skips_punct: bool = False
    # A document of at least ``lined_min_lines`` non-blank lines needs only this many words
    # (None: always min_doc_words). Gopher's 50-word floor is for running text; a poem, a
    # dialogue or a recipe carries its content in lines, and a short one is 20-50 words.
    lined_min_doc_words: int | None = None
    lined_min_lines: int = 5
    # An outline (numbered headings Chapter 1, 2, 3... / Day 1, 2, 3...: is_outline) is exempt
    # from the stop-word rule (its items are headings, not sentences) and its enumerators
    # (Chapter 3.) are left out of the alpha-words ratio.
    outline_headings_skipped: bool = False


def _en_gopher_quality() -> GopherQualityRules:
    # Gopher / datatrove, except (seekforge, docs/data.md) punctuation tokens are left out of
    # the alpha-words ratio (datatrove's tokenizer makes "." a word: "Almost." is half
    # non-alphabetic), documents of 5+ lines need 15 words, outlines skip the stop-word rule,
    # and the built-in stop words add those of spoken English (EN_SPOKEN_STOP_WORDS).
    # FineWeb's exact values: docs/data.md, "Reproducing FineWeb's English filters".
    return GopherQualityRules(alpha_ratio_skips_punct=True, lined_min_doc_words=15,
                              outline_headings_skipped=True)


def _zh_gopher_quality() -> GopherQualityRules:
    # FineWeb-2 cmn_Hani: avg word length 1..5, alpha-words ratio 0.735, 22 function words.
    # seekforge departs on min_doc_words (FineWeb-2 keeps Gopher's 50): 50 jieba words is ~75
    # characters, which drops every jueju quatrain (20 characters, ~14 words: 床前明月光...)
    # and many short clean paragraphs. 10 words (~15 characters) still removes link texts and
    # one-line snippets; set 50 for web-only corpora.
    # seekforge also asks only one stop word below 100 characters (a quatrain is 20-28; 1+ of the
    # list is in 97% of the Tang poems, 2+ in 89%) and leaves punctuation out of the alpha-words
    # ratio (short dialogue lines are a third punctuation): measured on clean genres, docs/data.md.
    return GopherQualityRules(min_doc_words=10, min_avg_word_length=1, max_avg_word_length=5,
                              min_alpha_words_ratio=0.735, stop_word_chars=100,
                              alpha_ratio_skips_punct=True)


@dataclass
class GopherQualityConfig:
    enabled: bool = True
    en: GopherQualityRules = field(default_factory=_en_gopher_quality)
    zh: GopherQualityRules = field(default_factory=_zh_gopher_quality)
    other: GopherQualityRules = field(default_factory=lambda: GopherQualityRules(
        min_stop_words=None, alpha_ratio_skips_punct=True, lined_min_doc_words=15,
        outline_headings_skipped=True))


@dataclass
class GopherRepetitionRules:
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    # [n, max fraction of characters in the most frequent n-gram]
    top_ngrams: list[list[float]] = field(default_factory=lambda: [[2, 0.2], [3, 0.18], [4, 0.16]])
    # [n, max fraction of characters inside repeated n-grams]
    dup_ngrams: list[list[float]] = field(
        default_factory=lambda: [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.10]]
    )
    # Count n-grams over the distinct lines only: a repeated line (a chorus, a refrain, a tune
    # title) is then judged once, by the duplicate-line rules, not a second time as n-grams.
    ngrams_over_distinct_lines: bool = False
    # Leave punctuation tokens out of the n-grams. Gopher's n-grams are whitespace words, which
    # carry their punctuation; jieba makes every ， 。 ： a token, so in short lines (dialogue:
    # 。\n老王：) punctuation + a speaker name become the "most frequent n-gram".
    ngrams_skip_punct: bool = False
    # Leave line-leading enumerators (第3天：, 1., 一、, （二）, ②) out of the n-grams: they are list
    # structure, and a numbered list repeats "第 N 天" on every line by construction.
    ngrams_skip_enumerators: bool = False
    # A stanza (blank-line separated block of 2+ lines) repeated verbatim - a chorus - counts as
    # one duplicate line for dup_line_frac (and its first line's characters for
    # dup_line_char_frac), not one per line: songs repeat their chorus 2-3 times.
    dup_line_stanzas: bool = False
    # A speaker label line (ROMEO:) is joined to the line after it for the duplicate-line rules:
    # a play repeats its speakers' names by construction.
    speaker_lines_joined: bool = False
    # Leave a script line's speaker prefix (Anna: ...) out of the n-grams, like an enumerator.
    ngrams_skip_speakers: bool = False
    # Skip the top-n-gram rule for outlines (is_outline): the items of a day-by-day plan are
    # parallel by design (Day 2: visit ... in the morning, ... in the afternoon.); the
    # duplicate n-gram and line rules still apply.
    outlines_skip_top_ngrams: bool = False


def _en_gopher_repetition() -> GopherRepetitionRules:
    # Gopher / datatrove thresholds, with (seekforge) a repeated chorus counted once and the
    # n-grams over distinct lines without enumerators, as for zh: docs/data.md.
    return GopherRepetitionRules(ngrams_over_distinct_lines=True, ngrams_skip_enumerators=True,
                                 dup_line_stanzas=True, speaker_lines_joined=True,
                                 ngrams_skip_speakers=True, outlines_skip_top_ngrams=True)


def _zh_gopher_repetition() -> GopherRepetitionRules:
    # FineWeb-2 cmn_Hani: paragraph rules and the line-character rule off, looser n-gram limits.
    return GopherRepetitionRules(
        dup_line_frac=0.287, dup_para_frac=None, dup_line_char_frac=None, dup_para_char_frac=None,
        top_ngrams=[[2, 0.256], [3, 0.201], [4, 0.171]],
        dup_ngrams=[[5, 0.198], [6, 0.182], [7, 0.167], [8, 0.154], [9, 0.14], [10, 0.127]],
        ngrams_over_distinct_lines=True, ngrams_skip_punct=True,  # seekforge: docs/data.md
        ngrams_skip_enumerators=True, dup_line_stanzas=True,
    )


@dataclass
class GopherRepetitionConfig:
    enabled: bool = True
    en: GopherRepetitionRules = field(default_factory=_en_gopher_repetition)
    zh: GopherRepetitionRules = field(default_factory=_zh_gopher_repetition)
    other: GopherRepetitionRules = field(default_factory=_en_gopher_repetition)


@dataclass
class C4Rules:
    # C4 drops lines without terminal punctuation; FineWeb turned that off (it removed ~30% of
    # tokens). When on, the CJK marks 。！？……」 count as terminal (text.ends_with_terminal).
    filter_no_terminal_punct: bool = False
    min_words_per_line: int | None = 3
    # "words": whitespace/jieba words; "chars": CJK characters plus non-CJK words (line_units)
    line_units: Literal["words", "chars"] = "words"
    min_num_sentences: int | None = 5  # after line removal
    # A line under min_words_per_line is kept when it is a sentence - it ends in terminal
    # punctuation (Almost. / Any fever? / O the heavens!) - or a label (ROMEO:, Ingredients:)
    # whose next line is kept: it is then counted as a line of that speech or section (and a
    # play's speaker counts for the line after it: FRIAR LAURENCE: / Too familiar is three words,
    # while Share this: / Facebook stays two). C4's rule (Raffel et al. 2020) is for navigation
    # and link text (Home, Read more, Share), which ends in neither; C4 itself also required the
    # terminal mark.
    keep_short_sentences: bool = False
    keep_speaker_labels: bool = False
    # ... and so is the document's first line (its title: Contents, Travel plan) and, with
    # keep_short_sentences, a verse line ending in a clause mark (thou thimble, / Therefore--).
    keep_title_line: bool = False


@dataclass
class C4Config:
    enabled: bool = True
    remove_citations: bool = True  # Wikipedia-style [1], [edit], [citation needed]
    max_word_length: int | None = 1000  # drop lines with a "word" longer than this
    filter_lorem_ipsum: bool = True  # drop the document
    filter_javascript: bool = True  # drop lines mentioning javascript
    filter_curly_bracket: bool = True  # drop the document (code/templates); off for code corpora
    filter_policy: bool = True  # drop cookie/terms/privacy lines (English and Chinese phrases)
    # seekforge: short sentences, labels and titles stay (dialogue, verse, plays: docs/data.md).
    en: C4Rules = field(default_factory=lambda: C4Rules(keep_short_sentences=True, keep_speaker_labels=True,
                                                        keep_title_line=True))
    # FineWeb-2 applies no C4 rule to Chinese (huggingface/fineweb-2, configs/cmn_Hani.yml). We keep
    # the line rule in CJK units with a floor of 1 (it removes lines without a letter or digit:
    # separators, lone symbols); 2 would cut the one-character poem titles (蟬, 鶴: 1.3% of the Tang
    # poems) and 3 cuts verse lines such as 何意。 and every two-character author line. No minimum
    # sentence count: a quatrain or a one-paragraph answer is one or two sentences ending in 。.
    zh: C4Rules = field(default_factory=lambda: C4Rules(min_words_per_line=1, line_units="chars",
                                                        min_num_sentences=None))
    other: C4Rules = field(default_factory=lambda: C4Rules(
        keep_short_sentences=True, keep_speaker_labels=True, keep_title_line=True))


# Personal pronouns and sentence-final/modal particles (seekforge, for FineWebRules.spoken_markers).
ZH_SPOKEN_MARKERS = "我你您他她咱俺吗呢吧啊呀啦哦嘛"

# A line-leading list enumerator: 第三章 / 第2天, 1. / 2、 / 3) , 一、, （一） / (2), ① … ⑳.
# English: Chapter 3. / Day 2: / Step 4 (the numbered headings of contents, plans and methods).
ENUMERATOR = regex.compile(
    r"^\s*(?:第[0-9一二三四五六七八九十百千零〇两]+[章节回条天步部篇卷课期集讲]|[0-9]{1,3}[.、．)）]"
    r"|[一二三四五六七八九十]+[、．]|[（(][0-9一二三四五六七八九十]+[)）]|[①-⑳]"
    r"|(?:Chapter|Part|Section|Step|Day|Week|Lesson|Act|Scene|Book|Stage|Round)\s+[0-9]{1,3}(?=[\s.:)]|$))"
    r"[\s:：、.．)]*"
)
# A numbered heading: the English enumerators above that name what they count.
_HEADING = regex.compile(r"^\s*(?:Chapter|Part|Section|Step|Day|Week|Lesson|Act|Scene|Book|Stage|Round)"
                         r"\s+([0-9]{1,3})(?=[\s.:)]|$)")

# A label on a line of its own - a play's speaker (ROMEO:, FIRST CITIZEN:) or a section head
# (Ingredients:, Method:): at most four words, the first starting with a letter, a final colon.
SPEAKER_LABEL = regex.compile(r"^[^\W\d_][\w'’.\-]*(?: [\w'’.\-]+){0,3}:$")
# ... of which a play's speaker is written in capitals (ROMEO:, FRIAR LAURENCE:, KING RICHARD III:).
PLAY_SPEAKER = regex.compile(r"^[A-Z][A-Z'’.\-]*(?: [A-Z][A-Z'’.\-]*){0,3}:$")
# A speaker prefix in a script line (Anna: ..., FIRST CITIZEN: ...): left out of the n-grams.
SPEAKER_PREFIX = regex.compile(r"^[A-Z][\w'’.\-]*(?: [A-Z][\w'’.\-]*){0,2}:\s+")


def is_outline(lines: list[str], min_items: int = 3) -> bool:
    """Is the document an outline: at least ``min_items`` numbered headings (Chapter 1,
    Chapter 2 … / Day 1, Day 2 …) counting up one at a time? Tables of contents and
    day-by-day plans are; menus and tag lists carry no numbered headings."""
    numbers = [int(m.group(1)) for ln in lines if (m := _HEADING.match(ln))]
    if len(numbers) < min_items:
        return False
    return all(b == a + 1 for a, b in zip(numbers, numbers[1:]))


def join_speaker_labels(lines: list[str]) -> list[str]:
    """Lines with every label line (ROMEO:) joined to the line after it, so that a speaker
    label is counted as a line of its speech."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i + 1].strip() and SPEAKER_LABEL.match(lines[i].strip()):
            out.append(lines[i] + " " + lines[i + 1])
            i += 2
        else:
            out.append(lines[i])
            i += 1
    return out


@dataclass
class FineWebRules:
    line_punct_thr: float | None = 0.12  # min share of lines ending in terminal punctuation
    short_line_thr: float | None = 0.67  # max share of lines of <= short_line_length chars
    short_line_length: int = 30
    char_duplicates_ratio: float | None = 0.01  # max share of chars in duplicated lines
    new_line_ratio: float | None = 0.3  # max newlines per unit (line_units)
    line_units: Literal["words", "chars"] = "words"  # "chars": CJK characters plus non-CJK words
    # Duplicated lines shorter than this many units do not count for char_duplicates_ratio:
    # repeated titles, author lines and refrains are form, not boilerplate (0: all count).
    dup_line_min_units: int = 0
    # For line_punct, a line also counts as closed when it starts with an enumerator (第一章,
    # 1., 一、: a numbered list is structure, not a link list) ...
    enumerated_lines_closed: bool = False
    # ... or holds one of these characters (personal pronouns and sentence-final particles: the
    # register of lyrics, verse and chat, which print clauses as lines without punctuation, and
    # rare in headline, tag and link lists, which this rule is for).
    spoken_markers: str = ""
    # ... or (space-separated text) holds one of these words, lower-cased: the same register
    # markers for English (I, you, we, me, my: lyrics print their clauses as lines).
    spoken_words: list[str] = field(default_factory=list)
    # A label line (ROMEO:) is joined to the line after it for every rule here: counted as a
    # line of its speech, not as a short, unpunctuated or duplicated line of its own.
    speaker_lines_joined: bool = False
    # Lines of a stanza repeated verbatim (a chorus) do not count for char_duplicates_ratio.
    dup_line_stanzas: bool = False
    # Enumerated lines (1. / Chapter 3. / Day 2:) do not count as short lines: the numbered
    # headings of a table of contents are short by nature.
    short_line_skips_enumerated: bool = False


EN_SPOKEN_WORDS = ["i", "you", "we", "me", "my", "your", "our", "us"]


def _en_fineweb() -> FineWebRules:
    # FineWeb / datatrove, except (seekforge, docs/data.md): enumerated lines and lines with a
    # personal pronoun count as closed, speaker labels are joined to their speech, a repeated
    # chorus and lines under 3 words (short sentences C4 kept) are not duplicate boilerplate,
    # and enumerated lines are not short lines.
    return FineWebRules(enumerated_lines_closed=True, spoken_words=list(EN_SPOKEN_WORDS),
                        speaker_lines_joined=True, dup_line_stanzas=True, dup_line_min_units=3,
                        short_line_skips_enumerated=True)


@dataclass
class FineWebConfig:
    enabled: bool = True
    en: FineWebRules = field(default_factory=_en_fineweb)
    # FineWeb-2 cmn_Hani: short-line rule off, 0.106 / 0.1 / 0.178 newlines per jieba word.
    # seekforge counts newlines per CJK unit instead (0.3: lines must average over 3.3
    # characters; clean poems, ci, lyrics, dialogue and lists measure <= 0.25, one-to-three
    # character link and tag lists 0.3-0.5), and lets duplicated lines under 10 units (tune
    # titles, author lines, refrains) pass the duplicate-characters rule: docs/data.md.
    zh: FineWebRules = field(
        default_factory=lambda: FineWebRules(line_punct_thr=0.106, short_line_thr=None,
                                             char_duplicates_ratio=0.1, new_line_ratio=0.3,
                                             line_units="chars", dup_line_min_units=10,
                                             enumerated_lines_closed=True, spoken_markers=ZH_SPOKEN_MARKERS)
    )
    other: FineWebRules = field(default_factory=_en_fineweb)


@dataclass
class FiltersConfig:
    """All heuristic filters, in the order they run (FineWeb's order)."""

    length: LengthConfig = field(default_factory=LengthConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    c4: C4Config = field(default_factory=C4Config)
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)

    def validate(self) -> None:
        """Every share/ratio threshold must be in [0, 1] (or null: rule off)."""
        tables = (("gopher_repetition", GopherRepetitionRules), ("gopher_quality", GopherQualityRules),
                  ("fineweb", FineWebRules))
        for table, rules_cls in tables:
            for lang in ("en", "zh", "other"):
                rules = getattr(getattr(self, table), lang)
                for name in _SHARE_FIELDS[rules_cls]:
                    _check_share(f"filters.{table}.{lang}.{name}", getattr(rules, name))
                if isinstance(rules, GopherRepetitionRules):
                    for name in ("top_ngrams", "dup_ngrams"):
                        for pair in getattr(rules, name):
                            if len(pair) != 2:
                                raise ConfigError(f"filters.{table}.{lang}.{name}: expected [n, share] "
                                                  f"pairs, got {pair!r}")
                            _check_share(f"filters.{table}.{lang}.{name} (n={int(pair[0])})", pair[1])


# Fields holding a share (fraction of lines, characters or words) - valid values [0, 1].
_SHARE_FIELDS: dict[type, tuple[str, ...]] = {
    GopherRepetitionRules: ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"),
    GopherQualityRules: ("max_symbol_word_ratio", "max_bullet_lines_ratio",
                         "max_ellipsis_lines_ratio", "min_alpha_words_ratio"),
    FineWebRules: ("line_punct_thr", "short_line_thr", "char_duplicates_ratio"),
}


def _check_share(key: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} must be a share in [0, 1] (or null to turn the rule off), got {value}")


def group(lang: str) -> str:
    """Rule-table key for a language code."""
    if lang == "en":
        return "en"
    if lang in CJK_LANGS:
        return "zh"
    return "other"


EN_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher
# seekforge: the pronouns and verbs of spoken English. Dialogue (Any fever? / I don't think so.)
# uses them where prose uses "the ... of"; menus, tag clouds and keyword lists hold none of them.
EN_SPOKEN_STOP_WORDS = ("i", "you", "we", "is", "it", "do", "not", "are", "my", "me")
# FineWeb-2 cmn_Hani's 22 function words (simplified and traditional forms) ...
ZH_STOP_WORDS = ("的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人",
                 "中", "为", "他", "與", "後", "也", "而", "由",
                 # ... plus (seekforge) the commonest classical particles and negations. Without
                 # them 60% of all Tang poems fail the rule (12,070/20,011 with token matching),
                 # literary Chinese rarely using the modern 的/了/是; keyword spam still fails.
                 "之", "其", "以", "不", "無", "无", "乎", "者", "兮", "矣", "焉", "哉", "乃", "于",
                 # ... and classical pronouns/adverbs/connectives: 2+ of the list in 89% of the
                 # Tang poems (71% without), 1+ in 97% (docs/data.md).
                 "一", "來", "来", "如", "此", "何", "自", "相", "君", "与", "所", "可", "亦",
                 "未", "已", "皆", "又", "將", "将", "爲",
                 # ... and (seekforge) the grammatical words of modern procedural and spoken
                 # text (recipes, instructions, chat: 把鸡蛋打散, 炒熟后盛出), none of which a menu
                 # or tag list of nouns holds.
                 "把", "后", "再", "就", "都", "要", "会", "到", "这", "那", "个", "着", "过", "给",
                 "从", "对", "用")

# --------------------------------------------------------------------------- units

# CJK-aware counting unit: one per Han/kana/Hangul character, one per run of other letters or
# digits (an English word, a number); punctuation and symbols count nothing. A Chinese word is
# ~1.5 characters, so for prose a unit is a little less than a word; for verse, names and list
# items - where jieba glues or splits unpredictably - it is the stable measure.
_CJK_CLASS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
_UNIT = regex.compile(rf"[{_CJK_CLASS}]|[^\W_{_CJK_CLASS}]+")


def count_units(text: str) -> int:
    return len(_UNIT.findall(text))


# --------------------------------------------------------------------------- per-document view

# English words for counting: punctuation split off like a real tokenizer would (Gopher's
# thresholds were set on tokenizer output, where "end." is two tokens).
_EN_TOKEN = regex.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]+")


class DocView:
    """A document under inspection: text, language and lazily computed words/lines."""

    def __init__(self, text: str, lang: str):
        self.lang = lang
        self.group = group(lang)
        # Segmentation is the expensive part for Chinese: cache it per line, so that the C4
        # line rules and the word counts after C4 removed lines reuse the same jieba calls.
        self._seg_cache: dict[str, list[str]] = {}
        self.set_text(text)

    def set_text(self, text: str) -> None:
        self.text = text
        self._words: list[str] | None = None
        self._lines: list[str] | None = None
        self._learned = False

    def learn(self) -> None:
        """Make sure every token of the document is in the symbol/alpha memo sets."""
        if not self._learned:
            _learn(self.words)
            self._learned = True

    def line_words(self, line: str) -> list[str]:
        """Words of one line (segmented for CJK, whitespace tokens otherwise)."""
        if self.group != "zh":
            return line.split()
        words = self._seg_cache.get(line)
        if words is None:
            words = self._seg_cache[line] = split_words(line, self.lang)
        return words

    @property
    def words(self) -> list[str]:
        """All tokens including punctuation tokens (whitespace excluded)."""
        if self._words is None:
            if self.group == "zh":
                self._segment_lines()
                self._words = [w for line in self.lines for w in self._seg_cache[line]]
            else:
                self._words = _EN_TOKEN.findall(self.text)
        return self._words

    def _segment_lines(self) -> None:
        """Segment every line not segmented yet (one segmenter call per line: with rjieba a
        call costs about a microsecond, less than re-splitting one big result in Python)."""
        for ln in self.lines:
            if ln not in self._seg_cache:
                self._seg_cache[ln] = split_words(ln, self.lang) if ln else []

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self.text.split("\n")
        return self._lines


# --------------------------------------------------------------------------- length


def check_length(view: DocView, cfg: LengthConfig) -> str | None:
    n = len(view.text)
    if cfg.min_chars is not None and n < cfg.min_chars:
        return "length.too_short"
    if cfg.max_chars is not None and n > cfg.max_chars:
        return "length.too_long"
    return None


# --------------------------------------------------------------------------- Gopher quality


# Per-token properties, memoised in sets so that counting over a document is a C-level
# ``sum(map(set.__contains__, words))`` instead of a Python loop (tokens repeat a lot: Zipf).
_KNOWN: set[str] = set()
_SYMBOL: set[str] = set()  # made only of punctuation/symbols
_NO_ALPHA: set[str] = set()  # contains no letter (CJK characters are letters)
_MEMO_LIMIT = 2_000_000


def _learn(words: list[str]) -> None:
    new = set(words) - _KNOWN
    if not new:
        return
    if len(_KNOWN) > _MEMO_LIMIT:  # bound memory on endless vocabularies (ids, numbers)
        _KNOWN.clear()
        _SYMBOL.clear()
        _NO_ALPHA.clear()
    for w in new:
        if is_symbol_token(w):
            _SYMBOL.add(w)
        if not any(c.isalpha() for c in w):
            _NO_ALPHA.add(w)
    _KNOWN.update(new)


def check_gopher_quality(view: DocView, cfg: GopherQualityConfig) -> str | None:
    r: GopherQualityRules = getattr(cfg, view.group)
    words = view.words
    if not words:
        return "gopher_quality.too_few_words"
    view.learn()
    real = [w for w in words if w not in _SYMBOL]
    n_words = len(words)
    lines = [ln for ln in view.lines if ln.strip()] or [""]
    min_words = r.min_doc_words
    if min_words is not None and r.lined_min_doc_words is not None and len(lines) >= r.lined_min_lines:
        min_words = min(min_words, r.lined_min_doc_words)
    if min_words is not None and len(real) < min_words:
        return "gopher_quality.too_few_words"
    if r.max_doc_words is not None and len(real) > r.max_doc_words:
        return "gopher_quality.too_many_words"
    avg = sum(map(len, real)) / len(real) if real else 0.0
    if r.min_avg_word_length is not None and avg < r.min_avg_word_length:
        return "gopher_quality.short_words"
    if r.max_avg_word_length is not None and avg > r.max_avg_word_length:
        return "gopher_quality.long_words"
    text = view.text
    if r.max_symbol_word_ratio is not None:
        if text.count("#") / n_words > r.max_symbol_word_ratio:
            return "gopher_quality.hash_symbols"
        # "……" is one Chinese ellipsis, not two.
        ellipses = text.count("...") + text.count("…") - text.count("……")
        if ellipses / n_words > r.max_symbol_word_ratio:
            return "gopher_quality.ellipses"
    if r.max_bullet_lines_ratio is not None:
        bullets = sum(ln.lstrip().startswith(_BULLETS) for ln in lines)
        if bullets / len(lines) > r.max_bullet_lines_ratio:
            return "gopher_quality.bullet_lines"
    if r.max_ellipsis_lines_ratio is not None:
        ell = sum(ln.rstrip().endswith(("...", "…")) for ln in lines)
        if ell / len(lines) > r.max_ellipsis_lines_ratio:
            return "gopher_quality.ellipsis_lines"
    outline = r.outline_headings_skipped and is_outline(lines)
    if r.min_alpha_words_ratio is not None:
        counted = real if r.alpha_ratio_skips_punct else words
        if outline and view.group != "zh":
            counted = _EN_TOKEN.findall("\n".join(ENUMERATOR.sub("", ln, count=1) for ln in lines))
            _learn(counted)
            if r.alpha_ratio_skips_punct:
                counted = [w for w in counted if w not in _SYMBOL]
        alpha = len(counted) - sum(map(_NO_ALPHA.__contains__, counted))
        if alpha < r.min_alpha_words_ratio * len(counted):
            return "gopher_quality.non_alpha_words"
    if r.min_stop_words is not None and not outline:
        stop = r.stop_words
        if stop is None:
            stop = {"en": EN_STOP_WORDS + EN_SPOKEN_STOP_WORDS,
                    "zh": ZH_STOP_WORDS if view.lang == "zh" else None}.get(view.group)
        if stop:  # no list for this language: rule skipped
            if view.group == "zh":
                # Chinese function words are single characters: look for them in the text, not
                # among jieba's tokens, which (on literary text especially) glue them into
                # words (人間, 無情) or split the text wrongly. Measured on the Tang poems:
                # 56% pass with token matching, 71% with character matching.
                found = {w for w in stop if w in text}
            else:
                found = {w.lower() for w in words} & set(stop)
            need = r.min_stop_words
            if r.stop_word_chars:
                need = min(need, 1 + len(text) // r.stop_word_chars)
            if len(found) < need:
                return "gopher_quality.few_stop_words"
    return None


# Gopher counts "•" and "-"; the other markers are the common list bullets of CJK/web text.
_BULLETS = ("•", "-", "●", "○", "■", "◆", "▪", "・", "*")

# --------------------------------------------------------------------------- Gopher repetition


def _dup_stats(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, characters in them) — Gopher's duplicate counting."""
    seen: set[str] = set()
    n = chars = 0
    for it in items:
        if it in seen:
            n += 1
            chars += len(it)
        else:
            seen.add(it)
    return n, chars


_PARA_SPLIT = regex.compile(r"\n{2,}")


class StanzaRepeats(NamedTuple):
    """What a repeated stanza adds to the duplicate-line counts beyond its first line."""

    lines: int  # lines after the first of every repeat of a stanza
    chars: int  # the characters in those lines


def repeated_stanzas(text: str) -> StanzaRepeats:
    """A stanza of k lines repeated verbatim counted k duplicate lines; judged as one line,
    k - 1 of them (and their characters) are forgiven."""
    seen: set[str] = set()
    lines = chars = 0
    for para in _PARA_SPLIT.split(text.strip()):
        k = para.count("\n") + 1
        if para in seen and k >= 2:
            first = para.index("\n")
            lines += k - 1
            chars += len(para) - first - (k - 1)  # without the newlines
        seen.add(para)
    return StanzaRepeats(lines, chars)


_LINE_SPLIT = regex.compile(r"\n+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): polynomial base


def _ngram_repetition_small(words: list[str], sep_len: int) -> tuple[dict[int, int], dict[int, int]]:
    """Same result as the numpy path, in plain Python: faster below a few hundred words, where
    numpy's per-call overhead dominates (most documents of a Chinese poetry or chat corpus)."""
    top: dict[int, int] = dict.fromkeys(range(2, 5), 0)
    dup: dict[int, int] = dict.fromkeys(range(5, 11), 0)
    lens = [len(w) for w in words]
    for n in range(2, 11):
        m = len(words) - n + 1
        if m <= 0:
            break
        if (n <= 4 and top.get(n - 1) == 0) or dup.get(n - 1) == 0 or (n == 5 and top.get(4) == 0):
            # No repeated (n-1)-gram means no repeated n-gram: skip the work (short docs).
            (top if n <= 4 else dup)[n] = 0
            continue
        grams = list(zip(*(words[k : k + m] for k in range(n))))
        if n <= 4:
            counts = Counter(grams)
            cnt = max(counts.values())
            if cnt < 2:
                top[n] = 0
                continue
            pos = next(i for i, g in enumerate(grams) if counts[g] == cnt)  # first of the ties
            top[n] = (sum(lens[pos : pos + n]) + sep_len * (n - 1)) * cnt
        else:
            seen: set[tuple[str, ...]] = set()
            covered = [False] * len(words)
            for i, g in enumerate(grams):
                if g in seen:
                    covered[i : i + n] = [True] * n
                else:
                    seen.add(g)
            dup[n] = sum(ln for ln, c in zip(lens, covered) if c)
    return top, dup


# Below this many words the pure-Python n-gram path is faster than numpy (measured).
_SMALL_DOC_WORDS = 200


def ngram_repetition(words: list[str], sep_len: int) -> tuple[dict[int, int], dict[int, int]]:
    """For every n in 2..10: characters in the most frequent n-gram (times its count) and
    characters inside repeated n-grams (occurrences after the first, overlaps counted once).

    Vectorised with numpy instead of Python sets of joined strings (datatrove's version is
    ~0.3 MB/s); the repeated-n-gram count covers the union of repeated windows where datatrove
    greedily skips ahead, which agrees closely (tests/data/test_prepare_filters.py compares).
    """
    if len(words) < _SMALL_DOC_WORDS:
        return _ngram_repetition_small(words, sep_len)
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.uint64, count=len(words))
    lens = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    csum = np.concatenate([[0], np.cumsum(lens)])
    top: dict[int, int] = dict.fromkeys(range(2, 5), 0)
    dup: dict[int, int] = dict.fromkeys(range(5, 11), 0)
    # Only windows whose (n-1)-gram repeats can hold a repeated n-gram (all occurrences of a
    # repeated n-gram start such windows), so each n only looks at the survivors of n-1: on
    # ordinary text the candidate set collapses after n=2 or 3.
    cand = np.arange(len(words) - 1)
    for n in range(2, 11):
        cand = cand[cand <= len(words) - n]
        if len(cand) < 2:
            break
        keys = np.zeros(len(cand), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                keys = keys * _MULT + ids[cand + k]
        _, first, inverse, counts = np.unique(
            keys, return_index=True, return_inverse=True, return_counts=True
        )
        per_pos = counts[inverse]
        if n <= 4:
            i = int(np.argmax(per_pos))  # first window (cand is ascending) with the top count
            # A single occurrence is not a repetition. datatrove still counts the most
            # "frequent" n-gram then, which drops every text shorter than a few n-grams (the
            # first 4-gram of a 25-character quatrain is 24% of it).
            if per_pos[i] >= 2:
                pos = int(cand[i])
                top[n] = (int(csum[pos + n] - csum[pos]) + sep_len * (n - 1)) * int(per_pos[i])
        else:
            rep = cand[np.arange(len(cand)) != first[inverse]]
            if len(rep):
                cover = np.zeros(len(words) + 1, dtype=np.int64)
                np.add.at(cover, rep, 1)
                np.add.at(cover, rep + n, -1)
                dup[n] = int(lens[np.cumsum(cover[:-1]) > 0].sum())
        cand = cand[per_pos >= 2]
    return top, dup


def check_gopher_repetition(view: DocView, cfg: GopherRepetitionConfig) -> str | None:
    r: GopherRepetitionRules = getattr(cfg, view.group)
    text = view.text
    if not text:
        return "gopher_repetition.empty"
    if r.dup_para_frac is not None or r.dup_para_char_frac is not None:
        paras = _PARA_SPLIT.split(text.strip())
        n, chars = _dup_stats(paras)
        if r.dup_para_frac is not None and n / len(paras) > r.dup_para_frac:
            return "gopher_repetition.dup_paragraphs"
        if r.dup_para_char_frac is not None and chars / len(text) > r.dup_para_char_frac:
            return "gopher_repetition.dup_paragraph_chars"
    lines = _LINE_SPLIT.split(text)
    judged = join_speaker_labels(lines) if r.speaker_lines_joined else lines
    n, chars = _dup_stats(judged)
    stanzas = repeated_stanzas(text) if r.dup_line_stanzas and n else StanzaRepeats(0, 0)
    if r.dup_line_frac is not None and (n - stanzas.lines) / len(judged) > r.dup_line_frac:
        return "gopher_repetition.dup_lines"
    if r.dup_line_char_frac is not None and (chars - stanzas.chars) / len(text) > r.dup_line_char_frac:
        return "gopher_repetition.dup_line_chars"
    if not r.top_ngrams and not r.dup_ngrams:
        return None
    words, length = view.words, len(text)
    skip_enum = r.ngrams_skip_enumerators and any(ENUMERATOR.match(ln) for ln in lines)
    skip_speakers = r.ngrams_skip_speakers and any(SPEAKER_PREFIX.match(ln) for ln in lines)
    if (r.ngrams_over_distinct_lines and n) or skip_enum or skip_speakers:
        distinct = list(dict.fromkeys(lines)) if r.ngrams_over_distinct_lines else lines
        if skip_enum:
            distinct = [ENUMERATOR.sub("", ln, count=1) for ln in distinct]
        if skip_speakers:
            distinct = [SPEAKER_PREFIX.sub("", ln, count=1) for ln in distinct]
        words = [w for ln in distinct for w in view.line_words(ln)]
        length = sum(map(len, distinct)) + len(distinct) - 1
    if r.ngrams_skip_punct:
        view.learn()
        words = [w for w in words if w not in _SYMBOL]
    # Chinese n-grams are written without separators; English ones with a space between words.
    top, dup = ngram_repetition(words, sep_len=0 if view.group == "zh" else 1)
    top_ngrams = [] if r.outlines_skip_top_ngrams and is_outline(lines) else r.top_ngrams
    for n, frac in top_ngrams:
        if int(n) in top and top[int(n)] / length > frac:
            return f"gopher_repetition.top_{int(n)}gram"
    for n, frac in r.dup_ngrams:
        if int(n) in dup and dup[int(n)] / length > frac:
            return f"gopher_repetition.dup_{int(n)}grams"
    return None


# --------------------------------------------------------------------------- C4

_CITATION = regex.compile(r"\[\d*\]|\[edit\]|\[citation needed\]|\[编辑\]|\[編輯\]")
POLICY_PHRASES = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
    "隐私政策", "隱私政策", "隐私条款", "隱私條款", "使用条款", "使用條款", "服务条款", "服務條款",
    "使用cookie", "使用 cookie",
)

_POLICY_RE = regex.compile("|".join(regex.escape(p) for p in POLICY_PHRASES))


@dataclass
class C4Result:
    text: str | None  # None: document dropped
    reason: str | None
    lines_removed: Counter


def apply_c4(view: DocView, cfg: C4Config) -> C4Result:
    """C4's line filter then document rules. Lines are removed in place (text may shrink)."""
    r: C4Rules = getattr(cfg, view.group)
    removed: Counter = Counter()
    kept: list[str | None] = []
    sentences = 0
    # Whole-document pre-checks, so the per-line substring tests only run where they can hit.
    low_doc = view.text.lower()
    check_js = cfg.filter_javascript and "javascript" in low_doc
    check_policy = cfg.filter_policy and bool(_POLICY_RE.search(low_doc))
    check_lorem = cfg.filter_lorem_ipsum and "lorem ipsum" in low_doc
    check_curly = cfg.filter_curly_bracket and "{" in view.text
    check_cite = cfg.remove_citations and "[" in view.text
    by_chars = r.line_units == "chars"
    if r.min_words_per_line is not None and not by_chars:
        view.learn()  # per-line symbol counts below are then set lookups only
    lines = view.lines
    labels: dict[int, int] = {}  # label line index -> its position in kept (decided at the end)
    kept_lines: set[int] = set()
    title = next((i for i, ln in enumerate(lines) if ln.strip()), -1) if r.keep_title_line else -1
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            kept.append("")  # keep paragraph structure; blank lines are not "lines" for C4
            continue
        if (cfg.max_word_length is not None and len(line) > cfg.max_word_length
                and any(len(w) > cfg.max_word_length for w in line.split())):
            removed["too_long_word"] += 1
            continue
        cited = False
        if check_cite:
            stripped = _CITATION.sub("", line)
            cited, line = stripped != line, stripped
        if r.filter_no_terminal_punct and not ends_with_terminal(line):
            removed["no_terminal_punct"] += 1
            continue
        if r.min_words_per_line is not None:
            if by_chars:
                n_units = count_units(line)
            else:
                words = view.line_words(line)
                if cited:  # the line changed: its tokens may be new
                    _learn(words)
                n_units = len(words) - sum(map(_SYMBOL.__contains__, words))
            if (n_units < r.min_words_per_line and r.keep_speaker_labels and i - 1 in labels
                    and PLAY_SPEAKER.match(lines[i - 1].strip())):
                n_units += count_units(lines[i - 1])  # the speaker's name is a line of this speech
            if n_units < r.min_words_per_line:
                if r.keep_speaker_labels and SPEAKER_LABEL.match(line):
                    labels[i] = len(kept)
                    kept.append(line)
                    continue
                short_ok = (r.keep_short_sentences
                            and (ends_with_terminal(line) or line.endswith(_CLAUSE_END))
                            or i == title)
                if not (short_ok and any(c.isalpha() for c in line)):
                    removed["too_few_words"] += 1
                    continue
        low = line.lower() if (check_js or check_policy or check_lorem) else ""
        if check_lorem and "lorem ipsum" in low:
            return C4Result(None, "c4.lorem_ipsum", removed)
        if check_js and "javascript" in low:
            removed["javascript"] += 1
            continue
        if check_curly and "{" in line:
            return C4Result(None, "c4.curly_bracket", removed)
        if check_policy and _POLICY_RE.search(low):
            removed["policy"] += 1
            continue
        if r.min_num_sentences is not None:
            sentences += count_sentences(line)
        kept.append(line)
        kept_lines.add(i)
    for i, pos in labels.items():  # a label stays with the line it introduces, or goes
        if i + 1 not in kept_lines:
            kept[pos] = None
            removed["too_few_words"] += 1
    if labels:
        kept = [ln for ln in kept if ln is not None]
    if r.min_num_sentences is not None and sentences < r.min_num_sentences:
        return C4Result(None, "c4.too_few_sentences", removed)
    text = "\n".join(kept)
    text = regex.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:
        return C4Result(None, "c4.no_lines_left", removed)
    return C4Result(text, None, removed)


# --------------------------------------------------------------------------- FineWeb


def _closed_line(line: str, r: FineWebRules) -> bool:
    """Does the line end like a sentence for FineWeb's line_punct rule?"""
    if ends_with_terminal(line):
        return True
    if r.enumerated_lines_closed and ENUMERATOR.match(line):
        return True
    if r.spoken_words and not set(r.spoken_words).isdisjoint(_WORD.findall(line.lower())):
        return True
    return bool(r.spoken_markers) and any(c in line for c in r.spoken_markers)


_WORD = regex.compile(r"[^\W_]+")


_CLAUSE_END = (",", ";", "--", "—")


def _without_repeated_stanzas(text: str) -> list[str]:
    """Non-blank lines of the text, less every verbatim repeat of a stanza of 2+ lines."""
    seen: set[str] = set()
    out: list[str] = []
    for para in _PARA_SPLIT.split(text.strip()):
        block = para.split("\n")
        if not (para in seen and len(block) >= 2):
            out += [ln for ln in block if ln.strip()]
        seen.add(para)
    return out


def check_fineweb(view: DocView, cfg: FineWebConfig) -> str | None:
    r: FineWebRules = getattr(cfg, view.group)
    lines = [ln for ln in view.lines if ln.strip()]
    if not lines:
        return "fineweb.empty"
    if r.speaker_lines_joined:
        lines = join_speaker_labels(lines)
    if r.line_punct_thr is not None:
        share = sum(map(lambda ln: _closed_line(ln, r), lines)) / len(lines)
        if share < r.line_punct_thr:
            return "fineweb.line_punct"
    if r.short_line_thr is not None:
        short = [ln for ln in lines if len(ln) <= r.short_line_length]
        if r.short_line_skips_enumerated:
            short = [ln for ln in short if not ENUMERATOR.match(ln)]
        if r.speaker_lines_joined:  # a script's turn (Ben: Almost.) is a sentence, not a link
            short = [ln for ln in short if not (SPEAKER_PREFIX.match(ln) and ends_with_terminal(ln))]
        share = len(short) / len(lines)
        if share > r.short_line_thr:
            return "fineweb.short_lines"
    if r.char_duplicates_ratio is not None:
        counted = lines
        if r.dup_line_stanzas:
            counted = _without_repeated_stanzas(view.text)
            if r.speaker_lines_joined:
                counted = join_speaker_labels(counted)
        if r.dup_line_min_units:
            counted = [ln for ln in counted if count_units(ln) >= r.dup_line_min_units]
        _, chars = _dup_stats(counted)
        if chars / max(1, len(view.text) - view.text.count("\n")) > r.char_duplicates_ratio:
            return "fineweb.dup_line_chars"
    if r.new_line_ratio is not None:
        units = count_units(view.text) if r.line_units == "chars" else len(view.words)
        if not units or view.text.count("\n") / units > r.new_line_ratio:
            return "fineweb.list_like"
    return None


# --------------------------------------------------------------------------- the chain


@dataclass
class FilterOutcome:
    text: str | None  # final text, None when dropped
    reason: str | None
    c4_lines_removed: Counter


def run_filters(text: str, lang: str, cfg: FiltersConfig) -> FilterOutcome:
    """Apply the enabled filters in order; the first failing rule decides the reason."""
    view = DocView(text, lang)
    lines_removed: Counter = Counter()
    if cfg.length.enabled and (reason := check_length(view, cfg.length)):
        return FilterOutcome(None, reason, lines_removed)
    if cfg.gopher_repetition.enabled and (reason := check_gopher_repetition(view, cfg.gopher_repetition)):
        return FilterOutcome(None, reason, lines_removed)
    if cfg.gopher_quality.enabled and (reason := check_gopher_quality(view, cfg.gopher_quality)):
        return FilterOutcome(None, reason, lines_removed)
    if cfg.c4.enabled:
        res = apply_c4(view, cfg.c4)
        lines_removed = res.lines_removed
        if res.text is None:
            return FilterOutcome(None, res.reason, lines_removed)
        if res.text != view.text:
            view.set_text(res.text)
    if cfg.fineweb.enabled and (reason := check_fineweb(view, cfg.fineweb)):
        return FilterOutcome(None, reason, lines_removed)
    return FilterOutcome(view.text, None, lines_removed)
