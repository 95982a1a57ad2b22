"""`python -m gateway serve`: load the models (failing with one clear line), then serve."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from gateway.config import Settings, load_settings
from providers.base import ModelLoadError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible multimodal embeddings gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="load the configured models and serve HTTP")
    serve.add_argument("--config", type=Path, default=None, help="YAML config file (default: $GATEWAY_CONFIG)")
    serve.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    return parser


def _fail(message: str) -> int:
    print(f"gateway: error: {message}", file=sys.stderr)
    return 2


def serve(settings: Settings) -> int:
    import uvicorn

    from gateway.app import build_models, create_app, load_models

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        models = build_models(settings)
    except (KeyError, ValidationError) as exc:
        return _fail(f"invalid model config: {exc}")
    # The hub client and transformers log each failed attempt; the one line below says it all.
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    hub_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    for model in models:
        try:
            load_models([model])
        except ModelLoadError as exc:
            source = model.settings.provider_options.get("model", "?")
            reason = str(exc).rstrip(".")
            return _fail(
                f"could not load model '{model.name}' (provider {model.settings.provider}) from '{source}': {reason}. "
                "Offline? Download the checkpoint elsewhere and set `model:` in the config to its local directory."
            )
    app = create_app(settings, models)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = args.config or (Path(os.environ["GATEWAY_CONFIG"]) if os.environ.get("GATEWAY_CONFIG") else None)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    try:
        settings = load_settings(config, **overrides)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        return _fail(f"invalid configuration: {exc}")
    return serve(settings)
