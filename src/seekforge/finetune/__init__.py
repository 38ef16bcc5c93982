"""Fine-tuning, preference tuning, RL and distillation (``sft``, ``dpo``, ``grpo``, ``distill``, ``merge``).

Read in this order:

    datasets.py    files / dataset_info.json registries -> validated chats (alpaca, sharegpt, openai, text)
    encode.py      chat template -> ids + loss labels (answers + their end token), packing, batches
    methods.py     base models (seekforge or transformers) and full / freeze / LoRA / QLoRA / prefix
    prefix.py      prefix tuning native to MLA: learned latent-cache entries per layer
    sft.py         SFTConfig + SFTObjective for the one trainer loop (seekforge.train.trainer)
    losses.py      distillation losses (T^2-scaled KL, top-k) and agreement numbers
    distill.py     DistillConfig + logit KD objective + teacher-generated SFT data (engine or API)
    rl_tasks.py    generated prompts with verifiable answers (arithmetic, countdown; AST-checked expressions)
    rewards.py     reward functions: built-ins and user callables named in the config
    policy_loss.py GRPO's clipped policy-ratio loss (clip-higher, KL to a reference, grpo/bnpo/dapo)
    grpo.py        GRPOConfig + GRPOObjective: engine rollouts -> rewards -> advantages -> loss
    adapters.py    saving results, loading adapters for serving, merging LoRA, PEFT interop
    cli.py         the commands
    tiny_hf.py     a tiny random transformers Llama/Qwen2 base (tests, bench/finetune.py)

See docs/finetune.md and docs/rl.md.
"""

from __future__ import annotations

__all__: list[str] = []
