"""`cllm crawl`: ingest folders, files and web pages once, then exit.

A thin layer over agent.crawler and agent.inputs.ingest; its settings come from agent/settings.py
(flags, CLLM_*, TOML, as every command).
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Optional

import click

from agent.cli.common import (CONTEXT_SETTINGS, Invocation, data_dir_option, echo_json,
                              one_line_errors, pass_invocation)
from agent.resolve import options, resolve
from agent.settings import CrawlSettings, build
from agent.signals import stop_on_signals
from store import open_store
from store.models import TargetKind


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@data_dir_option
@options("crawl")
@click.option("--source", default=None,
              help="Source name for the documents (default: the folder or host).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_invocation
@one_line_errors
def crawl(inv: Invocation, targets: tuple[str, ...], data_dir: Path, source: Optional[str],
          as_json: bool, **flags) -> None:
    """Ingest folders, files or web pages once, then exit.

    Folders are walked (honouring .gitignore and the default excludes; credentials, keys and
    the data directory are never read), URLs are crawled (robots.txt, per-host delay, depth
    and page limits). Every refused input is recorded with its reason; none of them stops
    the run, but when every target failed (nothing fetched or stored) the exit status is 1. Ctrl-C stops after the current file or page and
    keeps everything stored; a second Ctrl-C aborts at once.

    Example: cllm crawl ~/notes https://docs.python.org/3/reference/ --max-pages 20
    """
    from agent.crawler import CrawlError, CrawlReport, Crawler, iter_targets, record_target
    from agent.inputs.ingest import BATCH_INPUTS, Ingestor
    from agent.inputs.paths import DEFAULT_EXCLUDES, PrivateRules

    cfg = build(CrawlSettings, resolve(flags, data_dir, command="crawl"))
    plan = list(iter_targets(targets))  # a malformed target is a usage error before any work
    Ingestor(None, fallback_encoding=cfg.fallback_encoding)  # an unknown codec fails here
    # without --max-file-bytes the crawler's and the ingestor's own limits apply (as for
    # `cllm agent`); with it, files and pages are both capped at that size
    file_cap = {} if cfg.max_file_bytes is None else {"max_file_bytes": cfg.max_file_bytes}
    body_cap = {} if cfg.max_file_bytes is None else {"max_body_bytes": cfg.max_file_bytes}
    store = open_store(data_dir, inv.database_url)
    stop = threading.Event()
    total = CrawlReport()
    per_target = []
    current = None  # (kind, target) being worked on
    try:
        with stop_on_signals(stop, second_interrupt_aborts=True), Crawler(
                store, allow_private_hosts=cfg.allow_private_hosts, allow_networks=cfg.allow_networks,
                max_pages=cfg.max_pages, recrawl_interval=cfg.recrawl_interval,
                max_depth=cfg.max_depth, delay=cfg.delay, timeout=cfg.timeout, retries=cfg.retries,
                max_links=cfg.max_links, stop_event=stop,
                ingestor=Ingestor(store, fallback_encoding=cfg.fallback_encoding, **file_cap,
                                  private=PrivateRules(cfg.include, own_dirs=(data_dir,))),
                include=list(cfg.include) or None, exclude=DEFAULT_EXCLUDES + cfg.exclude,
                own_dirs=(data_dir,), **body_cap) as crawler:
            for kind, target in plan:
                if stop.is_set():
                    break
                current = (kind, target)
                try:
                    target_id = record_target(store, TargetKind.CRAWL, target, max_pages=cfg.max_pages,
                                               max_depth=cfg.max_depth)
                    if kind == "folder":
                        report = crawler.walk(target, source=source, target_id=target_id)
                    elif kind == "file":
                        res = crawler.ingestor.ingest_file(target, source=source, target_id=target_id)
                        report = CrawlReport()
                        report.add(res.uri, res.outcome, res.reason, res.size_bytes or 0)
                    else:
                        report = crawler.crawl(target, source=source, target_id=target_id)
                except CrawlError as e:  # e.g. a folder removed since the run started: the rest still run
                    report = CrawlReport()
                    report.add(target, "failed", e.one_line())
                per_target.append((target, report))
                total.merge(report)
                current = None
    except KeyboardInterrupt:  # a second Ctrl-C: the open transaction is rolled back
        stop.set()
        if current is not None and current[0] == "folder":
            click.echo(f"aborted: the files of {current[1]} stored since the walk's last commit "
                       f"(at most {BATCH_INPUTS}) were rolled back; everything else stored is "
                       "kept (run the crawl again to pick them up)", err=True)
        else:
            click.echo("aborted: everything stored before the abort is kept, except the page or "
                       "file being stored at that moment", err=True)
    else:
        if stop.is_set():
            left = len(plan) - len(per_target)
            click.echo("interrupted: everything stored before the interrupt is kept"
                       + (f"; {left} targets not started" if left else ""), err=True)
    finally:
        store.close()
    every_target_failed = bool(per_target) and all(r.failed for _, r in per_target)
    if as_json:
        echo_json({
            "targets": [{"target": t, "counts": dict(r.counts), "bytes": r.bytes_read,
                         "failed": r.failed} for t, r in per_target],
            "items": [{"uri": u, "outcome": o, "reason": why} for u, o, why in total.items],
        })
        if every_target_failed:
            sys.exit(1)
        return
    for t, r in per_target:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "nothing"
        click.echo(f"{t}: {counts} ({r.bytes_read:,} bytes read)")
    refused = [(u, o, why) for u, o, why in total.items if why and o not in ("added", "fetched")]
    for u, o, why in refused[:20]:
        click.echo(f"  {o}: {u}: {why}")
    if len(refused) > 20:
        click.echo(f"  ... and {len(refused) - 20} more (cllm history documents --status skipped)")
    if every_target_failed:
        click.echo("every target failed: nothing was fetched or stored (the reasons are above)", err=True)
        sys.exit(1)
