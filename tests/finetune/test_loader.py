"""The SFT loader on the shared StepLoader arithmetic: rank shares, epochs, resume, row indices."""

from __future__ import annotations

import pytest
import torch

from seekforge.finetune.encode import Row
from seekforge.finetune.sft import SFTLoader


def _rows(n: int) -> list[Row]:
    return [Row([i] * 4, [i] * 4, [0] * 4, [0, 1, 2, 3]) for i in range(n)]


def test_rank_shares_partition_the_global_batch_and_epochs_are_permutations():
    rows = _rows(10)
    single = SFTLoader(rows, micro_batch_size=2, grad_accum=2, pad_id=0, seed=3)
    ranks = [SFTLoader(rows, 2, 1, pad_id=0, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = []
    for _ in range(5):  # 5 steps x 4 rows = 2 epochs
        one = torch.cat([b["input_ids"] for b in single.next_step()])
        two = torch.cat([ld.next_step()[0]["input_ids"] for ld in ranks])
        assert torch.equal(one, two)
        seen += one[:, 0].tolist()
    assert sorted(seen[:10]) == sorted(seen[10:]) == list(range(10)) and seen[:10] != seen[10:]
    assert single.position == 20 and single.epoch == 2.0


def test_resume_is_exact_and_other_data_is_refused():
    a = SFTLoader(_rows(10), 2, 2, pad_id=0, seed=1)
    for _ in range(3):
        a.next_step()
    b = SFTLoader(_rows(10), 2, 2, pad_id=0, seed=1)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a.next_step(), b.next_step()))
    with pytest.raises(ValueError, match=r"rows=10, seed=1; this run has rows=9, seed=1 \(data, seq_len"):
        SFTLoader(_rows(9), 2, 2, pad_id=0, seed=1).load_state_dict(a.state_dict())


def test_row_index_names_the_stored_rows():
    loader = SFTLoader(_rows(7), 3, 2, pad_id=0, seed=0, with_row_index=True)
    for _ in range(4):
        for batch in loader.next_step():
            assert torch.equal(batch["row_index"], batch["input_ids"][:, 0])
