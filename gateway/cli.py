"""`python -m gateway serve`: load the models (failing with one clear line), then serve.
`python -m gateway embed`: embed folders and files in bulk (`gateway.bulk_cli`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from gateway.bulk_cli import add_arguments as add_embed_arguments
from gateway.config import Settings, load_settings
from gateway.logs import configure_logging
from gateway.server import deadline_protocol
from providers.base import ModelLoadError

if TYPE_CHECKING:
    from gateway.router import ServedModel

logger = logging.getLogger("gateway")

PROGRESS_EVERY_S = 15.0
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible multimodal embeddings gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="load the configured models and serve HTTP")
    serve.add_argument("--config", type=Path, default=None, help="YAML config file (default: $GATEWAY_CONFIG)")
    serve.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    hash_key = commands.add_parser("hash-key", help="print the sha256 of a client key, for `auth.keys[].key_sha256`")
    hash_key.add_argument("key", nargs="?", default=None, help="the key (default: read one line from stdin)")
    embed = commands.add_parser("embed", help="embed folders, JSONL, CSV or Parquet into a Parquet or JSONL file")
    add_embed_arguments(embed)
    return parser


def _fail(message: str) -> int:
    print(f"gateway: error: {message}", file=sys.stderr)
    return 2


def hub_unreachable(endpoint: str, timeout_s: float) -> str | None:
    """Why the hub at `endpoint` cannot be reached, or None when it answers at all.

    Without this, an offline start waits through the hub client's backoff for every file a
    processor may have (5 retries, 23 s each: 2 min 20 s for SigLIP2). One HEAD through the hub
    client's own session (its proxies, CA bundle and headers), in a daemon thread so that DNS is
    inside the bound too.
    """
    from huggingface_hub import get_session

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=timeout_s)
        except Exception as exc:  # httpx2's connect, proxy, TLS and timeout errors: whatever stops the hub client
            outcome.append(f"{type(exc).__name__}: {exc}")
        else:
            outcome.append(None)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def _hub_offline_reason(models: list[ServedModel]) -> str | None:
    """Probe the hub once when a model comes from it; unreachable: the hub client uses its cache only."""
    from huggingface_hub import constants

    from gateway.app import weights_source

    sources = [(d.name, weights_source(d.settings)) for m in models for d in m.deployments]
    remote = [name for name, source in sources if source is not None and not Path(source).is_dir()]
    if not remote or constants.HF_HUB_OFFLINE:
        return None
    reason = hub_unreachable(constants.ENDPOINT, float(constants.HF_HUB_ETAG_TIMEOUT))
    if reason is not None:
        constants.HF_HUB_OFFLINE = True  # what HF_HUB_OFFLINE=1 sets; read by the hub client on every call
        logger.warning(
            "the Hugging Face hub at %s is unreachable (%s): loading %s from the local cache only",
            constants.ENDPOINT,
            reason,
            ", ".join(remote),
        )
        return f"the hub at {constants.ENDPOINT} is unreachable ({reason})"
    return None


@contextmanager
def progress_lines(name: str, source: str, every_s: float = PROGRESS_EVERY_S) -> Iterator[None]:
    """While a model loads, a line every `every_s`: the time so far and, for a hub repository, the
    megabytes in its hub cache folder (downloads land in `blobs/`). Progress bars show on a
    terminal only; these lines reach a log collector too."""
    from huggingface_hub import constants

    blobs = (
        None
        if Path(source).is_dir()
        else Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}" / "blobs"
    )
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(every_s):
            size = ""
            if blobs is not None:
                downloaded = sum(f.stat().st_size for f in blobs.glob("*") if f.is_file()) if blobs.is_dir() else 0
                size = f", {downloaded / 1e6:.1f} MB in the hub cache"
            logger.info("still loading model %s after %.0f s%s", name, time.monotonic() - started, size)

    thread = threading.Thread(target=report, name="load-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def serve(settings: Settings) -> int:
    """Load every model (one line and exit code 2 if one cannot load), then serve until stopped."""
    import uvicorn

    from gateway.app import build_models, create_app, load_deployment, weights_source
    from gateway.canary import CanaryFailed, verify_spaces
    from gateway.router import SpaceMismatch

    configure_logging(settings.log_level, settings.log_format, access=settings.access_log)
    if not settings.auth.keys and settings.host not in LOOPBACK_HOSTS:
        logger.warning(
            "no client keys are configured (auth.keys) and the gateway listens on %s: anyone who can reach it "
            "may embed, and spend the paid deployments' budgets",
            settings.host,
        )
    try:
        models = build_models(settings)
    except (KeyError, ValidationError) as exc:
        return _fail(f"invalid model config: {exc}")
    offline = _hub_offline_reason(models)
    # The hub client and transformers log each failed attempt; the one line below says it all.
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    hub_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    if settings.log_format == "json":  # progress bars are not JSON lines; text logs keep them
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    for model in models:
        for deployment in model.deployments:
            source = weights_source(deployment.settings)
            try:
                with progress_lines(deployment.name, source or ""):
                    load_deployment(model, deployment)
            except ModelLoadError as exc:
                reason = str(exc).rstrip(".")
                if source is None:
                    return _fail(
                        f"could not start deployment '{deployment.name}' of model '{model.name}' "
                        f"(provider {deployment.settings.provider}): {reason}."
                    )
                hint = f"; {offline}" if offline else ""
                return _fail(
                    f"could not load model '{model.name}' (provider {deployment.settings.provider}) from "
                    f"'{source}': {reason}{hint}. "
                    "Offline? Download the checkpoint elsewhere and set `model:` in the config to its local directory."
                )
        try:
            model.settle_space()
        except SpaceMismatch as exc:
            return _fail(f"invalid model config: {exc}")
    try:
        canaries = asyncio.run(verify_spaces(models))
    except CanaryFailed as exc:
        return _fail(str(exc))
    app = create_app(settings, models, canaries=canaries)
    freeze_startup_heap()
    # log_config=None: uvicorn's records go through our handler (text or JSON); our middleware writes the access log.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        http=deadline_protocol(settings.request_read_timeout_s),
        limit_concurrency=settings.max_connections,
    )
    return 0


def freeze_startup_heap() -> None:
    """Collect once and freeze what start-up left behind.

    torch, transformers and the app leave ~400k long-lived objects; a full collection walks them all
    with the event loop stopped, 200-250 ms that every request in flight waits out (the p99 of cached
    requests under load). Frozen, later collections walk only what requests allocate. Done here, in
    the process entry point, not in the app's lifespan: tests build apps inside the test process.
    """
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-key":
        from gateway.auth import hash_key

        key = args.key if args.key is not None else sys.stdin.readline().strip()
        print(hash_key(key))
        return 0
    if args.command == "embed":
        from gateway.bulk_cli import run_embed

        return run_embed(args)
    config = args.config or (Path(os.environ["GATEWAY_CONFIG"]) if os.environ.get("GATEWAY_CONFIG") else None)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    try:
        settings = load_settings(config, **overrides)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        return _fail(f"invalid configuration: {exc}")
    return serve(settings)
