"""``seekforge chat``: the streamed answers, history, /reset and /exit, driven through stdin."""

from __future__ import annotations

import io
import subprocess
import sys

from seekforge.infer import Engine, EngineConfig, SamplingParams
from seekforge.infer.chat import HELP, chat_loop


def test_chat_loop_streams_answers_keeps_history_and_resets(tiny_model_dir) -> None:
    conversations: list[list[dict[str, str]]] = []
    params = SamplingParams(max_tokens=5, temperature=0)
    with Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=1, max_len=256)) as eng:
        real = eng.chat_prompt
        eng.chat_prompt = lambda msgs, **kw: conversations.append([dict(m) for m in msgs]) or real(msgs, **kw)
        out = io.StringIO()
        stdin = io.StringIO("你好\nhow are you?\n/reset\nhello again\n/exit\nnever read\n")
        chat_loop(eng, params, system="be brief", stdin=stdin, stdout=out)
        eng.chat_prompt = real
        # What the engine answers, greedily, to each conversation the loop rendered.
        answers = [eng.generate([real(c)], params)[0].text for c in conversations]
    # system+user, then system+user+assistant+user, then after /reset system+user again.
    assert [[m["role"] for m in c] for c in conversations] == [
        ["system", "user"], ["system", "user", "assistant", "user"], ["system", "user"]]
    assert [c[-1]["content"] for c in conversations] == ["你好", "how are you?", "hello again"]
    assert conversations[1][2] == {"role": "assistant", "content": answers[0]}  # the history holds it
    assert all(answers)
    # stdout is the banner, then each streamed answer on its own line; "never read" is never read.
    assert out.getvalue() == (f"seekforge chat — {eng.name}. {HELP}\n{answers[0]}\n{answers[1]}\n"
                              f"[history cleared]\n{answers[2]}\n")


def test_chat_command_streams_over_a_pipe(tiny_model_dir) -> None:
    proc = subprocess.run([sys.executable, "-m", "seekforge", "chat", str(tiny_model_dir),
                           "--max-tokens", "4",
                           "--temperature", "0"], input="你好\n/exit\n", capture_output=True, text=True,
                          timeout=120, encoding="utf-8")
    assert proc.returncode == 0, proc.stderr
    with Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=1)) as eng:
        prompt = eng.chat_prompt([{"role": "user", "content": "你好"}])
        want = eng.generate([prompt], SamplingParams(max_tokens=4, temperature=0))[0].text
        name = eng.name
    assert want
    assert proc.stdout == f"seekforge chat — {name}. {HELP}\n{want}\n"
