"""The README's shell examples are real: every ``seekforge`` command in its fenced ``bash`` blocks
parses with the real CLI parser (subcommand, flags, required arguments), and the cheap ones — the
sample data, data prepare, tokenizer train/eval, data tokenize, model info, plan — run end to end,
in README order, in a scratch folder that holds only ``configs/`` (as a fresh clone does) and
what the earlier examples wrote. The Python snippet that reads their output runs too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from pathlib import Path

import pytest

from seekforge.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Examples run end to end: (leading words of the command, flags that make it a cheap run). Training,
# fine-tuning, serving and chatting take minutes or wait for input; they are only parsed.
CHEAP = ("demo --samples", "data prepare", "data domains", "tokenizer train", "tokenizer eval",
         "data tokenize", "model info", "plan --preset", "data augment --method eda")


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands(block: str) -> list[str]:
    """Logical command lines of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def seekforge_argv(command: str) -> list[str] | None:
    """The arguments after ``seekforge`` (also under ``torchrun ... -m seekforge``), else None."""
    words = shlex.split(command, comments=True)
    if words[:1] == ["seekforge"]:
        return words[1:]
    if words[:1] == ["torchrun"] and "seekforge" in words:
        i = words.index("seekforge")
        if words[i - 1] == "-m":
            return words[i + 1:]
    return None


README_COMMANDS = [argv for block in fenced_blocks(README.read_text(encoding="utf-8"), "bash")
                   for cmd in shell_commands(block) if (argv := seekforge_argv(cmd)) is not None]


def test_readme_has_examples() -> None:
    assert len(README_COMMANDS) >= 20
    assert any(argv[:2] == ["demo", "--samples"] for argv in README_COMMANDS)


@pytest.mark.parametrize("argv", README_COMMANDS, ids=[" ".join(a[:3]) for a in README_COMMANDS])
def test_readme_command_parses(argv: list[str]) -> None:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse prints what is wrong (unknown flag, missing argument) to stderr
        raise AssertionError(f"`seekforge {shlex.join(argv)}` does not parse (exit {e.code})") from None
    assert callable(getattr(args, "func", None)), f"`seekforge {shlex.join(argv)}` runs nothing"


def test_readme_paths_are_shipped() -> None:
    """No example reads a file outside the package and the repository's configs/."""
    text = README.read_text(encoding="utf-8")
    assert "../shared" not in text
    for argv in README_COMMANDS:
        for word in argv:
            if word.startswith("configs/"):
                assert (REPO / word).is_file(), word
    for config in (REPO / "configs").glob("*.yaml"):
        assert "../shared" not in config.read_text(encoding="utf-8"), config


@contextlib.contextmanager
def working_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def test_cheap_readme_examples_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "configs").symlink_to(REPO / "configs")
    ran = []
    with working_dir(tmp_path):
        for argv in README_COMMANDS:
            line = " ".join(argv)
            if not line.startswith(CHEAP) or "--measure" in argv:
                continue
            if argv[:2] == ["data", "prepare"]:
                argv = [*argv, "--no-progress"]
            assert main(argv) == 0, f"`seekforge {line}` failed: {capsys.readouterr().err[-2000:]}"
            ran.append(argv[:2])
        for name in ("tang_poems.jsonl", "english.jsonl", "sft_zh_en.json", "identity.json"):
            assert (tmp_path / "samples" / name).is_file()
        assert (tmp_path / "runs/prepared/report.json").is_file()
        assert (tmp_path / "runs/tok/tokenizer.json").is_file()
        assert (tmp_path / "runs/shards/manifest.json").is_file()
        assert (tmp_path / "runs/aug_eda/augmented.jsonl").is_file()
        # the Python example that reads the tokenizer and the shards
        snippet = next(b for b in fenced_blocks(README.read_text(encoding="utf-8"), "python")
                       if "TokenShards" in b)
        exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "<|user|>你好<|eot|><|assistant|>" in out  # the example's chat template rendering
    assert ["tokenizer", "train"] in ran and ["data", "tokenize"] in ran and ["plan", "--preset"] in ran


def test_readme_python_examples_compile() -> None:
    for i, block in enumerate(fenced_blocks(README.read_text(encoding="utf-8"), "python")):
        compile(block, f"README.md python block {i}", "exec")
