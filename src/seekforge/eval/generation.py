"""Generation tasks: generate for each prompt, compare with the reference (BLEU, ROUGE, exact match).

Input: a .jsonl file, one record per line, either ``{"prompt": str, "reference": str}`` or
``{"messages": [{"role", "content"}, ...], "reference": str}``; without ``reference``, a
``messages`` list that ends with an assistant turn uses that turn as the reference (and it is not
sent). Chat-model tokenizers (a chat template of their own) render prompts with it; plain
``prompt`` records then become one user message.

Metrics (all on a 0-100 scale):

- ``bleu``: corpus BLEU from sacrebleu, with its ``zh`` tokenizer when the references contain
  Chinese and ``13a`` otherwise;
- ``rouge1`` / ``rouge2`` / ``rougeL``: mean F1 from rouge-score over tokens that are lower-cased
  latin words / numbers and **single Chinese characters** (rouge-score's default tokenizer drops
  Chinese entirely);
- ``exact_match``: the share of outputs equal to the reference after stripping whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seekforge.eval.models import EvalModel, GenRequest, GenSettings
from seekforge.eval.tasks import has_cjk, json_objects

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[a-z0-9]+")


class CharWordTokenizer:
    """rouge-score tokenizer: Chinese by characters, everything else by lower-cased words."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


@dataclass
class GenItem:
    line: int
    request: GenRequest
    reference: str


def read_gen_file(path: str | Path) -> list[GenItem]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--gen {path}: no such file")
    items = [_item(path, ln, rec) for ln, rec in
             json_objects(path, "--gen", "an object with prompt/messages and reference")]
    if not items:
        raise ValueError(f"--gen {path}: no records")
    return items


def _item(path: Path, ln: int, rec: dict[str, Any]) -> GenItem:
    ref = rec.get("reference")
    if "messages" in rec:
        msgs = rec["messages"]
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs
            )
        ):
            raise ValueError(f"{path}:{ln}: 'messages' must be a non-empty list of {{role, content}} strings")
        if ref is None and msgs[-1]["role"] == "assistant":
            ref, msgs = msgs[-1]["content"], msgs[:-1]
        if not msgs:
            raise ValueError(f"{path}:{ln}: 'messages' has nothing before the assistant reference")
        request = GenRequest(None, msgs)
    elif isinstance(rec.get("prompt"), str):
        request = GenRequest(rec["prompt"], None)
    else:
        raise ValueError(
            f"{path}:{ln}: expected 'prompt' (a string) or 'messages'; got keys {', '.join(rec)}"
        )
    if not isinstance(ref, str):
        raise ValueError(
            f"{path}:{ln}: missing 'reference' (a string; or end 'messages' with the assistant turn)"
        )
    return GenItem(ln, request, ref)


def metrics(outputs: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    zh = any(has_cjk(r) for r in references)
    bleu = sacrebleu.corpus_bleu(outputs, [references], tokenize="zh" if zh else "13a").score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=CharWordTokenizer())
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for out, ref in zip(outputs, references):
        for key, s in scorer.score(ref, out).items():
            sums[key] += s.fmeasure
    n = len(outputs)
    em = sum(o.strip() == r.strip() for o, r in zip(outputs, references)) / n
    return {"bleu": bleu, **{k: 100 * v / n for k, v in sums.items()}, "exact_match": 100 * em}


def run_generation(
    model: EvalModel, path: str | Path, settings: GenSettings, limit: int | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    items = read_gen_file(path)[:limit] if limit else read_gen_file(path)
    outputs = model.generate([it.request for it in items], settings)
    refs = [it.reference for it in items]
    result = {**metrics(outputs, refs), "n": len(items)}
    samples = [{"line": it.line, "output": out, "reference": it.reference} for it, out in zip(items, outputs)]
    return result, samples
