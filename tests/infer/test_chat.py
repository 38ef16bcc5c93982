"""``seekforge chat``: history, /reset and /exit, driven through stdin."""

from __future__ import annotations

import io
import subprocess
import sys

from seekforge.infer import Engine, EngineConfig, SamplingParams
from seekforge.infer.chat import chat_loop


def test_chat_loop_keeps_history_and_resets(tiny_model_dir) -> None:
    prompts: list[int] = []
    with Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=1, max_len=256)) as eng:
        real = eng.chat_prompt
        eng.chat_prompt = lambda msgs, **kw: prompts.append(len(msgs)) or real(msgs, **kw)
        out = io.StringIO()
        stdin = io.StringIO("你好\nhow are you?\n/reset\nhello again\n/exit\nnever read\n")
        params = SamplingParams(max_tokens=5, temperature=0)
        chat_loop(eng, params, system="be brief", stdin=stdin, stdout=out)
    # system+user, then system+user+assistant+user, then after /reset system+user again.
    assert prompts == [2, 4, 2]
    assert "[history cleared]" in out.getvalue()


def test_chat_command_streams_over_a_pipe(tiny_model_dir) -> None:
    proc = subprocess.run([sys.executable, "-m", "seekforge", "chat", str(tiny_model_dir),
                           "--max-tokens", "4",
                           "--temperature", "0"], input="你好\n/exit\n", capture_output=True, text=True,
                          timeout=120, encoding="utf-8")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("seekforge chat") and len(lines) >= 2
