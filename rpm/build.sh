#!/usr/bin/env bash
# Builds helexa's RPMs from this source tree (what `make rpm` runs):
#   rpm/build.sh cortex            the gateway package
#   rpm/build.sh neuron FLAVOUR    helexa-neuron-FLAVOUR: cpu, ampere, ada or blackwell
# The packages land in $RPM_TOPDIR/RPMS (default build/rpm/RPMS) and their paths are printed last.
# Environment: RPM_TOPDIR; TORCH_INDEX (the neuron's torch index; "" = pip's own configuration);
# WHEELHOUSE (a folder of wheels for builds without network); RPMBUILD_ARGS (more rpmbuild flags).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: rpm/build.sh cortex | rpm/build.sh neuron FLAVOUR}
command -v rpmbuild >/dev/null || {
  echo "error: rpmbuild not found: install rpm-build (Fedora, RHEL) or rpm (Debian, Ubuntu)"; exit 1
}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
top=$(realpath -m "${RPM_TOPDIR:-build/rpm}")
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
defines=(--define "_topdir $top" --define "helexa_version $version")
case "$what" in
  cortex) spec=rpm/cortex.spec ;;
  neuron)
    spec=rpm/helexa-neuron.spec
    flavour=${2:?usage: rpm/build.sh neuron FLAVOUR (cpu, ampere, ada or blackwell)}
    defines+=(--define "flavour $flavour")
    if [ -n "${TORCH_INDEX+set}" ]; then defines+=(--define "torch_index ${TORCH_INDEX:-%{nil}}"); fi
    ;;
  *) echo "usage: rpm/build.sh cortex | rpm/build.sh neuron FLAVOUR" >&2; exit 2 ;;
esac
if [ -n "${WHEELHOUSE:-}" ]; then defines+=(--define "wheelhouse $(realpath "$WHEELHOUSE")"); fi
# the source tarball: the files git tracks or would track (so a change not yet committed is in it)
tarball="$top/SOURCES/helexa-$version.tar.gz"
git ls-files -z --cached --others --exclude-standard --deduplicate \
  | tar --null -T - --ignore-failed-read --transform "s|^|helexa-$version/|" -czf "$tarball"
# an rpm database that knows none of the build requirements (Debian's rpm, say) cannot check them
nodeps=()
if ! rpm -q rpm >/dev/null 2>&1; then
  nodeps=(--nodeps)
  echo "note: this system's packages are not RPMs: the build requirements are not checked (--nodeps)"
fi
echo "==> rpmbuild $spec (helexa $version${flavour:+, flavour $flavour})"
# shellcheck disable=SC2086
rpmbuild -bb "${nodeps[@]}" "${defines[@]}" ${RPMBUILD_ARGS:-} "$spec"
echo "==> built:"
find "$top/RPMS" -name '*.rpm' -newer "$tarball" -print
