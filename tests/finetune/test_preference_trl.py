"""Our DPO/IPO/SimPO/ORPO losses and gradients equal TRL's on the same batch and model.

The judge is TRL itself: ``DPOTrainer._compute_loss`` (DPO, IPO) on a transformers Llama, and the
tensor-level loss methods of real ``CPOTrainer`` (SimPO; conservative DPO with label smoothing)
and ``ORPOTrainer`` instances (``get_batch_loss_metrics``: TRL's own forward, log-probs, NLL and
odds ratio), on the Llama and on a seekforge DeepSeek-V3 model. Our side is
``DPOObjective.pair_output``, the code the trainer runs. Tolerance 1e-5 on loss and every gradient.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from seekforge.finetune.dpo import DPOObjective, encode_pairs, pair_batch
from seekforge.finetune.preference import PreferenceSettings

pytest.importorskip("trl")

TOL = 1e-5
PROMPTS = [
    ("What is 2 plus 3?", "2 plus 3 is 5.", "It is 7, I think."),
    ("Name a colour.", "Blue.", "A colour is a thing that has a name and more words."),
    ("你好吗？", "我很好，谢谢。", "不好。"),
    ("Say hi.", "Hi!", "Hello there, how are you doing today?"),
]


@pytest.fixture(scope="module")
def batch(sft_tokenizer_dir: Path, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Four pairs through our data path (chat template, answer-only labels), as one 8-row batch."""
    from seekforge.finetune.datasets import resolve_datasets
    from seekforge.finetune.encode import ChatEncoder
    from seekforge.finetune.pairs import load_pairs
    from seekforge.tokenizer import load_tokenizer

    rows = [{"instruction": p, "chosen": c, "rejected": r} for p, c, r in PROMPTS]
    path = tmp_path_factory.mktemp("pairs") / "pairs.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    pairs, _ = load_pairs(resolve_datasets(str(path), ranking=True))
    tok = load_tokenizer(sft_tokenizer_dir)
    encoded, _ = encode_pairs(ChatEncoder(tok, 128, "last"), pairs)
    out = pair_batch(encoded, tok.pad_token_id)
    out["pad_id"] = torch.tensor(tok.pad_token_id)
    return out


def trl_pair_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same rows in TRL's CPO/ORPO batch layout (chosen_* / rejected_*)."""
    B = batch["input_ids"].shape[0] // 2
    mask = (torch.arange(batch["input_ids"].shape[1]) < batch["lengths"][:, None]).long()
    out = {}
    for name, rows in (("chosen", slice(0, B)), ("rejected", slice(B, 2 * B))):
        out[f"{name}_input_ids"] = batch["input_ids"][rows]
        out[f"{name}_attention_mask"] = mask[rows]
        out[f"{name}_labels"] = batch["labels"][rows]
    return out


class SeekforgeForTRL(nn.Module):
    """TRL calls ``model(input_ids, attention_mask=..., use_cache=False).logits``; seekforge models
    take ``model(input_ids)`` (right padding: causal attention never looks at the pads)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, use_cache=None, **kwargs):
        return self.model(input_ids)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def compare(ours_loss, ours_grads, trl_loss, trl_grads) -> tuple[float, float]:
    assert ours_grads.keys() == trl_grads.keys() and ours_grads
    d_loss = abs(float(ours_loss.detach()) - float(trl_loss.detach()))
    d_grad = max(float((ours_grads[k] - trl_grads[k]).abs().max()) for k in ours_grads)
    print(f"max |dloss| {d_loss:.2e}  max |dgrad| {d_grad:.2e}")
    assert d_loss < TOL and d_grad < TOL, (d_loss, d_grad)
    assert float(trl_loss) != 0.0 and max(float(g.abs().max()) for g in trl_grads.values()) > 1e-4
    return d_loss, d_grad


def ours(model: nn.Module, ref: nn.Module | None, settings: PreferenceSettings, batch) -> torch.Tensor:
    obj = DPOObjective()
    obj.settings, obj.ref_model = settings, ref
    pref, _ = obj.pair_output(model, {k: batch[k] for k in ("input_ids", "labels", "lengths")})
    return pref.loss


@pytest.fixture(scope="module")
def llama(sft_tokenizer_dir: Path, tmp_path_factory):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from seekforge.finetune.tiny_hf import write_tiny_hf_model

    hf_logging.set_verbosity_error()
    path = write_tiny_hf_model("llama", sft_tokenizer_dir, tmp_path_factory.mktemp("llama") / "m", seed=1)
    return path, AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PROMPTS])


def _tokenizer(path: Path):
    from seekforge.tokenizer import load_tokenizer

    return load_tokenizer(path)


def _perturb(model: nn.Module, seed: int) -> nn.Module:
    """A policy that differs from its reference (else every DPO log-ratio is 0)."""
    policy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return policy


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("ipo", 0.5)])
def test_dpo_and_ipo_equal_trl_dpo_trainer(loss_type, beta, llama, batch, tmp_path: Path):
    from trl import DPOConfig, DPOTrainer

    from seekforge.finetune.methods import HFCausalLM

    path, base = llama
    ref, policy = copy.deepcopy(base), _perturb(base, 0)
    args = DPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        loss_type=[loss_type],
        beta=beta,
        use_cpu=True,
        max_length=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=policy,
            ref_model=ref,
            args=args,
            train_dataset=_dataset(),
            processing_class=_tokenizer(path),
        )
    model = trainer.model
    mask = torch.cat([trl_pair_batch(batch)[f"{k}_attention_mask"] for k in ("chosen", "rejected")])
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": mask,
        "completion_mask": (batch["labels"] != -100).long(),
    }
    model.train()
    trl_loss = trainer._compute_loss(model, inputs, return_outputs=False)
    trl_loss.backward()
    trl_grads = grads(model)
    name = {"sigmoid": "dpo", "ipo": "ipo"}[loss_type]
    our_loss = ours(HFCausalLM(model), HFCausalLM(trainer.ref_model), PreferenceSettings(name, beta), batch)
    our_loss.backward()
    compare(our_loss, {k.removeprefix("inner."): v for k, v in grads(model).items()}, trl_loss, trl_grads)


def _seekforge(tiny_base: Path) -> nn.Module:
    from seekforge.model import load_model

    return load_model(tiny_base, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("which", ["llama", "seekforge"])
@pytest.mark.parametrize("case", ["dpo_smoothed", "ipo", "simpo", "simpo_smoothed"])
def test_losses_equal_trl_cpo(case, which, llama, tiny_base: Path, batch, tmp_path: Path):
    """SimPO (and conservative DPO / IPO on TRL's CPO loss) through a real ``CPOTrainer``.

    For DPO/IPO the CPO loss is fed the policy-minus-reference log-ratios that TRL's own
    ``get_batch_logps`` computes (summed for DPO, per-token averaged for IPO); TRL's DPOTrainer has
    no label smoothing on its sigmoid loss, CPO's sigmoid is the conservative-DPO formula.
    """
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from seekforge.finetune.methods import HFCausalLM

    path, hf_base = llama
    base = hf_base if which == "llama" else _seekforge(tiny_base)
    ref, policy = copy.deepcopy(base), _perturb(base, 1)
    loss_name, smoothing = case.removesuffix("_smoothed"), (0.2 if case.endswith("smoothed") else 0.0)
    beta, gamma = (2.0, 0.8) if loss_name == "simpo" else (0.3, 0.0)
    trl_type = {"dpo": "sigmoid", "ipo": "ipo", "simpo": "simpo"}[loss_name]
    args = CPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        loss_type=trl_type,
        beta=beta,
        label_smoothing=smoothing,
        simpo_gamma=gamma,
        cpo_alpha=0.0,
        use_cpu=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CPOTrainer(
            model=copy.deepcopy(hf_base),
            args=args,
            train_dataset=_dataset(),
            processing_class=_tokenizer(path),
        )
    tb = trl_pair_batch(batch)
    wrap = (lambda m: m) if which == "llama" else SeekforgeForTRL
    policy.train()
    if loss_name == "simpo":
        trl_loss, _ = trainer.get_batch_loss_metrics(wrap(policy), tb)
    else:
        labels = torch.cat([tb["chosen_labels"], tb["rejected_labels"]])
        average = loss_name == "ipo"
        logits = wrap(policy)(batch["input_ids"]).logits
        with torch.no_grad():
            ref_logits = wrap(ref)(batch["input_ids"]).logits
        logratio = trainer.get_batch_logps(
            logits, labels, average_log_prob=average
        ) - trainer.get_batch_logps(ref_logits, labels, average_log_prob=average)
        B = labels.shape[0] // 2
        losses, _, _ = trainer.cpo_loss(logratio[:B], logratio[B:])
        trl_loss = losses.mean()
    trl_loss.backward()
    trl_grads = grads(policy)
    ours_model, ours_ref = (HFCausalLM(policy), HFCausalLM(ref)) if which == "llama" else (policy, ref)
    settings = PreferenceSettings(loss_name, beta, smoothing, gamma)
    our_loss = ours(ours_model, ours_ref if loss_name != "simpo" else None, settings, batch)
    our_loss.backward()
    compare(our_loss, {k.removeprefix("inner."): v for k, v in grads(policy).items()}, trl_loss, trl_grads)


@pytest.mark.parametrize("which", ["llama", "seekforge"])
def test_orpo_equals_trl_orpo_trainer(which, llama, tiny_base: Path, batch, tmp_path: Path):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from seekforge.finetune.methods import HFCausalLM

    path, hf_base = llama
    policy = copy.deepcopy(hf_base if which == "llama" else _seekforge(tiny_base))
    beta = 0.25
    args = ORPOConfig(output_dir=str(tmp_path), report_to="none", beta=beta, use_cpu=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ORPOTrainer(
            model=copy.deepcopy(hf_base),
            args=args,
            train_dataset=_dataset(),
            processing_class=_tokenizer(path),
        )
    policy.train()
    trl_loss, _ = trainer.get_batch_loss_metrics(
        policy if which == "llama" else SeekforgeForTRL(policy), trl_pair_batch(batch)
    )
    trl_loss.backward()
    trl_grads = grads(policy)
    our_loss = ours(
        HFCausalLM(policy) if which == "llama" else policy, None, PreferenceSettings("orpo", beta), batch
    )
    our_loss.backward()
    compare(our_loss, {k.removeprefix("inner."): v for k, v in grads(policy).items()}, trl_loss, trl_grads)


def test_lora_reference_is_the_base_with_the_adapter_off(llama, batch, tmp_path: Path):
    """LoRA: both sides take the reference from the same peft model with its adapter disabled
    (TRL's path for a new adapter); the adapter is then moved off zero so policy != reference."""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    path, base = llama
    args = DPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        loss_type=["sigmoid"],
        beta=0.5,
        use_cpu=True,
        max_length=None,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=copy.deepcopy(base),
            ref_model=None,
            args=args,
            train_dataset=_dataset(),
            processing_class=_tokenizer(path),
            peft_config=lora,
        )
    model = trainer.model
    assert trainer.ref_model is None and hasattr(model, "disable_adapter")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    mask = (torch.arange(batch["input_ids"].shape[1]) < batch["lengths"][:, None]).long()
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": mask,
        "completion_mask": (batch["labels"] != -100).long(),
    }
    model.train()
    trl_loss = trainer._compute_loss(model, inputs, return_outputs=False)
    trl_loss.backward()
    trl_grads = grads(model)
    our_loss = ours(model, None, PreferenceSettings("dpo", 0.5), batch)
    our_loss.backward()
    compare(our_loss, grads(model), trl_loss, trl_grads)
    assert abs(float(trl_loss) - 0.6931) > 1e-3  # the reference really differs from the policy
