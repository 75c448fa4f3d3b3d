"""The operators' monitoring files (etc/prometheus, etc/grafana) against the code: every PromQL
expression of the alert rules and the dashboard names only series the gateway and the neuron
export (read from their registries, not from a list), the dashboard covers contracts §5 and the
neuron's /metrics, and promtool accepts the configuration and fires the alerts as intended."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from cortex.config import Catalogue, CortexConfig, NeuronEntry
from cortex.fleet.state import Fleet
from cortex.metrics import GatewayMetrics
from cortex.protocol.fleet import DeviceHealth, Health, ModelInfo
from neuron.api.metrics import NeuronMetrics
from neuron.config import NeuronConfig
from neuron.engine.residency import Residency

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "etc" / "prometheus" / "prometheus.yml"
RULES = ROOT / "etc" / "prometheus" / "helexa-rules.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "helexa-fleet.json"
SCHEDULER = ROOT / "cortex" / "fleet" / "scheduler.py"

# contracts §5: the gateway's metric names, as series (counters end in _total, histograms are
# read through their buckets, sums and counts)
CONTRACT_METRICS = (
    "cortex_requests_total",
    "cortex_request_duration_seconds",
    "cortex_time_to_first_token_seconds",
    "cortex_inter_token_latency_seconds",
    "cortex_tokens_per_second",
    "cortex_prompt_tokens_total",
    "cortex_completion_tokens_total",
    "cortex_queue_wait_seconds",
    "cortex_cold_starts_total",
    "cortex_model_loads_total",
    "cortex_model_load_duration_seconds",
    "cortex_evictions_total",
    "cortex_in_flight_requests",
    "cortex_node_up",
    "cortex_device_vram_used_mb",
    "cortex_device_vram_free_mb",
    "cortex_models_loaded",
)
PROMETHEUS_OWN = frozenset({"up"})  # written by Prometheus for every target, not by our code
SERIES_SUFFIXES = {  # the series each family type writes (prometheus_client, text format 0.0.4)
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# promtool's lint of the contract's own names (contracts §5 keeps the _mb gauges beside _bytes)
CONTRACT_LINT = {
    "cortex_device_vram_free_mb metric names should not contain abbreviated units",
    "cortex_device_vram_used_mb metric names should not contain abbreviated units",
}

# --- the code's series --------------------------------------------------------------------------


def _fleet() -> Fleet:
    cfg = CortexConfig(neurons=[NeuronEntry(name="beast", endpoint="http://beast")])
    fleet = Fleet(cfg, Catalogue())
    device = DeviceHealth(index=0, vram_used_mb=1000, vram_free_mb=23000, utilization_pct=0, temp_c=40)
    health = Health(uptime_secs=1, devices=[device], memory_free_mb=30000, models={})
    loaded = ModelInfo(
        id="m",
        harness="torch",
        status="loaded",
        devices=[0],
        vram_used_mb=100,
        quant=None,
        context_length=None,
        load_progress=1.0,
        error=None,
    )
    fleet.nodes["beast"].record_success(None, health, [loaded])
    return fleet


def _series_of(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Family name -> the series names it writes: those of its samples, and those its type always
    writes (a labelled family with no children yet has no samples)."""
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        names = {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
        out[family.name] = names
    return out


@pytest.fixture(scope="module")
def gateway_metrics() -> GatewayMetrics:
    metrics = GatewayMetrics(_fleet())
    metrics.load_finished("m", "beast", "ok", 12.0)  # a counter and a histogram with children
    return metrics


@pytest.fixture(scope="module")
def neuron_metrics(tmp_path_factory) -> NeuronMetrics:
    work = tmp_path_factory.mktemp("neuron-metrics")
    residency = Residency(NeuronConfig(model_roots=[str(work)], hf_cache=str(work / "hf"), allow_download=False))
    health = DeviceHealth(index=0, vram_used_mb=1000, vram_free_mb=23000, utilization_pct=0, temp_c=40)
    metrics = NeuronMetrics(residency, lambda: [health])
    metrics.load_ended("m", 3.0, "ok")
    return metrics


@pytest.fixture(scope="module")
def exported(gateway_metrics, neuron_metrics) -> frozenset[str]:
    families = _series_of(gateway_metrics.registry) | _series_of(neuron_metrics.registry)
    return frozenset(name for names in families.values() for name in names)


def test_series_derived_from_a_family_type_are_the_ones_its_samples_carry(gateway_metrics, neuron_metrics):
    written = {f.name: {s.name for s in f.samples} for f in gateway_metrics.registry.collect()}
    written |= {f.name: {s.name for s in f.samples} for f in neuron_metrics.registry.collect()}
    derived = _series_of(gateway_metrics.registry) | _series_of(neuron_metrics.registry)
    for name in (
        "cortex_model_loads",
        "cortex_model_load_duration_seconds",
        "cortex_node_up",
        "neuron_model_load_seconds",
    ):
        assert written[name] == derived[name], name
    assert derived["cortex_model_loads"] == {"cortex_model_loads_total", "cortex_model_loads_created"}
    assert "cortex_device_vram_used_bytes" in written["cortex_device_vram_used_bytes"]  # the node's health shows


def test_every_contract_metric_is_exported(exported):
    names = {m for m in exported if not m.endswith("_created")}
    missing = [m for m in CONTRACT_METRICS if m not in names and f"{m}_bucket" not in names]
    assert missing == []


# --- PromQL ---------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![\w:])(?:(?:\d+(?:ms|[smhdwy]))+|\d*\.?\d+(?:[eE][+-]?\d+)?)(?![\w:])")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"by", "without", "and", "or", "unless", "bool", "offset", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan", "atan2"}
)


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression reads: what is left once strings, variables, matchers,
    ranges, grouping lists, numbers and durations, functions and keywords are taken out."""
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        after = text[m.end() :].lstrip()
        if after.startswith("("):  # a function (or an aggregation)
            continue
        if m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        ('max by (node) (cortex_node_up{node=~"$node"}) == 0', {"cortex_node_up"}),
        (
            "histogram_quantile(0.95, sum by (model, le) (rate(a_bucket{model=~\"${model}\", le!='+Inf'}"
            "[$__rate_interval])))",
            {"a_bucket"},
        ),
        ("sum(rate(x_total[5m] offset 1h30m)) / on (job) group_left(node) y * 100 > bool 1e3", {"x_total", "y"}),
        ("count(z == 0) or vector(0) unless w[1h:5m]", {"z", "w"}),
        ("sum(x) without (instance) and ignoring(a, b) nan_metric", {"x", "nan_metric"}),
        ("rate(a:recorded:rate5m[5m])", {"a:recorded:rate5m"}),
    ],
)
def test_the_promql_extractor_finds_exactly_the_metric_names(expr, metrics):
    assert promql_metrics(expr) == metrics


def _walk(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from _walk(p.get("panels", []))


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for g in groups for rule in g["rules"]]


def _template_query(var: dict) -> str:
    query = var["query"]
    return query["query"] if isinstance(query, dict) else query


def _expressions() -> list[tuple[str, str]]:
    """(where, expr) for every rule, every panel target and every template query."""
    out = [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in _rules()]
    for p in _walk(_dashboard()["panels"]):
        out += [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]) for t in p.get("targets", [])]
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", _template_query(var).strip())
            assert m is not None, f"variable {var['name']}: expected label_values(SELECTOR, LABEL)"
            out.append((f"variable {var['name']}", m.group(1)))
    return out


EXPRESSIONS = _expressions()


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_every_expression_reads_only_series_the_code_exports(where, expr, exported):
    names = promql_metrics(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = sorted(names - exported - PROMETHEUS_OWN)
    assert unknown == [], f"{where}: {expr}"
    assert not any(n.endswith("_created") for n in names), where


def test_the_expressions_cover_rules_panels_and_variables():
    kinds = {w.split(" ", 1)[0] for w, _ in EXPRESSIONS}
    assert kinds == {"rule", "panel", "variable"}
    assert sum(w.startswith("rule ") for w, _ in EXPRESSIONS) == len(_rules()) >= 6


def test_the_dashboard_covers_the_contract_and_every_series_family_the_code_exports(gateway_metrics, neuron_metrics):
    used = {name for w, expr in EXPRESSIONS if w.startswith("panel ") for name in promql_metrics(expr)}
    missing_contract = [m for m in CONTRACT_METRICS if not {m, f"{m}_bucket", f"{m}_sum", f"{m}_count"} & used]
    assert missing_contract == []
    families = _series_of(gateway_metrics.registry) | _series_of(neuron_metrics.registry)
    unshown = sorted(family for family, names in families.items() if not names & used)
    assert unshown == []


# --- the dashboard's structure -------------------------------------------------------------------


def test_the_dashboard_has_unique_ids_rows_and_a_prometheus_datasource_everywhere():
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36 and dash["uid"] == "helexa-fleet"
    panels = list(_walk(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert dash["panels"][0]["type"] == "row"
    rows = [p for p in panels if p["type"] == "row"]
    assert len(rows) >= 5 and any(r["collapsed"] and r["panels"] for r in rows)  # nested panels are walked
    for p in panels:
        assert p.get("datasource") == DATASOURCE, f"panel {p['id']} {p['title']!r}"
        for t in p.get("targets", []):
            assert t.get("datasource") == DATASOURCE and t["expr"].strip(), f"panel {p['id']} {t['refId']}"
        if p["type"] != "row":
            assert p.get("targets"), f"panel {p['id']} {p['title']!r} has no query"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), f"panel {p['id']}"


def test_the_dashboard_variables_are_a_prometheus_datasource_node_and_model():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "node", "model"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("node", "model"):
        var = variables[name]
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", _template_query(var))
        assert m is not None and m.group(2) == name, _template_query(var)
        assert var["datasource"] == DATASOURCE and var["includeAll"] and var["allValue"] == ".*"


def test_every_dashboard_rate_uses_the_rate_interval_or_the_range():
    ranges = [
        (where, r)
        for where, expr in EXPRESSIONS
        if where.startswith("panel ")
        for r in re.findall(r"(?:rate|increase)\([^()]*?\[([^\]]*)\]", expr)
    ]
    assert ranges, "no rate() in the dashboard"
    assert [(w, r) for w, r in ranges if r not in ("$__rate_interval", "$__range")] == []


def test_panels_filter_by_the_node_and_model_variables():
    panels = [p for p in _walk(_dashboard()["panels"]) if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert sum('node=~"$node"' in e for e in exprs) >= len(exprs) // 2
    assert sum('model=~"$model"' in e for e in exprs) >= len(exprs) // 2


# --- the alert rules ------------------------------------------------------------------------------


def test_every_alert_has_a_duration_a_severity_and_annotations_naming_what_it_is_about():
    rules = _rules()
    assert {r["alert"] for r in rules} >= {
        "HelexaNeuronDown",
        "HelexaNeuronScrapeDown",
        "HelexaModelLoadFailing",
        "HelexaEvictionChurn",
        "HelexaTimeToFirstTokenHigh",
        "HelexaGateway503s",
    }
    for r in rules:
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert set(r["annotations"]) == {"summary", "description"}, r["alert"]
        assert "{{ $labels." in r["annotations"]["summary"], r["alert"]


def _emitted_strings(source: Path, method: str, arg: int) -> set[str]:
    """The string literals the code passes as argument ``arg`` of ``self.<method>(...)``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if is_call and node.func.attr == method and len(node.args) > arg:
            out |= {
                c.value for c in ast.walk(node.args[arg]) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
    return out


def test_the_load_failure_alert_matches_failure_results_the_scheduler_emits():
    emitted = _emitted_strings(SCHEDULER, "_observe", 2)
    assert {"ok", "failed"} <= emitted  # the scan finds the results at all
    rule = next(r for r in _rules() if r["alert"] == "HelexaModelLoadFailing")
    matched = {v for m in re.findall(r'result=~"([^"]+)"', rule["expr"]) for v in m.split("|")}
    assert matched == {"failed", "unreachable"} and matched <= emitted


def test_the_churn_alert_leaves_out_a_reason_the_scheduler_emits():
    assert "admin" in _emitted_strings(SCHEDULER, "_evict", 2)
    rule = next(r for r in _rules() if r["alert"] == "HelexaEvictionChurn")
    assert 'reason!="admin"' in rule["expr"]


def test_the_scrape_config_names_the_ports_the_services_listen_on():
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"cortex", "neuron"} and config["rule_files"] == ["helexa-rules.yml"]
    assert jobs["cortex"]["metrics_path"] == jobs["neuron"]["metrics_path"] == "/metrics"
    assert CortexConfig().gateway.metrics_listen.rsplit(":", 1)[1] == "31314"
    assert [t for sc in jobs["cortex"]["static_configs"] for t in sc["targets"]] == ["cortex.internal:31314"]
    neurons = {t: sc["labels"]["node"] for sc in jobs["neuron"]["static_configs"] for t in sc["targets"]}
    assert neurons == {"beast.internal:13131": "beast", "benjy.internal:13131": "benjy"}
    assert NeuronConfig().port == 13131
    text = PROMETHEUS.read_text()
    assert "# authorization:" in text and "credentials_file:" in text and "file_sd_configs:" in text


# --- promtool -------------------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt install prometheus)")
    return path


def _run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_promtool(), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=60)


def test_promtool_lints_the_neuron_registry_clean_and_the_gateway_one_but_for_the_contract_mb_names(
    gateway_metrics, neuron_metrics
):
    neuron = _run("check", "metrics", stdin=generate_latest(neuron_metrics.registry).decode())
    assert (neuron.returncode, neuron.stdout + neuron.stderr) == (0, "")
    text = generate_latest(gateway_metrics.registry).decode()
    assert 'cortex_device_vram_used_mb{device="0",node="beast"} 1000.0' in text  # the node has a GPU
    gateway = _run("check", "metrics", stdin=text)
    findings = {line.strip() for line in (gateway.stdout + gateway.stderr).splitlines() if line.strip()}
    assert findings == CONTRACT_LINT and gateway.returncode != 0


def test_promtool_accepts_the_scrape_config_and_its_rule_file():
    out = _run("check", "config", "--lint=all", "--lint-fatal", PROMETHEUS)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout


def test_promtool_accepts_the_rules():
    out = _run("check", "rules", "--lint=all", "--lint-fatal", RULES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


def _rendered(alert: str, labels: dict[str, str], value: str = "") -> dict[str, str]:
    """The alert's annotations as Prometheus renders them for ``labels`` (and ``$value``)."""
    rule = next(r for r in _rules() if r["alert"] == alert)

    def render(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return re.sub(r"\{\{ \$value( \| \w+)? \}\}", value, text)

    return {k: render(v) for k, v in rule["annotations"].items()}


def _expect(alert: str, labels: dict[str, str], value: str = "") -> dict:
    rule = next(r for r in _rules() if r["alert"] == alert)
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": _rendered(alert, labels, value)}


GW = {"job": "cortex", "instance": "gw-a:31314"}


def _series(metric: str, labels: dict[str, str], values: str) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _promtool_test(tmp_path: Path, tests: list[dict]) -> subprocess.CompletedProcess:
    spec = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}
    path = tmp_path / "helexa-rules.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return _run("test", "rules", path)


def test_neuron_down_fires_after_its_for_and_only_when_no_gateway_reaches_the_neuron(tmp_path):
    gw_b = {"job": "cortex", "instance": "gw-b:31314"}
    series = [
        _series("cortex_node_up", {**GW, "node": "beast"}, "1 1 0x10"),  # down from 2m, for every gateway
        _series("cortex_node_up", {**gw_b, "node": "beast"}, "1 1 0x10"),
        _series("cortex_node_up", {**GW, "node": "benjy"}, "0x12"),  # one gateway cannot reach it, one can
        _series("cortex_node_up", {**gw_b, "node": "benjy"}, "1x12"),
    ]
    beast = _expect("HelexaNeuronDown", {"node": "beast"})
    assert beast["exp_annotations"]["summary"] == "Neuron beast is down"
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "HelexaNeuronDown", "exp_alerts": []},  # pending
                {"eval_time": "4m", "alertname": "HelexaNeuronDown", "exp_alerts": [beast]},
                {"eval_time": "10m", "alertname": "HelexaNeuronDown", "exp_alerts": [beast]},
            ],
        }
    ]
    out = _promtool_test(tmp_path, tests)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_a_load_failure_fires_for_a_first_failure_and_for_a_later_one_but_not_for_other_results(tmp_path):
    def loads(model: str, node: str, result: str, values: str) -> dict:
        return _series("cortex_model_loads_total", {**GW, "model": model, "node": node, "result": result}, values)

    series = [
        loads("m1", "beast", "failed", "_ _ _ 1x30"),  # its first failure at 3m: a new series at 1
        loads("m2", "benjy", "failed", "1x20 2x12"),  # failed at 0m, and again at 21m
        loads("m3", "beast", "ok", "0+1x33"),  # loads that succeed
        loads("m4", "beast", "dropped", "_ _ _ 1x30"),  # unloaded while loading: not a failure
        loads("m5", "beast", "unreachable", "0x10 1x22"),  # the neuron stopped answering at 11m
    ]
    m1 = _expect("HelexaModelLoadFailing", {"model": "m1", "node": "beast", "result": "failed"})
    m2 = _expect("HelexaModelLoadFailing", {"model": "m2", "node": "benjy", "result": "failed"})
    m5 = _expect("HelexaModelLoadFailing", {"model": "m5", "node": "beast", "result": "unreachable"})
    assert m1["exp_annotations"]["summary"] == "Model m1 fails to load on beast"
    # m2 is new at 0m too (a first failure then, as far as Prometheus knows), until 15m
    at = [
        ("3m", [m2]),  # m1 pending for its 1m
        ("4m", [m1, m2]),
        ("11m", [m1, m2]),  # m5 pending
        ("12m", [m1, m2, m5]),
        ("16m", [m1, m5]),
        ("19m", [m5]),  # m1's failure is more than 15m old
        ("23m", [m2, m5]),
        ("30m", [m2]),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": t, "alertname": "HelexaModelLoadFailing", "exp_alerts": alerts} for t, alerts in at
            ],
        }
    ]
    out = _promtool_test(tmp_path, tests)
    assert out.returncode == 0, out.stdout + out.stderr


def test_503s_fire_on_the_gateway_whose_share_passes_the_bound(tmp_path):
    gw_b = {"job": "cortex", "instance": "gw-b:31314"}
    ok = {"model": "m", "node": "beast", "endpoint": "chat", "status": "200"}
    shed = {"model": "m", "node": "", "endpoint": "chat", "status": "503"}  # refused before routing: no node
    series = [
        _series("cortex_requests_total", {**GW, **ok}, "0+60x30"),  # 1 request/s answered
        _series("cortex_requests_total", {**GW, **shed}, "0+6x30"),  # 0.1/s refused: 9.1 %
        _series("cortex_requests_total", {**gw_b, **ok}, "0+60x30"),
        _series("cortex_requests_total", {**gw_b, **shed}, "0+1x30"),  # 1.6 %: under the bound
    ]
    alert = _expect("HelexaGateway503s", {"instance": "gw-a:31314"}, "9.091%")
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "HelexaGateway503s", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "HelexaGateway503s", "exp_alerts": [alert]},
            ],
        }
    ]
    out = _promtool_test(tmp_path, tests)
    assert out.returncode == 0, out.stdout + out.stderr


def test_churn_ttft_and_scrape_alerts_fire_with_their_values(tmp_path):
    def evictions(node: str, reason: str) -> dict:
        return _series("cortex_evictions_total", {**GW, "model": "m", "node": node, "reason": reason}, "0+1x60")

    def ttft(le: str, values: str) -> dict:
        return _series(
            "cortex_time_to_first_token_seconds_bucket", {**GW, "model": "m", "node": "beast", "le": le}, values
        )

    series = [
        evictions("beast", "lru"),  # one an hour... a minute: 60 an hour
        evictions("benjy", "admin"),  # operators' unloads: not churn
        ttft("5", "0+1x60"),
        ttft("10", "0+1x60"),
        ttft("30", "0+10x60"),
        ttft("+Inf", "0+10x60"),  # p95 = 10 + 20 * (9.5 - 1) / 9 = 28.89 s
        _series("up", {"job": "neuron", "instance": "beast.internal:13131", "node": "beast"}, "1 0x60"),
        _series("up", {"job": "neuron", "instance": "benjy.internal:13131", "node": "benjy"}, "1x60"),
    ]
    churn = _expect("HelexaEvictionChurn", {"node": "beast"}, "60")
    slow = _expect("HelexaTimeToFirstTokenHigh", {"model": "m"}, "28.89s")
    scrape = _expect("HelexaNeuronScrapeDown", {"job": "neuron", "instance": "beast.internal:13131", "node": "beast"})
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "HelexaEvictionChurn", "exp_alerts": []},
                {"eval_time": "50m", "alertname": "HelexaEvictionChurn", "exp_alerts": [churn]},
                {"eval_time": "50m", "alertname": "HelexaTimeToFirstTokenHigh", "exp_alerts": [slow]},
                {"eval_time": "5m", "alertname": "HelexaNeuronScrapeDown", "exp_alerts": []},
                {"eval_time": "7m", "alertname": "HelexaNeuronScrapeDown", "exp_alerts": [scrape]},
            ],
        }
    ]
    out = _promtool_test(tmp_path, tests)
    assert out.returncode == 0, out.stdout + out.stderr
