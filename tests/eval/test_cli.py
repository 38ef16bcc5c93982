"""`seekforge eval` end to end on the tiny model: the output contract, perplexity, generation metrics,
--compare, and the errors a user meets (no data dir, an endpoint without logprobs)."""

from __future__ import annotations

import contextlib
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from seekforge.cli import main
from seekforge.eval.generation import metrics
from seekforge.eval.perplexity import windows


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_eval_writes_the_contract(sf_model_dir, tmp_path, capsys):
    quiz = write(
        tmp_path / "quiz.csv",
        "question,A,B,C,answer,subject\nWhat is 1+1?,1,2,3,B,math\n"
        "Capital of France?,Rome,Paris,Oslo,B,geo\nNone of these?,None,NA,x,A,geo\n",
    )
    text = write(
        tmp_path / "docs.jsonl",
        json.dumps({"text": "The cat sat on the mat. " * 40})
        + "\n"
        + json.dumps({"text": "床前明月光，疑是地上霜。"})
        + "\n",
    )
    gen = write(
        tmp_path / "qa.jsonl",
        json.dumps({"prompt": "Say hi", "reference": "hi"})
        + "\n"
        + json.dumps(
            {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
        )
        + "\n",
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                str(sf_model_dir),
                "--task-file",
                str(quiz),
                "--shots",
                "0",
                "--ppl",
                str(text),
                "--ppl-stride",
                "64",
                "--max-length",
                "128",
                "--gen",
                str(gen),
                "--max-new-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "0-shot" in printed and "| quiz " in printed and "bits_per_byte" in printed
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    quiz_res = res["tasks"]["quiz"]
    assert quiz_res["n"] == 3 and quiz_res["shots"] == 0 and set(quiz_res["subjects"]) == {"math", "geo"}
    assert quiz_res["subjects"]["geo"]["n"] == 2
    assert quiz_res["acc"] == pytest.approx(sum(v["acc"] * v["n"] for v in quiz_res["subjects"].values()) / 3)
    ppl = res["ppl"]["docs.jsonl"]
    assert set(ppl) >= {"bits_per_byte", "nll_per_token", "tokens", "bytes"} and ppl["stride"] == 64
    assert ppl["bytes"] == len(("The cat sat on the mat. " * 40).encode()) + len(
        "床前明月光，疑是地上霜。".encode()
    )
    assert res["gen"]["qa.jsonl"]["n"] == 2 and set(res["gen"]["qa.jsonl"]) >= {
        "bleu",
        "rouge1",
        "rouge2",
        "rougeL",
        "exact_match",
    }
    assert res["model"] == "tiny-sf" and res["seconds"] > 0 and res["config"]["shots"] == 0
    rows = [json.loads(x) for x in (out / "samples" / "quiz.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["subject"], r["index"], r["gold"]) for r in rows] == [
        ("math", 0, "B"),
        ("geo", 0, "B"),
        ("geo", 1, "A"),
    ]
    assert all(len(r["loglikelihoods"]) == 3 and r["pred"] in "ABC" for r in rows)
    assert "## quiz (0-shot)" in (out / "results.md").read_text(encoding="utf-8")
    # --compare: side by side with deltas against the first run
    res["tasks"]["quiz"]["acc"] += 0.25
    write(tmp_path / "sft" / "results.json", json.dumps(res))
    assert main(["eval", "--compare", str(out), str(tmp_path / "sft")]) == 0
    table = capsys.readouterr().out
    assert "sft (Δ)" in table and "(+0.2500)" in table


def test_perplexity_equals_a_full_forward(sf_model_dir, tmp_path):
    """Within the window the sliding-window NLL is the model's plain next-token cross-entropy."""
    from seekforge.eval.models import open_model
    from seekforge.eval.perplexity import perplexity
    from seekforge.model import load_model

    text = "To be, or not to be, that is the question. 生存还是毁灭，这是一个问题。"
    f = write(tmp_path / "t.txt", text)
    m = open_model(str(sf_model_dir), batch_size=4)
    res = perplexity(f, m.tokens, m.scorer)
    tok = m.tokens.tokenizer
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(text, add_special_tokens=False)])
    model = load_model(str(sf_model_dir), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="sum").item()
    assert res.tokens == ids.shape[1] - 1
    assert res.nll_per_token == pytest.approx(ce / res.tokens, abs=1e-5)
    assert res.bits_per_byte == pytest.approx(ce / math.log(2) / len(text.encode()), abs=1e-5)


def test_sliding_windows_score_every_token_once():
    doc = list(range(100))
    pairs = list(windows(doc, window=32, stride=10))
    scored = [t for p in pairs for t in p.tokens[-p.n_scored :]]
    assert scored == doc[1:]
    assert all(len(p.tokens) <= 32 for p in pairs)
    assert all(len(p.tokens) - p.n_scored >= 22 for p in pairs[1:])  # W - S tokens of context


def test_generation_metrics_chinese_by_characters():
    assert metrics(["猫坐在垫子上"], ["猫坐在垫子上"]) == {
        "bleu": pytest.approx(100),
        "rouge1": 100.0,
        "rouge2": 100.0,
        "rougeL": 100.0,
        "exact_match": 100.0,
    }
    m = metrics(["猫坐在地上"], ["猫坐在垫子上"])  # 4 of 5 / 6 characters shared
    assert m["rouge1"] == pytest.approx(100 * 2 * (4 / 5 * 4 / 6) / (4 / 5 + 4 / 6))
    assert m["exact_match"] == 0 and 0 < m["bleu"] < 100
    en = metrics(["The cat sat"], ["the cat sat on the mat"])
    assert en["rouge1"] == pytest.approx(100 * 2 * (1 * 0.5) / 1.5)


def test_missing_data_dir_is_a_clear_cli_error(sf_model_dir, tmp_path, capsys):
    assert main(["eval", str(sf_model_dir), "--tasks", "cmmlu", "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "seekforge eval: error: benchmark data not found" in err and "github.com/haonan-li/CMMLU" in err
    assert main(["eval", str(sf_model_dir), "--tasks", "gsm8k"]) == 2
    assert "known tasks: mmlu, cmmlu, ceval" in capsys.readouterr().err


class _NoLogprobs(BaseHTTPRequestHandler):
    """An OpenAI-style server that, like llama.cpp's, has no prompt log-probabilities for echo."""

    refuse = False

    def do_GET(self) -> None:  # /v1/models, which the client's preflight asks first
        self._send({"object": "list", "data": [{"id": "m", "object": "model"}]}, 200)

    def _send(self, body: dict, code: int) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        prompts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"]
        if self.refuse:
            body, code = {"error": {"message": "Only no echo is supported"}}, 400
        else:
            body, code = (
                {"choices": [{"index": i, "text": "x", "logprobs": None} for i in range(len(prompts))]},
                200,
            )
        self._send(body, code)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _server(refuse: bool):
    handler = type("H", (_NoLogprobs,), {"refuse": refuse})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()


@pytest.mark.parametrize("refuse", [False, True])
def test_endpoint_without_logprobs_is_a_clear_error(sf_model_dir, tmp_path, capsys, refuse):
    quiz = write(tmp_path / "quiz.csv", "question,A,B,answer\nq?,a,b,A\n")
    with _server(refuse) as url:
        rc = main(
            [
                "eval",
                "--endpoint",
                url,
                "--model",
                "m",
                "--tokenizer",
                str(sf_model_dir),
                "--task-file",
                str(quiz),
                "--shots",
                "0",
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot score log-likelihoods" in err and ("Only no echo" in err) == refuse
    assert not (tmp_path / "o").exists()  # nothing half-written


@pytest.mark.parametrize("base", ["sf_model_dir", "v4_model_dir", "llama_dir"])
def test_adapter_scores_like_the_merged_model(base, request, tmp_path):
    """--adapter DIR (a LoRA from `seekforge sft`) gives the scores of the merged model, not the base's."""
    from seekforge.finetune.adapters import save_result
    from seekforge.finetune.methods import FreezeSettings, LoraSettings, PrefixSettings, load_base, prepare

    base_dir = request.getfixturevalue(base)
    model, kind = load_base(base_dir, device=torch.device("cpu"), dtype=torch.float32)
    model = prepare(
        model,
        kind,
        "lora",
        lora=LoraSettings(rank=4, alpha=8, target_modules="all-linear"),
        freeze=FreezeSettings(),
        prefix=PrefixSettings(),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    adapter = save_result(model, kind, "lora", tmp_path / "adapter", base_path=base_dir)
    assert main(["merge", str(base_dir), str(adapter), "--out", str(tmp_path / "merged")]) == 0
    quiz = write(
        tmp_path / "quiz.csv", "question,A,B,C,answer\nWhat is 1+1?,1,2,3,B\nSky colour?,red,blue,green,B\n"
    )

    def lls(*model_args: str) -> list[list[float]]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert (
            main(
                [
                    "eval",
                    *model_args,
                    "--task-file",
                    str(quiz),
                    "--shots",
                    "0",
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        rows = (out / "samples" / "quiz.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(r)["loglikelihoods"] for r in rows]

    with_adapter = lls(str(base_dir), "--adapter", str(adapter))
    merged = lls(str(tmp_path / "merged"))
    plain = lls(str(base_dir))
    assert max(abs(a - b) for x, y in zip(with_adapter, merged) for a, b in zip(x, y)) < 1e-4
    assert max(abs(a - b) for x, y in zip(with_adapter, plain) for a, b in zip(x, y)) > 1e-3


def test_training_scores_a_benchmark_subset_at_each_eval(tokenizer_dir, eval_data, tmp_path):
    """eval_tasks / eval_limit: the trainer logs bench_<task>_acc next to val loss in metrics.jsonl."""
    from seekforge.config import ConfigError
    from seekforge.data.tokenize import tokenize_to_shards

    src = write(
        tmp_path / "c.jsonl",
        "".join(json.dumps({"text": f"the model reads book {i}. " * 20}) + "\n" for i in range(60)),
    )
    tiny_shards = tmp_path / "shards"
    tokenize_to_shards(src, tokenizer_dir, tiny_shards, val_fraction=0.1, workers=0)

    sets = [
        f"data.train={tiny_shards}",
        f"out_dir={tmp_path / 'run'}",
        "model=tiny",
        "seq_len=64",
        "batch_tokens=512",
        "micro_batch_size=8",
        "max_steps=2",
        "warmup_steps=1",
        "eval_every=1",
        "save_every=0",
        "sample_tokens=0",
        "tensorboard=false",
        "plot=false",
        "progress=false",
        "wandb=false",
        "num_threads=1",
        "eval_tasks=ceval:law,mmlu:anatomy",
        "eval_limit=2",
        "eval_shots=1",
        f"eval_data_dir={eval_data}",
    ]
    args = ["train"] + [x for s in sets for x in ("--set", s)]
    assert main(args) == 0
    records = [
        json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    evals = [r for r in records if "bench_ceval_acc" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(r["bench_mmlu_acc"] in (0.0, 0.5, 1.0) and "val_loss" in r for r in evals)
    bad = [x if not x.startswith("eval_tasks=") else "eval_tasks=gsm8k" for x in args]
    with pytest.raises(ConfigError, match="eval_tasks: --tasks: unknown task 'gsm8k'"):
        from seekforge.config import load_config
        from seekforge.train.config import TrainConfig

        load_config(TrainConfig, None, [x for x in bad[1:] if x != "--set"])
