"""The deployment files: Kubernetes manifests validated offline against the Kubernetes schemas that
kubernetes-validate ships, their wiring checked, and the BentoCloud config read by BentoML's own schema."""

from __future__ import annotations

import copy
from dataclasses import fields

import attr
import kubernetes_validate
import pytest
import yaml
from bentoml._internal.cloud.schemas.schemasv2 import DeploymentConfigSchema
from bentoml._internal.utils.cattr import bentoml_cattr

from higgs_runtime.config import Settings
from paths import REPO_DIR
from service import HiggsAudio

DEPLOY = REPO_DIR / "deploy"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
SETTINGS = {f"HIGGS_{field.name.upper()}" for field in fields(Settings)}


def documents() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> list[dict]:
    return [doc for doc in documents() if doc["kind"] == kind]


@pytest.mark.parametrize("doc", documents(), ids=lambda doc: f"{doc['kind']}-{doc['metadata']['name']}")
def test_manifest_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    (deployment,) = of_kind("Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def container_env(container: dict) -> dict[str, str | None]:
    return {item["name"]: item.get("value") for item in container["env"]}


def test_deployment_wiring():
    (deployment,) = of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    env = container_env(server)
    assert {name for name in env if name.startswith("HIGGS_")} <= SETTINGS
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] >= 600
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert pod["terminationGracePeriodSeconds"] > float(env["HIGGS_DRAIN_TIMEOUT_S"])
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    mounts = {mount["name"]: mount["mountPath"] for mount in server["volumeMounts"]}
    claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]}
    assert env["HIGGS_DATA_DIR"] == mounts["voices"] and env["HF_HOME"].startswith(mounts["models"] + "/")
    shared = {claim["metadata"]["name"]: claim["spec"]["accessModes"] for claim in of_kind("PersistentVolumeClaim")}
    assert all(shared[claim] == ["ReadWriteMany"] for claim in claims.values())

    (job,) = of_kind("Job")
    job_pod = job["spec"]["template"]["spec"]
    assert container_env(job_pod["containers"][0])["HF_HOME"] == env["HF_HOME"]
    assert job_pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claims["models"]
    assert server["image"] == job_pod["containers"][0]["image"]
    for repo in (env["HIGGS_MODEL_PATH"], env["HIGGS_AUDIO_TOKENIZER_PATH"]):
        assert repo in job_pod["containers"][0]["args"][0]


def test_service_reaches_the_pods():
    (deployment,), (service,) = of_kind("Deployment"), of_kind("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"] and annotations["prometheus.io/path"] == "/metrics"


def test_bentocloud_config():
    config = yaml.safe_load((DEPLOY / "bentocloud.yaml").read_text())
    known = {field.name for field in attr.fields(DeploymentConfigSchema)} | {"name", "bento", "cluster"}
    assert set(config) <= known
    schema = bentoml_cattr.structure({k: v for k, v in config.items() if k != "name"}, DeploymentConfigSchema)
    assert set(schema.services) == {HiggsAudio.inner.__name__}
    assert {env.name for env in schema.envs} <= SETTINGS
