"""promtool on the Prometheus files: config, rules, rule unit tests, dashboard expressions.

promtool comes from Debian's ``prometheus`` package (``apt-get install -y prometheus``). Without
it these tests fail under CI=true and are skipped elsewhere.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"

# Grafana's variables, replaced by fixed values so that promtool can parse the expressions.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@pytest.fixture(scope="module")
def promtool(debian_tool: Callable[[str], str]) -> str:
    """Debian's ``promtool``; without it the tests fail under CI=true and are skipped elsewhere."""
    return debian_tool("promtool")


def run(*args: str) -> str:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{output}"
    return output


def test_check_config(promtool: str) -> None:
    # Also checks that the rule files it names exist (relative to the config file).
    run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")


def test_check_rules(promtool: str) -> None:
    run(promtool, "check", "rules", "deploy/prometheus/alerts.yml")


def test_alert_unit_tests(promtool: str) -> None:
    output = run(promtool, "test", "rules", "deploy/prometheus/tests/alerts_test.yml")
    assert "SUCCESS" in output


def test_dashboard_expressions_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query and annotation is valid PromQL (checked as recording rules)."""
    rules: list[dict[str, str]] = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        panels = list(board["panels"])
        exprs: list[str] = []
        while panels:
            panel = panels.pop()
            panels.extend(panel.get("panels", []))
            exprs.extend(target["expr"] for target in panel.get("targets", []))
        exprs.extend(a["expr"] for a in board.get("annotations", {}).get("list", []) if "expr" in a)
        for expr in exprs:
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            rules.append({"record": f"dashboard_{path.stem}_{len(rules)}", "expr": expr})
    assert rules
    rule_file = tmp_path / "dashboards.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run(promtool, "check", "rules", str(rule_file))
