"""``seekforge grpo`` on a tiny model: engine weight updates, the CLI run (metrics, checkpoint,
resume), failing reward functions, and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekforge.train.metrics import read_metrics

FAST = ["prompts_per_step=2", "num_generations=2", "micro_batch_size=2", "max_completion_tokens=6",
        "seq_len=64", "task_options={digits: 1, hint: false}", "lr=1e-3"]


def _sets(*kv: str) -> list[str]:
    return [x for item in kv for x in ("--set", item)]


def _run(tiny_base: Path, out: Path, extra: list[str]):
    """A quiet GRPO run through the real trainer; returns (summary or exception, objective)."""
    from seekforge.config import load_config
    from seekforge.finetune.grpo import GRPOConfig, GRPOObjective
    from seekforge.train.config import QUIET_RUN
    from seekforge.train.trainer import Trainer

    cfg = load_config(GRPOConfig, None, [*QUIET_RUN, "mtp_loss_weight=0", f"model={tiny_base}", *FAST,
                                         f"out_dir={out}", "log_every=1", *extra])
    obj = GRPOObjective()
    try:
        return Trainer(cfg, obj).run(), obj
    finally:
        obj.close()


@torch.no_grad()
def _plain_greedy(model, prompt: list[int], n: int) -> list[int]:
    x = torch.tensor([prompt])
    out = []
    for _ in range(n):
        nxt = int(model(x).logits[0, -1].argmax())
        out.append(nxt)
        x = torch.cat([x, x.new_tensor([[nxt]])], 1)
    return out


def test_engine_sees_weight_updates_of_the_trained_lora_model(tiny_base: Path, tmp_path: Path):
    """The rollout engine runs on the module being trained: an in-place update (what the optimizer
    does) changes the next rollout, which equals a plain greedy loop over the updated model, and
    the adapter-disabled reference still gives the base's answer."""
    from seekforge.config import load_config
    from seekforge.finetune.grpo import GRPOConfig, GRPOObjective
    from seekforge.finetune.methods import unwrap as unwrap_methods
    from seekforge.infer import SamplingParams
    from seekforge.train.config import QUIET_RUN
    from seekforge.train.objective import TrainEnv

    cfg = load_config(GRPOConfig, None, [*QUIET_RUN, f"model={tiny_base}", *FAST, "method=lora", "beta=0.1",
                                         f"out_dir={tmp_path}"])
    obj = GRPOObjective()
    obj.setup(TrainEnv(cfg, torch.device("cpu"), torch.float32, 0, 1, tmp_path))
    model = obj.build_model()
    model.train()
    loader = obj.train_loader(cfg.micro_batch_size, obj.grad_accum)
    try:
        assert model.training  # the engine put it in eval mode; the objective put it back
        module = unwrap_methods(model)
        assert obj.engine.model is module  # no copy
        prompt = obj.prompt_ids(obj.task.item(0, 0))
        greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        before = obj.engine.generate([prompt], greedy)[0].token_ids
        model.eval()
        assert before == _plain_greedy(model, prompt, 8)
        torch.manual_seed(0)
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and all(float(p.detach().abs().max()) == 0 for p in lora_b)  # peft starts B at 0
        with torch.no_grad():
            for p in lora_b:
                p.add_(torch.randn_like(p) * 2.0)  # in place, like optimizer.step()
        after = obj.engine.generate([prompt], greedy)[0].token_ids
        assert after != before
        assert after == _plain_greedy(model, prompt, 8)
        with model.disable_adapter():
            assert obj.engine.generate([prompt], greedy)[0].token_ids == before  # the reference
        model.train()
        batches = loader.next_step()  # a rollout round on the updated model, with reference log-probs
        assert len(batches) == obj.grad_accum and all("ref_logps" in b for b in batches)
        assert model.training
    finally:
        obj.close()


def test_cli_grpo_writes_metrics_checkpoint_and_resumes(tiny_base: Path, tmp_path: Path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from seekforge.cli import main

    out = tmp_path / "run"
    common = ["progress=false", "plot=false", "wandb=false", "mtp_loss_weight=0", f"model={tiny_base}", *FAST,
              f"out_dir={out}", "log_every=1", "save_every=2"]
    assert main(["grpo", *_sets(*common, "max_steps=2", "tensorboard=true", "beta=0.05")]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward", "reward_std", "reward_answer_match", "reward_answer_match_std",
                "reward_think_format", "kl", "clip_fraction", "completion_length", "frac_reward_zero_std",
                "reward_failures"):
        assert all(key in r for r in records), key
    assert all(0 < r["completion_length"] <= 6 for r in records)
    assert (out / "final" / "adapter_model.safetensors").exists() and (out / "step-000002").is_dir()
    tags = {t for p in out.rglob("events.out.tfevents.*") for t in EventAccumulator(str(p.parent)).Reload()
            .Tags()["scalars"]}
    assert {"reward", "kl", "clip_fraction", "reward_answer_match"} <= tags, tags
    # Resume: same command with more steps continues from step 2 (rollout round 2, not round 0).
    assert main(["grpo", *_sets(*common, "max_steps=3", "tensorboard=false", "beta=0.05")]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    log = (out / "train.log").read_text()
    assert f"resumed from {out / 'step-000002'}" in log
    # Bad input through the CLI: n = 1, an unknown reward name (lists the built-ins), a transformers model.
    assert main(["grpo", *_sets(*common, "num_generations=1")]) == 2
    assert "advantage" in capsys.readouterr().err
    assert main(["grpo", *_sets(*common, "rewards=[exact]", f"out_dir={tmp_path / 'x'}")]) != 0
    assert "answer_match, think_format, length_penalty, countdown" in capsys.readouterr().err


def test_resumed_rollouts_continue_the_prompt_stream(tiny_base: Path, tmp_path: Path):
    summary, obj = _run(tiny_base, tmp_path / "a", ["max_steps=2", "save_every=1"])
    assert summary["step"] == 2
    from seekforge.train.checkpoint import read_trainer_state

    state = read_trainer_state(tmp_path / "a" / "step-000002")["loader"]
    assert state["rounds"] == 2 and state["failures"] == 0


def test_failing_reward_skips_the_step_and_a_streak_stops_the_run(tiny_base: Path, tmp_path: Path):
    from seekforge.train.trainer import TrainingError

    module = tmp_path / "flaky.py"
    module.write_text(
        "calls = []\n"
        "def first_nan(completions, **kw):\n"
        "    calls.append(1)\n"
        "    return [float('nan')] * len(completions) if len(calls) == 1 else [1.0] * len(completions)\n"
        "def always(completions, **kw):\n"
        "    raise ValueError('no answer column')\n"
    )
    summary, _ = _run(tiny_base, tmp_path / "flaky", ["max_steps=3", f"rewards=[{module}:first_nan]"])
    records = read_metrics(tmp_path / "flaky" / "metrics.jsonl")
    assert summary["skipped_steps"] == 1 and records[0].get("skipped") is True
    assert [r["reward_failures"] for r in records] == [1.0, 1.0, 1.0]
    assert records[1]["reward"] == 1.0
    with pytest.raises(TrainingError, match=f"reward function {module}:always: raised ValueError: no answer "
                       "column. It failed on 2 rollouts in a row \\(max_reward_failures 2\\)"):
        _run(tiny_base, tmp_path / "bad", ["max_steps=5", f"rewards=[{module}:always]",
                                           "max_reward_failures=2"])


def test_prompt_longer_than_context_is_a_config_error(tiny_base: Path, tmp_path: Path):
    from seekforge.config import ConfigError

    with pytest.raises(ConfigError, match="leaves no room for an answer within seq_len 16"):
        _run(tiny_base, tmp_path / "long", ["seq_len=16", "max_completion_tokens=4",
                                            "task_options={digits: 3, hint: true}"])


@pytest.mark.parametrize("aggregation", ["grpo", "dapo"])
def test_micro_batches_weigh_like_one_batch(aggregation: str, tiny_base: Path, tmp_path: Path):
    """The trainer's weighting of micro-batches (count_targets: sequences for grpo, tokens for dapo)
    gives the loss of the whole step in one batch: per-sequence means averaged over all
    completions, or DAPO's sum over all completion tokens / their number."""
    from seekforge.config import load_config
    from seekforge.finetune.grpo import GRPOConfig, GRPOObjective, collate_rows, token_logps
    from seekforge.finetune.policy_loss import policy_loss
    from seekforge.train.config import QUIET_RUN
    from seekforge.train.objective import TrainEnv

    cfg = load_config(GRPOConfig, None, [*QUIET_RUN, f"model={tiny_base}", *FAST, "method=full",
                                         "num_generations=4", f"aggregation={aggregation}",
                                         f"out_dir={tmp_path}"])
    obj = GRPOObjective()
    obj.setup(TrainEnv(cfg, torch.device("cpu"), torch.float32, 0, 1, tmp_path))
    model = obj.build_model()
    obj.train_loader(cfg.micro_batch_size, obj.grad_accum)
    try:
        rollout = obj.sample(0)
        # completions of 2..5 tokens: the micro-batches hold unequal token counts
        rollout.completion_ids = [ids[: 2 + i % 4] for i, ids in enumerate(rollout.completion_ids)]
        advantages = torch.linspace(-1.5, 1.5, len(rollout.completion_ids))
        parts, counts = [], []
        for start in range(0, len(advantages), cfg.micro_batch_size):
            rows = slice(start, start + cfg.micro_batch_size)
            batch = collate_rows(rollout.prompt_ids[rows], rollout.completion_ids[rows], 0)
            batch["advantages"] = advantages[rows]
            parts.append(obj.loss(model, batch).loss)
            counts.append(obj.count_targets(batch))
        stepped = sum(p * c / sum(counts) for p, c in zip(parts, counts))
        whole = collate_rows(rollout.prompt_ids, rollout.completion_ids, 0)
        logps = token_logps(model(whole["input_ids"]).logits, whole["labels"])
        expected = policy_loss(obj.settings, logps, advantages, whole["labels"][:, 1:] != -100).loss
        assert len(parts) == 4
        torch.testing.assert_close(stepped, expected, atol=1e-6, rtol=1e-5)
    finally:
        obj.close()


def test_num_iterations_reuses_a_rollout(tiny_base: Path, tmp_path: Path):
    summary, _ = _run(tiny_base, tmp_path / "mu", ["max_steps=4", "num_iterations=2", "save_every=4"])
    records = read_metrics(tmp_path / "mu" / "metrics.jsonl")
    assert [r["completion_length"] for r in records[:2]] == [records[0]["completion_length"]] * 2
    from seekforge.train.checkpoint import read_trainer_state

    assert read_trainer_state(tmp_path / "mu" / "step-000004")["loader"]["rounds"] == 2


def test_prompts_from_a_data_file(tiny_base: Path, tmp_path: Path):
    """GSM8K-style rows: ``question`` is the prompt, ``answer`` ("... #### 42") reaches answer_match;
    a prompt too long for seq_len is skipped and counted; a row without the field names its line."""
    import json

    from seekforge.config import ConfigError
    from seekforge.finetune.rl_tasks import load_prompt_rows

    rows = [{"question": f"Tom has {a} apples and buys {a + 1} more. How many now?",
             "answer": f"{a} + {a + 1} = {2 * a + 1}\n#### {2 * a + 1}"} for a in range(1, 7)]
    rows.append({"question": "word " * 200, "answer": "#### 0"})  # no room within seq_len 64
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary, obj = _run(tiny_base, tmp_path / "run", ["max_steps=2", f"data={data}", "prompt_field=question",
                                                      "task_options={}"])
    assert summary["step"] == 2 and obj.skipped_prompts == 1 and len(obj.task.rows) == 6
    assert obj.task.rows[0].columns == {"answer": "1 + 2 = 3\n#### 3"}
    seen = {obj.task.item(0, i).prompt for i in range(6)}
    assert len(seen) == 6  # an epoch visits every row once
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all("reward_answer_match" in r for r in records)
    assert records[-1]["epoch"] == round(2 * 2 / 6, 4)  # 2 rounds of 2 prompts over 6 rows
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?"}\n{"prompt": "wrong field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2: expected an object with a non-empty string field "
                       "'question' \\(set prompt_field\\); found prompt"):
        load_prompt_rows(str(bad), "question")
    with pytest.raises(ConfigError, match="task: 'countdown' and data: .* are both set"):
        _run(tiny_base, tmp_path / "both", [f"data={data}", "task=countdown"])
