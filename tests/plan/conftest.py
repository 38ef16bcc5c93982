"""Helpers for the planner tests: write HF ``config.json`` directories and run ``seekforge plan``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from seekforge.plan import cli as plan_cli


@pytest.fixture
def model_dir(tmp_path: Path):
    """``model_dir(fields) -> path`` of a directory holding that config.json."""
    def make(fields: dict[str, Any], name: str = "m") -> str:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps(fields))
        return str(d)
    return make


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seekforge")
    sub = parser.add_subparsers(dest="command")
    plan_cli.register(sub)
    return parser.parse_args(["plan", *argv])


@pytest.fixture
def run_plan():
    """``run_plan(argv) -> dict``: the JSON result of ``seekforge plan ARGV`` (nothing printed)."""
    return lambda argv: plan_cli.plan(_parse(argv))
