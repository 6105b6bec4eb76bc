"""The Grafana dashboard in deploy/ uses only metrics the monitor's /metrics exports."""

import json
import re

from tests.farm import ROOT
from web.metrics import _licences, _registry, _scheduler


def exported_names() -> set[str]:
    stats = {"tasks": {"running": 1}, "attempts": {"done": 2, "lost": 1},
             "finished_per_minute": [1],
             "durations": {"count": 2, "sum": 3.0, "buckets": [[1.0, 1], [5.0, 2]]}}
    overview = {"workers": {"idle": 1}, "queues": [{"pool": "cpu", "band": "normal",
                                                    "messages": 0}], "reports": {"dead": 0}}
    pools = [{"name": "nuke", "in_use": 1, "external_in_use": 0, "free": 4}]
    names = {"corral_up"}
    for family in [*_scheduler(stats), *_registry(overview), *_licences(pools)]:
        names.update(sample.name for sample in family.samples)
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "corral.json").read_text())
    exported = exported_names()
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bcorral_[a-z_]+", target["expr"])}
    assert used and used <= exported, sorted(used - exported)
