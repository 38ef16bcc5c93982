"""``seekforge chat MODEL_DIR``: a terminal chat that streams the model's answers.

Keeps the conversation history and renders it with the model's own chat template every turn
(the same template the server and fine-tuning use). Commands: ``/reset`` forgets the history,
``/exit`` (or Ctrl-D) quits. Reads plain lines from stdin, so it can be driven by a pipe.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from seekforge.infer import Engine, SamplingParams

HELP = "Commands: /reset (forget the conversation), /exit (quit). Ctrl-D also quits."


def chat_loop(engine: Engine, params: SamplingParams, system: str | None = None,
              stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    base = len(history)
    interactive = stdin.isatty()
    stdout.write(f"seekforge chat — {engine.name}. {HELP}\n")
    while True:
        if interactive:
            stdout.write("\n>>> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # EOF
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            del history[base:]
            stdout.write("[history cleared]\n")
            continue
        history.append({"role": "user", "content": text})
        prompt = engine.chat_prompt(history)
        room = engine.max_len - len(prompt)
        while room < 1 and len(history) > base + 1:  # drop the oldest turns rather than fail
            del history[base:base + 2]
            prompt = engine.chat_prompt(history)
            room = engine.max_len - len(prompt)
        if room < 1:
            history.pop()
            stdout.write(f"[message too long: {len(prompt)} tokens, context {engine.max_len}]\n")
            continue
        answer = []
        try:
            for ev in engine.submit(prompt, params, block=True):
                answer.append(ev.text)
                stdout.write(ev.text)
                stdout.flush()
                if ev.error:
                    stdout.write(f"\n[error: {ev.error}]")
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            stdout.write(" [interrupted]")
        stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(answer)})
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from seekforge.serve.cli import engine_from_args

    args.max_batch = 1  # one conversation: one cache slot
    engine = engine_from_args(args, queue_size=1)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)
    try:
        return chat_loop(engine, params, system=args.system)
    finally:
        engine.close()


def register(sub: argparse._SubParsersAction) -> None:
    from seekforge.serve.cli import add_engine_args

    p = sub.add_parser("chat", help="chat with a model in the terminal (streaming)",
                       description=f"Terminal chat with streaming output. {HELP}")
    add_engine_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=run_chat)
