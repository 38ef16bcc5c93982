"""Task files: prompts, few-shot rule, subject selection and every bad input the issue lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seekforge.eval.tasks import (
    TaskSpec,
    check_data_dir,
    load_benchmark,
    load_task_file,
    parse_tasks,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def mmlu_dir(tmp_path) -> Path:
    write(
        tmp_path / "mmlu/dev/anatomy_dev.csv",
        "".join(f"Dev q{i}?,a,b,c,d,{'ABCD'[i % 4]}\n" for i in range(5)),
    )
    write(
        tmp_path / "mmlu/test/anatomy_test.csv",
        '  Which is none? ,None,NA,"multi\nline",nan,A\nSecond?,1,2,3,4,D\n',
    )
    return tmp_path


def test_mmlu_prompt_text_and_first_k_shots(mmlu_dir):
    [subj] = load_benchmark(mmlu_dir, TaskSpec("mmlu", ["anatomy"]), shots=2, limit=None)
    assert [q.question for q in subj.shots] == ["Dev q0?", "Dev q1?"]  # first k rows, file order
    ctx = subj.context(subj.questions[0])
    assert ctx == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Dev q0?\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\n"
        "Dev q1?\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n\n"
        "Which is none?\nA. None\nB. NA\nC. multi\nline\nD. nan\nAnswer:"
    )
    # literal None / NA / nan stay text; only the question is stripped; index = row in the file
    assert subj.questions[0].choices == ["None", "NA", "multi\nline", "nan"]
    assert [q.index for q in subj.questions] == [0, 1] and subj.questions[1].gold == 3
    assert subj.categories == ["STEM"]


def test_chinese_prompts_use_the_published_descriptions(eval_data):
    [c] = load_benchmark(eval_data, TaskSpec("cmmlu", ["chinese_history"]), shots=1, limit=1)
    assert c.context(c.questions[0]).startswith(
        "以下是关于中国历史的单项选择题，请直接给出正确答案的选项。\n\n"
    )
    assert c.context(c.questions[0]).endswith("\n答案：") and "\n答案： " in c.context(c.questions[0])
    [e] = load_benchmark(eval_data, TaskSpec("ceval", ["law"]), shots=0, limit=3)
    assert e.context(e.questions[0]).startswith("以下是中国关于法学的单项选择题，请选出其中的正确答案。\n\n")
    assert len(e.questions) == 3 and set(e.categories) == {"Humanities"}


def test_limit_and_subject_selection(mmlu_dir):
    specs = parse_tasks("mmlu:anatomy,cmmlu:chinese_history,cmmlu:agronomy")
    assert [(s.name, s.subjects) for s in specs] == [
        ("mmlu", ["anatomy"]),
        ("cmmlu", ["chinese_history", "agronomy"]),
    ]
    assert parse_tasks("mmlu:anatomy,mmlu")[0].subjects == []  # the whole task wins
    [subj] = load_benchmark(mmlu_dir, specs[0], shots=0, limit=1)
    assert len(subj.questions) == 1 and subj.shots == []


def test_unknown_task_and_subject_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'mmmlu'; known tasks: mmlu, cmmlu, ceval"):
        parse_tasks("mmmlu")
    with pytest.raises(ValueError, match="no subject 'anatomyy'.*close: anatomy"):
        parse_tasks("mmlu:anatomyy")


def test_missing_data_dir_says_where_to_get_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)mmlu does not exist.*hendrycks.*--data-dir"):
        check_data_dir(tmp_path / "nowhere", parse_tasks("mmlu"))


def test_renamed_column_names_file_line_and_expected_columns(tmp_path):
    write(tmp_path / "cmmlu/dev/agronomy.csv", ",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n")
    write(tmp_path / "cmmlu/test/agronomy.csv", ",Questions,A,B,C,D,Answer\n0,q,a,b,c,d,A\n")
    with pytest.raises(
        ValueError,
        match=r"agronomy\.csv:1: header .* lacks the column\(s\) Question; "
        r"expected columns ,Question,A,B,C,D,Answer",
    ):
        load_benchmark(tmp_path, TaskSpec("cmmlu", ["agronomy"]), 1, None)


def test_missing_cells_name_the_line(mmlu_dir):
    write(mmlu_dir / "mmlu/test/anatomy_test.csv", "q1,a,b,c,d,A\nq2,a,b,c,D\n")
    with pytest.raises(
        ValueError, match=r"anatomy_test\.csv:2: 5 cells, expected 6 columns \(question, A, B, C, D"
    ):
        load_benchmark(mmlu_dir, TaskSpec("mmlu", ["anatomy"]), 0, None)


def test_empty_subject_file(tmp_path):
    write(tmp_path / "ceval/val/law_val.csv", "id,question,A,B,C,D,answer\n")
    with pytest.raises(ValueError, match=r"law_val\.csv: no questions \(the subject file is empty\)"):
        load_benchmark(tmp_path, TaskSpec("ceval", ["law"]), 0, None)
    write(tmp_path / "mmlu/test/anatomy_test.csv", "")
    with pytest.raises(ValueError, match="anatomy_test.csv: no questions"):
        load_benchmark(tmp_path, TaskSpec("mmlu", ["anatomy"]), 0, None)


def test_answer_outside_the_choices(mmlu_dir):
    write(mmlu_dir / "mmlu/test/anatomy_test.csv", "q1,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(
        ValueError, match=r"anatomy_test\.csv:2: answer 'E' is not one of the choices A, B, C, D"
    ):
        load_benchmark(mmlu_dir, TaskSpec("mmlu", ["anatomy"]), 0, None)


def test_too_few_dev_rows_for_shots(mmlu_dir):
    with pytest.raises(ValueError, match="5 few-shot rows, --shots asks for 6"):
        load_benchmark(mmlu_dir, TaskSpec("mmlu", ["anatomy"]), 6, None)


def test_own_task_file_csv_and_jsonl(tmp_path):
    csv_file = write(
        tmp_path / "quiz.csv",
        "question,A,B,C,answer,split\nshot?,x,y,z,B,dev\nQ1?,None,NA,z,A,\nQ2?,1,2,3,C,\n",
    )
    [s] = load_task_file(csv_file, shots=5, limit=None)
    assert s.task == "quiz" and [q.choices for q in s.questions] == [["None", "NA", "z"], ["1", "2", "3"]]
    assert [q.index for q in s.questions] == [0, 1]
    assert s.context(s.questions[0]).endswith(
        "shot?\nA. x\nB. y\nC. z\nAnswer: B\n\nQ1?\nA. None\nB. NA\nC. z\nAnswer:"
    )
    jl = write(
        tmp_path / "zh.jsonl",
        "\n".join(
            json.dumps(r, ensure_ascii=False)
            for r in [
                {"question": "一加一？", "choices": ["1", "2"], "answer": 1, "subject": "math"},
                {
                    "question": "二加二？",
                    "choices": ["4", "5", "6", "7", "8"],
                    "answer": "A",
                    "subject": "math",
                },
            ]
        ),
    )
    [z] = load_task_file(jl, shots=0, limit=None)
    assert z.name == "math" and [q.gold for q in z.questions] == [1, 0] and z.answer_cue == "答案："


def test_own_task_file_errors(tmp_path):
    bad = write(tmp_path / "bad.jsonl", json.dumps({"question": "q", "choices": ["a"], "answer": "A"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: 'choices' must be 2 to 10 strings"):
        load_task_file(bad, 0, None)
    bad = write(
        tmp_path / "bad2.jsonl", "\n" + json.dumps({"question": "q", "options": ["a", "b"], "answer": "A"})
    )
    with pytest.raises(ValueError, match=r"bad2\.jsonl:2: missing choices"):
        load_task_file(bad, 0, None)
    bad = write(tmp_path / "bad.csv", "question,A,B,label\nq,a,b,A\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1: header .* lacks the columns answer"):
        load_task_file(bad, 0, None)
    bad = write(tmp_path / "bad3.csv", "question,A,B,answer\nq,a,b,C\n")
    with pytest.raises(ValueError, match=r"bad3\.csv:2: answer 'C' is not one of the choices A, B"):
        load_task_file(bad, 0, None)
