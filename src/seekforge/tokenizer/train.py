"""Train and save seekforge's byte-level BPE tokenizer (DeepSeek-V3 style, zh+en aware).

What a trained tokenizer directory holds (a plain Hugging Face tokenizer dir):

- ``tokenizer.json``           the ``tokenizers`` pipeline: split regexes -> ByteLevel -> BPE; a
                               post-processor that prepends BOS when ``add_special_tokens=True``.
- ``tokenizer_config.json``    special tokens, ``add_bos_token``, and the Jinja ``chat_template``.
- ``special_tokens_map.json``  bos/eos/pad + the chat/FIM/reserved tokens (older loaders read this).
- ``seekforge_tokenizer.json`` how it was trained (pre-tokenizer, vocab size, corpus size).

Design (see docs/tokenizer.md for the measurements):

* **Byte level, no normaliser.** Every UTF-8 string maps to bytes, so there is no ``<unk>`` and
  decode(encode(s)) == s for any text, NBSP/zero-width/``\\r\\n`` included. A normaliser (NFKC,
  strip) would silently change user text, so there is none.
* **Pre-tokenisation** (the "seekforge" splitter), modelled on the DeepSeek-V3 split rules as
  described in llama.cpp's ``DEEPSEEK3_LLM`` entry (rewritten here as one regex, not copied):
  1. numbers are cut into groups of at most 3 digits (``2788000`` -> ``278|800|0``), so the model
     sees a small closed set of number pieces instead of thousands of arbitrary numerals;
  2. runs of Han/Kana characters are isolated, so ``个GPU小时`` becomes ``个|GPU|小时`` (GPT-2's
     regex counts CJK as letters and would glue them to Latin text);
  3. a GPT-4-style rule set for the rest: contractions, an optional space before letters,
     ASCII punctuation glued to following (non-CJK) letters (``.com``, ``-V``), punctuation runs that
     swallow the newlines after them (``。\\n``, ``:\\n`` become single tokens), newline runs and
     trailing whitespace. CJK punctuation (``，。、！？``) is ``\\p{P}`` and follows the punctuation rule.
  The library default (``ByteLevel(use_regex=True)``, the GPT-2 regex) is available as
  ``pretokenizer="bytelevel"`` for comparison, and DeepSeek-V3's own three chained split rules as
  ``pretokenizer="deepseek-v3"`` (llama.cpp reproduces those exactly after a GGUF export).
* **Special tokens** come first (ids 0..N-1) so that bos=0, eos=1 match the model presets.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from seekforge.utils import atomic_dir

log = logging.getLogger("seekforge.tokenizer")

# ---------------------------------------------------------------------------------------------
# Special tokens. ASCII spellings (DeepSeek uses full-width bars, e.g. <｜User｜>; ASCII is easier
# to type in configs and shell). Order matters: the ids are the positions in this list.
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END_OF_TURN = "<|system|>", "<|user|>", "<|assistant|>", "<|eot|>"
# Fill-in-the-middle in DeepSeek's PSM order: <fim_begin> prefix <fim_hole> suffix <fim_end> middle.
FIM_BEGIN, FIM_HOLE, FIM_END = "<|fim_begin|>", "<|fim_hole|>", "<|fim_end|>"
# Tool calls in DeepSeek-V3's layout: <calls_begin> (<call_begin> NAME <sep> ARGUMENTS-JSON <call_end>)+
# <calls_end>, then EOS; a tool's result comes back as its own turn: <tool_output> RESULT <|eot|>.
TOOL_CALLS_BEGIN, TOOL_CALLS_END = "<|tool_calls_begin|>", "<|tool_calls_end|>"
TOOL_CALL_BEGIN, TOOL_SEP, TOOL_CALL_END = "<|tool_call_begin|>", "<|tool_sep|>", "<|tool_call_end|>"
TOOL_OUTPUT = "<|tool_output|>"
TOOL_TOKENS = [TOOL_CALLS_BEGIN, TOOL_CALL_BEGIN, TOOL_SEP, TOOL_CALL_END, TOOL_CALLS_END, TOOL_OUTPUT]
# Spare ids for later features without resizing the model. The tool tokens took the six ids 10-15 that
# earlier versions reserved (<|reserved_0..5|>), so the default layout still has 16 specials.
NUM_RESERVED = 0


def special_tokens(num_reserved: int = NUM_RESERVED) -> list[str]:
    """All special tokens in id order."""
    fixed = [BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END_OF_TURN, FIM_BEGIN, FIM_HOLE, FIM_END]
    return fixed + TOOL_TOKENS + [f"<|reserved_{i}|>" for i in range(num_reserved)]


# The chat template. Format, e.g. with a system prompt and one exchange:
#   <|bos|><|system|>S<|eot|><|user|>U<|eot|><|assistant|>A<|eos|>
# * The assistant turn ends with EOS (not <|eot|>), so a model fine-tuned on it learns to emit the
#   token every engine already stops on (same choice as DeepSeek-V3's template).
# * ``{% generation %}`` wraps exactly the tokens the assistant must learn (its text + EOS), so
#   ``apply_chat_template(..., return_dict=True, return_assistant_tokens_mask=True)`` gives the SFT
#   loss mask. The role marker <|assistant|> is outside: it is given, not predicted.
# * Message content may be a string or a list of {"type": "text", "text": ...} parts.
# * Tools (``apply_chat_template(..., tools=[...])``, OpenAI's function format) are listed in a system
#   turn of their own; an assistant message's ``tool_calls`` follow its text inside the generation
#   span, so SFT teaches the call format; ``role: "tool"`` messages are <|tool_output|> turns.
CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content is none -%}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- else -%}{{ raise_exception('only text message parts are supported, got ' + part['type']) }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{- bos_token -}}"
    "{%- if tools -%}"
    "{{- '" + SYSTEM + "# Tools\\nYou may call these functions. Each is a JSON object: name, "
    "description, parameters (a JSON Schema).\\n' -}}"
    "{%- for tool in tools -%}"
    "{%- set fn = tool['function'] if tool['function'] is defined else tool -%}"
    "{{- {'name': fn['name'], 'description': fn['description'] | default(''), "
    "'parameters': fn['parameters'] | default({})} | tojson -}}{{- '\\n' -}}"
    "{%- endfor -%}"
    "{{- '" + END_OF_TURN + "' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- '" + SYSTEM + "' + text(message['content']) + '" + END_OF_TURN + "' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '" + USER + "' + text(message['content']) + '" + END_OF_TURN + "' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT + "' -}}"
    "{%- generation -%}{{- text(message['content']) -}}"
    "{%- if message['tool_calls'] -%}"
    "{{- '" + TOOL_CALLS_BEGIN + "' -}}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{- '" + TOOL_CALL_BEGIN + "' + fn['name'] + '" + TOOL_SEP + "' -}}"
    "{{- fn['arguments'] if fn['arguments'] is string else fn['arguments'] | tojson -}}"
    "{{- '" + TOOL_CALL_END + "' -}}"
    "{%- endfor -%}"
    "{{- '" + TOOL_CALLS_END + "' -}}"
    "{%- endif -%}"
    "{{- eos_token -}}{%- endgeneration -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '" + TOOL_OUTPUT + "' + text(message['content']) + '" + END_OF_TURN + "' -}}"
    "{%- else -%}"
    "{{- raise_exception('unknown chat role ' + message['role'] + "
    "'; expected system, user, assistant or tool') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
)

# ---------------------------------------------------------------------------------------------
# Pre-tokenisation regex (Oniguruma syntax, as used by ``tokenizers.Regex``). One alternation
# instead of DeepSeek-V3's three chained Split steps: 13% less CPU per MB encoded (docs/LOG.md),
# nearly the same pieces. At each position the first alternative that matches wins, so the order
# matters: digits and CJK runs come first, and the letter rules exclude CJK explicitly.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}ー"  # Han + Japanese kana (+ long-vowel mark); Hangul is a letter
_NON_CJK_LETTER = rf"[\p{{L}}\p{{M}}&&[^{_CJK}]]"
SPLIT_RE = "|".join([
    r"\p{N}{1,3}",                                   # numbers in groups of at most 3 digits
    rf"[{_CJK}]+",                                   # CJK runs, apart from Latin text and digits
    r"'(?i:[sdmt]|ll|ve|re)",                        # English contractions: 's 'll 're ...
    rf"[^\r\n\p{{L}}\p{{N}}\p{{P}}\p{{S}}]?{_NON_CJK_LETTER}+",  # words, with one leading space
    rf"[!-/:-@\[-`{{-~]{_NON_CJK_LETTER}+",            # ASCII punctuation + letters: .com -V _x
    r"\s?[\p{P}\p{S}]+[\r\n]*",                      # punctuation/symbol runs (+ the newlines after)
    r"\s*[\r\n]+",                                   # newline runs with their leading spaces
    r"\s+(?!\S)",                                    # trailing spaces (so " word" stays together)
    r"\s+",
])
# DeepSeek-V3's own split rules: three regexes applied one after another (digits, then CJK runs, then
# the rest), as its released tokenizer.json chains them and llama.cpp implements them under the name
# "deepseek-v3". A tokenizer trained with these is tokenized identically by llama.cpp from text
# (seekforge's single regex differs from all of llama.cpp's in a few places, docs/export.md).
DEEPSEEK_V3_SPLITS = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
PRETOKENIZERS = ("seekforge", "bytelevel", "deepseek-v3")


def build_pre_tokenizer(kind: str = "seekforge"):
    """The pre-tokenizer pipeline: ``seekforge`` (zh+en splits), ``bytelevel`` (GPT-2 default) or
    ``deepseek-v3`` (DeepSeek-V3's released split rules)."""
    from tokenizers import Regex, pre_tokenizers

    if kind == "bytelevel":
        # The library default ByteLevel regex, without the prefix space (it would alter the text).
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "deepseek-v3":
        return pre_tokenizers.Sequence([
            *(pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in DEEPSEEK_V3_SPLITS),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if kind != "seekforge":
        raise ValueError(f"unknown pre-tokenizer {kind!r}; expected one of {', '.join(PRETOKENIZERS)}")
    return pre_tokenizers.Sequence([
        # "isolated": matches become pieces and so does any text between them (nothing is lost).
        pre_tokenizers.Split(Regex(SPLIT_RE), behavior="isolated"),
        # Regex off: the split above already cut the text; ByteLevel only maps bytes to symbols.
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def pre_tokenize(text: str, kind: str = "seekforge") -> list[str]:
    """The pre-tokens of ``text`` as readable strings (for docs, tests and debugging)."""
    pieces = build_pre_tokenizer(kind).pre_tokenize_str(text)
    return [text[a:b] for _, (a, b) in pieces]


# ---------------------------------------------------------------------------------------------
# Training


def _capped(texts: Iterable[str], max_chars: int | None, doc_max_chars: int | None,
            stats: dict[str, int]) -> Iterator[str]:
    """Yield texts, cutting each at ``doc_max_chars`` and stopping after ``max_chars`` in total.

    BPE training time and memory grow with the corpus; a few hundred MB of text is plenty for a
    32k-64k vocab (nanochat trains on 2B characters with documents capped at 10k characters, so one
    huge document cannot dominate the pair counts).
    """
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer expects an iterable of str, got {type(text).__name__}")
        if not text:
            continue
        if doc_max_chars is not None:
            text = text[:doc_max_chars]
        if max_chars is not None and stats["chars"] + len(text) > max_chars:
            text = text[: max_chars - stats["chars"]]
        stats["docs"] += 1
        stats["chars"] += len(text)
        stats["bytes"] += len(text.encode("utf-8"))
        yield text
        if max_chars is not None and stats["chars"] >= max_chars:
            return


def build_tokenizer(kind: str = "seekforge"):
    """An untrained ``tokenizers.Tokenizer`` with seekforge's pipeline (BPE model, byte decoder)."""
    from tokenizers import Tokenizer, decoders, models

    tok = Tokenizer(models.BPE())  # no unk token: byte-level covers every input
    tok.pre_tokenizer = build_pre_tokenizer(kind)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    *,
    pretokenizer: str = "seekforge",
    min_frequency: int = 2,
    max_token_length: int | None = None,
    num_reserved: int = NUM_RESERVED,
    max_chars: int | None = None,
    doc_max_chars: int | None = None,
) -> Path:
    """Train a byte-level BPE on ``texts`` and write an HF tokenizer directory to ``out_dir``.

    ``vocab_size`` counts everything: specials + the 256 byte symbols + merges. A small corpus may
    stop short of it (no pair left to merge); the real size is logged and saved.
    Returns ``out_dir``. The directory is written atomically (all or nothing).
    """
    from tokenizers import pre_tokenizers, processors, trainers

    specials = special_tokens(num_reserved)
    floor = len(specials) + 256 + 1
    if vocab_size < floor:
        raise ValueError(f"vocab_size {vocab_size} is too small: {len(specials)} special tokens + 256 "
                         f"bytes + at least one merge need {floor}")
    tok = build_tokenizer(pretokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        # All 256 byte symbols from the start, so even bytes absent from the corpus are encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=max_token_length,
        show_progress=False,
    )
    stats = {"docs": 0, "chars": 0, "bytes": 0}
    t0 = time.perf_counter()
    tok.train_from_iterator(_capped(texts, max_chars, doc_max_chars, stats), trainer=trainer)
    seconds = time.perf_counter() - t0
    if stats["docs"] == 0:
        raise ValueError("no text to train the tokenizer on (the input is empty)")
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    actual = tok.get_vocab_size()
    if actual < vocab_size:
        log.warning("corpus too small for vocab_size %d: training stopped at %d tokens", vocab_size, actual)
    info = {
        "format": "seekforge-tokenizer-v1",
        "pretokenizer": pretokenizer,
        "requested_vocab_size": vocab_size,
        "vocab_size": actual,
        "min_frequency": min_frequency,
        "max_token_length": max_token_length,
        "train_docs": stats["docs"],
        "train_chars": stats["chars"],
        "train_bytes": stats["bytes"],
        "train_seconds": round(seconds, 3),
    }
    log.info("trained %d-token BPE on %d docs (%.1f MB) in %.1fs", actual, stats["docs"],
             stats["bytes"] / 1e6, seconds)
    save_tokenizer(tok, out_dir, specials=specials, info=info)
    return Path(out_dir)


def tokenizer_config(specials: list[str], model_max_length: int = 1_000_000_000) -> dict[str, Any]:
    """The ``tokenizer_config.json`` contents for a tokenizer with ``specials`` at ids 0..N-1."""
    added = {
        str(i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                 "single_word": False, "special": True}
        for i, t in enumerate(specials)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "additional_special_tokens": [t for t in specials if t not in (BOS, EOS, PAD)],
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,  # True would rewrite " ." to "." on decode: lossy
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(tok, out_dir: str | Path, *, specials: list[str], info: dict[str, Any]) -> None:
    """Write the HF tokenizer directory for a trained ``tokenizers.Tokenizer`` atomically."""
    for t in specials[:3]:
        if tok.token_to_id(t) is None:
            raise ValueError(f"special token {t} missing from the trained vocabulary")
    with atomic_dir(out_dir) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        config = tokenizer_config(specials)
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
                       "additional_special_tokens": config["additional_special_tokens"]}
        (tmp / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n",
                                                    encoding="utf-8")
        (tmp / "seekforge_tokenizer.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
