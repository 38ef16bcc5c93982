"""Tokenizer training, loading, lossless round trips, special tokens, chat template, pre-tokenizer."""

from __future__ import annotations

import json
import random

import pytest

from seekforge.tokenizer import (
    ASSISTANT,
    BOS,
    END_OF_TURN,
    EOS,
    FIM_BEGIN,
    FIM_END,
    FIM_HOLE,
    PAD,
    SYSTEM,
    USER,
    load_tokenizer,
    pre_tokenize,
    special_tokens,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


# -------------------------------------------------------------------------- files and specials


def test_directory_layout_and_vocab(tokenizer_dir, tok):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tokenizer_dir / name).is_file()
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert "{%- generation -%}" in config["chat_template"]  # enables return_assistant_tokens_mask
    assert config["bos_token"] == BOS and config["eos_token"] == EOS and config["pad_token"] == PAD
    assert len(tok) == 512  # the tiny preset's vocab: the corpus is big enough to fill it
    info = json.loads((tokenizer_dir / "seekforge_tokenizer.json").read_text())
    assert info["vocab_size"] == 512 and info["pretokenizer"] == "seekforge"


def test_special_token_ids(tok):
    # bos=0 / eos=1 match the model presets' bos_token_id / eos_token_id defaults.
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    for i, t in enumerate(special_tokens()):
        assert tok.convert_tokens_to_ids(t) == i
        assert tok.encode(t, add_special_tokens=False) == [i]  # one token, never split
    for t in (SYSTEM, USER, ASSISTANT, END_OF_TURN, FIM_BEGIN, FIM_HOLE, FIM_END):
        assert t in tok.all_special_tokens


def test_encode_adds_bos_and_decode_skips_it(tok):
    ids = tok.encode("hello world")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    assert tok.decode(ids) == BOS + "hello world"


# -------------------------------------------------------------------------- lossless round trip

ODD = [
    "在2024年，DeepSeek-V3用了2788000个H800 GPU小时。\n它很便宜！",
    "def f(x):\n\treturn x ** 2  # 平方\r\n\r\n",
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇨🇳🇺🇸 and ZWJ",
    "nbsp\u00a0thin\u2009zero\u200bwidth\u200cjoiner\u200d\ufeffbom",
    "   leading and trailing   \n\n\n",
    "Ünïcödé café naïve — “quotes” ‘single’ … ½ ² ℃ ①",
    "日本語のカタカナとひらがな、한국어 텍스트, русский текст, العربية",
    "\x00\x01control\x7f chars \u2028 line sep \u2029 para",
    "1234567890 3.14159 1,000,000 0x1F -42",
    "",
]


@pytest.mark.parametrize("text", ODD)
def test_round_trip_odd_texts(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


def _random_text(rng: random.Random) -> str:
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x300, 0x36F), (0x400, 0x4FF), (0x3000, 0x303F),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF),
              (0xE000, 0xF8FF), (0x2000, 0x206F)]
    out = []
    for _ in range(rng.randint(0, 40)):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def test_round_trip_random_unicode(tok):
    """Property-style: 500 random strings over many scripts, controls, marks, emoji, private use."""
    rng = random.Random(1234)
    texts = [_random_text(rng) for _ in range(500)]
    backend = tok.backend_tokenizer
    for text, enc in zip(texts, backend.encode_batch(texts, add_special_tokens=False)):
        assert backend.decode(enc.ids, skip_special_tokens=False) == text, repr(text)


def test_every_byte_is_encodable(tok):
    # Byte-level alphabet: no <unk>, every id decodes back (invalid UTF-8 aside).
    text = "".join(chr(i) for i in range(1, 0x800))
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.unk_token is None


# -------------------------------------------------------------------------- chat template

MESSAGES = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "谢谢"},
    {"role": "assistant", "content": "不客气！"},
]


def test_chat_template_text(tok):
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (f"{BOS}{SYSTEM}你是一个乐于助人的助手。{END_OF_TURN}{USER}What is 2+2?{END_OF_TURN}"
                    f"{ASSISTANT}4{EOS}{USER}谢谢{END_OF_TURN}{ASSISTANT}不客气！{EOS}")
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(f"{USER}What is 2+2?{END_OF_TURN}{ASSISTANT}")
    # Tokenized form: one BOS (the template's; no second one from the post-processor).
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[-1] == tok.eos_token_id


def test_chat_template_content_parts_and_bad_role(tok):
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert tok.apply_chat_template(parts, tokenize=False) == f"{BOS}{USER}ab{END_OF_TURN}"
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "function", "content": "x"}], tokenize=False)


def test_assistant_tokens_mask(tok):
    """``{% generation %}`` marks exactly the assistant replies + their EOS (the SFT loss mask)."""
    out = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    learned = [i for i, m in zip(ids, mask) if m]
    expected = (tok.encode("4", add_special_tokens=False) + [tok.eos_token_id]
                + tok.encode("不客气！", add_special_tokens=False) + [tok.eos_token_id])
    assert learned == expected
    # The role marker itself is given, not learned.
    assistant_id = tok.convert_tokens_to_ids(ASSISTANT)
    assert all(m == 0 for i, m in zip(ids, mask) if i == assistant_id)


# -------------------------------------------------------------------------- pre-tokenizer


def test_pretokenizer_digits_and_cjk():
    pieces = pre_tokenize("在2024年有2788000个GPU小时")
    assert pieces == ["在", "202", "4", "年有", "278", "800", "0", "个", "GPU", "小时"]
    # The GPT-2 regex glues CJK to Latin and keeps long numbers whole.
    assert "个GPU小时" in pre_tokenize("有2788000个GPU小时", "bytelevel")
    assert "2788000" in pre_tokenize("有2788000个GPU小时", "bytelevel")


def test_pretokenizer_punctuation_and_whitespace():
    assert pre_tokenize("好。\n下一行") == ["好", "。\n", "下一行"]  # CJK punct swallows the newline
    assert pre_tokenize("see deepseek.com -V3") == ["see", " deepseek", ".com", " -", "V", "3"]
    assert pre_tokenize("I'm here  now") == ["I", "'m", " here", " ", " now"]
    assert pre_tokenize("中文English中文") == ["中文", "English", "中文"]
    assert pre_tokenize("Tokyo東京タワー2024年") == ["Tokyo", "東京タワー", "202", "4", "年"]  # kana join Han
    assert pre_tokenize("a、한국어 x.café") == ["a", "、", "한국어", " x", ".café"]
    text = "x\r\n\ty\u00a0z\u200b"
    assert "".join(pre_tokenize(text)) == text  # pre-tokenisation never drops characters


def test_deepseek_v3_pretokenizer_chains_its_three_splits():
    # DeepSeek-V3's rules: digits, then CJK runs, then the rest, each split applied to the previous pieces.
    # A space run before CJK stays whole (seekforge's single regex leaves one space apart).
    text = "Hello, world! 我们在2025年用DeepSeek-V3训练。\n- item   数量\t x"
    assert pre_tokenize(text, "deepseek-v3") == [
        "Hello", ",", " world", "!", " ", "我们在", "202", "5", "年用", "DeepSeek", "-V", "3", "训练", "。\n",
        "-", " item", "   ", "数量", "\t", " x"]
    assert pre_tokenize("item   数量") == ["item", "  ", " ", "数量"]
    assert "".join(pre_tokenize("x\r\n\ty\u00a0z\u200b", "deepseek-v3")) == "x\r\n\ty\u00a0z\u200b"


def test_unknown_pretokenizer():
    with pytest.raises(ValueError, match="unknown pre-tokenizer 'gpt5'"):
        pre_tokenize("x", "gpt5")


# -------------------------------------------------------------------------- errors and options


def test_train_errors(tmp_path):
    with pytest.raises(ValueError, match="input is empty"):
        train_tokenizer(["", ""], 300, tmp_path / "t")
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["abc"], 100, tmp_path / "t")
    with pytest.raises(TypeError, match="iterable of str"):
        train_tokenizer([b"bytes"], 300, tmp_path / "t")
    assert not (tmp_path / "t").exists()  # nothing half-written


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not load"):
        load_tokenizer(bad)


def test_small_corpus_stops_short_and_bytelevel_option(tmp_path):
    out = train_tokenizer(["ab ab ab"] * 3, 1000, tmp_path / "t", pretokenizer="bytelevel")
    info = json.loads((out / "seekforge_tokenizer.json").read_text())
    assert info["pretokenizer"] == "bytelevel" and info["vocab_size"] < 1000
    tok = load_tokenizer(out)
    assert tok.decode(tok.encode("中文 ab", add_special_tokens=False)) == "中文 ab"


def test_max_chars_caps_training_text(tmp_path):
    out = train_tokenizer(["abcdefghij"] * 100, 300, tmp_path / "t", max_chars=25, doc_max_chars=8)
    info = json.loads((out / "seekforge_tokenizer.json").read_text())
    assert info["train_chars"] == 25 and info["train_docs"] == 4  # 8 + 8 + 8 + 1


def test_save_pretrained_round_trip(tok, tmp_path):
    """Checkpoints re-save the tokenizer with transformers; nothing may change on the way."""
    tok.save_pretrained(str(tmp_path / "resaved"))
    again = load_tokenizer(tmp_path / "resaved")
    text = "你好 world 2024！\n"
    assert again.encode(text) == tok.encode(text)
    chat = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert again.apply_chat_template(MESSAGES, tokenize=False) == chat
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id, len(again)) == (0, 1, 2, len(tok))
    out = again.apply_chat_template(MESSAGES, tokenize=True, return_dict=True,
                                    return_assistant_tokens_mask=True)
    assert sum(out["assistant_masks"]) > 0
