"""GRPO's reward built-ins, toy tasks and their verifiers, advantages and config refusals (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekforge.config import ConfigError, load_config
from seekforge.finetune.grpo import GRPOConfig, collate_rows, group_advantages, token_logps
from seekforge.finetune.rewards import (
    BUILTIN_REWARDS,
    NamedReward,
    RewardError,
    answer_match,
    call_reward,
    countdown,
    extract_number,
    length_penalty,
    resolve_rewards,
    think_format,
)
from seekforge.finetune.rl_tasks import (
    ArithmeticTask,
    CountdownTask,
    UnsafeExpression,
    check_countdown,
    make_task,
    safe_eval,
)


def test_number_extraction_and_answer_match():
    assert extract_number("so it is 1,234.") == 1234
    assert extract_number("#### -42") == -42
    assert extract_number("3/4 of it") == 0.75
    assert extract_number("2.50 dollars then 7") == 7  # the last number
    assert extract_number("no digits") is None
    completions = [
        "<think>40 + 2 = 42</think><answer>42</answer>",
        "<think>it is 42</think><answer>41</answer>",  # the answer tag wins over the reasoning
        "The answer is 1,000",  # no tags: the last number of the whole text
        "<answer>forty-two</answer>",
        "<answer>-7.0</answer>",
    ]
    assert answer_match(completions, ["42", "42", "1000", "42", "-7"]) == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_think_format_and_length_penalty_and_countdown_reward():
    ok = " <think>a\nb</think>\n<answer>3</answer>\n"
    assert think_format([ok, "<answer>3</answer>", "<think>x</think><answer>3</answer> extra",
                         "<think>x</think>"]) == [1.0, 0.0, 0.0, 0.0]
    # limit 16, window 4: free up to 12 tokens, -0.5 at 14, -1 at 16 and beyond
    ids = [[0] * n for n in (3, 12, 14, 16, 20)]
    penalties = length_penalty(ids, max_completion_tokens=16, length_penalty_window=4)
    assert penalties == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert length_penalty([[0] * 8], max_completion_tokens=8) == [-1.0]  # default window: a quarter
    texts = ["<think>.</think><answer>(3 + 5) * 2</answer>", "<answer>3 * 5 + 2</answer>",
             "<answer>16</answer>"]
    assert countdown(texts, [[2, 3, 5]] * 3, [16, 16, 16]) == [1.0, 0.0, 0.0]


def test_tasks_are_deterministic_and_their_demonstrations_score_full_reward():
    arith = make_task("arithmetic", {"digits": 3, "ops": "+-*"})
    items = [arith.item(5, i) for i in range(50)]
    assert [it.prompt for it in items] == [arith.item(5, i).prompt for i in range(50)]
    assert len({it.prompt for it in items}) > 45
    demos = [ArithmeticTask.demonstration(it) for it in items]
    assert answer_match(demos, [it.columns["answer"] for it in items]) == [1.0] * 50
    assert think_format(demos) == [1.0] * 50
    a, op, b = items[0].columns["question"].split()
    assert int(items[0].columns["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b),
                                               "*": int(a) * int(b)}[op]
    cd = make_task("countdown", {"count": 4, "max_number": 25})
    for i in range(50):
        it = cd.item(1, i)
        assert check_countdown(it.columns["solution"], it.columns["numbers"], it.columns["target"])
        demo = CountdownTask.demonstration(it)
        assert countdown([demo], [it.columns["numbers"]], [it.columns["target"]]) == [1.0]
    with pytest.raises(ValueError, match="'sudoku' is not a built-in task; choose one of arithmetic, countd"):
        make_task("sudoku", {})
    with pytest.raises(ValueError, match="task_options: level unknown for task arithmetic"):
        make_task("arithmetic", {"level": 3})


def test_safe_eval_accepts_arithmetic_only():
    assert safe_eval("(3 + 5) * 2 / 4 - -1") == (5, [3, 5, 2, 4, 1])
    assert safe_eval("7 ÷ 2")[0] == pytest.approx(3.5)
    for bad in ("__import__('os').system('x')", "2 ** 10", "a + 1", "1.5 + 2", "1 / (2 - 2)", "[1, 2]",
                "(1).__class__", "", "1 +"):
        with pytest.raises(UnsafeExpression):
            safe_eval(bad)
    assert not check_countdown("3 * 5 + 1", [1, 3, 5], 15)  # wrong value
    assert not check_countdown("3 * 5", [1, 3, 5], 15)  # a number left out
    assert not check_countdown("3 * 5 * 1 * 1", [1, 3, 5], 15)  # a number used twice
    assert check_countdown("(5 * 3) * 1", [1, 3, 5], 15)


def test_group_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_advantages(rewards, 4)
    g = rewards[:4]
    assert torch.allclose(adv[:4], (g - g.mean()) / (g.std() + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4))  # equal rewards: nothing to learn from the group
    assert torch.allclose(group_advantages(rewards, 4, "none")[:4], g - g.mean())
    assert torch.allclose(group_advantages(rewards, 4, "batch")[:4], (g - g.mean()) / (rewards.std() + 1e-4))


def test_rows_and_token_logps_score_completion_tokens_only():
    batch = collate_rows([[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 6, 7], [4, 5, 8, 9, 10]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 6, 7], [-100, -100, 8, 9, 10]]
    logits = torch.randn(2, 5, 11)
    lp = token_logps(logits, batch["labels"])
    full = torch.log_softmax(logits, -1)
    assert lp[0].tolist() == pytest.approx([0, 0, full[0, 2, 6].item(), full[0, 3, 7].item()])
    want = [0, full[1, 1, 8].item(), full[1, 2, 9].item(), full[1, 3, 10].item()]
    assert lp[1].tolist() == pytest.approx(want)


def test_reward_resolution_and_failures(tmp_path: Path):
    with pytest.raises(ValueError) as e:
        resolve_rewards(["exact_match"], None)
    assert "not a built-in reward (" + ", ".join(BUILTIN_REWARDS) + ")" in str(e.value)
    module = tmp_path / "my_rewards.py"
    module.write_text("def short(completions, **kw):\n    return [-len(c) for c in completions]\n")
    resolved = resolve_rewards([f"{module}:short", "think_format"], [0.5, 1.0])
    assert call_reward(resolved[0], {"completions": ["ab", "c"]}, 2) == [-2.0, -1.0]
    with pytest.raises(ValueError, match="has no function 'nope'"):
        resolve_rewards([f"{module}:nope"], None)
    with pytest.raises(ValueError, match="2 weights for 1 rewards"):
        resolve_rewards(["think_format"], [1.0, 2.0])

    def boom(**kw):
        raise KeyError("answer")

    cases = [(boom, "raised KeyError"), (lambda **kw: [1.0, float("nan")], "non-finite reward \\(nan\\)"),
             (lambda **kw: [1.0], "returned 1 rewards for 2 completions"), (lambda **kw: [1.0, None], "nan")]
    for fn, message in cases:
        with pytest.raises(RewardError, match=f"reward function mine: .*{message}"):
            call_reward(NamedReward("mine", fn), {"completions": ["a", "b"]}, 2)


def test_config_refuses_one_generation_and_bad_geometry():
    base = ["model=tiny"]
    with pytest.raises(ConfigError, match="num_generations: must be >= 2 .* always 0"):
        load_config(GRPOConfig, None, [*base, "num_generations=1"])
    with pytest.raises(ConfigError, match="micro_batch_size \\(3\\) must divide"):
        load_config(GRPOConfig, None, [*base, "micro_batch_size=3"])
    with pytest.raises(ConfigError, match="max_completion_tokens \\(300\\) must be < seq_len"):
        load_config(GRPOConfig, None, [*base, "max_completion_tokens=300"])
    with pytest.raises(ConfigError, match="max_reward_failures"):
        load_config(GRPOConfig, None, [*base, "max_reward_failures=9"])
    cfg = load_config(GRPOConfig, None, [*base, "prompts_per_step=2", "num_generations=4",
                                         "micro_batch_size=4"])
    assert cfg.batch_tokens == 2 * 4 * cfg.seq_len
