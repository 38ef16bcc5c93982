"""Toy tasks with verifiable answers, generated on the fly for ``seekforge grpo``.

A task turns an item index into a :class:`TaskItem` (a user prompt plus the columns its reward
functions read, e.g. ``answer``), as a pure function of ``(seed, index)``: rollouts are
reproducible and a resumed run sees the same prompts. Two built-ins:

* ``arithmetic``: ``a op b`` with multi-digit operands (``+ - *``); the answer is a number,
  scored by the ``answer_match`` reward (number extraction).
* ``countdown``: reach a target with given numbers (each used exactly once) and ``+ - * /``
  (TinyZero's Countdown, as in Pan et al. 2025); the answer is an expression, scored by the
  ``countdown`` reward, which checks it with :func:`safe_eval` (an AST walk over numbers, the
  four operators and parentheses: no ``eval``).

The prompt asks for DeepSeek-R1's output format (``<think>…</think><answer>…</answer>``,
DeepSeek-AI 2025, arXiv:2501.12948, Table 1).
"""

from __future__ import annotations

import ast
import operator
import random
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

FORMAT_HINT = "Think in <think></think>, then give the final answer in <answer></answer>."


@dataclass
class TaskItem:
    prompt: str  # the user message
    columns: dict[str, Any] = field(default_factory=dict)  # passed to the reward functions by name


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


# ---------------------------------------------------------------------------------------------
# Arithmetic


@dataclass
class ArithmeticTask:
    """``a op b`` with ``digits``-digit operands; ops from ``ops`` (``+``, ``-``, ``*``)."""

    digits: int = 2
    ops: str = "+-"
    hint: bool = True  # append FORMAT_HINT to the prompt

    def __post_init__(self) -> None:
        if self.digits < 1 or self.digits > 9:
            raise ValueError(f"task_options.digits: must be in 1..9 (got {self.digits})")
        bad = set(self.ops) - set("+-*")
        if not self.ops or bad:
            raise ValueError(f"task_options.ops: a string of + - * (got {self.ops!r})")

    def item(self, seed: int, index: int) -> TaskItem:
        rng = _rng(seed, index)
        lo, hi = 10 ** (self.digits - 1) if self.digits > 1 else 0, 10**self.digits - 1
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        op = rng.choice(self.ops)
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        prompt = f"What is {a} {op} {b}?" + (f" {FORMAT_HINT}" if self.hint else "")
        return TaskItem(prompt, {"answer": str(value), "question": f"{a} {op} {b}"})

    @staticmethod
    def demonstration(item: TaskItem) -> str:
        """A correct completion in the R1 format (SFT data that teaches the format before GRPO)."""
        c = item.columns
        return f"<think>{c['question']} = {c['answer']}</think><answer>{c['answer']}</answer>"


# ---------------------------------------------------------------------------------------------
# Countdown

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class UnsafeExpression(ValueError):
    """The text is not an arithmetic expression of numbers, + - * / and parentheses."""


def safe_eval(expression: str, max_length: int = 200) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the integers it uses, without ``eval``.

    Only integer literals, ``+ - * /``, unary minus and parentheses parse; anything else (names,
    calls, attributes, ``**``, floats) raises :class:`UnsafeExpression`, as does division by zero.
    """
    text = expression.strip().replace("×", "*").replace("÷", "/")
    if not text or len(text) > max_length:
        raise UnsafeExpression(f"expression must be 1..{max_length} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise UnsafeExpression(f"not an expression: {e.msg}") from None
    numbers: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise UnsafeExpression("division by zero")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return Fraction(node.value)
        raise UnsafeExpression(f"{type(node).__name__} is not allowed (numbers, + - * / and parentheses)")

    return walk(tree.body), numbers


def check_countdown(expression: str, numbers: list[int], target: int) -> bool:
    """True when ``expression`` uses exactly ``numbers`` (each once) and equals ``target``."""
    try:
        value, used = safe_eval(expression)
    except UnsafeExpression:
        return False
    return value == target and Counter(used) == Counter(numbers)


@dataclass
class CountdownTask:
    """``count`` numbers in [1, ``max_number``] and a target reachable with all of them."""

    count: int = 3
    max_number: int = 20
    hint: bool = True

    def __post_init__(self) -> None:
        if not 2 <= self.count <= 6:
            raise ValueError(f"task_options.count: must be in 2..6 (got {self.count})")
        if self.max_number < 2:
            raise ValueError(f"task_options.max_number: must be >= 2 (got {self.max_number})")

    def item(self, seed: int, index: int) -> TaskItem:
        rng = _rng(seed, index)
        while True:  # a random expression over the numbers, kept if its value is a positive integer
            numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
            expr = str(numbers[0])
            for n in numbers[1:]:
                op = rng.choice("+-*/")
                inner = f"({expr})" if " " in expr else expr
                expr = f"{inner} {op} {n}" if rng.random() < 0.5 else f"{n} {op} {inner}"
            try:
                value, _ = safe_eval(expr)
            except UnsafeExpression:  # division by a zero sub-expression
                continue
            if value.denominator == 1 and 0 < value <= 1000:
                break
        shown = sorted(numbers)
        prompt = (f"Using the numbers {shown}, each exactly once, and + - * / with parentheses, write an "
                  f"expression equal to {int(value)}." + (f" {FORMAT_HINT}" if self.hint else ""))
        return TaskItem(prompt, {"numbers": shown, "target": int(value), "solution": expr})

    @staticmethod
    def demonstration(item: TaskItem) -> str:
        c = item.columns
        return f"<think>{c['solution']} = {c['target']}</think><answer>{c['solution']}</answer>"


# ---------------------------------------------------------------------------------------------
# Your prompts


@dataclass
class PromptRows:
    """Prompts from data files, visited in a seeded order per epoch (same shape as a task)."""

    rows: list[TaskItem]

    def item(self, seed: int, index: int) -> TaskItem:
        epoch, j = divmod(index, len(self.rows))
        order = list(range(len(self.rows)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        return self.rows[order[j]]


def load_prompt_rows(inputs: str | list[str], prompt_field: str = "prompt") -> PromptRows:
    """Rows of JSON lines / JSON / parquet / CSV files (read by :mod:`seekforge.data.readers`):
    ``prompt_field`` is the user message, every other field a column for the rewards (e.g.
    GSM8K's ``answer``, whose last number ``answer_match`` compares against)."""
    from seekforge.data.readers import iter_records

    rows = []
    for rec in iter_records(inputs):
        if rec.error:
            raise ValueError(f"{rec.where}: {rec.error}")
        value = rec.value
        text = value.get(prompt_field) if isinstance(value, dict) else None
        if not isinstance(text, str) or not text.strip():
            keys = ", ".join(map(str, value)) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"{rec.where}: expected an object with a non-empty string field "
                             f"{prompt_field!r} (set prompt_field); found {keys}")
        rows.append(TaskItem(text, {k: v for k, v in value.items() if k != prompt_field}))
    if not rows:
        raise ValueError(f"data: no rows in {inputs}")
    return PromptRows(rows)


TASKS: dict[str, type] = {"arithmetic": ArithmeticTask, "countdown": CountdownTask}


def make_task(name: str, options: dict[str, Any]):
    """A built-in task by name, with ``task_options`` as its fields (unknown ones are an error)."""
    if name not in TASKS:
        raise ValueError(f"task: {name!r} is not a built-in task; choose one of {', '.join(TASKS)}")
    cls = TASKS[name]
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"task_options: {', '.join(unknown)} unknown for task {name} "
                         f"(it takes {', '.join(sorted(known))})")
    return cls(**options)


__all__ = ["TaskItem", "ArithmeticTask", "CountdownTask", "PromptRows", "load_prompt_rows", "TASKS",
           "make_task", "safe_eval", "check_countdown", "UnsafeExpression", "FORMAT_HINT"]
