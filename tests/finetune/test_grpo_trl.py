"""GRPO's rewards -> advantages equal TRL's (1.16) on the same completions.

TRL's ``GRPOTrainer`` samples the completions (a tiny transformers Llama) and scores them with
*our* reward functions, called the way it calls any reward function; our
:func:`group_advantages` of the weighted rewards of the same texts must equal the advantages it
computed, for each ``scale_rewards``. The loss on those advantages is compared with TRL's in
test_policy_loss_trl.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from seekforge.finetune.grpo import group_advantages
from seekforge.finetune.rewards import think_format

pytest.importorskip("trl")


def distinct_characters(completions, **kwargs):
    """A reward that varies between random completions (so the advantages are not all zero)."""
    return [float(len(set(c)) % 7) for c in completions]


@pytest.fixture(scope="module")
def llama_dir(sft_tokenizer_dir: Path, tmp_path_factory) -> Path:
    from transformers.utils import logging as hf_logging

    from seekforge.finetune.tiny_hf import write_tiny_hf_model

    hf_logging.set_verbosity_error()
    return write_tiny_hf_model("llama", sft_tokenizer_dir, tmp_path_factory.mktemp("grpo_adv") / "m", seed=3)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trl(scale: str, llama_dir: Path, tmp_path: Path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from seekforge.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(llama_dir)
    weights = [0.5, 1.0]
    args = GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, num_generations=4,
                      per_device_train_batch_size=8, max_completion_length=8, scale_rewards=scale,
                      reward_weights=weights, bf16=False, seed=0, temperature=1.0)
    rows = [{"prompt": "What is 2 + 3?"}, {"prompt": "Compute 7 - 4."}]
    model = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=[think_format, distinct_characters], args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    inputs = [row for row in rows for _ in range(4)]  # what TRL's sampler yields: each prompt x n
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(inputs)
    lengths = out["completion_mask"].sum(1).tolist()
    texts = [tokenizer.decode(ids[:n], skip_special_tokens=True)
             for ids, n in zip(out["completion_ids"].tolist(), lengths)]
    rewards = (weights[0] * torch.tensor(think_format(texts))
               + weights[1] * torch.tensor(distinct_characters(texts)))
    ours = group_advantages(rewards, 4, scale)
    assert float(ours.abs().max()) > 0.1  # the rewards differed within groups
    torch.testing.assert_close(ours, out["advantages"].float().cpu(), atol=1e-5, rtol=1e-5)
