"""seekforge's tokenizer: byte-level BPE with DeepSeek-V3-style zh+en pre-tokenisation.

- :func:`train_tokenizer` (texts -> HF tokenizer directory; :mod:`.train`) and
  :func:`load_tokenizer` (any HF tokenizer directory -> ``PreTrainedTokenizerFast`` with
  bos/eos/pad and a chat template; :mod:`.load`).
- :mod:`seekforge.tokenizer.evaluate`: bytes/token per file and per script, side by side.
- CLI: ``seekforge tokenizer train`` and ``seekforge tokenizer eval`` (:mod:`.cli`).
"""

from __future__ import annotations

from seekforge.tokenizer.load import load_tokenizer
from seekforge.tokenizer.train import (
    ASSISTANT,
    BOS,
    CHAT_TEMPLATE,
    END_OF_TURN,
    EOS,
    FIM_BEGIN,
    FIM_END,
    FIM_HOLE,
    PAD,
    SYSTEM,
    USER,
    pre_tokenize,
    special_tokens,
    train_tokenizer,
)

__all__ = [
    "ASSISTANT", "BOS", "CHAT_TEMPLATE", "END_OF_TURN", "EOS", "FIM_BEGIN", "FIM_END", "FIM_HOLE", "PAD",
    "SYSTEM", "USER", "load_tokenizer", "pre_tokenize", "special_tokens", "train_tokenizer",
]
