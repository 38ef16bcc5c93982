"""Inference: the continuous-batching engine shared by ``seekforge chat``, ``serve`` and evaluation.

    from seekforge.infer import Engine, SamplingParams
    engine = Engine.from_pretrained("runs/sft/final")
    print(engine.generate(["你好"], SamplingParams(max_tokens=32, temperature=0))[0].text)
"""

from __future__ import annotations

from seekforge.infer.constraints import Constraint, GrammarError
from seekforge.infer.engine import (
    Completion,
    Engine,
    EngineClosed,
    EngineConfig,
    QueueFull,
    RequestHandle,
    StreamEvent,
)
from seekforge.infer.sampling import InvalidParam, SamplingParams, TokenLogprob

__all__ = ["Completion", "Constraint", "Engine", "EngineClosed", "EngineConfig", "GrammarError",
           "InvalidParam", "QueueFull", "RequestHandle", "SamplingParams", "StreamEvent", "TokenLogprob"]
