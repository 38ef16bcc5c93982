"""Our GRPO policy loss and its gradients equal TRL's ``GRPOTrainer._compute_loss`` (TRL 1.16).

Same tiny transformers Llama, same prompts/completions, advantages, old and reference log-probs;
``old_logps`` are moved away from the current ones so that some ratios fall outside the clip
range (clip-higher: ε_high > ε_low). Tolerance 1e-5 on the loss and every gradient.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from seekforge.finetune.policy_loss import PolicyLossSettings, completion_logps, policy_loss

pytest.importorskip("trl")

TOL = 1e-5


@pytest.fixture(scope="module")
def llama_dir(sft_tokenizer_dir: Path, tmp_path_factory) -> Path:
    from transformers.utils import logging as hf_logging

    from seekforge.finetune.tiny_hf import write_tiny_hf_model

    hf_logging.set_verbosity_error()
    return write_tiny_hf_model("llama", sft_tokenizer_dir, tmp_path_factory.mktemp("grpo") / "m", seed=2)


def _trainer(llama_dir: Path, tmp_path: Path, aggregation: str, beta: float, kl_times_ratio: bool):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from seekforge.tokenizer import load_tokenizer

    args = GRPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        beta=beta,
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=8,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type=aggregation,
        use_bias_correction_kl=kl_times_ratio,
        bf16=False,  # the loss in fp32 on both sides
    )
    model = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=lambda completions, **kw: [0.0] * len(completions),
            args=args,
            train_dataset=Dataset.from_list([{"prompt": "hi"}, {"prompt": "yo"}]),
            processing_class=load_tokenizer(llama_dir),
        )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; one micro-batch here
    assert trainer.args.steps_per_generation == 1 and trainer.accelerator.num_processes == 1
    return trainer


@pytest.mark.parametrize(
    "aggregation,beta,kl_times_ratio",
    [("grpo", 0.04, False), ("grpo", 0.04, True), ("bnpo", 0.0, False), ("dapo", 0.1, True)],
)
def test_grpo_loss_equals_trl(aggregation, beta, kl_times_ratio, llama_dir: Path, tmp_path: Path):
    trainer = _trainer(llama_dir, tmp_path, aggregation, beta, kl_times_ratio)
    model = trainer.model
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    B, P, C = 4, 5, 7
    prompt = torch.randint(5, vocab, (B, P), generator=g)
    completion = torch.randint(5, vocab, (B, C), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 6 + [0], [1] * 2 + [0] * 5])
    ids = torch.cat([prompt, completion], 1)
    attention = torch.cat([torch.ones_like(prompt), mask], 1)
    with torch.no_grad():
        now = completion_logps(model(input_ids=ids, attention_mask=attention).logits, completion)
    old = now + torch.randn(B, C, generator=g) * 0.3  # ratios both inside and outside [0.8, 1.28]
    ref = now + torch.randn(B, C, generator=g) * 0.5
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.1])
    inputs = {
        "prompt_ids": prompt,
        "prompt_mask": torch.ones_like(prompt),
        "completion_ids": completion,
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum().float(),
    }
    model.train()
    trl_loss = trainer._compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    settings = PolicyLossSettings(aggregation, 0.2, 0.28, beta, kl_times_ratio)
    logps = completion_logps(model(input_ids=ids, attention_mask=attention).logits, completion)
    out = policy_loss(settings, logps, advantages, mask, old, ref if beta else None)
    out.loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert ours.keys() == trl_grads.keys() and ours
    d_loss = abs(float(out.loss.detach()) - float(trl_loss.detach()))
    d_grad = max(float((ours[k] - trl_grads[k]).abs().max()) for k in ours)
    print(
        f"{aggregation}: max |dloss| {d_loss:.2e}  max |dgrad| {d_grad:.2e}  clipped {float(out.clipped):.2f}"
    )
    assert d_loss < TOL and d_grad < TOL, (d_loss, d_grad)
    assert 0.0 < float(out.clipped) < 1.0  # the clip range mattered in this batch
    assert max(float(v.abs().max()) for v in trl_grads.values()) > 1e-4
