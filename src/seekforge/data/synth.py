"""``seekforge data synth``: new instruction data written by a model behind an OpenAI-compatible endpoint.

Methods:

- ``self-instruct`` (Wang et al. 2023, https://arxiv.org/abs/2212.10560): the model is shown a
  few tasks (mostly seed tasks, plus up to two it wrote earlier, as in the paper) and asked for
  a new one; a second request answers it;
- ``evol-instruct`` (Xu et al. 2023, WizardLM, https://arxiv.org/abs/2304.12244): an instruction
  from the seeds (or an earlier evolved one) is rewritten in depth (add a constraint, deepen,
  concretise, require more reasoning steps) or in breadth (a new, rarer task of the same
  domain); then answered.

Every candidate goes through the filters, each counted in ``report.json``: instruction length,
language (``--langs``, default: the seeds' languages), refusal/boilerplate in instruction or answer
("As an AI...", "作为一个AI..."), answers cut at ``--max-tokens``, near-duplicates of a seed or
of an accepted task (MinHash LSH, :class:`.augment_run.Similarity`), an evolved instruction too
similar to its parent, and an optional judge (``--judge`` scores 1-10 by the same or another
endpoint, kept at ``--judge-min`` and above).

Work proceeds in rounds of ``--batch`` tasks sent in parallel. A round's prompts depend only on
``--seed`` and earlier answers, so a re-run - or a run resumed after a kill - asks exactly the
same requests and finds the answered ones in the response cache. The output (``synth.jsonl``,
alpaca or sharegpt) is readable by ``seekforge sft`` as is.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal

import regex

from seekforge.data.augment_run import (
    RunDir,
    Similarity,
    client_numbers,
    inputs_digest,
    is_refusal,
    read_rows,
    record_id,
)
from seekforge.data.text import detect_language

log = logging.getLogger("seekforge.data")

METHODS = ("self-instruct", "evol-instruct")
OUTPUT_FORMATS = ("alpaca", "sharegpt")


@dataclass
class SeedTask:
    id: str
    instruction: str
    output: str


@dataclass
class SynthConfig:
    method: Literal["self-instruct", "evol-instruct"]
    seeds: list[str]
    n: int
    out: str
    format: Literal["alpaca", "sharegpt"] = "alpaca"
    seed: int = 0
    batch: int = 16  # candidate tasks per round (sent in parallel)
    max_attempts: int | None = None  # instruction requests before giving up (default 4*n + batch)
    examples: int = 8  # self-instruct: tasks shown per prompt (up to 2 of them generated ones)
    temperature: float = 0.9  # writing instructions: varied
    answer_temperature: float = 0.7
    max_tokens: int = 512
    min_chars: int = 4  # instruction length bounds (characters)
    max_chars: int = 2000
    min_answer_chars: int = 1
    keep_truncated: bool = False  # keep answers cut at max_tokens
    langs: list[str] | None = None  # allowed languages (None: those of the seeds; ["any"]: no check)
    max_similarity: float = 0.9  # evol-instruct: Jaccard to the parent at/above which it is no evolution
    judge: bool = False
    judge_min: float = 7.0
    overwrite: bool = False

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"--format: expected one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}")
        for name in ("n", "batch", "examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_similarity <= 1.0:
            raise ValueError(f"--max-similarity: must be in [0, 1], got {self.max_similarity}")
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(
                f"--min-chars/--max-chars: expected 0 <= min <= max, got {self.min_chars}, {self.max_chars}"
            )
        if not 1.0 <= self.judge_min <= 10.0:
            raise ValueError(f"--judge-min: scores are 1-10, got {self.judge_min}")

    def fingerprint(self, model: str, judge_model: str | None) -> dict[str, Any]:
        # every option that changes what is asked or kept (not where it goes)
        opts = {k: v for k, v in asdict(self).items() if k not in ("method", "seeds", "out", "overwrite")}
        return {
            "command": "data synth",
            "method": self.method,
            "inputs": [str(p) for p in self.seeds],
            "inputs_sha256": inputs_digest(self.seeds),
            "model": model,
            "judge_model": judge_model,
            "options": opts,
        }


# --------------------------------------------------------------------------- seeds


def read_seeds(paths: list[str]) -> list[SeedTask]:
    """Seed tasks from alpaca/sharegpt/openai files (first user turn + its answer); a malformed
    record is an error naming file:line."""
    from seekforge.finetune.datasets import (
        DEFAULT_COLUMNS,
        DEFAULT_TAGS,
        _Bad,
        convert_alpaca,
        convert_chat,
        detect_format,
    )

    rows = read_rows(paths, "--seeds")
    fmt = detect_format([r.value for r in rows], str(rows[0].path))
    if fmt == "text":
        raise ValueError(
            f"--seeds: {rows[0].where}: seed tasks need instructions (alpaca 'instruction'/'output', "
            "sharegpt 'conversations' or openai 'messages'), not plain 'text' records"
        )
    seeds = []
    for rec in rows:
        try:
            if fmt == "alpaca":
                messages = convert_alpaca(rec.value, DEFAULT_COLUMNS["alpaca"])
            else:
                messages = convert_chat(rec.value, DEFAULT_COLUMNS[fmt], DEFAULT_TAGS[fmt])
        except _Bad as e:
            raise ValueError(f"--seeds: {rec.where}: {e}") from None
        chat = [m for m in messages if m["role"] != "system"]
        seeds.append(
            SeedTask(record_id(rec), chat[0]["content"], chat[1]["content"] if len(chat) > 1 else "")
        )
    return seeds


# --------------------------------------------------------------------------- prompts


def _is_zh(texts: list[str]) -> bool:
    return sum(detect_language(t) == "zh" for t in texts) * 2 > len(texts)


def self_instruct_messages(examples: list[str]) -> list[dict[str, str]]:
    tasks = "\n".join(f"{i + 1}. {t.strip()}" for i, t in enumerate(examples))
    if _is_zh(examples):
        ask = (
            f"下面是一些交给AI助手的任务示例：\n{tasks}\n\n请写出一个新的任务，主题和形式要与上面的都不同，"
            "并且能由AI助手用文字完成。只输出这个任务本身。"
        )
    else:
        ask = (
            f"Here are some tasks given to an AI assistant:\n{tasks}\n\nWrite one new task that differs "
            "from all of them in topic and form and that an AI assistant can do in text. "
            "Reply with the task only."
        )
    return [{"role": "user", "content": ask}]


# Evol-Instruct's operations, in our words: four in depth, one in breadth.
EVOLUTIONS = {
    "constraints": (
        "Rewrite the instruction below into a harder version by adding one more constraint or requirement.",
        "把下面的指令改写得更难：再增加一个约束或要求。",
    ),
    "deepen": (
        "Rewrite the instruction below so that it asks about its subject in more depth.",
        "改写下面的指令，让它对所涉及的主题问得更深入。",
    ),
    "concretize": (
        "Rewrite the instruction below, replacing general concepts with more specific ones.",
        "改写下面的指令，把其中笼统的概念换成更具体的概念。",
    ),
    "reasoning": (
        "Rewrite the instruction below so that answering it needs several explicit steps of reasoning.",
        "改写下面的指令，使回答它需要多步明确的推理。",
    ),
    "breadth": (
        "Write a brand-new instruction in the same domain as the one below, about a rarer topic, "
        "of similar length and difficulty.",
        "写一个与下面的指令属于同一领域、但话题更少见的全新指令，长度和难度与它相近。",
    ),
}


def evolve_messages(instruction: str, op: str) -> list[dict[str, str]]:
    en, zh = EVOLUTIONS[op]
    if detect_language(instruction) == "zh":
        ask = f"{zh}新指令必须合理、可以回答。只输出新指令。\n\n指令：{instruction.strip()}"
    else:
        ask = (
            f"{en} The new instruction must stay reasonable and answerable. Reply with the new "
            f"instruction only.\n\nInstruction: {instruction.strip()}"
        )
    return [{"role": "user", "content": ask}]


def judge_messages(instruction: str, answer: str) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": (
                "Rate how good the answer is as a response to the instruction (helpful, correct, clear), "
                "from 1 (useless) to 10 (excellent). Reply with the number only.\n\n"
                f"Instruction:\n{instruction}\n\nAnswer:\n{answer}"
            ),
        }
    ]


_LEADING_LABEL = regex.compile(
    r"^\s*(?:(?:new\s+)?(?:task|instruction|rewritten (?:instruction|prompt))\s*\d*\s*[:：.]|"
    r"(?:新)?(?:任务|指令)\s*\d*\s*[:：]|\d+\s*[.、)])\s*",
    regex.IGNORECASE,
)
_SCORE = regex.compile(r"(?<![\d.])(10|[1-9])(?:\.\d+)?(?![\d])")


def clean_instruction(text: str) -> str:
    """The model's reply reduced to the task: leading "Task 9:"/"新指令：" labels and quotes removed."""
    text = _LEADING_LABEL.sub("", text.strip(), count=1).strip()
    return text.strip("\"'“”「」").strip()


def parse_score(text: str) -> float | None:
    m = _SCORE.search(text)
    return float(m.group(0)) if m else None


# --------------------------------------------------------------------------- the run


@dataclass
class Candidate:
    instruction: str
    parent: str | None  # evol-instruct: the id of the evolved task
    op: str
    answer: str = ""
    score: float | None = None


def synth(cfg: SynthConfig, client_cfg, judge_cfg=None) -> dict[str, Any]:
    """Run ``data synth``; returns the final report (also in ``OUT/report.json``)."""
    from seekforge.llm_client import LLMClient

    cfg.validate()
    seeds = read_seeds(cfg.seeds)
    langs = set(cfg.langs) if cfg.langs else {detect_language(s.instruction) for s in seeds}
    client = LLMClient(client_cfg)
    judge = None
    try:
        client.preflight()
        if cfg.judge:
            judge = client if judge_cfg is None else LLMClient(judge_cfg)
            if judge is not client:
                judge.preflight()
        run = RunDir.claim(
            cfg.out,
            "synth.jsonl",
            cfg.fingerprint(client.model, judge.model if judge else None),
            cfg.overwrite,
        )
        if client.cfg.cache is None:
            client.set_cache(run.cache_file)
        if judge is not None and judge is not client and judge.cfg.cache is None:
            judge.set_cache(run.cache_file)
        return _synth_loop(cfg, seeds, langs, client, judge, run)
    finally:
        client.close()
        if judge is not None and judge is not client:
            judge.close()


def _synth_loop(
    cfg: SynthConfig, seeds: list[SeedTask], langs: set[str], client, judge, run: RunDir
) -> dict[str, Any]:
    sim = Similarity(seed=cfg.seed + 1)
    for s in seeds:  # dedup against the seeds
        sim.seen(s.instruction)
    drops: Counter = Counter()
    accepted: list[Candidate] = []
    evolved_pool: list[tuple[str, str]] = []  # (id, instruction) evolved and accepted, for further rounds
    max_attempts = cfg.max_attempts if cfg.max_attempts is not None else 4 * cfg.n + cfg.batch
    attempts = rounds = 0
    while len(accepted) < cfg.n and attempts < max_attempts:
        rng = random.Random(f"{cfg.seed}:{rounds}")
        size = min(cfg.batch, max_attempts - attempts)
        plans = [_plan(cfg, rng, seeds, accepted, evolved_pool) for _ in range(size)]
        requests = [
            (
                msgs,
                {
                    "temperature": cfg.temperature,
                    "max_tokens": cfg.max_tokens,
                    "seed": cfg.seed + attempts + j,
                },
            )
            for j, (msgs, _, _) in enumerate(plans)
        ]
        attempts += size
        rounds += 1
        replies = client.chat_many(requests)
        fresh: list[Candidate] = []
        for (_, parent, op), reply in zip(plans, replies):
            if reply is None:
                drops["request_failed"] += 1
                continue
            cand = Candidate(clean_instruction(reply.text), parent[0] if parent else None, op)
            reason = _check_instruction(cfg, cand, parent[1] if parent else None, langs, sim)
            if reason:
                drops[reason] += 1
                continue
            fresh.append(cand)
        answers = client.chat_many(
            [
                (
                    [{"role": "user", "content": c.instruction}],
                    {"temperature": cfg.answer_temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed},
                )
                for c in fresh
            ]
        )
        answered = []
        for cand, ans in zip(fresh, answers):
            reason = _check_answer(cfg, ans, langs)
            if reason:
                drops[reason] += 1
                continue
            cand.answer = ans.text.strip()
            answered.append(cand)
        if judge is not None and answered:
            scores = judge.chat_many(
                [
                    (judge_messages(c.instruction, c.answer), {"temperature": 0.0, "max_tokens": 8})
                    for c in answered
                ]
            )
            kept = []
            for cand, sc in zip(answered, scores):
                cand.score = parse_score(sc.text) if sc is not None else None
                if sc is None:
                    drops["judge_failed"] += 1
                elif cand.score is None:
                    drops["judge_unparsable"] += 1
                elif cand.score < cfg.judge_min:
                    drops["judge_below_min"] += 1
                else:
                    kept.append(cand)
            answered = kept
        for cand in answered:
            if len(accepted) >= cfg.n:
                drops["over_n"] += 1
                continue
            accepted.append(cand)
            if cfg.method == "evol-instruct":
                evolved_pool.append((f"evol-{len(accepted)}", cand.instruction))
        run.write_report(
            {
                "complete": False,
                "accepted": len(accepted),
                "attempts": attempts,
                "dropped": dict(drops),
                **client_numbers(client.report()),
            }
        )
        log.info("synth round %d: %d/%d accepted; %s", rounds, len(accepted), cfg.n, client.progress_line())
    rows = [_row(cfg, c) for c in accepted]
    if len(accepted) < cfg.n:
        log.warning(
            "synth: only %d of %d tasks after %d attempts (raise --max-attempts or loosen filters; "
            "drops: %s)",
            len(accepted),
            cfg.n,
            attempts,
            dict(drops),
        )
    report = {
        "method": cfg.method,
        "format": cfg.format,
        "seeds": len(seeds),
        "requested": cfg.n,
        "accepted": len(accepted),
        "attempts": attempts,
        "rounds": rounds,
        "languages": sorted(langs),
        "dropped": dict(sorted(drops.items())),
        **_totals(client, judge),
    }
    run.finish(rows, report)
    return {**report, "complete": True, "output": str(run.data_file)}


def _totals(client, judge) -> dict[str, Any]:
    main = client_numbers(client.report())
    if judge is None or judge is client:
        return main
    other = client_numbers(judge.report())
    total = {
        k: main[k] + other[k]
        for k in main
        if isinstance(main[k], (int, float)) and k in other and isinstance(other[k], (int, float))
    }
    return {**main, **total, "judge": other}


def _plan(
    cfg: SynthConfig,
    rng: random.Random,
    seeds: list[SeedTask],
    accepted: list[Candidate],
    evolved: list[tuple[str, str]],
) -> tuple[list[dict[str, str]], tuple[str, str] | None, str]:
    """(messages, parent (id, instruction) or None, operation) of one candidate."""
    if cfg.method == "self-instruct":
        mine = [c.instruction for c in accepted]
        n_mine = min(2, len(mine), cfg.examples - 1) if cfg.examples > 1 else 0
        picked = rng.sample([s.instruction for s in seeds], min(cfg.examples - n_mine, len(seeds)))
        picked += rng.sample(mine, n_mine)
        rng.shuffle(picked)
        return self_instruct_messages(picked), None, "self-instruct"
    pool = [(s.id, s.instruction) for s in seeds] + evolved
    parent = pool[rng.randrange(len(pool))]
    op = rng.choice(list(EVOLUTIONS))
    return evolve_messages(parent[1], op), parent, f"evol-instruct:{op}"


def _check_instruction(
    cfg: SynthConfig, cand: Candidate, parent: str | None, langs: set[str], sim: Similarity
) -> str | None:
    text = cand.instruction
    if not text:
        return "empty"
    if not cfg.min_chars <= len(text) <= cfg.max_chars:
        return "instruction_length"
    if "any" not in langs and detect_language(text) not in langs:
        return "language"
    if is_refusal(text):
        return "refusal"
    if parent is not None and sim.jaccard(parent, text) >= cfg.max_similarity:
        return "not_evolved"
    if sim.seen(text):
        return "duplicate"
    return None


def _check_answer(cfg: SynthConfig, ans, langs: set[str]) -> str | None:
    if ans is None:
        return "request_failed"
    text = ans.text.strip()
    if len(text) < max(1, cfg.min_answer_chars):
        return "empty_answer"
    if ans.finish_reason == "length" and not cfg.keep_truncated:
        return "answer_truncated"
    if is_refusal(text):
        return "refusal"
    if "any" not in langs and detect_language(text) not in langs:
        return "language"
    return None


def _row(cfg: SynthConfig, c: Candidate) -> dict[str, Any]:
    meta: dict[str, Any] = {"synth_method": c.op}
    if c.parent:
        meta["source_id"] = c.parent
    if c.score is not None:
        meta["judge_score"] = c.score
    if cfg.format == "sharegpt":
        return {
            "conversations": [{"from": "human", "value": c.instruction}, {"from": "gpt", "value": c.answer}],
            **meta,
        }
    return {"instruction": c.instruction, "input": "", "output": c.answer, **meta}
