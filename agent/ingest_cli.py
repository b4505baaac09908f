"""`cllm crawl` (ingest folders, files and URLs once) and the `cllm history` group.

A thin layer over agent.crawler and store queries. `history` is a click group that other
modules extend with their own subcommands (`history.add_command(...)` or
`@history.command()`).
"""
from __future__ import annotations

import json
import os
import threading

import click

from agent.clikit import (CONTEXT_SETTINGS, data_dir_option, emit_table, existing_store,
                          friendly_errors, jsonable)


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
              help="Text codec for input that is not UTF-8 and declares no usable charset, e.g. "
                   "cp1252: files, and pages of URL targets (HTML without it: cp1252). "
                   "Recorded per document.")
@click.option("--source", default=None, help="Source name for the documents (default: the folder or host).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def crawl(targets, data_dir, max_pages, max_depth, delay, timeout, max_file_bytes, allow_private_hosts,
          exclude, fallback_encoding, source, as_json):
    """Ingest folders, files or web pages once, then exit.

    Folders are walked (honouring .gitignore and the default excludes), URLs are crawled
    (robots.txt, per-host delay, depth and page limits). Every refused input is recorded
    with its reason; none of them stops the run. Ctrl-C stops after the current file or
    page and keeps everything stored; a second Ctrl-C aborts at once.

    Example: cllm crawl corpus/ https://docs.python.org/3/reference/ --max-pages 20
    """
    from agent.crawler import CrawlReport, Crawler, iter_targets
    from agent.ingest import BATCH_INPUTS, DEFAULT_EXCLUDES, Ingestor

    plan = list(iter_targets(targets))  # validates every target before any work starts
    Ingestor(None, fallback_encoding=fallback_encoding)   # an unknown codec fails here, not later
    from agent.signals import stop_on_signals
    from store import open_store

    store = open_store(data_dir)
    stop = threading.Event()
    total = CrawlReport()
    per_target = []
    current = None  # (kind, target) being worked on
    interrupts = stop_on_signals(stop, second_interrupt_aborts=True)
    interrupts.__enter__()
    try:
        with Crawler(store, allow_private_hosts=allow_private_hosts, max_pages=max_pages,
                     max_depth=max_depth, delay=delay, timeout=timeout, max_body_bytes=max_file_bytes,
                     max_file_bytes=max_file_bytes, stop_event=stop,
                     ingestor=Ingestor(store, max_file_bytes=max_file_bytes,
                                       fallback_encoding=fallback_encoding),
                     exclude=DEFAULT_EXCLUDES + tuple(exclude)) as crawler:
            for kind, target in plan:
                if stop.is_set():
                    break
                current = (kind, target)
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
                current = None
    except KeyboardInterrupt:  # a second Ctrl-C: the open transaction is rolled back
        stop.set()
        if current is not None and current[0] == "folder":
            click.echo(f"aborted: the files of {current[1]} stored since the walk's last commit (at most "
                       f"{BATCH_INPUTS}) were rolled back; everything else stored is kept (run the crawl "
                       "again to pick them up)", err=True)
        else:
            click.echo("aborted: everything stored before the abort is kept, except the page or file "
                       "being stored at that moment", err=True)
    else:
        if stop.is_set():
            left = len(plan) - len(per_target)
            click.echo("interrupted: everything stored before the interrupt is kept"
                       + (f"; {left} targets not started" if left else ""), err=True)
    finally:
        interrupts.__exit__(None, None, None)
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
    from store import queries

    store = existing_store(data_dir)
    try:
        with store.session(read_only=True) as s:
            docs = queries.list_documents(s, status=status, source=source, cycle_id=cycle_id, limit=limit)
            rows = [{f: jsonable(getattr(d, f)) for f in DOCUMENT_FIELDS} for d in docs]
    finally:
        store.close()
    emit_table(rows, as_json, ["id", "status", "uri", "sha256", "cycle_id", "reason"],
               f"{len(rows)} documents")


URL_FIELDS = ("id", "url", "status", "http_status", "reason", "document_id", "fetched_at")


@history.command("urls", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--status", default=None, help="Only URLs with this status (fetched, skipped, failed, ...).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects).")
@friendly_errors
def history_urls(data_dir, status, limit, as_json):
    """URLs the crawler handled, with the reason for every refusal (robots.txt, private
    address, size, type, HTTP errors); a restart does not fetch them again.

    Example: cllm history urls --data-dir ./cllm-data --status skipped
    """
    from store.queries import list_fetched_urls

    store = existing_store(data_dir)
    try:
        with store.session(read_only=True) as s:
            rows = [{f: jsonable(getattr(u, f)) for f in URL_FIELDS}
                    for u in list_fetched_urls(s, status=status or None, limit=limit)]
    finally:
        store.close()
    emit_table(rows, as_json, ["id", "status", "http_status", "url", "reason", "document_id"],
               f"{len(rows)} URLs")
