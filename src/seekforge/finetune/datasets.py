"""SFT data: read files in the formats people already have, validate every row, return chats.

Input formats (one per dataset, auto-detected for plain files, explicit in a registry):

* ``alpaca``   ``{"instruction", "input", "output", "system"?, "history"?: [[q, a], ...]}``;
               the user turn is ``instruction + "\\n" + input`` (LLaMA-Factory's rule).
* ``sharegpt`` ``{"conversations": [{"from": "human"|"gpt"|..., "value": ...}], "system"?}``,
               role names configurable through ``tags``.
* ``openai``   ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}]}``;
               ``content`` may be a string or a list of ``{"type": "text", "text"|"value": ...}``.
* ``text``     ``{"text": ...}`` (or a ``.txt`` file, one document per non-blank line):
               continued pretraining, loss on every token, no chat template.

Files are read by :func:`seekforge.data.readers.iter_records`, the reader every stage uses:
JSON lines, JSON arrays (also ``{"data": [...]}`` and ``.json`` files that are really JSON
lines), CSV/TSV, parquet, Arrow, ``datasets`` folders, compressed (``.gz``, ``.zst``, ...) or not,
with or without a UTF-8 BOM; a folder is walked recursively in sorted order.

A *registry* is LLaMA-Factory's ``dataset_info.json`` (``file_name``, ``formatting``,
``columns``, ``tags``, ``num_samples``) so existing registries work unchanged.

Every row becomes an :class:`Example` (a list of ``{"role", "content"}`` messages) or a
:class:`BadRow` with the file, the 1-based row number and the reason. Unknown keys, formats, column
or tag names are errors that list the valid names: LLaMA-Factory silently treats a ``format:``
typo as alpaca (https://github.com/hiyouga/LLaMA-Factory/issues/7577) and silently drops invalid
rows until a StopIteration (https://github.com/hiyouga/LLaMA-Factory/issues/7777); both cost users
days, so here nothing falls back silently.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekforge.config import ConfigError, closest
from seekforge.data.readers import ReadError, Record, iter_records

log = logging.getLogger("seekforge.finetune")

FORMATS = ("alpaca", "sharegpt", "openai", "text")

# Logical column -> default physical column, per format (LLaMA-Factory's names and defaults).
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    },
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools"},
    "text": {"prompt": "text"},
}
# Columns LLaMA-Factory defines for data we do not train on here (preference, multimodal). They
# are accepted in a registry so existing files load, but a dataset that needs them is refused.
FOREIGN_COLUMNS = ("images", "videos", "audios", "chosen", "rejected", "kto_tag")

DEFAULT_TAGS: dict[str, dict[str, str]] = {
    "sharegpt": {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "openai": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function_call",
        "system_tag": "system",
    },
}

# Keys of one dataset_info.json entry. Hub/cloud sources are recognised (to say clearly that they
# need a download) rather than rejected as typos.
REGISTRY_KEYS = (
    "file_name",
    "formatting",
    "columns",
    "tags",
    "num_samples",
    "split",
    "subset",
    "folder",
    "ranking",
    "hf_hub_url",
    "ms_hub_url",
    "om_hub_url",
    "script_url",
    "cloud_file_name",
    "file_sha1",
    "load_from",
)
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class DataError(ConfigError):
    """The data cannot be used; the message says which file/row/key and what to do."""


@dataclass
class Example:
    """One training example: a chat (``messages``) or, for the ``text`` format, raw ``text``."""

    messages: list[dict[str, str]]
    source: str  # "file.json:17", for error messages and previews
    text: str | None = None
    tools: list[dict[str, Any]] | None = None  # the functions the chat may call (rendered by the template)

    @property
    def is_text(self) -> bool:
        return self.text is not None


@dataclass
class BadRow:
    file: str
    row: int  # 1-based (line number for jsonl/txt, element number for json/csv/parquet)
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.row}: {self.reason}"


@dataclass
class DatasetSpec:
    """Where one dataset lives and how to read it (a registry entry or a plain file)."""

    name: str
    path: Path
    formatting: str  # one of FORMATS, or "auto" for plain files
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    num_samples: int | None = None


@dataclass
class DataReport:
    """Counts for the log and for tests: how many rows were read, used, and why others were not."""

    rows: int = 0
    used: int = 0
    bad: list[BadRow] = field(default_factory=list)
    per_dataset: dict[str, int] = field(default_factory=dict)

    def reasons(self) -> Counter:
        return Counter(_reason_kind(b.reason) for b in self.bad)

    def summary(self, show: int = 5) -> str:
        lines = [f"{self.used} usable examples of {self.rows} rows"]
        if self.bad:
            kinds = ", ".join(f"{k}: {n}" for k, n in self.reasons().most_common())
            lines.append(f"{len(self.bad)} bad rows ({kinds}); first ones:")
            lines += [f"  {b}" for b in self.bad[:show]]
        return "\n".join(lines)

    def skipped_any(self) -> bool:
        """Whether some rows were left out (worth a warning)."""
        return bool(self.bad)


def read_datasets(specs: list[DatasetSpec], load_one: Callable[[DatasetSpec, DataReport], list],
                  report: DataReport, max_samples: int | None, label: str, noun: str) -> list:
    """Every dataset through ``load_one``, capped by its own ``num_samples`` and then ``max_samples``,
    counted in ``report``; a warning when rows were left out, :class:`DataError` when none is usable.
    ``label``/``noun`` name the data in those messages ("data"/"examples")."""
    items: list = []
    for spec in specs:
        got = load_one(spec, report)
        for cap in (spec.num_samples, max_samples):
            if cap is not None:
                got = got[:cap]
        report.per_dataset[spec.name] = len(got)
        items += got
    report.used = len(items)
    if report.skipped_any():
        log.warning("%s: %s", label, report.summary())
    if not items:
        raise DataError(
            f"no usable {noun} in " + ", ".join(str(s.path) for s in specs) + ":\n" + report.summary(show=10)
        )
    return items


def _reason_kind(reason: str) -> str:
    """"missing field: 'output'" -> "missing field"; "invalid JSON (...)" -> "invalid JSON"."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


# ---------------------------------------------------------------------------------------------
# Reading files


def read_records(path: Path) -> list[Record]:
    """All records of a data file, or of every data file under a folder (see the module docstring)."""
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        records = list(iter_records(path))
    except ReadError as e:
        raise DataError(str(e)) from None
    if path.is_dir() and not records:
        raise DataError(f"{path} is a folder with no data rows (.json, .jsonl, .csv, .parquet, .txt ...)")
    return records


# ---------------------------------------------------------------------------------------------
# Registry (dataset_info.json) and dataset resolution


def load_registry(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    path = dataset_dir / "dataset_info.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object mapping dataset names to entries")
    return data


def _check_keys(got: Iterable[str], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    for key in got:
        if key not in valid:
            near = closest(key, valid)
            hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            raise DataError(f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(valid)}")


def _check_format(name: str, where: str, allow_auto: bool = False) -> str:
    valid = (*FORMATS, "auto") if allow_auto else FORMATS
    if name not in valid:
        near = closest(name, valid)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise DataError(f"{where}: unknown format {name!r}{hint}; valid formats: {', '.join(valid)}")
    return name


def spec_from_registry(
    name: str, entry: dict[str, Any], dataset_dir: Path, ranking: bool = False
) -> DatasetSpec:
    """One registry entry -> a spec; ``ranking`` says whether preference pairs are wanted (dpo)."""
    where = f"{dataset_dir / 'dataset_info.json'} entry {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object")
    _check_keys(entry, REGISTRY_KEYS, where)
    remote = [k for k in REMOTE_KEYS if k in entry]
    if remote and "file_name" not in entry:
        raise DataError(
            f"{where}: loads from {remote[0]} ({entry[remote[0]]}); seekforge works offline - "
            "download the data and point 'file_name' at the local file"
        )
    if entry.get("ranking") and not ranking:
        raise DataError(f"{where}: is preference data ('ranking': true); sft needs instruction/chat data")
    if ranking and not entry.get("ranking"):
        raise DataError(f"{where}: is not preference data; dpo needs an entry with \"ranking\": true "
                        "and chosen/rejected columns")
    if "file_name" not in entry:
        raise DataError(f"{where}: has no 'file_name'")
    # LLaMA-Factory's default is alpaca; an OpenAI-style file is "sharegpt" + role/content tags.
    formatting = _check_format(entry.get("formatting", "alpaca"), where)
    columns = dict(entry.get("columns") or {})
    tags = dict(entry.get("tags") or {})
    num = entry.get("num_samples")
    return DatasetSpec(
        name=name,
        path=dataset_dir / entry["file_name"],
        formatting=formatting,
        columns=columns,
        tags=tags,
        num_samples=int(num) if num is not None else None,
    )


def resolve_datasets(
    data: str | list[str],
    dataset_dir: str | Path | None = None,
    formatting: str = "auto",
    columns: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    ranking: bool = False,
) -> list[DatasetSpec]:
    """``data`` (comma-separated or a list of file paths / registry names) -> dataset specs.

    A name is looked up in ``dataset_dir/dataset_info.json`` first; otherwise it must be a file or
    folder (relative to the working directory, then to ``dataset_dir``). ``formatting``,
    ``columns`` and ``tags`` apply to plain files only: a registry entry carries its own.
    ``ranking``: preference pairs are wanted (registry entries must say ``"ranking": true``).
    """
    names = [n.strip() for n in (data.split(",") if isinstance(data, str) else data) if n and n.strip()]
    if not names:
        raise DataError("no data given: set 'data' to a file or a dataset name from dataset_info.json")
    ddir = Path(dataset_dir) if dataset_dir else Path(".")
    registry = load_registry(ddir)
    specs = []
    for name in names:
        if name in registry:
            specs.append(spec_from_registry(name, registry[name], ddir, ranking))
            continue
        path = next((p for p in (Path(name), ddir / name) if p.exists()), None)
        if path is None:
            known = sorted(registry)
            hint = ""
            if known:
                near = closest(name, known)
                hint = (
                    f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
                ) + f" Datasets in {ddir / 'dataset_info.json'}: {', '.join(known)}"
            else:
                hint = f" (no dataset_info.json in {ddir})"
            raise DataError(f"dataset {name!r} is neither a file nor a registered dataset.{hint}")
        fmt = _check_format(formatting, "data.format", allow_auto=True)
        specs.append(
            DatasetSpec(
                name=str(path), path=path, formatting=fmt, columns=dict(columns or {}), tags=dict(tags or {})
            )
        )
    return specs


def detect_format(rows: list[Any], where: str) -> str:
    """Guess the format from the first object row's keys (plain files only)."""
    for row in rows[:50]:
        if not isinstance(row, dict):
            continue
        keys = set(row)
        if "messages" in keys:
            return "openai"
        if "conversations" in keys:
            return "sharegpt"
        if "instruction" in keys or "output" in keys:
            return "alpaca"
        if "text" in keys:
            return "text"
        raise DataError(
            f"{where}: cannot tell the format from the keys {sorted(keys)}; expected "
            "'messages' (openai), 'conversations' (sharegpt), 'instruction'/'output' (alpaca) "
            "or 'text'. Set data.format and data.columns to map your column names."
        )
    raise DataError(f"{where}: no JSON object rows to detect the format from")


# ---------------------------------------------------------------------------------------------
# Row conversion


class _Bad(Exception):
    """A row-level problem: the row is reported and skipped, the run goes on."""


def _text_of(content: Any, what: str) -> str:
    """Message content -> str. Accepts a string or a list of text parts (OpenAI / LF-v1 style)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                text = part.get("text", part.get("value"))
                if not isinstance(text, str):
                    raise _Bad(f"bad content: a text part of {what} has no 'text' string")
                parts.append(text)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _Bad(f"unsupported content: {what} has a {kind!r} part (only text is supported)")
        return "".join(parts)
    if content is None:
        raise _Bad(f"missing field: {what} has no content")
    raise _Bad(f"bad content: {what} is a {type(content).__name__}, expected a string")


def _get(row: dict, column: str, required: bool) -> Any:
    value = row.get(column)
    if required and (value is None or (isinstance(value, str) and not value.strip())):
        kind = "missing field" if column not in row or value is None else "empty field"
        raise _Bad(f"{kind}: {column!r}")
    return value


def _check_columns(columns: dict[str, str], fmt: str, where: str) -> dict[str, str]:
    valid = list(DEFAULT_COLUMNS[fmt])
    foreign = [c for c in columns if c in FOREIGN_COLUMNS]
    if foreign:
        raise DataError(f"{where}: columns {foreign} (preference/multimodal data) are not used by sft")
    _check_keys([c for c in columns if c != "tools"], valid, f"{where} columns (format {fmt})")
    return {**DEFAULT_COLUMNS[fmt], **columns}


def _check_tags(tags: dict[str, str], fmt: str, where: str) -> dict[str, str]:
    if fmt not in DEFAULT_TAGS:
        if tags:
            raise DataError(f"{where}: 'tags' only apply to the sharegpt/openai formats, not {fmt}")
        return {}
    _check_keys(tags, DEFAULT_TAGS[fmt], f"{where} tags")
    return {**DEFAULT_TAGS[fmt], **tags}


def convert_alpaca(row: dict, cols: dict[str, str]) -> list[dict[str, str]]:
    prompt = _text_of(_get(row, cols["prompt"], True), cols["prompt"])
    query = row.get(cols["query"])
    if query is not None and not isinstance(query, str):
        raise _Bad(f"bad content: {cols['query']!r} is a {type(query).__name__}, expected a string")
    response = _get(row, cols["response"], True)
    if not isinstance(response, str):
        raise _Bad(f"bad content: {cols['response']!r} is a {type(response).__name__}, expected a string")
    messages: list[dict[str, str]] = []
    system = row.get(cols["system"])
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    history = row.get(cols["history"]) or []
    if not isinstance(history, list):
        raise _Bad(f"bad history: {cols['history']!r} must be a list of [prompt, response] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _Bad(f"bad history: item {i} is not a [prompt, response] pair of strings")
        if not pair[1].strip():
            raise _Bad(f"empty answer: history item {i}")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = prompt + ("\n" + query if query else "")
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    return messages


def convert_chat(row: dict, cols: dict[str, str], tags: dict[str, str]) -> list[dict[str, str]]:
    """sharegpt/openai rows -> messages, checking roles alternate user-side/assistant-side."""
    turns = _get(row, cols["messages"], True)
    if not isinstance(turns, list) or not turns:
        raise _Bad(f"bad conversation: {cols['messages']!r} must be a non-empty list of messages")
    role_map = {
        tags["user_tag"]: "user",
        tags["assistant_tag"]: "assistant",
        tags["system_tag"]: "system",
        tags["observation_tag"]: "tool",
        tags["function_tag"]: "assistant",
    }
    messages: list[dict[str, str]] = []
    system = row.get(cols["system"])
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _Bad(f"bad conversation: message {i} is not an object")
        tag = turn.get(tags["role_tag"])
        if tag is None:
            raise _Bad(f"missing field: message {i} has no {tags['role_tag']!r}")
        if tag not in role_map:
            raise _Bad(
                f"wrong role: message {i} has role {tag!r}; expected one of {sorted(role_map)} "
                "(map other names with the dataset's 'tags')"
            )
        role = role_map[tag]
        if tag == tags["function_tag"]:  # LLaMA-Factory's function_call turn: JSON {"name", "arguments"}
            raw = _text_of(turn.get(tags["content_tag"]), f"message {i}")
            messages.append({"role": "assistant", "content": "", "tool_calls": _function_calls(raw, i)})
            continue
        calls = turn.get("tool_calls") if role == "assistant" else None  # OpenAI's assistant tool calls
        raw_content = turn.get(tags["content_tag"])
        if calls:
            messages.append({"role": "assistant", "content": _text_of(raw_content or "", f"message {i}"),
                             "tool_calls": _openai_tool_calls(calls, i)})
            continue
        content = _text_of(raw_content, f"message {i}")
        if role == "system":
            if i != 0:
                raise _Bad(f"wrong role: system message at position {i} (only the first may be system)")
            if messages:  # a system column and a system message: keep the message's text
                messages.pop(0)
            messages.append({"role": "system", "content": content})
            continue
        messages.append({"role": role, "content": content})
    chat = [m for m in messages if m["role"] != "system"]
    for k, m in enumerate(chat):
        user_side = m["role"] in ("user", "tool")
        if user_side != (k % 2 == 0):
            want = "user/tool" if k % 2 == 0 else "assistant"
            raise _Bad(
                f"wrong role: turn {k} is {m['role']!r} but {want} was expected (turns must alternate "
                "user -> assistant)"
            )
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise _Bad(f"empty answer: assistant turn {k}")
    if not chat or chat[-1]["role"] != "assistant":
        raise _Bad("no answer: the conversation must end with an assistant message")
    return messages


def _call(name: Any, arguments: Any, where: str) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise _Bad(f"bad tool call: {where} has no function name")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _function_calls(raw: str, i: int) -> list[dict[str, Any]]:
    """A function_call turn's value: one ``{"name", "arguments"}`` object or a list of them."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _Bad(f"bad tool call: message {i} is not JSON ({e.msg}); expected "
                   '{"name": ..., "arguments": {...}} or a list of them') from None
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) for c in calls):
        raise _Bad(f'bad tool call: message {i} must hold {{"name": ..., "arguments": {{...}}}} objects')
    return [_call(c.get("name"), c.get("arguments"), f"message {i}") for c in calls]


def _openai_tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                              for c in calls):
        raise _Bad(f'bad tool call: message {i} tool_calls must be [{{"function": {{"name", "arguments"}}}}]')
    return [_call(c["function"].get("name"), c["function"].get("arguments"), f"message {i}") for c in calls]


def convert_tools(row: dict, cols: dict[str, str]) -> list[dict[str, Any]] | None:
    """The row's ``tools`` column: a list of functions, or that list as a JSON string (LLaMA-Factory)."""
    tools = row.get(cols.get("tools", "tools"))
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise _Bad(f"bad tools: not JSON ({e.msg})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and (t.get("name") or t.get("function"))
                                              for t in tools):
        raise _Bad("bad tools: expected a list of function objects with a 'name'")
    return tools


def convert_text(row: dict, cols: dict[str, str]) -> str:
    text = _get(row, cols["prompt"], True)
    return _text_of(text, cols["prompt"])


def chat_text(row: Any, fmt: str) -> str | None:
    """The text of one row of a chat format with default column names: every message's content,
    system prompt included, one per line. None when the row is not valid in that format.

    For corpora that only need the words (tokenizer training), not the turn structure.
    """
    if not isinstance(row, dict):
        return None
    cols = DEFAULT_COLUMNS[fmt]
    try:
        if fmt == "alpaca":
            messages = convert_alpaca(row, cols)
        elif fmt == "text":
            return convert_text(row, cols)
        else:
            messages = convert_chat(row, cols, DEFAULT_TAGS[fmt])
    except _Bad:
        return None
    return "\n".join(m["content"] for m in messages)


# ---------------------------------------------------------------------------------------------
# Template variables ({{name}}, {{author}})


def fill_vars(text: str, values: dict[str, str]) -> str:
    return PLACEHOLDER_RE.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)


def _fill_example(ex: Example, values: dict[str, str]) -> None:
    if ex.text is not None:
        ex.text = fill_vars(ex.text, values)
    for m in ex.messages:
        m["content"] = fill_vars(m["content"], values)


def _placeholders(ex: Example) -> set[str]:
    texts = [ex.text] if ex.text is not None else [m["content"] for m in ex.messages]
    return {name for t in texts for name in PLACEHOLDER_RE.findall(t)}


def check_unfilled(examples: list[Example], values: dict[str, str], min_share: float = 0.05) -> None:
    """Refuse to train on ``{{name}}``-style placeholders that ``template_vars`` did not fill.

    identity.json without ``template_vars.name`` would teach the model to call itself "{{name}}".
    A placeholder in a few rows only (a Jinja or Vue snippet in a coding answer) is legitimate text,
    so the rule is: unfilled in at least ``min_share`` of the rows (and >= 2 rows) -> error.
    """
    counts: Counter = Counter()
    for ex in examples:
        counts.update(n for n in _placeholders(ex) if n not in values)
    missing = [n for n, c in counts.items() if c >= 2 and c >= min_share * len(examples)]
    if missing:
        sets = " ".join(f"--set template_vars.{n}=..." for n in sorted(missing))
        raise DataError(
            f"the data uses {', '.join('{{' + n + '}}' for n in sorted(missing))} in "
            f"{max(counts[n] for n in missing)} rows but template_vars does not set them; "
            f"give values, e.g. {sets}"
        )
    for name, c in counts.items():
        if name not in missing:
            log.warning("%d rows contain an unfilled {{%s}}; kept as literal text", c, name)


# ---------------------------------------------------------------------------------------------
# Entry point


def load_examples(
    specs: list[DatasetSpec], template_vars: dict[str, str] | None = None, max_samples: int | None = None
) -> tuple[list[Example], DataReport]:
    """Read and validate every dataset; return the usable examples and a report.

    ``max_samples`` caps each dataset (like LLaMA-Factory's), after its own ``num_samples``.
    Raises :class:`DataError` if no row is usable (with the first bad rows in the message).
    """
    values = {k: str(v) for k, v in (template_vars or {}).items()}
    report = DataReport()
    examples: list[Example] = read_datasets(specs, _load_one, report, max_samples, "data", "examples")
    check_unfilled(examples, values)
    for ex in examples:
        _fill_example(ex, values)
    log.info(
        "data: %d examples from %s",
        len(examples),
        ", ".join(f"{n} ({c})" for n, c in report.per_dataset.items()),
    )
    return examples, report


def _load_one(spec: DatasetSpec, report: DataReport) -> list[Example]:
    records = read_records(spec.path)
    where = spec.name if spec.name == str(spec.path) else f"dataset {spec.name!r} ({spec.path})"
    fmt = detect_format([r.value for r in records], where) if spec.formatting == "auto" else spec.formatting
    cols = _check_columns(spec.columns, fmt, where)
    tags = _check_tags(spec.tags, fmt, where)
    out = []
    for rec in records:
        report.rows += 1
        source = f"{rec.path.name}:{rec.row}"
        try:
            if rec.error is not None:
                raise _Bad(rec.error)
            row = rec.value
            if not isinstance(row, dict):
                raise _Bad(f"not an object: {type(row).__name__}")
            if fmt == "text":
                out.append(Example(messages=[], source=source, text=convert_text(row, cols)))
            elif fmt == "alpaca":
                out.append(Example(messages=convert_alpaca(row, cols), source=source))
            else:
                out.append(Example(messages=convert_chat(row, cols, tags), source=source,
                                   tools=convert_tools(row, cols)))
        except _Bad as e:
            report.bad.append(BadRow(str(rec.path), rec.row, str(e)))
    return out
