"""Load any Hugging Face tokenizer directory the way every seekforge stage needs it.

``load_tokenizer(path)`` returns a ``PreTrainedTokenizerFast`` with bos/eos/pad set and a chat
template, for seekforge's own tokenizers (written by :mod:`seekforge.tokenizer.train`) and for
foreign ones (GPT-2, Llama, Qwen ...), with clear errors for a directory that is not one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("seekforge.tokenizer")

# Used only when a foreign tokenizer has no chat template: plain-text role markers that any
# vocabulary can encode (e.g. GPT-2's). Our own tokenizers always carry CHAT_TEMPLATE.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '### ' + message['role'] + ':\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}{%- generation -%}{{- message['content'] + eos_token -}}"
    "{%- endgeneration -%}{{- '\\n' -}}{%- else -%}{{- message['content'] + '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### assistant:\\n' -}}{%- endif -%}"
)


def load_tokenizer(path: str | Path):
    """Load any HF tokenizer directory as a ``PreTrainedTokenizerFast`` with bos/eos/pad set.

    Foreign tokenizers that lack a token get a documented fallback instead of ``None``: pad falls
    back to eos, bos to eos (GPT-2 style, where <|endoftext|> is both), and a missing chat template
    to a plain-text one. Errors name the directory and what is missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist (train one with "
                                f"`seekforge tokenizer train --input ... --out {path}`)")
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{path} is not a tokenizer directory: expected tokenizer.json or "
                                f"tokenizer_config.json in it")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: could not load the tokenizer: {e}") from e
    if tok.eos_token is None:
        raise ValueError(f"{path}: tokenizer has no eos_token; set one in tokenizer_config.json")
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        log.warning("%s has no chat template; using a plain-text fallback", path)
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok
