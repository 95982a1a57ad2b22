"""`python -m gateway embed PATHS... --model M --out FILE`: the bulk command's arguments, progress and summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from gateway.bulk import BulkRun, RunOptions, Tally
from gateway.bulk_sinks import open_sink
from gateway.bulk_sources import DEFAULT_MAX_FILE_BYTES, SourceOptions, check_paths, count, entries
from gateway.bulk_targets import Fatal, InProcessTarget, RemoteTarget, Target, Unreachable

SHOWN_FAILURES = 10


def add_arguments(embed: argparse.ArgumentParser) -> None:
    embed.add_argument("paths", nargs="+", type=Path, help="folders (images and text files), .jsonl, .csv, .parquet")
    embed.add_argument("--model", required=True, help="the served model name")
    embed.add_argument("--out", required=True, type=Path, help="output: FILE.jsonl, or a Parquet dataset directory")
    embed.add_argument("--format", choices=["jsonl", "parquet"], default=None, help="default: from --out's suffix")
    target = embed.add_mutually_exclusive_group()
    target.add_argument("--url", action="append", default=[], help="a running gateway; repeat to spread the load")
    target.add_argument("--config", type=Path, default=None, help="embed in this process with this config file")
    embed.add_argument("--api-key", default=os.environ.get("GATEWAY_API_KEY"), help="default: $GATEWAY_API_KEY")
    embed.add_argument("--batch-size", type=int, default=32, help="items per request (default 32)")
    embed.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    embed.add_argument("--input-type", choices=["query", "document"], default=None)
    embed.add_argument("--dimensions", type=int, default=None, help="Matryoshka truncation, if the model has it")
    embed.add_argument("--column", default="text", help="CSV/Parquet column to embed (default text)")
    embed.add_argument("--id-column", default="id", help="CSV/Parquet id column (default id; else file#row)")
    embed.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES, help="larger files are skipped")
    embed.add_argument("--flush-rows", type=int, default=2048, help="Parquet rows per part file (default 2048)")
    embed.add_argument("--max-retries", type=int, default=8, help="tries of a batch on 429/503/5xx (default 8)")
    embed.add_argument("--errors", type=Path, default=None, help="write every failure here as JSONL")
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")


class RateColumn(ProgressColumn):
    """Items per second, from rich's own speed estimate."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.1f} items/s")


@contextmanager
def progress_bar(total: int, enabled: bool, console: Console) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _: None
        return
    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("eta"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("embed", total=total)
        yield lambda n: bar.advance(task, n)


@asynccontextmanager
async def open_target(args: argparse.Namespace) -> AsyncIterator[Target]:
    if args.url:
        remote = RemoteTarget(args.url, args.model, api_key=args.api_key)
        try:
            yield remote
        finally:
            await remote.aclose()
        return
    from gateway.config import load_settings
    from gateway.logs import configure_logging

    settings = load_settings(args.config)
    configure_logging(settings.log_level, settings.log_format, access=False)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # ours is the one bar
    async with InProcessTarget(settings, args.model) as local:
        yield local


def summarise(tally: Tally, console: Console, errors: Path | None, *, interrupted: bool) -> None:
    """The final lines: done, skipped, failed (the first few, with where and why), rate and cache hits."""
    hits = "unknown" if tally.cache_hits is None else str(tally.cache_hits)
    state = "interrupted" if interrupted else "finished"
    console.print(
        f"{state}: {tally.done} done, {tally.skipped} skipped (already in the output), "
        f"{len(tally.failures)} failed; {tally.items_per_s:.1f} items/s over {tally.elapsed_s:.1f} s; "
        f"cache hits {hits}",
        highlight=False,
    )
    for failure in tally.failures[:SHOWN_FAILURES]:
        console.print(f"  failed {failure.origin}: {failure.reason}", highlight=False, markup=False)
    if len(tally.failures) > SHOWN_FAILURES:
        more = f" (all in {errors})" if errors else " (--errors FILE lists them all)"
        console.print(f"  ... and {len(tally.failures) - SHOWN_FAILURES} more{more}", highlight=False)
    if errors is not None:
        with errors.open("w", encoding="utf-8") as file:
            for failure in tally.failures:
                record = {"id": failure.id, "origin": failure.origin, "reason": failure.reason}
                file.write(json.dumps(record) + "\n")


async def _embed(args: argparse.Namespace, run: Callable[[BulkRun], None], console: Console) -> None:
    options = SourceOptions(column=args.column, id_column=args.id_column, max_file_bytes=args.max_file_bytes)
    sink = open_sink(args.out, args.format, flush_rows=args.flush_rows)
    existing = await asyncio.to_thread(sink.existing)
    other = existing.models - {args.model}
    if other:
        raise Fatal(f"{args.out} holds vectors of model {sorted(other)}, not {args.model!r}: choose another --out")
    extra: dict[str, Any] = {}
    if args.input_type:
        extra["input_type"] = args.input_type
    if args.dimensions:
        extra["dimensions"] = args.dimensions
    run_options = RunOptions(
        model=args.model,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        max_retries=args.max_retries,
        extra=extra,
    )
    total = await asyncio.to_thread(count, args.paths)
    async with open_target(args) as target:
        with progress_bar(total, not args.no_progress, console) as advance:
            bulk = BulkRun(sink, target, run_options, existing, advance)
            run(bulk)
            try:
                await bulk.run(entries(args.paths, options))
            finally:
                sink.close()


def run_embed(args: argparse.Namespace) -> int:
    """The command: 0 when every item is in the output, 1 when some failed, 2 on a fatal error, 130 on Ctrl-C."""
    console = Console(stderr=True, soft_wrap=True)  # summary lines stay whole for grep
    if args.batch_size < 1 or args.concurrency < 1:
        console.print("gateway embed: error: --batch-size and --concurrency must be at least 1")
        return 2
    try:
        check_paths(args.paths)
    except ValueError as exc:
        console.print(f"gateway embed: error: {exc}", highlight=False, markup=False)
        return 2
    if not args.url and args.config is None and os.environ.get("GATEWAY_CONFIG"):
        args.config = Path(os.environ["GATEWAY_CONFIG"])
    if not args.url and args.config is None:
        console.print("gateway embed: error: give --url (a running gateway) or --config (embed in this process)")
        return 2
    started: list[BulkRun] = []
    code = 0
    try:
        asyncio.run(_embed(args, started.append, console))
    except KeyboardInterrupt:
        code = 130
    except (Fatal, Unreachable, ValueError) as exc:
        console.print(f"gateway embed: error: {exc}", highlight=False, markup=False)
        code = 2
    except Exception as exc:  # a model that cannot load, a config that does not parse: one line, not a trace
        console.print(f"gateway embed: error: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        code = 2
    if started:
        tally = started[0].tally
        summarise(tally, console, args.errors, interrupted=code == 130)
        if code == 0 and tally.failures:
            code = 1
    return code
