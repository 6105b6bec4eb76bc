"""Kubernetes manifests (deploy/k8s/), offline: they are what render.py makes from farm.yaml and the
farm's bands; the core objects validate against Kubernetes' schemas and the KEDA objects against
KEDA's vendored CRD schemas; each pool and band's ScaledJob triggers on its own queue and on the
scheduler's count of its queued tasks, which a test runs against a real scheduler database."""

from __future__ import annotations

import copy
import functools
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import text

from services.scheduler import store as ops
from shared.bands import queue_name
from shared.config import load_settings
from shared.db import Store
from shared.errors import ConfigError
from shared.spec import validate_job_spec
from tests.farm import ROOT
from tests.unit.conftest import BANDS

K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
# The oldest Kubernetes still widely run, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KEDA_KINDS = {"ScaledJob": "keda.sh_scaledjobs.yaml",
              "TriggerAuthentication": "keda.sh_triggerauthentications.yaml"}


def load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corral_k8s_render", K8S / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


render = load_render()


def manifests(name: str) -> list[dict[str, Any]]:
    return [obj for obj in yaml.safe_load_all((K8S / name).read_text()) if obj]


def all_objects() -> list[dict[str, Any]]:
    return [obj for name in ("corral.yaml", "migrate.yaml", "workers.yaml", "secret.example.yaml")
            for obj in manifests(name)]


def object_id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def strict(schema: Any) -> Any:
    """The CRD's schema refusing unknown fields, as `kubectl apply --validate=strict` does:
    a misspelt field would otherwise be dropped by the API server without a word."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    # The C loader when PyYAML has it: the ScaledJob CRD is 650 kB.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((SCHEMAS / KEDA_KINDS[kind]).read_text(), Loader=loader)
    served = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    assert served, f"{KEDA_KINDS[kind]} has no v1alpha1"
    schema: dict[str, Any] = strict(served[0]["schema"]["openAPIV3Schema"])
    return schema


def keda_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(crd_schema(obj["kind"]))
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(obj)]


def scaled_jobs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ScaledJob"}


def trigger(job: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [t for t in job["spec"]["triggers"] if t["type"] == kind]
    assert len(found) == 1, f"{job['metadata']['name']}: {len(found)} {kind} triggers"
    return found[0]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "ScaledJob":
        spec = spec["jobTargetRef"]
    template = spec.get("template") or {}
    found: list[dict[str, Any]] = template.get("spec", {}).get("containers", [])
    return found


# --- the files are the renderer's -----------------------------------------------------------------

def test_manifests_in_the_repository_are_what_render_makes() -> None:
    for name, text_now in render.render_files().items():
        assert (K8S / name).read_text() == text_now, \
            f"deploy/k8s/{name} differs from its render: run `python deploy/k8s/render.py`"


def test_kustomization_applies_the_rendered_farm() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["corral.yaml", "workers.yaml"]


# --- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(version: str) -> None:
    core = [obj for obj in all_objects() if obj["kind"] not in KEDA_KINDS]
    assert {"Namespace", "PersistentVolumeClaim", "Deployment", "Service", "Job", "Secret"} \
        <= {obj["kind"] for obj in core}
    for obj in core:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{object_id(obj)} on Kubernetes {version}: {exc.message}")


def test_kubernetes_validation_refuses_a_misspelt_probe() -> None:
    deployment = next(obj for obj in manifests("corral.yaml") if obj["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbes"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_keda_objects_validate_against_the_vendored_crd_schemas() -> None:
    keda = [obj for obj in manifests("workers.yaml") if obj["kind"] in KEDA_KINDS]
    assert {obj["kind"] for obj in keda} == set(KEDA_KINDS)
    for obj in keda:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert keda_errors(obj) == [], object_id(obj)


@pytest.mark.parametrize(("path", "value", "complaint"), [
    (("spec", "pollingIntervall"), 10, "pollingIntervall"),
    (("spec", "scalingStrategy", "strategy"), "fastest", "fastest"),
    (("spec", "maxReplicaCount"), "many", "many"),
], ids=["misspelt-field", "unknown-strategy", "wrong-type"])
def test_keda_validation_refuses_a_broken_scaled_job(path: tuple[str, ...], value: Any,
                                                     complaint: str) -> None:
    job = copy.deepcopy(next(iter(scaled_jobs(manifests("workers.yaml")).values())))
    target = job
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert any(complaint in error for error in keda_errors(job))


def test_each_worker_job_template_is_a_valid_kubernetes_job() -> None:
    for name, job in scaled_jobs(manifests("workers.yaml")).items():
        as_job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                  "spec": job["spec"]["jobTargetRef"]}
        kubernetes_validate.validate(as_job, KUBERNETES_VERSIONS[0], strict=True)


# --- triggers: each pool and band ---------------------------------------------------------------

def farm_with(tmp_path: Path, pools: dict[str, Any], bands: dict[str, list[int]]) -> tuple[Path, Path]:
    farm = yaml.safe_load(render.FARM_FILE.read_text())
    farm["pools"] = pools
    farm_file = tmp_path / "farm.yaml"
    farm_file.write_text(yaml.safe_dump(farm))
    config = yaml.safe_load((ROOT / "deploy" / "config.yaml").read_text())
    config["CORRAL"]["bands"] = bands
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return farm_file, config_file


def assert_triggers_name_their_queues(objects: list[dict[str, Any]],
                                      expected: set[tuple[str, str]]) -> None:
    jobs = scaled_jobs(objects)
    seen = set()
    for job in jobs.values():
        labels = job["metadata"]["labels"]
        pool, band = labels["corral.farm/pool"], labels["corral.farm/band"]
        seen.add((pool, band))
        assert trigger(job, "rabbitmq")["metadata"]["queueName"] == queue_name(pool, band)
        query = trigger(job, "postgresql")["metadata"]["query"]
        assert query == render.QUEUED_TASKS_QUERY.format(pool=pool, band=band)
        args = containers(job)[0]["args"]
        assert args[args.index("--pool") + 1] == pool and args[args.index("--bands") + 1] == band
    assert seen == expected


def test_the_repositorys_workers_trigger_on_each_pool_and_band_queue() -> None:
    farm = render.load_farm()
    bands = {band.name for band in load_settings(ROOT / "deploy" / "config.yaml", environ={}).bands}
    expected = {(pool, band) for pool, spec in farm.pools.items()
                for band in (spec.bands or bands)}
    assert_triggers_name_their_queues(manifests("workers.yaml"), expected)


def test_triggers_follow_the_farms_pools_and_its_own_bands(tmp_path: Path) -> None:
    resources = {"requests": {"cpu": "2", "memory": "4Gi"}}
    pools = {"cpu": {"max_workers": 8, "resources": resources},
             "gpu": {"max_workers": 2, "bands": ["urgent"],
                     "resources": {"requests": {"cpu": "8", "memory": "32Gi"},
                                   "limits": {"nvidia.com/gpu": 1}}}}
    farm_file, config_file = farm_with(tmp_path, pools, {"batch": [0, 49], "urgent": [50, 100]})
    files = render.render_files(farm_file, config_file)
    workers = [obj for obj in yaml.safe_load_all(files["workers.yaml"]) if obj]
    assert_triggers_name_their_queues(workers, {("cpu", "batch"), ("cpu", "urgent"),
                                                ("gpu", "urgent")})
    gpu = scaled_jobs(workers)["corral-worker-gpu-urgent"]
    assert gpu["spec"]["maxReplicaCount"] == 2
    args = containers(gpu)[0]["args"]
    assert args[args.index("--gpus") + 1] == "1"
    assert all(keda_errors(obj) == [] for obj in workers)


def test_a_pool_naming_a_band_the_farm_lacks_is_refused(tmp_path: Path) -> None:
    pools = {"cpu": {"max_workers": 4, "bands": ["normal", "rush"],
                     "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}}
    farm_file, config_file = farm_with(tmp_path, pools, {"normal": [0, 100]})
    with pytest.raises(ConfigError, match=r"pools\.cpu\.bands: 'rush' is not a band"):
        render.render_files(farm_file, config_file)


def test_a_pool_name_that_could_break_the_trigger_query_is_refused(tmp_path: Path) -> None:
    pools = {"cpu' OR '1'='1": {"max_workers": 4,
                                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}}
    farm_file, config_file = farm_with(tmp_path, pools, {"normal": [0, 100]})
    with pytest.raises(ConfigError, match="is not a name of letters"):
        render.render_files(farm_file, config_file)


def test_a_farm_file_with_a_misspelt_setting_is_refused_naming_it(tmp_path: Path) -> None:
    farm = yaml.safe_load(render.FARM_FILE.read_text())
    farm["pools"]["cpu"]["max_worker"] = 3
    farm_file = tmp_path / "farm.yaml"
    farm_file.write_text(yaml.safe_dump(farm))
    with pytest.raises(ConfigError, match=r"pools\.cpu\.max_worker"):
        render.load_farm(farm_file)


@pytest.fixture
def queued_counter(scheduler_store: Store) -> Iterator[Any]:
    def count(pool: str, band: str) -> int:
        with scheduler_store.engine.connect() as connection:
            found: int = connection.execute(
                text(render.QUEUED_TASKS_QUERY.format(pool=pool, band=band))).scalar_one()
            return found

    yield count


def submit(store: Store, tasks: int, **spec: Any) -> dict[str, Any]:
    raw = {"tasks": [{"command": ["true"]} for _ in range(tasks)], **spec}
    plan = validate_job_spec(raw, BANDS, max_env_bytes=32768, max_tasks=100000)
    reply: dict[str, Any] = ops.submit_job(store, plan).reply
    return reply


def test_queued_tasks_query_counts_the_ready_tasks_of_exactly_its_pool_and_band(
        scheduler_store: Store, queued_counter: Any) -> None:
    submit(scheduler_store, 3, pool="cpu", priority=50)
    submit(scheduler_store, 2, pool="cpu", priority=500)
    submit(scheduler_store, 1, pool="gpu", priority=50)
    first = submit(scheduler_store, 1, pool="cpu", priority=50)
    # Waiting for another job is not ready: no worker could take it yet.
    submit(scheduler_store, 4, pool="cpu", priority=50, depends_on=[first["id"]])
    assert queued_counter("cpu", "normal") == 4
    assert queued_counter("cpu", "high") == 2
    assert queued_counter("gpu", "normal") == 1
    assert queued_counter("gpu", "high") == 0


# --- what the pods run ----------------------------------------------------------------------------

def test_containers_keep_the_images_tini_entrypoint() -> None:
    for obj in all_objects():
        for container in containers(obj):
            assert "command" not in container, f"{object_id(obj)} replaces the entrypoint"
            assert container["args"], object_id(obj)


def test_every_service_and_the_monitor_has_probes_and_resource_requests() -> None:
    deployments = [obj for obj in manifests("corral.yaml") if obj["kind"] == "Deployment"]
    names = {obj["metadata"]["name"] for obj in deployments}
    assert {"corral-registry", "corral-scheduler", "corral-resource-negotiator", "corral-license",
            "corral-cleanup", "corral-monitor"} <= names
    for deployment in deployments:
        for container in containers(deployment):
            assert container["resources"]["requests"], object_id(deployment)
            assert "readinessProbe" in container and "livenessProbe" in container
    for name, module, health, _ in render.SERVICES:
        deployment = next(d for d in deployments if d["metadata"]["name"] == f"corral-{name}")
        container = containers(deployment)[0]
        assert container["args"][-1] == module
        assert container["livenessProbe"]["exec"]["command"] == ["corral", "health", health]
    monitor = containers(next(d for d in deployments if d["metadata"]["name"] == "corral-monitor"))
    assert monitor[0]["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_render_workers_are_never_stopped_by_scale_down() -> None:
    for name, job in scaled_jobs(manifests("workers.yaml")).items():
        args = containers(job)[0]["args"]
        # One task per Job: KEDA only creates Jobs, and a finished worker leaves by itself.
        assert args[args.index("--max-tasks") + 1] == "1", name
        target = job["spec"]["jobTargetRef"]
        assert "activeDeadlineSeconds" not in target, f"{name}: a deadline would kill a long render"
        assert target["template"]["spec"]["restartPolicy"] == "Never"


def test_credentials_come_only_from_the_secret_and_every_key_is_in_its_example() -> None:
    secret = manifests("secret.example.yaml")[0]
    keys = set(secret["stringData"])
    used = set()
    for obj in all_objects():
        for container in containers(obj):
            for variable in container.get("env", []):
                if variable["name"].endswith(("_URI", "_DB")):
                    ref = variable["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == secret["metadata"]["name"]
                    used.add(ref["key"])
        if obj["kind"] == "TriggerAuthentication":
            used |= {ref["key"] for ref in obj["spec"]["secretTargetRef"]}
    assert used and used <= keys, f"not in secret.example.yaml: {sorted(used - keys)}"
