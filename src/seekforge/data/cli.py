"""``seekforge data prepare`` / ``data quality train`` / ``data domains``: the CLI of
:mod:`seekforge.data.prepare`, :mod:`seekforge.data.quality` and :mod:`seekforge.data.domains`.

The ``data`` group is shared with ``data tokenize`` (seekforge.data.tokenize): whichever module
registers first creates it, the other adds its verb to it.
"""

from __future__ import annotations

import argparse
import json

from seekforge.cli import add_config_args


def data_verbs(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``seekforge data`` group's verbs (prepare, tokenize), creating the group if nobody did yet."""
    data = subparsers.choices.get("data")
    if data is None:
        data = subparsers.add_parser("data", help="prepare raw text (clean, filter, dedup) and tokenize it")
        data.set_defaults(func=lambda args: data.print_help() or 1)
    for action in data._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return data.add_subparsers(dest="data_command", metavar="STEP")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = data_verbs(subparsers).add_parser(
        "prepare",
        help="clean, filter, PII-scrub and deduplicate raw text into jsonl.gz shards + report",
        description="Read raw text (txt/jsonl/json/parquet/csv, compressed, folders, globs, HF datasets), "
        "clean it, drop low-quality documents with language-aware (English and Chinese) filters, "
        "scrub PII, deduplicate (exact + MinHash) and write shards with report.json/report.md. "
        "Re-running the same command resumes.",
    )
    p.add_argument("--input", "-i", nargs="+", action="extend", default=[], metavar="PATH",
                   help="input files, folders or globs (each becomes a source named after it)")
    p.add_argument("--out", "-o", help="output folder")
    p.add_argument("--config", "-c", dest="config", help="YAML config file (see configs/data_*.yaml)")
    p.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start over")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed input record")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p, config_positional=False)
    p.set_defaults(func=run_prepare)
    _register_quality(data_verbs(subparsers))
    _register_domains(data_verbs(subparsers))


def _register_domains(verbs: argparse._SubParsersAction) -> None:
    d = verbs.add_parser(
        "domains", help="cluster documents into k topics (TF-IDF + spherical k-means) and label each",
        description="Cluster a data prepare output (or any readable input) into k domains offline: TF-IDF "
        "words (jieba for Chinese) or MinHash sketches, spherical k-means. Writes DIR/domain-NN/ folders "
        "(records + `domain`), report.json/report.md with sizes and top terms per domain.",
    )
    d.add_argument("--input", "-i", nargs="+", action="extend", default=[], metavar="PATH",
                   help="a data prepare output folder, or files/folders/globs")
    d.add_argument("--out", "-o", help="output folder")
    d.add_argument("--k", type=int, help="number of domains (default 20)")
    d.add_argument("--method", choices=["tfidf", "minhash", "embeddings"],
                   help="document representation (default tfidf); embeddings needs --set embeddings=FILE.npy")
    d.add_argument("--label-field", help="a record field (e.g. source) to report purity/NMI against")
    d.add_argument("--config", "-c", dest="config", help="YAML with DomainsConfig keys")
    add_config_args(d, config_positional=False)
    d.set_defaults(func=run_domains)


def run_domains(args: argparse.Namespace) -> int:
    from seekforge.config import load_config
    from seekforge.data.domains import DomainsConfig, find_domains

    given = {"input": args.input, "out": args.out, "k": args.k, "method": args.method,
             "label_field": args.label_field}
    cfg = load_config(DomainsConfig, args.config, args.overrides, base={k: v for k, v in given.items() if v})
    report = find_domains(cfg)
    print(f"{report['docs']} documents in {report['k']} domains ({report['method']}, "
          f"{report['elapsed_s']:.1f} s); report: {cfg.out}/report.md")
    if "agreement" in report:
        a = report["agreement"]
        print(f"agreement with {a['label_field']}: purity {a['purity']:.3f}, NMI {a['nmi']:.3f}")
    for dom in report["domains"]:
        print(f"  {dom['folder']}: {dom['docs']} docs  {' '.join(dom['top_terms'][:8])}")
    return 0


def _register_quality(verbs: argparse._SubParsersAction) -> None:
    q = verbs.add_parser("quality",
                         help="train a document-quality classifier (for data prepare's quality.model)")
    q.set_defaults(func=lambda args: q.print_help() or 1)
    qv = q.add_subparsers(dest="quality_command", metavar="STEP")
    t = qv.add_parser(
        "train", help="fit a hashed character n-gram classifier: curated (positive) vs raw (negative) text",
        description="Train the quality classifier used by `data prepare --set quality.model=DIR`: logistic "
        "regression on hashed character 1-4-grams (zh and en alike). Holds out a share of each class and "
        "prints/saves precision, recall and AUC (DIR/report.json).",
    )
    t.add_argument("--positive", nargs="+", action="extend", default=[], metavar="PATH",
                   help="curated text (files, folders, globs; any format data prepare reads)")
    t.add_argument("--negative", nargs="+", action="extend", default=[], metavar="PATH",
                   help="raw / low-quality text (e.g. an unfiltered crawl sample)")
    t.add_argument("--out", "-o", help="model folder to write")
    t.add_argument("--config", "-c", dest="config", help="YAML with QualityTrainConfig keys")
    add_config_args(t, config_positional=False)
    t.set_defaults(func=run_quality_train)


def run_quality_train(args: argparse.Namespace) -> int:
    from seekforge.config import load_config
    from seekforge.data.quality import QualityTrainConfig, train_quality

    # Command-line paths are the base; the YAML and --set may add keys (checked once, at load).
    given = {"positive": args.positive, "negative": args.negative, "out": args.out}
    base = {k: v for k, v in given.items() if v}
    cfg = load_config(QualityTrainConfig, args.config, args.overrides, base=base)
    report = train_quality(cfg)
    h = report["heldout"]
    print(f"trained on {report['train']['positives']} positive + {report['train']['negatives']} negative "
          f"documents in {report['elapsed_s']:.1f} s")
    print(f"held out ({h['docs']} docs, threshold {h['threshold']}): precision {h['precision']:.3f} "
          f"recall {h['recall']:.3f} F1 {h['f1']:.3f} AUC {h['auc']:.3f}")
    for lang, m in report["heldout_by_language"].items():
        print(f"  {lang}: {m['docs']} docs, precision {m['precision']:.3f} recall {m['recall']:.3f} "
              f"AUC {m['auc']:.3f}")
    print(f"model: {cfg.out} (report.json); use with: seekforge data prepare ... "
          f"--set quality.model={cfg.out} --set quality.threshold=0.5")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from seekforge.config import load_config
    from seekforge.data.prepare import PrepareConfig, prepare
    from seekforge.utils import human_bytes

    cfg = load_config(PrepareConfig, args.config, args.overrides)
    if args.input:
        cfg.inputs = [*cfg.inputs, *args.input]
    if args.out:
        cfg.out = args.out
    if args.workers is not None:
        cfg.workers = args.workers
    if args.overwrite:
        cfg.overwrite = True
    if args.strict:
        cfg.strict = True
    if args.no_progress:
        cfg.progress = False
    report = prepare(cfg)
    t = report["totals"]
    print(f"kept {t['docs_out']}/{t['docs_in']} documents, {human_bytes(t['bytes_out'])} of "
          f"{human_bytes(t['bytes_in'])}, in {t['elapsed_s']:.1f} s ({t['mb_per_s']:.2f} MB/s); "
          f"report: {cfg.out}/report.md")
    top = list(report["drops"].items())[:5]
    if top:
        print("top drop reasons: " + json.dumps({k: v["docs"] for k, v in top}, ensure_ascii=False))
    return 0
