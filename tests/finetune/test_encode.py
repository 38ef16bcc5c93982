"""Chat template -> ids/labels (assistant-only loss, EOS after every answer), truncation, packing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekforge.finetune.datasets import Example
from seekforge.finetune.encode import IGNORE, ChatEncoder, collate, pack
from seekforge.tokenizer import load_tokenizer

CHAT = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! 你好"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PLAIN = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# Like DeepSeek-R1: earlier answers lose their <think> block when the conversation is rendered.
R1_LIKE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{% set c = m['content'] %}"
    "{% if not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "<|Assistant|>{{ c }}{{ eos_token }}"
    "{% else %}<|User|>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>{% endif %}"
)


def trained_text(tok, enc) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.fixture()
def tok(tokenizer_dir: Path):
    return load_tokenizer(tokenizer_dir)


def test_seekforge_template_matches_generation_mask(tok):
    enc = ChatEncoder(tok, 512).encode(Example(CHAT, "t:1"))
    ref = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert enc.input_ids == ref["input_ids"]
    assert enc.labels == [t if m else IGNORE for t, m in zip(ref["input_ids"], ref["assistant_masks"])]
    assert trained_text(tok, enc) == ["Hello! 你好<|eos|>", "It is 4.<|eos|>"]


def test_chatml_template_trains_answers_and_end_of_turn(tok):
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    enc = ChatEncoder(tok, 512).encode(Example(CHAT, "t:1"))
    runs = trained_text(tok, enc)
    assert [r.strip() for r in runs] == ["Hello! 你好<|im_end|>", "It is 4.<|im_end|>"]
    last = ChatEncoder(tok, 512, train_on="last").encode(Example(CHAT, "t:1"))
    assert [r.strip() for r in trained_text(tok, last)] == ["It is 4.<|im_end|>"]
    everything = ChatEncoder(tok, 512, train_on="all").encode(Example(CHAT, "t:1"))
    assert everything.labels == everything.input_ids


def test_template_without_end_token_gets_eos(tok):
    tok.chat_template = PLAIN
    encoder = ChatEncoder(tok, 512)
    enc = encoder.encode(Example(CHAT, "t:1"))
    runs = trained_text(tok, enc)
    assert len(runs) == 2 and all(r.endswith("<|eos|>") for r in runs) and encoder.stats.eos_added == 2
    assert runs[0].startswith(" Hello")  # the space after "Assistant:" is part of the answer's first token


def test_history_rewriting_template(tok):
    tok.chat_template = R1_LIKE
    msgs = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>hmm</think>A1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "<think>ok</think>A2"},
    ]
    runs = trained_text(tok, ChatEncoder(tok, 512).encode(Example(msgs, "t:1")))
    assert runs == ["A1<|eos|>", "<think>ok</think>A2<|eos|>"]


def test_truncation_counts_and_drops(tok, caplog):
    long_q = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "answer"}]
    short = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a " * 100}]
    encoder = ChatEncoder(tok, 64)
    out = encoder.encode_all([Example(long_q, "f:1"), Example(short, "f:2"), Example(CHAT, "f:3")])
    assert encoder.stats.truncated == 2 and encoder.stats.dropped == 1 and len(out) == 2
    assert all(len(e) <= 64 for e in out)
    assert "2 of 3 examples were longer than max_len=64" in caplog.text


def test_packing_layout(tok):
    encoder = ChatEncoder(tok, 128)
    chats = [
        [
            {"role": "user", "content": f"question {i}" * (i % 4 + 1)},
            {"role": "assistant", "content": f"answer {i}" * (i % 3 + 1)},
        ]
        for i in range(20)
    ]
    encoded = encoder.encode_all([Example(c, f"f:{i}") for i, c in enumerate(chats)])
    rows = pack(encoded, 128)
    assert len(rows) < len(encoded) and all(len(r) <= 128 for r in rows)
    assert sum(len(r) for r in rows) == sum(len(e) for e in encoded)
    for r in rows:
        starts = [i for i in range(len(r)) if i == 0 or r.segment_ids[i] != r.segment_ids[i - 1]]
        assert all(r.position_ids[i] == 0 and r.labels[i] == IGNORE for i in starts)
    batch = collate(rows[:3], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["segment_ids"].shape == batch["labels"].shape


def test_packed_loss_equals_separate_examples(tok):
    """Packing with segment_ids must not change the loss: no attention or loss across examples."""
    from seekforge.model import load_model

    torch.manual_seed(0)
    model = load_model(
        "tiny", device="cpu", vocab_size=len(tok), mtp_loss_weight=0.0, aux_loss_alpha=0.0
    ).eval()
    encoder = ChatEncoder(tok, 256)
    encoded = encoder.encode_all(
        [
            Example(
                [
                    {"role": "user", "content": f"q{i} " * (i + 1)},
                    {"role": "assistant", "content": f"a{i} " * (2 * i + 1)},
                ],
                f"f:{i}",
            )
            for i in range(5)
        ]
    )
    (row,) = pack(encoded, 256)
    b = collate([row], tok.pad_token_id)
    with torch.no_grad():
        packed = model(
            b["input_ids"], labels=b["labels"], segment_ids=b["segment_ids"], position_ids=b["position_ids"]
        ).loss
        total, n = 0.0, 0
        for e in encoded:
            ids = torch.tensor([e.input_ids])
            k = sum(label != IGNORE for label in e.labels[1:])
            total += float(model(ids, labels=torch.tensor([e.labels])).loss) * k
            n += k
    assert abs(float(packed) - total / n) < 1e-4
