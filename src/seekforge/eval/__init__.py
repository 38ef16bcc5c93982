"""``seekforge eval``: knowledge benchmarks scored item by item like lm-evaluation-harness.

Map of the package:

- :mod:`.tasks` — MMLU / CMMLU / C-Eval files in their published layouts and a user's own
  multiple-choice file -> subjects, prompts (lm-eval's text and first-k few-shot rule);
  ``subjects.json`` holds subject display names and published categories.
- :mod:`.scoring` — lm-eval's context/continuation tokenisation and truncation; the scorers:
  seekforge models on their MLA cache with shared-prefix reuse, any transformers causal LM, and
  OpenAI-compatible endpoints via ``/v1/completions`` echo + logprobs.
- :mod:`.models` — opening a model dir (+ adapter) or an endpoint as an :class:`EvalModel`.
- :mod:`.multiple_choice` — argmax over answer letters, micro averages per subject/category/task.
- :mod:`.runner` — one run (:func:`evaluate`), :mod:`.report` — results.json, samples, results.md,
  the stdout table and ``--compare``; :mod:`.cli` — the ``seekforge eval`` command.
"""

from seekforge.eval.models import EvalModel, open_model
from seekforge.eval.runner import EvalConfig, evaluate

__all__ = ["EvalConfig", "EvalModel", "evaluate", "open_model"]
