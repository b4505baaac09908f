"""`cllm crawl` (ingest folders, files and URLs once) and the `cllm history` group.

A thin layer over agent.crawler and store queries. `history` is a click group that other
modules extend with their own subcommands (`history.add_command(...)` or
`@history.command()`); `data_dir_option` and `open_data_store` are shared with them.
"""
from __future__ import annotations

import json
import os
import threading

import click

from agent.clikit import CONTEXT_SETTINGS, friendly_errors

DEFAULT_DATA_DIR = "./cllm-data"


def data_dir_option(fn):
    """--data-dir DIR, else $CLLM_DATA_DIR, else ./cllm-data."""
    return click.option("--data-dir", type=click.Path(file_okay=False), envvar="CLLM_DATA_DIR",
                        default=DEFAULT_DATA_DIR, show_default=True,
                        help="Data directory holding the store (env CLLM_DATA_DIR).")(fn)


def open_data_store(data_dir: str):
    from store import open_store

    return open_store(data_dir)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@data_dir_option
@click.option("--max-pages", type=click.IntRange(min=1), default=100, show_default=True,
              help="Pages to fetch per URL target at most.")
@click.option("--max-depth", type=click.IntRange(min=0), default=2, show_default=True,
              help="Link depth from each start URL (0: the start page only).")
@click.option("--delay", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds between requests to one host (robots.txt Crawl-delay may raise it).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for a connection or for data.")
@click.option("--max-file-bytes", type=click.IntRange(min=1), default=4 * 1024 * 1024,
              show_default=True, help="Larger files and bodies are refused (recorded).")
@click.option("--allow-private-hosts", is_flag=True,
              help="Let the crawler reach loopback, private and link-local addresses.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Extra gitignore-style pattern to skip in folders (repeatable).")
@click.option("--fallback-encoding", default=None, metavar="CODEC",
              help="Decode non-UTF-8 text with this codec, e.g. cp1252 (recorded per document).")
@click.option("--source", default=None, help="Source name for the documents (default: the folder or host).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def crawl(targets, data_dir, max_pages, max_depth, delay, timeout, max_file_bytes, allow_private_hosts,
          exclude, fallback_encoding, source, as_json):
    """Ingest folders, files or web pages once, then exit.

    Folders are walked (honouring .gitignore and the default excludes), URLs are crawled
    (robots.txt, per-host delay, depth and page limits). Every refused input is recorded
    with its reason; none of them stops the run.

    Example: cllm crawl corpus/ https://docs.python.org/3/reference/ --max-pages 20
    """
    from agent.crawler import CrawlReport, Crawler, iter_targets
    from agent.ingest import DEFAULT_EXCLUDES, Ingestor

    plan = list(iter_targets(targets))  # validates every target before any work starts
    Ingestor(None, fallback_encoding=fallback_encoding)   # an unknown codec fails here, not later
    store = open_data_store(data_dir)
    stop = threading.Event()
    total = CrawlReport()
    per_target = []
    try:
        with Crawler(store, allow_private_hosts=allow_private_hosts, max_pages=max_pages,
                     max_depth=max_depth, delay=delay, timeout=timeout, max_body_bytes=max_file_bytes,
                     max_file_bytes=max_file_bytes, stop_event=stop,
                     ingestor=Ingestor(store, max_file_bytes=max_file_bytes,
                                       fallback_encoding=fallback_encoding),
                     exclude=DEFAULT_EXCLUDES + tuple(exclude)) as crawler:
            for kind, target in plan:
                target_id = _record_target(store, kind, target, max_pages=max_pages, max_depth=max_depth)
                if kind == "folder":
                    report = crawler.walk(target, source=source, target_id=target_id)
                elif kind == "file":
                    res = crawler.ingestor.ingest_file(target, source=source, target_id=target_id)
                    report = CrawlReport()
                    report.add(res.uri, res.outcome, res.reason, res.size_bytes or 0)
                else:
                    report = crawler.crawl(target, source=source, target_id=target_id)
                per_target.append((target, report))
                total.merge(report)
    except KeyboardInterrupt:
        stop.set()
        click.echo("interrupted: what was stored so far is kept", err=True)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({
            "targets": [{"target": t, "counts": dict(r.counts), "bytes": r.bytes_read} for t, r in per_target],
            "items": [{"uri": u, "outcome": o, "reason": why} for u, o, why in total.items],
        }, indent=2))
        return
    for t, r in per_target:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "nothing"
        click.echo(f"{t}: {counts} ({r.bytes_read:,} bytes read)")
    refused = [(u, o, why) for u, o, why in total.items if why and o not in ("added", "fetched")]
    for u, o, why in refused[:20]:
        click.echo(f"  {o}: {u}: {why}")
    if len(refused) > 20:
        click.echo(f"  ... and {len(refused) - 20} more (cllm history documents --status skipped)")


def _record_target(store, kind: str, target: str, **options) -> int:
    """The crawl target row documents point to (kept across runs; options updated)."""
    from agent.crawler import CrawlError, canonical_url
    from agent.ingest import Refused
    from store import targets

    try:
        location = canonical_url(target) if kind == "url" else os.path.abspath(target)
    except Refused as r:
        raise CrawlError(f"cannot crawl {target!r}: {r.reason}", hint="pass a plain http(s) URL") from None
    with store.session() as s:
        row, _ = targets.add_target(s, "crawl", location, options={"kind": kind, **options})
        return row.id


@click.group(context_settings=CONTEXT_SETTINGS)
def history() -> None:
    """What the agent has done: cycles, documents, vocabulary, checkpoints, forgetting.

    Example: cllm history documents --status pending --json
    """


DOCUMENT_FIELDS = ("id", "uri", "source", "status", "sha256", "size_bytes", "n_tokens", "encoding",
                   "reason", "cycle_id", "target_id", "first_seen", "updated")


@history.command("documents", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--status", type=click.Choice(["pending", "trained", "skipped", "failed", "deleted"]),
              default=None, help="Only documents with this status.")
@click.option("--source", default=None, help="Only documents from this source.")
@click.option("--cycle", "cycle_id", type=int, default=None, help="Only documents trained by this cycle.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects).")
@friendly_errors
def history_documents(data_dir, status, source, cycle_id, limit, as_json):
    """List documents: uri, status, sha256, cycle and the reason for refusals.

    Example: cllm history documents --data-dir ./cllm-data --status skipped --json
    """
    if not os.path.exists(os.path.join(data_dir, "cllm.sqlite3")) and not os.environ.get("CLLM_DATABASE_URL"):
        from store import StoreError

        raise StoreError(f"no store in {data_dir}", "run `cllm crawl TARGET --data-dir DIR` first, "
                         "or pass the --data-dir the agent uses")
    from store import queries

    store = open_data_store(data_dir)
    try:
        with store.session(read_only=True) as s:
            docs = queries.list_documents(s, status=status, source=source, cycle_id=cycle_id, limit=limit)
            rows = [{f: _jsonable(getattr(d, f)) for f in DOCUMENT_FIELDS} for d in docs]
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "status", "uri", "sha256", "cycle", "reason", title=f"{len(rows)} documents")
    for r in rows:
        table.add_row(str(r["id"]), r["status"], r["uri"], (r["sha256"] or "")[:12],
                      "" if r["cycle_id"] is None else str(r["cycle_id"]), r["reason"] or "")
    Console().print(table)


def _jsonable(v):
    return v.isoformat() if hasattr(v, "isoformat") else v
