"""Where the harness finds the published code, and the process settings its scripts run under.

Imported by the scripts that run inside the reference environment and by the pytest side, so it
imports nothing beyond the standard library.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "visrag-reference"
VENV = CACHE / "venv"
PYTHON = VENV / "bin" / "python"
SETUP_SCRIPT = ROOT / "scripts" / "visrag_reference_env.sh"


def published_code_dir() -> Path:
    """The unmodified published modeling code: shared/ beside the checkout (CI's layout)."""
    return Path(os.environ.get("VISRAG_CODE_DIR", ROOT.parent / "shared" / "fixtures" / "visrag-ret-code"))


def script_environment() -> dict[str, str]:
    """Variables for a harness subprocess: offline, and remote code copied under .cache, not $HOME."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_MODULES_CACHE": str(CACHE / "hf-modules"),
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
    }


def configure() -> None:
    """Apply `script_environment` to this process (before transformers is imported); set values win."""
    for key, value in script_environment().items():
        os.environ.setdefault(key, value)
