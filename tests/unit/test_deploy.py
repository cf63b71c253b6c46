"""Structure of the deployment files (no Docker engine needed).

docker-compose.yml, Dockerfile, .env.example, Prometheus config/alerts and Grafana provisioning and
dashboards are parsed and checked here; ``test_promtool.py`` runs promtool on the Prometheus files.
Every metric name a dashboard or alert uses must be listed in ``deploy/metrics.txt``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.inference.settings import InferenceSettings
from services.ingest.settings import IngestSettings
from services.registry.settings import KNOWN_EXAMPLE_TOKENS, RegistrySettings
from services.trainer.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))

APP_SERVICES: dict[str, int] = {
    "registry": int(RegistrySettings.model_fields["http_port"].default),
    "ingest": int(IngestSettings.model_fields["http_port"].default),
    "trainer": int(TrainerSettings.model_fields["http_port"].default),
    "inference": int(InferenceSettings.model_fields["http_port"].default),
}
ARTIFACT_SERVICES = ("trainer", "registry", "inference")
REQUIRED_SECRETS = ("TRADELOOP_ADMIN_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
EXPECTED_ALERTS = {
    "ServiceDown",
    "RetrainFailures",
    "NoSuccessfulRetrain",
    "ChampionTooOld",
    "ChampionLowLiveAccuracy",
    "DeadLetterGrowing",
    "IngestLag",
    "SwapFailures",
    "ConsumerBacklogGrowing",
}
DASHBOARD_UIDS = {
    "tradeloop-overview",
    "tradeloop-ingest",
    "tradeloop-training",
    "tradeloop-models",
    "tradeloop-inference",
}
PROMETHEUS_BUILTINS = frozenset({"up", "ALERTS"})
"""Series Prometheus itself creates; they are not on any tradeloop /metrics page."""

# ${NAME}, ${NAME:-default}, ${NAME:?message}; `$${NAME}` is an escaped literal for the container's shell.
_COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
_SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$", re.IGNORECASE)


def compose_text() -> str:
    """docker-compose.yml without its comment lines."""
    lines = COMPOSE_FILE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def required_reference(name: str) -> re.Pattern[str]:
    """A whole value that is ``${name:?message}``."""
    return re.compile(rf"^\$\{{{re.escape(name)}:\?[^}}]+\}}$")


# --------------------------------------------------------------------------- PromQL metric names

_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_PROMQL_RANGE = re.compile(r"\[[^\]]*\]")
_PROMQL_MATCHERS = re.compile(r"\{[^{}]*\}")
_PROMQL_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_PROMQL_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][A-Za-z0-9_:]*")
_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
        "atan2",
    }
)


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, labels, keywords and strings removed)."""
    text = _PROMQL_STRING.sub('""', expr)
    text = _PROMQL_VARIABLE.sub("1m", text)
    text = _PROMQL_RANGE.sub("", text)
    text = _PROMQL_MATCHERS.sub("", text)
    text = _PROMQL_GROUPING.sub("", text)
    names = set()
    for match in _PROMQL_IDENTIFIER.finditer(text):
        rest = text[match.end() :].lstrip()
        if match.group() not in _PROMQL_KEYWORDS and not rest.startswith("("):
            names.add(match.group())
    return names


def test_metric_names_parses_promql() -> None:
    expr = (
        'sum by (slot, version) (rate(tradeloop_predictions_total{action="BUY", slot=~"a.+"}[$__rate_interval]))'
        " / on (slot) group_left () max(tradeloop_served_champion offset 5m) > 0.5 and up == 1"
        ' or label_replace(vector(60), "timeframe", "1m", "", "") unless ALERTS{alertstate="firing"}'
    )
    assert metric_names(expr) == {"tradeloop_predictions_total", "tradeloop_served_champion", "up", "ALERTS"}


def listed_metrics() -> set[str]:
    """Names in deploy/metrics.txt (comments and blank lines skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in (DEPLOY / "metrics.txt").read_text().splitlines())
    return {line for line in lines if line}


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose also allows a list of NAME=value)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def mask_variables(value: str) -> tuple[str, list[str]]:
    """``value`` with each ``${...}`` replaced by ``@n@``, and the references in order."""
    references = _COMPOSE_VARIABLE.findall(value)
    masked = value
    for number, (name, modifier) in enumerate(references):
        masked = masked.replace(f"${{{name}{modifier}}}", f"@{number}@", 1)
    return masked, [f"${{{name}{modifier}}}" for name, modifier in references]


def healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, json.loads(path.read_text())) for path in DASHBOARD_FILES]


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    result = []
    for panel in panels:
        result.append(panel)
        result.extend(all_panels(panel.get("panels", [])))
    return result


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and Prometheus annotation of every dashboard."""
    found = []
    for name, board in dashboards():
        for panel in all_panels(board["panels"]):
            for target in panel.get("targets", []):
                found.append((f"{name}: {panel.get('title')}", target.get("expr", "")))
        for annotation in board.get("annotations", {}).get("list", []):
            if "expr" in annotation:
                found.append((f"{name}: annotation {annotation.get('name')}", annotation["expr"]))
    return found


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


# --------------------------------------------------------------------------- docker-compose.yml


def test_compose_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    expected = {"redis", "postgres", "migrate", "prometheus", "grafana", *APP_SERVICES}
    assert expected <= set(services)


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == "migrate":
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_redis_keeps_an_append_only_file(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7.4")
    command = redis["command"] if isinstance(redis["command"], list) else redis["command"].split()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-cli ping" in healthcheck_command(redis)
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def test_postgres_is_checked_and_persistent(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in healthcheck_command(postgres)
    assert any(str(volume).endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    assert required_reference("POSTGRES_PASSWORD").match(environment(postgres)["POSTGRES_PASSWORD"])


def test_migrate_runs_once_after_postgres(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["tradeloop", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(migrate.get("restart", "no")) == "no"
    assert environment(migrate)["DATABASE_URL"].startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(("name", "port"), sorted(APP_SERVICES.items()))
def test_app_service(services: dict[str, dict[str, Any]], name: str, port: int) -> None:
    service = services[name]
    assert service["image"] == services["migrate"]["image"], "one image for every service"
    assert service["command"] == ["python", "-m", f"services.{name}"]
    assert service["restart"] == "unless-stopped"
    env = environment(service)
    assert env["TRADELOOP_HTTP_HOST"] == "0.0.0.0"
    assert env["TRADELOOP_HTTP_PORT"] == str(port)
    assert env["TRADELOOP_DATA_DIR"] == "/data"
    assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert service["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }


@pytest.mark.parametrize(("name", "port"), sorted(APP_SERVICES.items()))
def test_app_healthcheck_hits_its_own_ready_endpoint(services: dict[str, dict[str, Any]], name: str, port: int) -> None:
    command = healthcheck_command(services[name])
    assert "urllib" in command, "python:3.11-slim has no curl/wget"
    ports = set(re.findall(r"https?://[^/:]+:(\d+)/", command))
    assert ports == {str(port)}
    assert f":{port}/health/ready" in command


def test_artifact_volume_is_shared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    mounts = {}
    for name in ARTIFACT_SERVICES:
        artifact_mounts = [str(v) for v in services[name].get("volumes", []) if str(v).endswith(":/data/artifacts")]
        assert len(artifact_mounts) == 1, f"{name} does not mount the artifact volume at /data/artifacts"
        mounts[name] = artifact_mounts[0].split(":", 1)[0]
        artifact_dir = environment(services[name]).get("TRADELOOP_ARTIFACT_DIR", "/data/artifacts")
        assert artifact_dir == "/data/artifacts"
    assert len(set(mounts.values())) == 1, f"different artifact volumes: {mounts}"
    assert next(iter(mounts.values())) in compose["volumes"], "the artifact volume must be a named volume"


def test_registry_requires_an_admin_token(services: dict[str, dict[str, Any]]) -> None:
    assert required_reference("TRADELOOP_ADMIN_TOKEN").match(environment(services["registry"])["TRADELOOP_ADMIN_TOKEN"])


def test_no_hard_coded_secrets(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in environment(service).items():
            if _SECRET_KEY.search(key):
                # required (${VAR:?msg}) or optional with an empty default (${VAR:-}), never a literal value
                assert _COMPOSE_VARIABLE.fullmatch(value) and (":?" in value or value.endswith(":-}")), (
                    f"{name}: {key} is hard-coded")
            # URL credentials: the password must be a required variable, e.g. user:${PASSWORD:?msg}@host.
            masked, references = mask_variables(value)
            credentials = re.match(r"^[a-z0-9+.-]+://([^@/]*)@", masked)
            if credentials and ":" in credentials.group(1):
                password = re.fullmatch(r"@(\d+)@", credentials.group(1).split(":", 1)[1])
                assert password, f"{name}: {key} embeds a literal password"
                assert ":?" in references[int(password.group(1))], f"{name}: {key} password has a default"
            assert value.strip().lower() not in KNOWN_EXAMPLE_TOKENS, f"{name}: {key} is a published example value"
    assert "live-admin-token" not in COMPOSE_FILE.read_text()


def test_required_variables_use_the_error_syntax() -> None:
    references = _COMPOSE_VARIABLE.findall(compose_text())
    for secret in REQUIRED_SECRETS:
        uses = [modifier for name, modifier in references if name == secret]
        assert uses, f"{secret} is not used"
        assert all(modifier.startswith(":?") for modifier in uses), f"{secret} must be ${{{secret}:?message}}"


def test_env_example_lists_every_variable_and_no_secret() -> None:
    assignments = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            assignments[key.strip()] = value.strip()
    referenced = {name for name, _ in _COMPOSE_VARIABLE.findall(compose_text())}
    assert referenced <= set(assignments), f"missing from .env.example: {sorted(referenced - set(assignments))}"
    for secret in REQUIRED_SECRETS:
        assert assignments[secret] == "", f"{secret} must be empty in .env.example"


def test_prometheus_service(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_service(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    env = environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert required_reference("GRAFANA_ADMIN_PASSWORD").match(env["GF_SECURITY_ADMIN_PASSWORD"])
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/tradeloop.yml").read_text())["providers"][0]
    dashboards_path = provider["options"]["path"]
    assert mounts[dashboards_path] == "./deploy/grafana/dashboards"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(dashboards_path + "/")
        assert (GRAFANA_DIR / "dashboards" / Path(home).name).is_file()


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    assert "requirements.lock" in text and "requirements.in" in text
    assert "pip install --no-deps ." in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must run as a non-root user"
    assert re.search(r'^CMD \["tradeloop", "--help"\]', text, re.MULTILINE)
    assert "torch==2.13.0" in (ROOT / "requirements.in").read_text()


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".env", "var"} <= entries


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_every_service_by_compose_name() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [target for static in job["static_configs"] for target in static["targets"]]
        for job in config["scrape_configs"]
    }
    for name, port in APP_SERVICES.items():
        assert targets.get(name) == [f"{name}:{port}"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file()


def test_alerts_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules if "alert" in rule]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= EXPECTED_ALERTS
    for rule in rules:
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "tests/alerts_test.yml").read_text())["tests"]
    fires: set[str] = set()
    for group in tests:
        for case in group.get("alert_rule_test", []):
            if case.get("exp_alerts"):
                fires.add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert alerts <= fires, f"alerts without a firing test: {sorted(alerts - fires)}"
    # The quiet half: each test group holds more input series than alerts it expects to fire.
    for group in tests:
        fired = max((len(case.get("exp_alerts") or []) for case in group.get("alert_rule_test", [])), default=0)
        assert len(group["input_series"]) > fired, f"{group.get('name')}: no healthy series"


# --------------------------------------------------------------------------- Grafana


def test_datasource_is_provisioned_with_the_uid_dashboards_use() -> None:
    provisioning = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


def test_dashboards_exist_with_unique_uids() -> None:
    boards = dashboards()
    uids = [board["uid"] for _, board in boards]
    assert len(uids) == len(set(uids))
    assert set(uids) == DASHBOARD_UIDS
    for name, board in boards:
        assert board.get("title"), name


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_dashboard_panels_query_prometheus(path: Path) -> None:
    board = json.loads(path.read_text())
    panels = [panel for panel in all_panels(board["panels"]) if panel.get("type") != "row"]
    assert panels, f"{path.name} has no panels"
    ids = [panel["id"] for panel in all_panels(board["panels"])]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    for panel in panels:
        assert panel.get("title"), f"{path.name}: panel without title"
        assert {"x", "y", "w", "h"} <= set(panel.get("gridPos", {})), panel["title"]
        assert panel.get("targets"), f"{path.name}: {panel['title']} has no targets"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{path.name}: {panel['title']} has a target without expr"
            datasource = target.get("datasource") or panel.get("datasource")
            assert datasource == {"type": "prometheus", "uid": "prometheus"}, panel["title"]


def test_dashboards_and_alerts_only_use_listed_metrics() -> None:
    known = listed_metrics() | PROMETHEUS_BUILTINS
    exprs = dashboard_exprs() + [(f"alert {rule.get('alert')}", rule["expr"]) for rule in alert_rules()]
    unknown = {f"{where}: {name}" for where, expr in exprs for name in metric_names(expr) if name not in known}
    assert not unknown, "metrics missing from deploy/metrics.txt:\n" + "\n".join(sorted(unknown))
    used = {name for _, expr in exprs for name in metric_names(expr)}
    assert used, "no metric found: the PromQL parser is broken"


def test_metrics_list_is_well_formed() -> None:
    lines = [line.split("#", 1)[0].strip() for line in (DEPLOY / "metrics.txt").read_text().splitlines()]
    names = [line for line in lines if line]
    assert len(names) == len(set(names)), "duplicate names"
    for name in names:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
