#!/usr/bin/env bash
# Installs a self-contained Python environment for a helexa package into an RPM build root, as the
# %install of rpm/*.spec does:  venv-install.sh BUILDROOT PREFIX PIP-ARGS...
#
# BUILDROOT/PREFIX becomes a venv of the build host's python3 (its bin/python links to
# /usr/bin/python3, hence the packages' python(abi) requirement) holding PIP-ARGS (the helexa
# wheel and its dependencies) and nothing else: pip itself is removed, every file that named the
# build root is rewritten to name PREFIX, and the bytecode is compiled for PREFIX, so the tree
# works once installed under PREFIX and the build root appears nowhere in it.
set -euo pipefail
buildroot=${1:?usage: venv-install.sh BUILDROOT PREFIX PIP-ARGS...}
prefix=${2:?usage: venv-install.sh BUILDROOT PREFIX PIP-ARGS...}
shift 2
python=${PYTHON3:-/usr/bin/python3}
env="$buildroot$prefix"

echo "==> creating the environment $prefix with $("$python" --version)"
rm -rf "$env"
"$python" -m venv "$env"
echo "==> installing into it: $*"
"$env/bin/python" -m pip install --no-compile --disable-pip-version-check --no-warn-script-location "$@"
"$env/bin/python" -m pip uninstall -q -y pip
rm -f "$env"/bin/activate* "$env"/bin/Activate.ps1  # an interactive shell's helpers; nobody activates a package
# pip records where each wheel came from (a folder of this build) and the venv's scripts, its
# pyvenv.cfg and RECORD files name the build root: make them name the installed path
find "$env" -name direct_url.json -delete
grep -rlIZ --fixed-strings "$buildroot" "$env" | xargs -0 -r sed -i "s|$buildroot||g"
echo "==> compiling bytecode for $prefix"
# (some packages carry files for newer Pythons only, e.g. torch's py312 test helpers: those stay source)
if ! failed=$("$env/bin/python" -m compileall -q -j 0 -s "$buildroot" -p / "$env/lib" 2>&1); then
  echo "note: not compiled (not this Python's syntax):"
  grep -o "Error compiling '[^']*'" <<<"$failed" | sed "s|Error compiling '$buildroot|  |; s|'$||"
fi
if leaks=$(grep -rl --fixed-strings "$buildroot" "$env" | head -n 5) && [ -n "$leaks" ]; then
  echo "error: files still name the build root $buildroot:"; echo "$leaks"; exit 1
fi
echo "==> $prefix: $(du -sh "$env" | cut -f1)"
