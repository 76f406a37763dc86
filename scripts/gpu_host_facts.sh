#!/usr/bin/env bash
# Capture the host half of `detserve env` and `detserve doctor` on a GPU machine without Docker
# or vLLM, with the raw nvidia-smi output they parse, as test fixtures.
#
# Usage, from the repository root:
#   scripts/gpu_host_facts.sh OUT_DIR [WHEELS_DIR]
#
# It needs Python 3.11+ and this repository's src/. The host half imports only these
# distributions (scripts/gpu_host_requirements.txt pins them): typer, rich, markdown-it-py,
# mdurl, Pygments, shellingham, typing_extensions, annotated-doc, pydantic, pydantic_core,
# annotated-types, typing-inspection, rfc8785. With WHEELS_DIR (wheels of those, for this
# machine's Python), they are unpacked into a scratch directory put on PYTHONPATH; without it,
# the running Python must already have them. Neither Docker nor vLLM is needed or used: the
# script records that they are absent.
#
# Writes into OUT_DIR:
#   nvidia-smi-query.csv, nvidia-smi.txt   the raw output detserve parses (and .rc files)
#   env-host-only.{json,txt,rc}            detserve env --config configs/qwen3-8b.json --host-only
#   doctor-host-only.{json,txt,rc}         detserve doctor --config configs/qwen3-8b.json --host-only
#   doctor-tiny-cpu-host-only.{json,rc}    the same for the CPU profile (GPU under a CPU profile)
#   capture.txt                            when, where, with what (date, kernel, Python, GPUs)
# Exit 0 when everything was captured (whatever detserve's own exit codes were, which are kept).
set -u -o pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT_DIR [WHEELS_DIR]" >&2
    exit 2
fi
out=$1
wheels=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)

pythonpath="$root/src"
if [ -n "$wheels" ]; then
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT
    # A wheel is a zip archive: unpacking it is installing it, for these packages (no scripts,
    # no data files), and needs no pip on the machine.
    "$python" - "$wheels" "$site" "$root/scripts/gpu_host_requirements.txt" <<'EOF' || exit 3
import pathlib, re, sys, zipfile
wheels, site, requirements = map(pathlib.Path, sys.argv[1:])
wanted = {}
for line in requirements.read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        wanted[re.sub(r"[-_.]+", "_", name).lower()] = version
found = set()
for wheel in sorted(wheels.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    key = re.sub(r"[-_.]+", "_", name).lower()
    if wanted.get(key) == version:
        zipfile.ZipFile(wheel).extractall(site)
        found.add(key)
missing = sorted(set(wanted) - found)
if missing:
    sys.exit(f"no wheel in {wheels} for: {', '.join(missing)}")
EOF
    pythonpath="$root/src:$site"
fi

run_py() { PYTHONPATH="$pythonpath" "$python" "$@"; }

# The raw output, with the very arguments detserve passes (read from the code, not retyped).
mapfile -t query < <(run_py -c 'from detserve.host_facts import NVIDIA_SMI_QUERY as q; print("\n".join(q))')
nvidia-smi "${query[@]}" >"$out/nvidia-smi-query.csv" 2>"$out/nvidia-smi-query.stderr"
echo $? >"$out/nvidia-smi-query.rc"
nvidia-smi >"$out/nvidia-smi.txt" 2>"$out/nvidia-smi.stderr"
echo $? >"$out/nvidia-smi.rc"

detserve() { (cd "$root" && run_py -m detserve "$@"); }
for what in env doctor; do
    detserve "$what" --config configs/qwen3-8b.json --host-only --json >"$out/$what-host-only.json" \
        2>"$out/$what-host-only.stderr"
    echo $? >"$out/$what-host-only.rc"
    detserve "$what" --config configs/qwen3-8b.json --host-only >"$out/$what-host-only.txt" 2>&1
done
detserve doctor --config configs/tiny-cpu.json --host-only --json \
    >"$out/doctor-tiny-cpu-host-only.json" 2>"$out/doctor-tiny-cpu-host-only.stderr"
echo $? >"$out/doctor-tiny-cpu-host-only.rc"

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel: $(uname -srm)"
    echo "python: $("$python" -c 'import sys; print(sys.version.split()[0])')"
    echo "gpus: $(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>&1 | paste -sd ';')"
    echo "docker: $(command -v docker || echo absent)"
    echo "docker sdk importable: $(run_py -c 'import importlib.util as u; print(u.find_spec("docker") is not None)')"
    echo "vllm importable: $(run_py -c 'import importlib.util as u; print(u.find_spec("vllm") is not None)')"
    echo "torch: $("$python" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null || echo absent)"
} >"$out/capture.txt"
cat "$out/capture.txt"
echo "captured into $out"
