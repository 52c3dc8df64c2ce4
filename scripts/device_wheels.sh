#!/usr/bin/env bash
# Collect, into .whl/, the Python 3.12 x86-64 wheels that the lent GPU machine lacks, so a session
# can run lra there (it has jax/flax/optax/orbax/numpy/pandas/matplotlib/rich/pytest, no network).
#
#   bash scripts/device_wheels.sh            # here, once per session; .whl/ is git-ignored
#   then on the device, with carry [".whl"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && WANDB_MODE=offline python3 -m pytest -q
#
# Not yet run on a device: the session that wrote it had none lent (download side checked here).
# Versions come from requirements/lock.txt; packages the device image already has are skipped
# (the device's own jax is used: record its version from the result rows, it differs from the pin).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
mkdir -p "$out"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude

# On the device image already (see the device tool's KINDS.md); not carried.
on_device='^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|pandas|matplotlib|rich|pytest|ml-dtypes|opt-einsum|scipy|absl-py|etils|msgpack|tensorstore|treescope|typing_extensions|typing-extensions|pyyaml|PyYAML|protobuf|packaging|pygments|Pygments|markdown-it-py|mdurl|contourpy|cycler|fonttools|kiwisolver|pillow|pyparsing|python-dateutil|six|tzdata|pytz|iniconfig|pluggy|requests|urllib3|idna|certifi|charset-normalizer|click|psutil|cloudpickle|fsspec|zipp|humanize|simplejson|aiofiles|uvloop|nest-asyncio|toolz|wrapt|attrs|anyio|h11|httpcore|httpx|sniffio|prometheus-client|xxhash|pyarrow|tqdm|einops|platformdirs|filelock|chex|importlib_resources|tensorflow-datasets|tensorflow-metadata|array-record|dm-tree|immutabledict|promise|simple-parsing|termcolor|toml|docstring-parser|googleapis-common-protos)=='

on_device=${on_device//-/[-_]}  # pip freeze spells some names with '_', the registry with '-'
needed=$(grep -E '^[A-Za-z0-9_.-]+==' requirements/lock.txt | grep -viE "$on_device" | grep -v '^antlr4-python3-runtime==')
platforms=()
for n in 17 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# shellcheck disable=SC2086
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$out" $needed
# Hydra's parser runtime has no wheel on the registry: build it (pure Python).
python3 -m pip wheel --quiet --no-deps -w "$out" "$(grep '^antlr4-python3-runtime==' requirements/lock.txt)"
ls "$out"
du -sh "$out"
