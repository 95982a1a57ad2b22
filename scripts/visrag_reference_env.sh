#!/usr/bin/env bash
# The isolated environment that runs VisRAG-Ret's PUBLISHED code as written, for reference vectors:
# .cache/visrag-reference/venv with CPU torch (installed first, pinned exactly), transformers 4.57
# (the code predates transformers 5), timm without its dependencies, and no real torchvision.
#
# torchvision: the registry's wheel paired with torch 2.13 (0.28.0) is a CUDA build (its _C.so
# links libtorch_cuda and libcudart) that cannot load next to CPU torch. The script checks that on
# every (re)build; while it holds, it installs tests/visrag_reference/standin/torchvision instead:
# Compose, ToTensor and Normalize written from torchvision's documentation (the only torchvision
# the published code calls), plus the few names timm imports, which raise if used.
#
# Idempotent: a no-op when the venv exists, was built from this same specification and imports.
# Never touches .venv (it only reads the Pillow version there, so both slice images alike).
#   bash scripts/visrag_reference_env.sh            # PYTHON=python3.11 to choose the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
cache=.cache/visrag-reference
venv="$cache/venv"
python="${PYTHON:-python3}"
mkdir -p "$cache"

torch_version=2.13.0
torchvision_pair=0.28.0 # torchvision's release for torch 2.13
main_pillow=$(.venv/bin/python -c 'import PIL; print(PIL.__version__)' 2>/dev/null || echo 13.0.0)
packages=(
  "transformers==4.57.6"
  "tokenizers==0.22.2"
  "huggingface-hub==0.36.2"
  "safetensors==0.8.0"
  "sentencepiece==0.2.3"
  "protobuf==7.36.2"
  "pillow==${VISRAG_REF_PILLOW:-$main_pillow}"
  "numpy==2.4.6"
  "pyyaml==6.0.4"
)
timm_spec="timm==1.0.31"
standin="$root/tests/visrag_reference/standin"
spec="torch==$torch_version ${packages[*]} $timm_spec standin=$standin"
marker="$venv/.visrag-reference-spec"
smoke='import torch, transformers, timm, timm.data, torchvision.transforms, sentencepiece, safetensors, PIL'
# The quick check of an existing venv reads metadata only (importing torch costs seconds).
installed="from importlib.metadata import version as v; from importlib.util import find_spec as f
assert v('torch').split('+')[0] == '$torch_version' and v('transformers') == '${packages[0]#*==}'
assert v('timm') == '${timm_spec#*==}' and f('torchvision') and f('sentencepiece') and f('PIL')"

exec 9>"$cache/.lock"
flock 9 # one builder at a time (parallel test sessions)

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$spec" ] && "$venv/bin/python" -c "$installed" 2>/dev/null; then
  echo "visrag reference env ready: $venv"
  exit 0
fi

log="$cache/install.log"
: >"$log"
pip_install() { "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" >>"$log" 2>&1 || {
  cat "$log" >&2
  echo "visrag reference env: pip install $* failed" >&2
  exit 1
}; }

start=$SECONDS
rm -rf "$venv"
"$python" -m venv "$venv"
# torch first and exact: any looser torch requirement resolved first can pull CUDA wheels.
pip_install "torch==$torch_version"
pip_install -c <(echo "torch==$torch_version") "${packages[@]}"
pip_install --no-deps "$timm_spec"

# A CPU torchvision matching torch would be used as is; a CUDA build is never installed.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
tv_build=unavailable
if "$venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps -d "$probe" \
  "torchvision==$torchvision_pair" >>"$log" 2>&1; then
  tv_build=$("$venv/bin/python" - "$probe" <<'PY'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("torchvision-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    blobs = [archive.read(name) for name in archive.namelist() if name.endswith("_C.so")]
print("cuda" if any(b"libtorch_cuda" in blob or b"libcudart" in blob for blob in blobs) else "cpu")
PY
  ) || tv_build=unreadable
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$tv_build" = cpu ]; then
  pip_install --no-deps "$probe"/torchvision-*.whl
  echo "torchvision $torchvision_pair: CPU build on the registry, installed"
else
  echo "$standin" >"$site/visrag_torchvision_standin.pth"
  echo "torchvision $torchvision_pair: $tv_build on the registry, so the documented stand-in is used"
fi

"$venv/bin/python" -c "$smoke"
echo "$spec" >"$marker"
echo "visrag reference env built in $((SECONDS - start))s: $venv"
"$venv/bin/python" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null
