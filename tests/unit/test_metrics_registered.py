"""deploy/metrics.txt against the code: every listed name is registered by a service, none under TO ADD is.

Each service's composition root is built (``build(settings)``: no I/O, nothing started) and the
metric families on its registry are expanded to the names PromQL sees (counter → ``_total``,
histogram → ``_bucket``/``_sum``/``_count``). Families count even before their first sample.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.inference.main import build as build_inference
from services.inference.settings import InferenceSettings
from services.ingest.main import build as build_ingest
from services.ingest.settings import IngestSettings
from services.registry.main import build as build_registry
from services.registry.settings import RegistrySettings
from services.trainer.main import build as build_trainer
from services.trainer.settings import TrainerSettings
from shared.runtime import ServiceRuntime

METRICS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "metrics.txt"
TO_ADD_HEADING = "# TO ADD"
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gauge": ("",),
    "unknown": ("",),
}


def listed() -> tuple[set[str], set[str]]:
    """(names above the TO ADD heading, names below it) of deploy/metrics.txt."""
    exposed: set[str] = set()
    to_add: set[str] = set()
    target = exposed
    for line in METRICS_FILE.read_text().splitlines():
        if line.startswith(TO_ADD_HEADING):
            target = to_add
        name = line.split("#", 1)[0].strip()
        if name:
            target.add(name)
    return exposed, to_add


def promql_names(registry: CollectorRegistry) -> set[str]:
    """The sample names a registry's families can expose."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ServiceRuntime]:
    data = tmp_path_factory.mktemp("metrics")
    common = {"data_dir": data, "database_url": None, "redis_url": "redis://127.0.0.1:1/0"}
    return {
        "registry": build_registry(RegistrySettings(admin_token="metrics-test-token-0123456789", **common)),
        "ingest": build_ingest(IngestSettings(**common)),
        "trainer": build_trainer(TrainerSettings(**common)),
        "inference": build_inference(InferenceSettings(**common)),
    }


def test_the_list_has_both_parts() -> None:
    exposed, to_add = listed()
    assert exposed, "no metric above the TO ADD heading"
    assert TO_ADD_HEADING in METRICS_FILE.read_text(), "keep the TO ADD heading (its list may be empty)"
    assert not exposed & to_add


def test_every_listed_metric_is_registered(runtimes: dict[str, ServiceRuntime]) -> None:
    registered = set().union(*(promql_names(runtime.registry) for runtime in runtimes.values()))
    exposed, _ = listed()
    missing = sorted(exposed - registered)
    assert not missing, f"deploy/metrics.txt lists metrics no service registers: {missing}"


def test_no_metric_to_add_is_registered_yet(runtimes: dict[str, ServiceRuntime]) -> None:
    registered = set().union(*(promql_names(runtime.registry) for runtime in runtimes.values()))
    _, to_add = listed()
    done = sorted(to_add & registered)
    assert not done, f"registered now: move them above the TO ADD heading of deploy/metrics.txt: {done}"


def test_every_service_reports_stream_health(runtimes: dict[str, ServiceRuntime]) -> None:
    for name, runtime in runtimes.items():
        names = promql_names(runtime.registry)
        assert {"tradeloop_stream_length", "tradeloop_stream_group_lag"} <= names, name
