"""The observability assets: the Grafana dashboard charts only metrics app/core/metrics.py
declares (every one of them), in valid PromQL; Grafana's provisioning loads it from where
docker-compose.yml mounts it; Prometheus scrapes the compose services on the app's metrics
ports; and the `observability` profile stays opt-in and bound to 127.0.0.1."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from app.core import metrics
from app.core.config import Settings
from tests.deploy.parsing import DOCKER, compose_environment, load_yaml
from tests.support import make_settings, require_program

COMPOSE: dict[str, Any] = load_yaml(DOCKER / "docker-compose.yml")
SERVICES: dict[str, Any] = COMPOSE["services"]
OBSERVABILITY = ("prometheus", "grafana")
GRAFANA = DOCKER / "grafana"
DASHBOARD_PATH = GRAFANA / "dashboards" / "service.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
PANELS: list[dict[str, Any]] = DASHBOARD["panels"]
CHARTS = [panel for panel in PANELS if panel["type"] != "row"]
EXPRESSIONS = [target["expr"] for panel in CHARTS for target in panel["targets"]]
PROMETHEUS_CONFIG: dict[str, Any] = load_yaml(DOCKER / "prometheus" / "prometheus.yml")
DATASOURCE_VARIABLE = "datasource"
# Series each metric type exposes, after the family name (a counter's has no `_total`).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
# Grafana's interval variables, as Prometheus sees them once Grafana has filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier that is not a function call, a number's exponent or a `$variable`.
_IDENTIFIER = re.compile(r"(?<![\w$.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}  # fmt: skip


def declared_series() -> dict[str, set[str]]:
    """The series names each metric of app/core/metrics.py exposes, by family name."""
    declared: dict[str, set[str]] = {}
    for wrapper in vars(metrics).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        for family in wrapper.collect():
            assert family.type in SUFFIXES, f"{family.name}: add {family.type} to SUFFIXES"
            declared[family.name] = {family.name + suffix for suffix in SUFFIXES[family.type]}
    return declared


def promql_metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = _STRINGS.sub('""', expression)
    for pattern in (_MATCHERS, _RANGES, _GROUPING):
        text = pattern.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def promtool() -> str:
    return require_program("promtool", "prometheus")


def check_promql(expressions: list[str], directory: Path) -> None:
    """Parse each expression with Prometheus' own parser (as recording rules)."""
    rules = []
    for index, expression in enumerate(expressions):
        for variable, value in GRAFANA_VARIABLES.items():
            expression = expression.replace(variable, value)
        rules.append({"record": f"check:expression_{index}", "expr": expression})
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def mounts(service: str) -> dict[str, tuple[str, str]]:
    """A compose service's volumes: {target: (source, mode)}."""
    found = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target, *mode = volume.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def bind_mount_source(service: str, target: str) -> Path:
    source, _ = mounts(service)[target]
    assert source.startswith("."), f"{service}: {target} is not a bind mount"
    return (DOCKER / source).resolve()


def compose_app_settings(service: str) -> Settings:
    """The settings a compose app service runs with (metrics ports as the app defaults)."""
    environment = compose_environment(SERVICES[service])
    ports = {name: Settings.model_fields[name].default
             for name in ("METRICS_PORT", "WORKER_METRICS_PORT")}  # fmt: skip
    return make_settings(environment.pop("DATABASE_URL"), **{**ports, **environment})


def test_the_promql_reader_finds_metrics_and_nothing_else() -> None:
    expression = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_seconds_bucket{status="5xx",'
        ' route=~"x|y"}[$__rate_interval]))) / on (job) group_left max(b) > bool 1e3'
        " or sum(c:rule[5m] offset 1h)"
    )
    assert promql_metric_names(expression) == {"a_seconds_bucket", "b", "c:rule"}


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource_variable() -> None:
    assert DASHBOARD["uid"]
    assert DASHBOARD["title"]
    assert DASHBOARD["schemaVersion"] >= 36
    (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == DATASOURCE_VARIABLE
    assert variable["query"] == "prometheus"
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioned["datasources"]
    # Imported elsewhere it asks for a Prometheus; provisioned here it opens on this one.
    assert variable["current"]["value"] == datasource["uid"]


def test_panels_have_titles_and_unique_ids_and_do_not_overlap() -> None:
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids))
    titles = [panel["title"].strip() for panel in PANELS]
    assert all(titles)
    assert len(titles) == len(set(titles))
    cells: dict[tuple[int, int], str] = {}
    for panel in PANELS:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_chart_queries_prometheus_through_the_datasource_variable() -> None:
    source = {"type": "prometheus", "uid": f"${{{DATASOURCE_VARIABLE}}}"}
    for panel in CHARTS:
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_every_expression_names_only_metrics_the_app_declares() -> None:
    exposed = set().union(*declared_series().values())
    for expression in EXPRESSIONS:
        names = promql_metric_names(expression)
        assert names, expression
        assert names <= exposed, f"{expression}: {names - exposed} not in app/core/metrics.py"


def test_every_metric_the_app_declares_has_a_panel() -> None:
    charted = set().union(*(promql_metric_names(expression) for expression in EXPRESSIONS))
    uncharted = {name for name, series in declared_series().items() if not series & charted}
    assert not uncharted, "add a panel to docker/grafana/dashboards/service.json"


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    check_promql(EXPRESSIONS, tmp_path)


def panel(title: str) -> list[str]:
    (found,) = [chart for chart in CHARTS if chart["title"] == title]
    return [target["expr"] for target in found["targets"]]


def test_http_panels_break_rate_errors_and_latency_down_by_route() -> None:
    (rate,) = panel("Request rate by route")
    assert "sum by (route) (rate(http_requests_total" in rate
    errors = " ".join(panel("Error ratio by route"))
    assert set(re.findall(r'status="(\dxx)"', errors)) == {"5xx", "4xx"}
    latency = panel("Latency p50 / p95 / p99 by route")
    quantiles = [re.findall(r"^histogram_quantile\(([\d.]+),", e) for e in latency]
    assert quantiles == [["0.5"], ["0.95"], ["0.99"]]
    for expression in latency:
        assert "by (route, le) (rate(http_request_duration_seconds_bucket" in expression


def test_provisioning_loads_the_dashboard_directory_compose_mounts() -> None:
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "service.yml")["providers"]
    assert provider["type"] == "file"
    mounted = bind_mount_source("grafana", provider["options"]["path"])
    assert mounted == DASHBOARD_PATH.parent
    # Grafana's image reads provisioning from /etc/grafana/provisioning.
    assert bind_mount_source("grafana", "/etc/grafana/provisioning") == GRAFANA / "provisioning"
    ini = configparser.ConfigParser()
    ini.read_string((bind_mount_source("grafana", "/etc/grafana/grafana.ini")).read_text())
    home = Path(ini["dashboards"]["default_home_dashboard_path"])
    assert home.parent == Path(provider["options"]["path"])
    assert (mounted / home.name).is_file()


def test_grafana_shows_dashboards_to_anonymous_viewers_only() -> None:
    ini = configparser.ConfigParser()
    ini.read_string((GRAFANA / "grafana.ini").read_text())
    assert ini.getboolean("auth.anonymous", "enabled") is True
    assert ini["auth.anonymous"]["org_role"] == "Viewer"
    assert ini.getboolean("users", "allow_sign_up") is False


def test_the_datasource_is_the_compose_prometheus() -> None:
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioned["datasources"]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname in SERVICES
    assert "prometheus" in SERVICES[url.hostname]["image"]
    published = {port.rsplit(":", 1)[1] for port in SERVICES[url.hostname]["ports"]}
    assert str(url.port) in published


def test_prometheus_scrapes_the_api_and_worker_on_their_metrics_ports() -> None:
    api, worker = compose_app_settings("api"), compose_app_settings("worker")
    assert SERVICES["api"]["command"][:2] == ["uvicorn", "app.main:app"]
    assert any("arq app.jobs.worker" in part for part in SERVICES["worker"]["command"])
    targets = {
        job["job_name"]: target
        for job in PROMETHEUS_CONFIG["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {
        "api": f"api:{api.METRICS_PORT}",
        "worker": f"worker:{worker.WORKER_METRICS_PORT}",
    }
    # Development listens on 127.0.0.1 by default: Prometheus is another container.
    assert api.metrics_host == worker.metrics_host == "0.0.0.0"  # noqa: S104
    (config_flag,) = [flag for flag in SERVICES["prometheus"]["command"]
                      if flag.startswith("--config.file=")]  # fmt: skip
    config = bind_mount_source("prometheus", config_flag.partition("=")[2])
    assert config == DOCKER / "prometheus" / "prometheus.yml"


def test_prometheus_config_is_valid() -> None:
    path = DOCKER / "prometheus" / "prometheus.yml"
    checked = subprocess.run([promtool(), "check", "config", str(path)], capture_output=True)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


@pytest.mark.parametrize("service", OBSERVABILITY)
def test_observability_services_are_opt_in_local_only_and_pinned(service: str) -> None:
    spec = SERVICES[service]
    assert spec["profiles"] == ["observability"]
    assert spec["ports"]
    assert all(port.startswith("127.0.0.1:") for port in spec["ports"])
    assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", spec["image"]), spec["image"]
    for target, (source, mode) in mounts(service).items():
        if source.startswith("."):
            assert mode == "ro", target
            assert (DOCKER / source).exists(), source


def test_the_observability_profile_holds_its_services_and_metrics_stay_internal() -> None:
    in_profiles = {
        name for name, spec in SERVICES.items() if "observability" in spec.get("profiles", ())
    }
    assert in_profiles == set(OBSERVABILITY)
    settings = compose_app_settings("api")
    metrics_ports = {str(settings.METRICS_PORT), str(settings.WORKER_METRICS_PORT)}
    for name, spec in SERVICES.items():
        published = {port.rsplit(":", 1)[1] for port in spec.get("ports", [])}
        assert not published & metrics_ports, name
