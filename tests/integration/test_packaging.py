"""The RPMs, built from this tree with rpmbuild as `make rpm` builds them (the gateway and the cpu
neuron flavour; minutes), then taken apart: their files, owners and modes, dependencies and
scriptlets; their payload unpacked into a scratch root, where the packaged programs run from the
installed tree with the configs they ship and systemd-analyze checks the units. Skipped, with the
reason, where rpmbuild is missing (Debian: apt install rpm)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cortex.config import load_catalogue, load_cortex_config
from neuron.config import load_neuron_config

ROOT = Path(__file__).resolve().parents[2]
PYTHON_ABI = f"{sys.version_info[0]}.{sys.version_info[1]}"

pytestmark = pytest.mark.skipif(
    shutil.which("rpmbuild") is None or shutil.which("rpm2archive") is None,
    reason="rpmbuild / rpm2archive not installed (Fedora: rpm-build; Debian: rpm)",
)


@pytest.fixture(scope="module")
def rpms(tmp_path_factory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("rpmbuild")
    # torch==2.13.0 from pip's own configuration, as `make install` gets it (the CPU build there)
    env = {**os.environ, "RPM_TOPDIR": str(top), "TORCH_INDEX": ""}
    built = {}
    for name, args in (("cortex", ["cortex"]), ("neuron", ["neuron", "cpu"])):
        done = subprocess.run(
            ["bash", "rpm/build.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
        )
        assert done.returncode == 0, (
            f"rpm/build.sh {' '.join(args)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
        )
        assert f"{name}: smoke test passed" in done.stdout  # %check ran the package's smoke test
        paths = [Path(line) for line in done.stdout.split("==> built:\n", 1)[1].splitlines()]
        assert len(paths) == 1, done.stdout[-2000:]
        built[name] = paths[0]
    assert built["cortex"].name.startswith("cortex-") and built["neuron"].name.startswith("helexa-neuron-cpu-")
    return built


@pytest.fixture(scope="module")
def installed(rpms, tmp_path_factory) -> Path:
    """Both payloads unpacked into one scratch root, as `rpm -i` would lay them out."""
    root = tmp_path_factory.mktemp("root")
    for path in rpms.values():
        unpack = subprocess.run(f"rpm2archive - < '{path}' | tar -xz", shell=True, cwd=root, capture_output=True)
        assert unpack.returncode == 0, unpack.stderr
    return root


def query(path: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(path)], capture_output=True, text=True, check=True).stdout


def files_of(path: Path) -> dict[str, tuple[str, str, str, str]]:
    """path -> (flags, mode, user, group) of every file of the package."""
    fmt = "[%{FILENAMES}\t%{FILEFLAGS:fflags}\t%{FILEMODES:perms}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\n]"
    return {
        f: (fl, mode, user, group)
        for f, fl, mode, user, group in (line.split("\t") for line in query(path, "--qf", fmt).splitlines())
    }


def test_neuron_package_files(rpms):
    files = files_of(rpms["neuron"])
    expected = {
        "/usr/bin/neuron",
        "/usr/lib/helexa-neuron/bin/neuron",
        "/usr/lib/helexa-neuron/bin/python",
        "/usr/lib/systemd/system/neuron.service",
        "/usr/lib/systemd/system/neuron.service.d/cpu.conf",
        "/usr/lib/sysusers.d/neuron.conf",
        "/usr/lib/tmpfiles.d/neuron.conf",
        "/usr/lib/firewalld/services/helexa-neuron.xml",
        "/etc/neuron/neuron.toml",
        "/var/lib/neuron/models",
        "/var/lib/neuron/hf-cache",
    }
    assert expected <= files.keys(), sorted(expected - files.keys())
    assert any(re.fullmatch(r"/usr/share/licenses/helexa-neuron-cpu(-[0-9.]+)?/LICENSE", f) for f in files)
    site = f"/usr/lib/helexa-neuron/lib/python{PYTHON_ABI}/site-packages"
    assert any(f.startswith(f"{site}/neuron/_C") and f.endswith(".so") for f in files)  # the native kernels
    assert f"{site}/torch/__init__.py" in files and f"{site}/cortex/protocol/fleet.py" in files
    assert any(f.endswith("/torch/__pycache__/__init__.cpython-" + PYTHON_ABI.replace(".", "") + ".pyc") for f in files)
    assert not any("/.build-id/" in f or "/site-packages/pip/" in f for f in files)
    assert not [f for f in files if not f.startswith(("/usr/", "/etc/neuron", "/var/lib/neuron"))]
    flags, mode, _user, group = files["/etc/neuron/neuron.toml"]
    assert "c" in flags and "n" in flags and mode == "-rw-r-----" and group == "neuron"  # %config(noreplace)
    assert files["/var/lib/neuron/models"][1:] == ("drwxr-x---", "neuron", "neuron")


def test_cortex_package_files(rpms):
    files = files_of(rpms["cortex"])
    expected = {
        "/usr/bin/cortex",
        "/usr/lib/cortex/bin/cortex",
        "/usr/lib/systemd/system/cortex.service",
        "/usr/lib/sysusers.d/cortex.conf",
        "/usr/lib/tmpfiles.d/cortex.conf",
        "/usr/lib/firewalld/services/cortex.xml",
        "/usr/lib/firewalld/services/cortex-metrics.xml",
        "/etc/cortex/cortex.toml",
        "/etc/cortex/models.toml",
        "/usr/share/cortex/prometheus/prometheus.yml",
        "/usr/share/cortex/prometheus/helexa-rules.yml",
        "/usr/share/cortex/grafana/helexa-fleet.json",
    }
    assert expected <= files.keys(), sorted(expected - files.keys())
    # the gateway: no torch, no numpy, no native extension of ours
    assert not any(re.search(r"/site-packages/(torch|numpy|neuron/_C.*\.so)", f) for f in files)
    assert any(f.endswith("/site-packages/sanic/__init__.py") for f in files)
    for config in ("/etc/cortex/cortex.toml", "/etc/cortex/models.toml"):
        flags, mode, _user, group = files[config]
        assert "c" in flags and "n" in flags and mode == "-rw-r-----" and group == "cortex"


def test_dependencies_are_the_systems_not_the_bundled_libraries(rpms):
    for name, path in rpms.items():
        requires = set(query(path, "--requires").splitlines())
        provides = set(query(path, "--provides").splitlines())
        assert f"python(abi) = {PYTHON_ABI}" in requires
        # the environment's own libraries satisfy each other: none is asked of, or offered to, the system
        assert not [r for r in requires if ".so" in r or ("python3." in r and "dist(" in r)], requires
        assert not [p for p in provides if ".so" in p or "dist(" in p], provides
        user = "neuron" if name == "neuron" else "cortex"
        assert {f"user({user})", f"group({user})"} <= provides
    neuron = rpms["neuron"]
    assert any(p.startswith("helexa-neuron = ") for p in query(neuron, "--provides").splitlines())
    conflicts = set(query(neuron, "--conflicts").split())
    assert {"helexa-neuron-ampere", "helexa-neuron-ada", "helexa-neuron-blackwell"} <= conflicts
    assert "helexa-neuron-cpu" not in conflicts
    assert any(p.startswith("helexa-cortex = ") for p in query(rpms["cortex"], "--provides").splitlines())


def scriptlets(path: Path) -> dict[str, str]:
    scripts = query(path, "--scripts")
    found = re.findall(r"^(\w+)install scriptlet[^\n]*:\n(.*?)(?=^\w+install scriptlet|\Z)", scripts, re.M | re.S)
    return dict(found)


def test_scriptlets(rpms):
    for name, path in rpms.items():
        parts = scriptlets(path)
        assert set(parts) == {"pre", "post", "preun", "postun"}, parts
        unit = f"{name}.service"
        assert f"useradd -r -g {name} -d /var/lib/{name} -s /usr/sbin/nologin" in parts["pre"]
        assert f"systemd-tmpfiles --create /usr/lib/tmpfiles.d/{name}.conf" in parts["post"]
        assert f"systemctl --no-reload preset {unit}" in parts["post"]
        assert f"systemctl --no-reload disable --now {unit}" in parts["preun"]
        assert f"systemctl try-restart {unit}" in parts["postun"]
        for body in parts.values():  # each is a valid shell script
            assert subprocess.run(["sh", "-n"], input=body, text=True).returncode == 0, body


@pytest.mark.parametrize("exists", [False, True])
def test_pre_creates_the_service_user_only_when_missing(rpms, tmp_path, exists):
    """%pre run as rpm runs it (sh, $1 = 1 on install), with getent / groupadd / useradd stubs
    that record their calls: the user and group are created once, never twice."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool, rc in (("getent", 0 if exists else 2), ("groupadd", 0), ("useradd", 0)):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit {rc}\n')
        (bin_dir / tool).chmod(0o755)
    for name, path in rpms.items():
        calls.write_text("")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
        done = subprocess.run(["sh", "-c", scriptlets(path)["pre"], "pre", "1"], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr
        made = calls.read_text().splitlines()
        lookups = [f"getent group {name}", f"getent passwd {name}"]
        if exists:
            assert made == lookups
        else:
            gecos = {"neuron": "helexa neuron daemon", "cortex": "helexa cortex gateway"}[name]
            assert made == [
                lookups[0],
                f"groupadd -r {name}",
                lookups[1],
                f"useradd -r -g {name} -d /var/lib/{name} -s /usr/sbin/nologin -c {gecos} {name}",
            ]


def test_no_file_names_the_build_machine(installed):
    found = subprocess.run(["grep", "-rlI", "BUILDROOT", str(installed)], capture_output=True, text=True)
    assert found.stdout == "", found.stdout[:2000]
    script = (installed / "usr/lib/helexa-neuron/bin/neuron").read_text().splitlines()[0]
    assert script == "#!/usr/lib/helexa-neuron/bin/python"
    assert os.readlink(installed / "usr/bin/neuron") == "../lib/helexa-neuron/bin/neuron"
    assert (installed / "usr/bin/cortex").resolve() == (installed / "usr/lib/cortex/bin/cortex")


@pytest.mark.parametrize("program", ["cortex", "neuron"])
def test_packaged_programs_serve_from_the_installed_tree(installed, program):
    """--help, then serve /health with the shipped config (rpm/smoke.sh, the spec's %check too)."""
    done = subprocess.run(
        ["bash", str(ROOT / "rpm/smoke.sh"), program, str(installed)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"usage: {program}" in done.stdout and f"{program}: smoke test passed" in done.stdout
    assert re.search(rf"{program} serve \(shipped config\) /health: \{{", done.stdout)
    if program == "neuron":
        assert "'native_kernels': ['quant', 'dense', 'attention', 'gdn', 'nccl']" in done.stdout


def test_shipped_configs_load_from_the_payload(installed):
    neuron = load_neuron_config(installed / "etc/neuron/neuron.toml", env={})
    assert neuron.port == 13131 and neuron.model_roots == ["/var/lib/neuron/models"]
    cortex = load_cortex_config(installed / "etc/cortex/cortex.toml", env={})
    assert Path(cortex.models_config) == installed / "etc/cortex/models.toml"
    assert load_catalogue(Path(cortex.models_config), required=True).models == []
    assert [n.endpoint for n in cortex.neurons] == ["http://127.0.0.1:13131"]


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


def systemd_root(installed: Path, tmp_path: Path, *, drop_ins: bool = True) -> Path:
    """The payload plus what the units name from the rest of a system: systemd's own targets and
    the commands of ExecReload / ExecStartPre."""
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    units = root / "usr/lib/systemd/system"
    for target in Path("/usr/lib/systemd/system").glob("*.target"):
        shutil.copy(target, units / target.name)
    for command in ("usr/bin/kill", "usr/bin/nvidia-modprobe"):
        (root / command).write_text("#!/bin/sh\n")
        (root / command).chmod(0o755)
    (root / "bin").symlink_to("usr/bin")
    if not drop_ins:
        shutil.rmtree(units / "neuron.service.d")
    return root


@needs_systemd_analyze
def test_systemd_analyze_verify(installed, tmp_path):
    root = systemd_root(installed, tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "neuron.service", "cortex.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stdout + done.stderr


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("unit", "drop_ins", "bound"),
    [("cortex.service", True, 4.0), ("neuron.service", True, 5.0), ("neuron.service", False, 5.0)],
    ids=["cortex", "neuron-cpu", "neuron-gpu"],
)
def test_systemd_security_exposure(installed, tmp_path, unit, drop_ins, bound):
    root = systemd_root(installed, tmp_path, drop_ins=drop_ins)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert score, done.stdout + done.stderr
    print(f"{unit} ({'with' if drop_ins else 'without'} drop-ins): exposure {score[1]}")
    assert float(score[1]) <= bound, done.stdout
