"""Fine-tuning and distillation: make a model yours (``seekforge sft``, ``distill``, ``merge``).

Read in this order:

    datasets.py    files / dataset_info.json registries -> validated chats (alpaca, sharegpt, openai, text)
    encode.py      chat template -> ids + loss labels (answers + their end token), packing, batches
    methods.py     base models (seekforge or transformers) and full / freeze / LoRA / QLoRA / prefix
    prefix.py      prefix tuning native to MLA: learned latent-cache entries per layer
    sft.py         SFTConfig + SFTObjective for the one trainer loop (seekforge.train.trainer)
    losses.py      distillation losses (T^2-scaled KL, top-k) and agreement numbers
    distill.py     DistillConfig + logit KD objective + teacher-generated SFT data (engine or API)
    adapters.py    saving results, loading adapters for serving, merging LoRA, PEFT interop
    cli.py         the commands
    tiny_hf.py     a tiny random transformers Llama/Qwen2 base (tests, bench/finetune.py)

See docs/finetune.md.
"""

from __future__ import annotations

__all__: list[str] = []
