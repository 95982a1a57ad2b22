"""VisRAG-Ret reference harness, pytest side: a tiny model directory and the published code's vectors.

The reference is VisRAG-Ret's published modeling code run as written (transformers 4.57, timm,
`trust_remote_code`) in an isolated venv, `.cache/visrag-reference/venv`, which
`scripts/visrag_reference_env.sh` builds once (about 80 s from nothing; a no-op afterwards).
The gateway's own venv never sees that code or timm.

Use from a test module (or re-export the fixture from a conftest)::

    from tests.visrag_fixtures import RefItem, page_image, reference, visrag_dir_fixture  # noqa: F401

    def test_query(visrag_dir: Path) -> None:
        ref = reference(visrag_dir, [RefItem("q", text="revenue 2023", query=True),
                                     RefItem("page", image=page_image(1400, 1800))])
        ref.single["q"]       # float32 (hidden_size,) unit vector, the item alone in one forward
        ref.batch["page"]     # the same item inside one forward over the whole list
        ref.token_ids["q"]    # int64 prompt ids (bos, instruction + text / image placeholders)
        ref.slices["page"]    # int64 (n, 2) (width, height) per image fed to the tower

- `visrag_dir` (session fixture, registered by importing `visrag_dir_fixture`): a tiny VisRAG-Ret
  directory laid out as on the hub: the published code files, config.json with `auto_map`,
  model.safetensors with the released checkpoint's weight names (`vpm.*` in timm's names,
  `resampler.*`, `llm.model.*`, `llm.lm_head.weight`), the tokenizer (tokenizer.model +
  tokenizer_config.json for the published `LlamaTokenizerWrapper`: legacy, bos added, no dummy
  prefix). Sizes: LM hidden 128, 2 layers, 4 heads (no GQA), vocab 700, `scale_emb` 12,
  `dim_model_base` 256, `scale_depth` 1.4, `rms_norm_eps` 1e-5; `query_num` 64 and the real
  slicing parameters (`max_slice_nums` 9, `scale_resolution` 448, `patch_size` 14, `slice_mode`).
  Every norm scale and bias is random, so none can be skipped unnoticed.
- Loading it without timm: config.json's `vision_config` gives the tower under SiglipVisionConfig
  names (`hidden_size` 64, `intermediate_size` 239, `num_hidden_layers` 3 = timm's depth BEFORE
  `drop_vision_last_layer` drops one, `num_attention_heads` 4, `patch_size` 14, `image_size` 384
  (the 27x27 position grid that timm resamples bicubically with antialias to each slice's grid),
  `layer_norm_eps` 1e-6, `hidden_act` "gelu": timm's exact GELU, not SigLIP's tanh). The real
  checkpoint has no such block: its `vision_encoder` is `vit_so400m_patch14_siglip_384.webli`.
  `tiny_timm_vit.json` is the recipe the reference uses to register the tiny timm tower.
- `reference(dir, items)` runs `tests/visrag_reference/embed.py` in the reference venv: a query
  (`query=True`) is `INSTRUCTION + (text or "")`, anything else `text or ""`; an image (encoded
  bytes or a path) is opened with PIL and converted to RGB, then sliced by the published code.
  Results are memoised per (directory, items) for the process; the arrays are read-only.
  `reference_vectors(dir, items)` is `reference(...).single`.
- `ensure_reference_env()` builds or checks the venv (fails the test with the reason when it can't)
  and returns its python.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.visrag_reference import environment

INSTRUCTION = "Represent this query for retrieving relevant documents: "
ENV_TIMEOUT_S = 1500  # building the venv from nothing: about 80 s here, far longer on a cold registry
SCRIPT_TIMEOUT_S = 600


@dataclass(frozen=True)
class RefItem:
    """One input of the reference: text, an image (encoded bytes or a file), or both (interleaved)."""

    id: str
    text: str | None = None
    image: bytes | Path | None = None
    query: bool = False


@dataclass(frozen=True)
class Reference:
    """What the published code computed, by item id (see the module docstring)."""

    single: dict[str, np.ndarray]
    batch: dict[str, np.ndarray]
    token_ids: dict[str, np.ndarray]
    slices: dict[str, np.ndarray]


def _script_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONHOME"}}
    return {**env, **environment.script_environment()}


def _run(command: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            command,
            cwd=environment.ROOT,
            env=_script_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} took longer than {timeout:.0f} s", pytrace=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        pytest.fail(f"{what} failed (exit {done.returncode}):\n{tail}", pytrace=False)
    return done


@functools.cache
def ensure_reference_env() -> Path:
    """The reference venv's python, built by scripts/visrag_reference_env.sh when missing or stale."""
    script = environment.SETUP_SCRIPT
    _run(["bash", str(script)], f"building the VisRAG reference environment ({script})", ENV_TIMEOUT_S)
    return environment.PYTHON


def build_tiny_visrag(directory: Path, seed: int = 0) -> Path:
    """Build the tiny VisRAG-Ret directory (deterministic for a seed) and return it."""
    code = environment.published_code_dir()
    if not (code / "modeling_visrag_ret.py").is_file():
        pytest.fail(f"the published VisRAG-Ret code is missing: expected it in {code}", pytrace=False)
    python = ensure_reference_env()
    command = [str(python), "-m", "tests.visrag_reference.build_tiny", str(directory), "--seed", str(seed)]
    _run(command, "building the tiny VisRAG-Ret directory", SCRIPT_TIMEOUT_S)
    return directory


_built: dict[int, Path] = {}


@pytest.fixture(scope="session", name="visrag_dir")
def visrag_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VisRAG-Ret directory, built once per test process."""
    if 0 not in _built:
        _built[0] = build_tiny_visrag(tmp_path_factory.mktemp("visrag-ret"))
    return _built[0]


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@functools.cache
def _reference(directory: Path, items: tuple[RefItem, ...]) -> Reference:
    python = ensure_reference_env()
    with tempfile.TemporaryDirectory(prefix="visrag-ref-") as scratch:
        work = Path(scratch)
        requests = []
        for index, item in enumerate(items):
            request: dict[str, object] = {"id": item.id, "query": item.query}
            if item.text is not None:
                request["text"] = item.text
            if isinstance(item.image, bytes):
                path = work / f"image-{index}"
                path.write_bytes(item.image)
                request["image_path"] = str(path)
            elif item.image is not None:
                request["image_path"] = str(Path(item.image).resolve())
            requests.append(request)
        (work / "in.json").write_text(json.dumps(requests))
        command = [str(python), "-m", "tests.visrag_reference.embed", str(directory), str(work / "in.json")]
        _run([*command, str(work / "out.npz")], "the VisRAG-Ret reference (published code)", SCRIPT_TIMEOUT_S)
        with np.load(work / "out.npz") as arrays:
            found = {key: _frozen(arrays[key]) for key in arrays.files}
    parts: dict[str, dict[str, np.ndarray]] = {"single": {}, "batch": {}, "ids": {}, "slices": {}}
    for key, array in found.items():
        kind, item_id = key.split("/", 1)
        parts[kind][item_id] = array
    return Reference(single=parts["single"], batch=parts["batch"], token_ids=parts["ids"], slices=parts["slices"])


def reference(directory: Path, items: Sequence[RefItem]) -> Reference:
    """The published code's vectors (alone and batched), prompt ids and slice sizes for the items."""
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids) or any("/" in item_id for item_id in ids):
        raise ValueError(f"item ids must be unique and free of '/': {ids}")
    return _reference(Path(directory).resolve(), tuple(items))


def reference_vectors(directory: Path, items: Sequence[RefItem]) -> dict[str, np.ndarray]:
    """Each item's reference vector, computed alone (float32, unit length)."""
    return reference(directory, items).single


def page_image(width: int, height: int, seed: int = 0) -> bytes:
    """A synthetic document page as PNG bytes: lines of 'text', a table and a coloured figure."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (250, 249, 244))
    draw = ImageDraw.Draw(image)
    margin = max(2, width // 14)
    banner = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
    draw.rectangle([0, 0, width, margin // 2], fill=banner)
    y = margin
    while y < height - margin:
        x = margin
        line = max(2, height // 60)
        while x < width - margin:
            word = rng.randint(line, 5 * line)
            shade = rng.randint(10, 90)
            draw.rectangle([x, y, min(x + word, width - margin), y + line], fill=(shade, shade, shade + 20))
            x += word + line
        y += 2 * line + rng.randint(0, line)
        if rng.random() < 0.08:
            block = rng.randint(4 * line, 12 * line)
            colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
            draw.ellipse([margin, y, margin + 2 * block, y + block], fill=colour, outline=(0, 0, 0))
            y += block + line
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
