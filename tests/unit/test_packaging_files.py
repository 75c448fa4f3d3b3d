"""The packaging files under rpm/ agree with each other and with the programs: the configs the
packages ship load and say what the units, firewall services and users assume; the specs parse
for every flavour. (Building and installing the RPMs: tests/integration/test_packaging.py.)"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cortex.config import load_catalogue, load_cortex_config, split_listen
from neuron.config import load_neuron_config

ROOT = Path(__file__).resolve().parents[2]
RPM = ROOT / "rpm"
FLAVOURS = {"cpu": None, "ampere": "86", "ada": "89", "blackwell": "120"}
VERSION = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with every value it was given (in order)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in (RPM / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def sysuser(name: str) -> list[str]:
    lines = [line for line in (RPM / name).read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1, lines
    return re.findall(r'"[^"]*"|\S+', lines[0])


def firewalld_ports(name: str) -> set[int]:
    return {int(p.get("port")) for p in ET.parse(RPM / name).getroot().iter("port") if p.get("protocol") == "tcp"}


def test_shipped_neuron_config_loads_and_matches_its_unit_and_firewall():
    cfg = load_neuron_config(RPM / "config" / "neuron.toml", env={})
    assert (cfg.host, cfg.port) == ("0.0.0.0", 13131)
    assert cfg.model_roots == ["/var/lib/neuron/models"] and cfg.hf_cache == "/var/lib/neuron/hf-cache"
    assert cfg.api_key is None and cfg.default_models == [] and cfg.ready_after_default_models is False
    assert firewalld_ports("helexa-neuron.firewalld.xml") == {cfg.port}
    service = unit("neuron.service")["Service"]
    assert service["ExecStart"] == ["/usr/bin/neuron serve --config /etc/neuron/neuron.toml"]
    # the state directory systemd creates holds the config's model root and HF cache
    state = {f"/var/lib/{d}" for d in service["StateDirectory"][0].split()}
    assert {*cfg.model_roots, cfg.hf_cache} <= state
    assert service["User"] == ["neuron"] and service["Type"] == ["notify"]


def test_shipped_cortex_config_loads_and_matches_its_unit_and_firewall():
    cfg = load_cortex_config(RPM / "config" / "cortex.toml", env={})
    # the catalogue is the packaged file beside it, whatever the working directory
    assert Path(cfg.models_config) == RPM / "config" / "models.toml"
    catalogue = load_catalogue(Path(cfg.models_config), required=True)
    assert catalogue.models == [] and catalogue.aliases == {}
    assert cfg.auth is None
    assert [(n.name, n.endpoint) for n in cfg.neurons] == [("local", "http://127.0.0.1:13131")]
    assert firewalld_ports("cortex.firewalld.xml") == {split_listen(cfg.gateway.listen)[1]} == {31313}
    assert firewalld_ports("cortex-metrics.firewalld.xml") == {split_listen(cfg.gateway.metrics_listen)[1]} == {31314}
    service = unit("cortex.service")["Service"]
    assert service["ExecStart"] == ["/usr/bin/cortex serve --config /etc/cortex/cortex.toml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP re-reads models.toml
    assert service["User"] == ["cortex"] and service["Type"] == ["notify"]


@pytest.mark.parametrize(("name", "home"), [("neuron", "/var/lib/neuron"), ("cortex", "/var/lib/cortex")])
def test_users_agree_across_sysusers_spec_tmpfiles_and_unit(name, home):
    kind, user, uid, gecos, user_home, shell = sysuser(f"{name}.sysusers")
    assert (kind, user, uid, user_home, shell) == ("u", name, "-", home, "/usr/sbin/nologin")
    spec = (RPM / ("helexa-neuron.spec" if name == "neuron" else "cortex.spec")).read_text()
    # %pre creates the same user where rpm does not read sysusers.d
    assert f"useradd -r -g {name} -d %{{statedir}} -s {shell} -c {gecos} {name}" in spec
    assert f"%global statedir {home}" in spec
    tmpfiles = [line.split() for line in (RPM / f"{name}.tmpfiles").read_text().splitlines() if line[:1] == "d"]
    assert tmpfiles[0] == ["d", home, "0750", name, name, "-"]
    assert all(t[3:5] == [name, name] for t in tmpfiles)
    assert unit(f"{name}.service")["Service"]["WorkingDirectory"] == [home]


def test_units_are_sandboxed_and_restart_on_failure():
    for name in ("neuron.service", "cortex.service"):
        service = unit(name)["Service"]
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictNamespaces", "LockPersonality"):
            assert service[key] == ["yes"], (name, key)
        assert service["ProtectSystem"] == ["strict"] and service["CapabilityBoundingSet"] == [""]
        assert service["Restart"] == ["on-failure"] and "WatchdogSec" in service
        assert service["SystemCallFilter"][0] == "@system-service"
        assert unit(name)["Install"]["WantedBy"] == ["multi-user.target"]
    neuron = unit("neuron.service")["Service"]
    assert neuron["DevicePolicy"] == ["closed"] and all(d.startswith("char-nvidia") for d in neuron["DeviceAllow"])
    assert unit("cortex.service")["Service"]["PrivateDevices"] == ["yes"]
    cpu = configparser.ConfigParser()
    cpu.read_string((RPM / "neuron-cpu.conf").read_text())
    assert cpu["Service"]["PrivateDevices"] == "yes" and cpu["Service"]["ExecStartPre"] == ""


needs_rpmspec = pytest.mark.skipif(shutil.which("rpmspec") is None, reason="rpmspec not installed (Debian: rpm)")


def rpmspec(spec: str, **defines: str) -> subprocess.CompletedProcess:
    args = [a for k, v in defines.items() for a in ("--define", f"{k} {v}")]
    return subprocess.run(["rpmspec", "-P", *args, str(RPM / spec)], capture_output=True, text=True, timeout=60)


@needs_rpmspec
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_neuron_spec_parses_for_every_flavour(flavour):
    done = rpmspec("helexa-neuron.spec", flavour=flavour, helexa_version=VERSION)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert re.search(rf"^Name:\s+helexa-neuron-{flavour}$", text, re.M)
    assert re.search(rf"^Version:\s+{re.escape(VERSION)}$", text, re.M)
    conflicts = set(re.findall(r"^Conflicts:\s+(\S+)$", text, re.M))
    assert conflicts == {f"helexa-neuron-{f}" for f in FLAVOURS if f != flavour}
    assert re.search(r"^Provides:\s+helexa-neuron = ", text, re.M)
    archs = FLAVOURS[flavour]
    assert ("export HELEXA_CUDA=ON" in text) == (archs is not None)
    assert ("export HELEXA_CUDA=OFF" in text) == (archs is None)
    if archs:
        assert f'export HELEXA_CUDA_ARCHS="{archs}"' in text
        assert re.search(r"^Recommends:\s+libcuda\.so\.1\(\)\(64bit\)$", text, re.M)
    else:
        assert "HELEXA_CUDA_ARCHS" not in text.split("\n%install", 1)[0]  # the build leaves them alone
        assert "neuron-cpu.conf" in text  # the GPU-less drop-in
    assert "--extra-index-url https://download.pytorch.org/whl/" in text


@needs_rpmspec
def test_spec_errors_name_what_is_wrong():
    unknown = rpmspec("helexa-neuron.spec", flavour="volta", helexa_version=VERSION)
    assert unknown.returncode != 0 and "flavour volta: expected cpu, ampere, ada or blackwell" in unknown.stderr
    for spec in ("helexa-neuron.spec", "cortex.spec"):
        missing = rpmspec(spec)
        assert missing.returncode != 0 and "define helexa_version" in missing.stderr
    no_index = rpmspec("helexa-neuron.spec", flavour="cpu", helexa_version=VERSION, torch_index="%{nil}")
    assert no_index.returncode == 0 and "--extra-index-url" not in no_index.stdout


@needs_rpmspec
def test_cortex_spec_parses_without_torch():
    done = rpmspec("cortex.spec", helexa_version=VERSION)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^Name:\s+cortex$", done.stdout, re.M)
    assert "HELEXA_NATIVE=OFF" in done.stdout and "torch" not in done.stdout
