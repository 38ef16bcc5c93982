"""``seekforge distill``: logit KD (online and cached top-k), teacher-generated SFT data, agreement."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from seekforge.config import ConfigError, load_config
from seekforge.finetune.distill import DistillConfig, DistillObjective, check_same_tokenizer, run_distillation
from seekforge.finetune.losses import kl_full, kl_topk

from .conftest import quiet_args

FAST = ["seq_len=128", "micro_batch_size=8", "batch_tokens=1024"]


def test_kl_losses():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 50, generator=g), torch.randn(5, 50, generator=g)
    assert torch.allclose(kl_full(t, t, 2.0), torch.zeros(5), atol=1e-6) and (kl_full(s, t, 2.0) > 0).all()
    top = t.topk(50, dim=-1)  # k = V: the top-k form equals the full one
    assert torch.allclose(kl_topk(s, top.indices, top.values, 2.0), kl_full(s, t, 2.0), atol=1e-5)


def test_tokenizer_mismatch_is_refused(sft_tokenizer_dir: Path, tokenizer_dir: Path):
    from seekforge.tokenizer import load_tokenizer

    with pytest.raises(ConfigError, match="do not share a tokenizer.*mode=generate"):
        check_same_tokenizer(
            load_tokenizer(sft_tokenizer_dir), load_tokenizer(tokenizer_dir), "student", "teacher"
        )


def _runner(cfg, objective):
    from seekforge.finetune.cli import publish_final
    from seekforge.train.trainer import Trainer

    publish_final(Trainer(cfg, objective).run(), cfg.out_dir)
    return 0


def distill_cfg(teacher: Path, student: Path, data: str, out: Path, *extra: str) -> DistillConfig:
    return load_config(
        DistillConfig,
        None,
        quiet_args()
        + FAST
        + [
            f"model={student}",
            f"teacher={teacher}",
            f"data={data}",
            "template_vars={name: Nemo, author: Acme}",
            f"out_dir={out}",
            *extra,
        ],
    )


@pytest.mark.slow
def test_logit_distillation_online_and_cached(
    warm_base: Path, tiny_base: Path, sft_dir: Path, tmp_path: Path, caplog
):
    data = f"{sft_dir}/identity.json"
    cfg = distill_cfg(
        warm_base,
        tiny_base,
        data,
        tmp_path / "online",
        "max_steps=20",
        "lr=1e-2",
        "val_size=0.2",
        "eval_every=20",
    )
    assert run_distillation(cfg, _runner) == 0
    report = json.loads((tmp_path / "online" / "distill_report.json").read_text())
    before, after = report["before"], report["after"]
    # measured: KL 5.37 -> 3.08, top-1 0.000 -> 0.034 after 20 steps from a random student
    assert after["agree_kl"] < 0.7 * before["agree_kl"] and after["agree_top1"] > before["agree_top1"], report
    # top-k teacher cache: written by the first run, reused by the second
    cached = tmp_path / "topk"
    for i in range(2):
        cfg = distill_cfg(
            warm_base,
            tiny_base,
            data,
            tmp_path / f"cached{i}",
            "max_steps=2",
            "lr=1e-2",
            "teacher_topk=16",
            f"teacher_cache={cached}",
            "max_samples=32",
        )
        obj = DistillObjective()
        _runner(cfg, obj)
        assert obj.topk is not None and obj.topk["ids"].shape[1] == 16
    assert len(list(cached.glob("*.safetensors"))) == 1 and "reusing cached teacher top-16" in caplog.text


def test_distill_refuses_a_foreign_tokenizer(
    warm_base: Path, tokenizer_dir: Path, tmp_path: Path, sft_dir: Path
):
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    student = save_model(load_model("tiny", device="cpu", vocab_size=len(tok)), tmp_path / "s", tokenizer=tok)
    cfg = distill_cfg(warm_base, student, f"{sft_dir}/identity.json", tmp_path / "x", "max_steps=1")
    with pytest.raises(ConfigError, match="do not share a tokenizer"):
        _runner(cfg, DistillObjective())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def seekforge_server(model_dir: Path):
    """seekforge's own OpenAI-compatible server on 127.0.0.1 (a thread)."""
    import httpx
    import uvicorn

    from seekforge.infer import Engine, EngineConfig
    from seekforge.serve import ServerOptions, create_app

    engine = Engine.from_pretrained(model_dir, EngineConfig(max_batch=4, max_len=256), name="teacher")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, ServerOptions()),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield url + "/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


@pytest.mark.slow
def test_sequence_distillation_local_engine_and_openai_endpoint(
    warm_base: Path, tiny_base: Path, sft_dir: Path, tmp_path: Path
):
    from seekforge.finetune.distill import build_teacher_dataset

    common = [
        "mode=generate",
        "max_samples=6",
        "gen_max_tokens=24",
        "gen_temperature=0",
        "gen_keep_truncated=true",
    ]
    local = distill_cfg(
        warm_base, tiny_base, f"{sft_dir}/identity.json", tmp_path / "local", *common, "max_steps=2"
    )
    assert run_distillation(local, _runner) == 0
    rows = [json.loads(line) for line in (tmp_path / "local" / "teacher_data.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert (tmp_path / "local" / "final").is_dir() and (tmp_path / "local" / "distill_report.json").exists()
    with seekforge_server(warm_base) as api:
        remote = load_config(
            DistillConfig,
            None,
            quiet_args()
            + [
                f"model={tiny_base}",
                f"teacher_api={api}",
                f"data={sft_dir}/identity.json",
                "template_vars={name: Nemo, author: Acme}",
                f"out_dir={tmp_path / 'remote'}",
                *common,
            ],
        )
        path = build_teacher_dataset(remote, torch.device("cpu"))
        # The endpoint is called through seekforge.llm_client: its report, and its cache on a re-run.
        report = json.loads((tmp_path / "remote" / "report.json").read_text())
        assert (report["requests"], report["cache_hits"], report["failed"]) == (6, 0, 0)
        assert report["model"] == "teacher" and report["completion_tokens"] > 0
        first = path.read_text()
        path.unlink()
        build_teacher_dataset(remote, torch.device("cpu"))
        report = json.loads((tmp_path / "remote" / "report.json").read_text())
        assert (report["requests"], report["cache_hits"]) == (0, 6) and path.read_text() == first
    remote_rows = [json.loads(line) for line in path.read_text().splitlines()]
    # Greedy answers of the same teacher: through the engine directly or over HTTP, the same text.
    assert [r["messages"][-1]["content"] for r in remote_rows] == [r["messages"][-1]["content"] for r in rows]


def test_v4_teacher_distils_into_a_packed_v3_student(v4_base: Path, tiny_base: Path, sft_dir: Path,
                                                     tmp_path: Path):
    """A DeepSeek-V4 teacher runs on seekforge's V4 model; it takes no segment mask, so the (packing)
    V3 student's rows are not packed, and the KL loss trains."""
    from seekforge.model.v4 import DeepseekV4ForCausalLM

    cfg = distill_cfg(v4_base, tiny_base, f"{sft_dir}/identity.json", tmp_path / "run", "max_steps=2",
                      "lr=1e-2", "max_samples=16")
    obj = DistillObjective()
    assert _runner(cfg, obj) == 0
    assert obj.teacher_kind == "seekforge" and type(obj.teacher) is DeepseekV4ForCausalLM
    assert not obj.packed and not obj.teacher_packed
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file() or list(
        (tmp_path / "run" / "final").glob("*.safetensors"))
