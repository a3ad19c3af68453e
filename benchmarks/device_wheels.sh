#!/usr/bin/env bash
# Where PyPI is reachable: fill .device/ (ignored by git) with what the GPU machine needs and
# cannot fetch (it reaches no registry): wheels/ holding benchmarks/device-requirements.txt's
# packages for its Python (3.12, manylinux x86_64) and that file as wheels/requirements.txt,
# and the CIFAR-10 archive. torch and torchvision are not among them: the machine's image has
# its own CUDA build. Then, with the device tool, from the repository root:
#   run(command="WHEELS=.device/wheels bash benchmarks/device_check.sh .device/cifar10-jpeg.tar.gz $OUT",
#       carry=[".device"], timeout_s=600)
#
#   [PYTHON_VERSION=3.12] [DATA_ARCHIVE=../shared/data/cifar10-jpeg.tar.gz] bash benchmarks/device_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.device}; wheels=$dir/wheels
version=${PYTHON_VERSION:-3.12}; abi=cp${version/./}
archive=${DATA_ARCHIVE:-../shared/data/cifar10-jpeg.tar.gz}
pip="${PIP:-python3 -m pip}"
rm -rf "$wheels" && mkdir -p "$wheels"
grep -v '^\s*#' benchmarks/device-requirements.txt | sed 's/\s*#.*//; /^\s*$/d' > "$wheels/requirements.txt"
while read -r requirement; do
  # A wheel for that Python and platform; a package published only as source (GPUtil) is
  # built here, and kept only if the build is pure Python (py3-none-any), which runs there.
  if ! $pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
       --abi "$abi" --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
       --platform manylinux2014_x86_64 --platform any -d "$wheels" "$requirement" 2> /dev/null; then
    $pip wheel -q --no-deps -w "$dir/built" "$requirement"
    for built in "$dir"/built/*.whl; do
      case $built in *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$built" "$wheels/" ;;
        *) echo "$requirement built as $(basename "$built"), not pure Python: it would not run there" >&2; exit 1 ;;
      esac
    done
    rm -rf "$dir/built"
  fi
done < "$wheels/requirements.txt"
if [ -f "$archive" ]; then cp "$archive" "$dir/"; else echo "no CIFAR-10 archive at $archive: DATA_ARCHIVE=FILE" >&2; fi
du -sh "$dir"/* | sed 's/^/carried: /'
size=$(du -sm "$dir" | cut -f1)
# The device tool carries 64 MiB in all, the working tree included (~1 MiB).
[ "$size" -le 60 ] || { echo "$dir is $size MiB: over the 64 MiB the device tool carries with the tree" >&2; exit 1; }
