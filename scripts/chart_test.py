#!/usr/bin/env python3
"""Tests for the Helm chart in helm/auth-sidecar, with real Helm and real schemas.

Run through scripts/test-chart.sh, which provides a venv with helm-python-sdk (Helm v4's Go
SDK, no helm binary) and kubernetes-validate. For every scenario (the chart's ci/*-values.yaml
plus a few variants built here, and the example parent chart under helm/examples/) it:

  * lints the chart and validates the values against values.schema.json;
  * renders the chart offline and validates every manifest against the Kubernetes OpenAPI
    schemas (strict: unknown fields fail) of the oldest supported and the newest known
    Kubernetes version; CRDs (ServiceMonitor) are checked structurally instead;
  * asserts the deployment contract: probes on the admin port, no secret value outside a
    Secret (in particular never in the ConfigMap), hardened securityContext, localhost backend
    in sidecar mode, checksum annotations, a termination grace period that covers the preStop
    sleep plus the drain, every file and env var the config references actually provided;
  * rebuilds the pod's view of /etc/auth-sidecar (ConfigMap and Secret items, env vars) in a
    temp directory and runs `auth-sidecar check-config` on the rendered config.toml.

It also checks that bad values fail the render with a clear message.

Environment:
  AUTH_SIDECAR_BIN               binary for check-config (default target/debug/auth-sidecar)
  CHART_TEST_SKIP_CHECK_CONFIG=1 report check-config as skipped when the binary is missing
                                 (otherwise a missing binary is a failure)

Prints one line per assertion and closes with `N passed, M failed` (`, K skipped` when some
were skipped); exits non-zero when anything failed.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import helm_python as helm
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "auth-sidecar"
EXAMPLE = ROOT / "helm" / "examples" / "chat-with-auth-sidecar"
CONTAINER_CONFIG = ROOT / "deploy" / "container-config.toml"
RELEASE = "chat-auth"
NAMESPACE = "chat"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known schema.
KUBE_VERSIONS = ["1.30", kv_utils.major_minor(kv_utils.latest_version())]
CONTAINER = "auth-sidecar"
CONFIG_DIR = "/etc/auth-sidecar"
CONFIG_PATH = f"{CONFIG_DIR}/config.toml"
# Config keys that hold a secret reference ({ env = ... } or { file = ... }).
SECRET_KEYS = [
    ("auth", "hmac_secret"),
    ("initiate", "api_key"),
    ("refresh", "api_key"),
    ("app_identity", "secret"),
    ("backend", "client_key"),
    ("shared_store", "secret"),
    ("shared_store", "username"),
    ("shared_store", "password"),
    ("revocation", "admin_secret"),
]
# API groups whose kinds are CRDs: no schema in kubernetes-validate, asserted structurally.
CRD_GROUPS = ("monitoring.coreos.com/",)
HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            self.failures.append(name)
            print(f"FAIL  {name}")
            for line in (detail or "").rstrip().splitlines():
                print(f"        {line}")
        return ok

    def skip(self, name: str, why: str) -> None:
        self.skipped += 1
        print(f"skip  {name}: {why}")

    def summary(self) -> str:
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        return line


R = Report()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """The Go library logs lint findings straight to fd 2; keep the report readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_duration_seconds(s: str) -> int:
    """The binary's duration syntax ("250ms", "30s", "5m", "2h", "7d"), rounded up."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", s.strip())
    if not m:
        raise ValueError(f"not a duration: {s!r}")
    n, unit = int(m.group(1)), m.group(2)
    if unit == "ms":
        return -(-n // 1000)
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def manifests_of(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for name, text in sorted(rendered.items()):
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template__"] = name
                docs.append(doc)
    return docs


def strip_meta(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__template__"}


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every workload that runs the auth-sidecar container."""
    out = []
    for d in docs:
        if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            tpl = d["spec"]["template"]
            spec = tpl["spec"]
            names = [c["name"] for c in spec.get("containers", []) + spec.get("initContainers", [])]
            if CONTAINER in names:
                out.append((d, tpl))
    return out


def sidecar_container(spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The auth-sidecar container and whether it is an init (native sidecar) container."""
    for c in spec.get("initContainers", []):
        if c["name"] == CONTAINER:
            return c, True
    for c in spec.get("containers", []):
        if c["name"] == CONTAINER:
            return c, False
    raise KeyError(CONTAINER)


def port_number(container: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def secret_strings(docs: list[dict[str, Any]], values: dict[str, Any]) -> set[str]:
    """Every secret value this render knows: the Secrets' data and the secret values."""
    found: set[str] = set()
    for s in kinds(docs, "Secret"):
        for v in (s.get("data") or {}).values():
            found.add(base64.b64decode(v).decode("utf-8", "replace"))
        for v in (s.get("stringData") or {}).values():
            found.add(str(v))
    sec = values.get("secrets") or {}
    for k in ("hmacSecret", "initiateApiKey", "refreshApiKey", "appIdentitySecret",
              "sharedStoreSecret", "sharedStoreUsername", "sharedStorePassword",
              "revocationAdminSecret"):
        if sec.get(k):
            found.add(str(sec[k]))
    if (values.get("tls") or {}).get("key"):
        found.add(values["tls"]["key"])
    # Short strings could match by accident; every real secret here is long.
    return {s.strip() for s in found if len(s.strip()) >= 12}


def gen_tls_pair() -> tuple[str, str]:
    """A real self-signed certificate and key: check-config parses them."""
    if not shutil.which("openssl"):
        raise SystemExit("chart_test.py: openssl is needed to make a test TLS certificate")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=auth-sidecar.test",
             "-keyout", f"{d}/tls.key", "-out", f"{d}/tls.crt"],
            check=True, capture_output=True,
        )
        return Path(f"{d}/tls.crt").read_text(), Path(f"{d}/tls.key").read_text()


TLS_CERT, TLS_KEY = gen_tls_pair()


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


class Scenario:
    def __init__(
        self,
        name: str,
        values: dict[str, Any],
        *,
        chart: Path = CHART,
        external_secrets: dict[str, dict[str, str]] | None = None,
        expect: Callable[["Scenario", list[dict[str, Any]]], None] | None = None,
        chart_values_key: str | None = None,
    ) -> None:
        self.name = name
        self.values = values
        self.chart = chart
        # Secrets that exist in the cluster but not in the render (existingSecret), by name.
        self.external_secrets = external_secrets or {}
        self.expect = expect
        # For a parent chart: the key under which auth-sidecar's values sit.
        self.chart_values_key = chart_values_key

    def sidecar_values(self, merged: dict[str, Any]) -> dict[str, Any]:
        return merged[self.chart_values_key] if self.chart_values_key else merged


def ci_values(name: str) -> dict[str, Any]:
    return load_yaml(CHART / "ci" / f"{name}-values.yaml")


LONG = "external-secret-value-0123456789abcdef0123456789"


def expect_gateway(s: Scenario, docs: list[dict[str, Any]]) -> None:
    dep = kinds(docs, "Deployment")[0]
    spec = dep["spec"]["template"]["spec"]
    R.check(f"{s.name}: gateway pod runs only auth-sidecar",
            [c["name"] for c in spec["containers"]] == [CONTAINER], str(spec["containers"]))
    R.check(f"{s.name}: Deployment sets replicas", dep["spec"].get("replicas") == 2)
    R.check(f"{s.name}: ServiceAccount rendered without API token",
            any(sa.get("automountServiceAccountToken") is False for sa in kinds(docs, "ServiceAccount"))
            and spec.get("automountServiceAccountToken") is False)
    R.check(f"{s.name}: no HPA, PDB or ServiceMonitor by default",
            not kinds(docs, "HorizontalPodAutoscaler") and not kinds(docs, "PodDisruptionBudget")
            and not kinds(docs, "ServiceMonitor"))


def expect_sidecar(s: Scenario, docs: list[dict[str, Any]]) -> None:
    merged = helm.Chart.load(s.chart).merge_values(s.values)
    port = int(merged["sidecar"]["backendPort"])
    cfg = rendered_config(docs)
    url = cfg["backend"]["url"]
    m = re.fullmatch(r"https?://(127\.0\.0\.1|localhost|\[::1\]):(\d+)(/.*)?", url)
    R.check(f"{s.name}: backend.url is localhost:{port}", bool(m) and int(m.group(2)) == port, url)
    spec = kinds(docs, "Deployment")[0]["spec"]["template"]["spec"]
    backend_name = merged["sidecar"]["backendContainer"]["name"]
    backend = [c for c in spec["containers"] if c["name"] == backend_name]
    R.check(f"{s.name}: backend container {backend_name} is in the pod", len(backend) == 1)
    if backend:
        pre = (backend[0].get("lifecycle") or {}).get("preStop", {}).get("sleep", {}).get("seconds")
        R.check(f"{s.name}: backend gets a preStop sleep", isinstance(pre, int) and pre > 0, str(pre))
    for np in kinds(docs, "NetworkPolicy"):
        opened = {p["port"] for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])}
        R.check(f"{s.name}: NetworkPolicy keeps backend port {port} closed", port not in opened, str(opened))


def expect_native(s: Scenario, docs: list[dict[str, Any]]) -> None:
    expect_sidecar(s, docs)
    spec = kinds(docs, "Deployment")[0]["spec"]["template"]["spec"]
    inits = [c for c in spec.get("initContainers", []) if c["name"] == CONTAINER]
    R.check(f"{s.name}: auth-sidecar is a native sidecar (initContainer, restartPolicy Always)",
            len(inits) == 1 and inits[0].get("restartPolicy") == "Always")
    R.check(f"{s.name}: auth-sidecar is not also a regular container",
            all(c["name"] != CONTAINER for c in spec["containers"]))


def expect_existing_secret(s: Scenario, docs: list[dict[str, Any]]) -> None:
    R.check(f"{s.name}: chart renders no Secret", not kinds(docs, "Secret"),
            str([d["metadata"]["name"] for d in kinds(docs, "Secret")]))
    c, _ = sidecar_container(kinds(docs, "Deployment")[0]["spec"]["template"]["spec"])
    refs = [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "valueFrom" in e]
    R.check(f"{s.name}: env vars come from the existing Secret",
            len(refs) == 3 and all(r["name"] == "chat-auth-secrets" for r in refs), str(refs))


def expect_tls(s: Scenario, docs: list[dict[str, Any]], *, chart_secret: bool = False) -> None:
    cfg = rendered_config(docs)
    tls = cfg["server"].get("tls") or {}
    R.check(f"{s.name}: server.tls points into the pod",
            tls.get("cert_file", "").startswith(CONFIG_DIR + "/") and tls.get("key_file", "").startswith(CONFIG_DIR + "/"),
            str(tls))
    svc = kinds(docs, "Service")[0]
    R.check(f"{s.name}: Service proxy port is named https",
            any(p["name"] == "https" for p in svc["spec"]["ports"]))
    tls_secrets = [d for d in kinds(docs, "Secret") if d.get("type") == "kubernetes.io/tls"]
    R.check(f"{s.name}: {'chart renders' if chart_secret else 'no'} kubernetes.io/tls Secret",
            len(tls_secrets) == (1 if chart_secret else 0))
    R.check(f"{s.name}: no HMAC secret reference without an HS algorithm", "hmac_secret" not in cfg["auth"])


def expect_tls_inline(s: Scenario, docs: list[dict[str, Any]]) -> None:
    expect_tls(s, docs, chart_secret=True)


def expect_hpa(s: Scenario, docs: list[dict[str, Any]]) -> None:
    dep = kinds(docs, "Deployment")[0]
    R.check(f"{s.name}: Deployment leaves replicas to the HPA", "replicas" not in dep["spec"])
    hpas = kinds(docs, "HorizontalPodAutoscaler")
    ok = (len(hpas) == 1 and hpas[0]["apiVersion"] == "autoscaling/v2"
          and hpas[0]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                    "name": dep["metadata"]["name"]})
    R.check(f"{s.name}: autoscaling/v2 HPA targets the Deployment", ok, yaml.safe_dump(hpas))
    pdbs = kinds(docs, "PodDisruptionBudget")
    R.check(f"{s.name}: PodDisruptionBudget selects the pods",
            len(pdbs) == 1 and pdbs[0]["spec"]["selector"]["matchLabels"].items()
            <= dep["spec"]["template"]["metadata"]["labels"].items())
    sms = kinds(docs, "ServiceMonitor")
    svc = kinds(docs, "Service")[0]
    ok = (len(sms) == 1 and sms[0]["apiVersion"] == "monitoring.coreos.com/v1"
          and sms[0]["spec"]["endpoints"][0]["port"] == "admin"
          and sms[0]["spec"]["endpoints"][0]["path"] == "/metrics"
          and sms[0]["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
          and any(p["name"] == "admin" for p in svc["spec"]["ports"]))
    R.check(f"{s.name}: ServiceMonitor scrapes /metrics on the Service's admin port", ok, yaml.safe_dump(sms))
    np = kinds(docs, "NetworkPolicy")[0]
    R.check(f"{s.name}: NetworkPolicy restricts egress and allows DNS",
            "Egress" in np["spec"]["policyTypes"]
            and any(p.get("port") == 53 for r in np["spec"]["egress"] for p in r.get("ports", [])))


def notes_of(rendered: dict[str, str]) -> str:
    return next((text for name, text in rendered.items() if name.endswith("/NOTES.txt")), "")


STORE_WARNING = "WARNING: "


def expect_revocation(s: Scenario, docs: list[dict[str, Any]]) -> None:
    """config.revocation passes through; its admin secret, when given, is a reference to
    the Secret (and absent otherwise: the API is off)."""
    merged = helm.Chart.load(s.chart).merge_values(s.values)
    sec = merged["secrets"]
    rev = rendered_config(docs).get("revocation") or {}
    R.check(f"{s.name}: config.revocation passes through to config.toml",
            rev.get("max_token_lifetime") == merged["config"]["revocation"]["max_token_lifetime"], f"{rev}")
    used = (("revocationAdminSecret" in (sec.get("existingSecretOptional") or [])) if sec["existingSecret"]
            else bool(sec.get("revocationAdminSecret")))
    ref = rev.get("admin_secret")
    if not used:
        R.check(f"{s.name}: no admin secret given, none referenced (the revocation API is off)", ref is None, f"{ref}")
        return
    expect = ({"env": "AUTH_SIDECAR_REVOCATION_ADMIN_SECRET"} if sec["mountAs"] == "env"
              else {"file": f"{sec['mountPath']}/revocation-admin-secret"})
    R.check(f"{s.name}: revocation.admin_secret references the Secret ({sec['mountAs']})", ref == expect,
            f"{ref}, want {expect}")
    if not sec["existingSecret"]:
        data = object_data(docs, s, "Secret", kinds(docs, "Secret")[0]["metadata"]["name"]) or {}
        R.check(f"{s.name}: the chart's Secret holds the revocation admin secret",
                data.get(sec["keys"]["revocationAdminSecret"]) == sec["revocationAdminSecret"], "")


def expect_shared_store(s: Scenario, docs: list[dict[str, Any]]) -> None:
    """config.shared_store passes through and its secrets are references to the Secret."""
    merged = helm.Chart.load(s.chart).merge_values(s.values)
    want = merged["config"]["shared_store"]
    cfg = rendered_config(docs)
    store = cfg.get("shared_store") or {}
    passed = {k: v for k, v in want.items() if k not in ("secret", "username", "password")}
    R.check(f"{s.name}: config.shared_store keys pass through to config.toml",
            {k: store.get(k) for k in passed} == passed, f"{store}")
    sec = merged["secrets"]
    if sec["existingSecret"]:
        used = {"sharedStoreSecret"} | set(sec.get("existingSecretOptional") or [])
    else:
        used = {n for n in ("sharedStoreSecret", "sharedStoreUsername", "sharedStorePassword") if sec.get(n)}
    bad = []
    for name, key, file in [("sharedStoreSecret", "secret", "shared-store-secret"),
                            ("sharedStoreUsername", "username", "shared-store-username"),
                            ("sharedStorePassword", "password", "shared-store-password")]:
        ref = store.get(key)
        if name not in used:
            if ref is not None:
                bad.append(f"shared_store.{key} = {ref} although secrets.{name} is not used")
            continue
        expect = ({"env": f"AUTH_SIDECAR_SHARED_STORE_{key.upper()}"} if sec["mountAs"] == "env"
                  else {"file": f"{sec['mountPath']}/{file}"})
        if ref != expect:
            bad.append(f"shared_store.{key} = {ref}, want {expect}")
    R.check(f"{s.name}: shared_store.secret/username/password reference the Secret ({sec['mountAs']})",
            not bad, "\n".join(bad))
    if not sec["existingSecret"]:
        data = object_data(docs, s, "Secret", kinds(docs, "Secret")[0]["metadata"]["name"]) or {}
        missing = [n for n in used if data.get(sec["keys"][n]) != sec[n]]
        R.check(f"{s.name}: the chart's Secret holds the shared store's secrets", not missing, str(missing))


def check_notes(chart: helm.Chart) -> None:
    """NOTES.txt warns when several replicas coordinate refresh/initiate without a store."""
    gateway = ci_values("gateway")
    store = ci_values("shared-store")
    sidecar = ci_values("sidecar")
    no_calls = {"config": {"refresh": None, "initiate": None}, "secrets": {"initiateApiKey": ""}}
    cases = [
        ("gateway with replicaCount 3 and no store", deep_merge(gateway, {"replicaCount": 3}), True),
        ("gateway with replicaCount 3 and a shared store", deep_merge(store, {"replicaCount": 3}), False),
        ("gateway with one replica and no store", deep_merge(gateway, {"replicaCount": 1}), False),
        ("gateway with the HPA (minReplicas 1) and no store",
         deep_merge(gateway, {"replicaCount": 1, "autoscaling": {"enabled": True, "minReplicas": 1}}), True),
        ("gateway with the HPA and a shared store", deep_merge(store, {"autoscaling": {"enabled": True}}), False),
        ("gateway with 3 replicas, no store, no refresh or initiate",
         deep_merge(gateway, {"replicaCount": 3, **no_calls}), False),
        ("sidecar Deployment with replicaCount 3 and no store", deep_merge(sidecar, {"replicaCount": 3}), True),
        ("sidecar Deployment with one replica and no store", deep_merge(sidecar, {"replicaCount": 1}), False),
    ]
    for label, values, warns in cases:
        notes = notes_of(chart.render(values, name=RELEASE, namespace=NAMESPACE))
        warned = STORE_WARNING in notes and "config.shared_store" in notes
        R.check(f"NOTES: {label} {'warns' if warns else 'does not warn'}", warned == warns, notes)
        if warns and warned:
            R.check(f"NOTES: {label}: the warning says what happens and how to set the store",
                    all(x in notes for x in ("per replica only", "logged out", "shared_store:",
                                             "sharedStoreSecret", "Several replicas")), notes)
    partial = deep_merge(sidecar, {"sidecar": {"deployment": False, "backendContainer": None}})
    notes = notes_of(chart.render(partial, name=RELEASE, namespace=NAMESPACE))
    R.check("NOTES: sidecar partials (replicas unknown) mention config.shared_store without a WARNING",
            STORE_WARNING not in notes and "config.shared_store" in notes, notes)


def expect_parent(s: Scenario, docs: list[dict[str, Any]]) -> None:
    names = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    R.check(f"{s.name}: subchart renders only its ConfigMap and Secret besides the parent's objects",
            names == sorted([f"ConfigMap/{RELEASE}-auth-sidecar", f"Secret/{RELEASE}-auth-sidecar",
                             f"Deployment/{RELEASE}-chat", f"Service/{RELEASE}-chat"]), str(names))
    expect_native_parent = [c for c in kinds(docs, "Deployment")[0]["spec"]["template"]["spec"]["initContainers"]
                            if c["name"] == CONTAINER]
    R.check(f"{s.name}: parent chart places auth-sidecar as a native sidecar",
            len(expect_native_parent) == 1 and expect_native_parent[0].get("restartPolicy") == "Always")


def scenarios() -> list[Scenario]:
    gateway = ci_values("gateway")
    sidecar = ci_values("sidecar")
    tls = ci_values("tls")
    store = ci_values("shared-store")
    return [
        Scenario("gateway", gateway, expect=expect_gateway),
        Scenario("sidecar", sidecar, expect=expect_sidecar),
        Scenario("existing-secret", ci_values("existing-secret"), expect=expect_existing_secret,
                 external_secrets={"chat-auth-secrets": {
                     "HMAC_SECRET": LONG, "INITIATE_API_KEY": "external-initiate-key",
                     "APP_IDENTITY_SECRET": LONG + "-app"}}),
        Scenario("tls", tls, expect=expect_tls,
                 external_secrets={"auth-sidecar-cert": {"tls.crt": TLS_CERT, "tls.key": TLS_KEY}}),
        Scenario("hpa", ci_values("hpa"), expect=expect_hpa),
        # The sidecar values example in the top-level README.
        Scenario("readme-sidecar", ci_values("readme-sidecar"), expect=expect_sidecar,
                 external_secrets={"chat-auth": {"hmac-secret": LONG, "initiate-api-key": "readme-initiate-key"}}),
        # Variants of the ci/ files.
        Scenario("sidecar-native", deep_merge(sidecar, {"sidecar": {"native": True}}), expect=expect_native),
        Scenario("gateway-env-secrets", deep_merge(gateway, {"secrets": {"mountAs": "env"}})),
        Scenario("tls-chart-secret", deep_merge(tls, {"tls": {"existingSecret": "", "cert": TLS_CERT, "key": TLS_KEY}}),
                 expect=expect_tls_inline),
        Scenario("ipv6-listen", deep_merge(gateway, {"listenHost": "::"})),
        Scenario("shared-store", store, expect=expect_shared_store),
        Scenario("revocation", deep_merge(gateway, {"config": {"revocation": {"max_token_lifetime": "1h"}},
                                                    "secrets": {"revocationAdminSecret": LONG + "-revoke"}}),
                 expect=expect_revocation),
        Scenario("revocation-env", deep_merge(gateway, {"config": {"revocation": {"max_token_lifetime": "1h"}},
                                                        "secrets": {"mountAs": "env",
                                                                    "revocationAdminSecret": LONG + "-revoke"}}),
                 expect=expect_revocation),
        Scenario("revocation-api-off", deep_merge(gateway, {"config": {"revocation": {"max_token_lifetime": "2h"}}}),
                 expect=expect_revocation),
        Scenario("shared-store-env-existing-secret",
                 deep_merge(store, {"secrets": {"existingSecret": "chat-auth-store", "mountAs": "env",
                                                "existingSecretOptional": ["sharedStorePassword"]}}),
                 expect=expect_shared_store,
                 external_secrets={"chat-auth-store": {
                     "hmac-secret": LONG, "initiate-api-key": "external-initiate-key",
                     "shared-store-secret": LONG + "-store", "shared-store-password": "external-redis-password"}}),
        Scenario("sidecar-shared-store",
                 deep_merge(sidecar, {"config": {"shared_store": {"url": "redis://redis.chat.svc.cluster.local:6379"}},
                                      "secrets": {"sharedStoreSecret": "ci-sidecar-store-secret-0123456789abcdef"}}),
                 expect=lambda s, docs: (expect_sidecar(s, docs), expect_shared_store(s, docs))),
        # The example chart that includes the named templates.
        Scenario("parent-chart", {"auth-sidecar": {"secrets": {"hmacSecret": "parent-chart-hmac-0123456789abcdef0123"}}},
                 chart=EXAMPLE, expect=expect_parent, chart_values_key="auth-sidecar"),
    ]


# --------------------------------------------------------------------------------------
# Checks shared by every scenario
# --------------------------------------------------------------------------------------


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cms = [d for d in kinds(docs, "ConfigMap") if "config.toml" in (d.get("data") or {})]
    return tomllib.loads(cms[0]["data"]["config.toml"])


def check_lint(s: Scenario, chart_dir: Path) -> None:
    with quiet_stderr():
        report = helm.lint(chart_dir, s.values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + [
        {"error": e} for e in report.get("errors", [])]
    R.check(f"{s.name}: helm lint --strict (kube 1.30) has no warnings or errors", not bad,
            "\n".join(f"{m.get('path', '')}: {m['error']}" for m in bad))


def check_schemas(s: Scenario, docs: list[dict[str, Any]]) -> None:
    for d in docs:
        kn = f"{d['kind']}/{d['metadata']['name']}"
        if d["apiVersion"].startswith(CRD_GROUPS):
            R.check(f"{s.name}: {kn} (CRD) has apiVersion, metadata and spec",
                    bool(d.get("metadata", {}).get("name")) and isinstance(d.get("spec"), dict))
            continue
        for kube in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip_meta(d), kube, strict=True)
                R.check(f"{s.name}: {kn} is valid Kubernetes {kube} (strict)", True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                R.check(f"{s.name}: {kn} is valid Kubernetes {kube} (strict)", False, f"{path}: {e.message}")
            except Exception as e:  # SchemaNotFoundError and friends
                R.check(f"{s.name}: {kn} is valid Kubernetes {kube} (strict)", False,
                        getattr(e, "message", repr(e)))


def check_no_secret_leak(s: Scenario, docs: list[dict[str, Any]], merged: dict[str, Any]) -> None:
    secrets = secret_strings(docs, s.sidecar_values(merged))
    for d in docs:
        if d["kind"] == "Secret":
            continue
        text = yaml.safe_dump(strip_meta(d))
        leaked = [x[:4] + "..." for x in secrets if x in text]
        where = "ConfigMap" if d["kind"] == "ConfigMap" else "manifest"
        R.check(f"{s.name}: no secret value in {where} {d['kind']}/{d['metadata']['name']}", not leaked,
                f"found {leaked}")
    cfg = rendered_config(docs)
    bad = []
    for section, key in SECRET_KEYS:
        v = (cfg.get(section) or {}).get(key)
        if v is None:
            continue
        if not (isinstance(v, dict) and len(v) == 1 and set(v) <= {"env", "file"}):
            bad.append(f"{section}.{key} = {type(v).__name__}")
    R.check(f"{s.name}: every secret in config.toml is an env/file reference", not bad, "\n".join(bad))


def check_pod(s: Scenario, docs: list[dict[str, Any]], merged_all: dict[str, Any]) -> None:
    merged = s.sidecar_values(merged_all)
    pods = pod_specs(docs)
    if not R.check(f"{s.name}: one workload runs the auth-sidecar container", len(pods) == 1,
                   str([p[0]["metadata"]["name"] for p in pods])):
        return
    workload, tpl = pods[0]
    spec = tpl["spec"]
    c, is_init = sidecar_container(spec)
    cfg = rendered_config(docs)
    admin = listen_port(cfg["admin"]["listen"])
    proxy = listen_port(cfg["server"]["listen"])
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    R.check(f"{s.name}: container ports match config listeners (proxy {proxy}, admin {admin})",
            ports.get("proxy") == proxy and ports.get("admin") == admin, str(ports))

    # Probes.
    want = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in want.items():
        p = c.get(probe)
        if probe == "startupProbe" and p is None:
            continue
        get = (p or {}).get("httpGet", {})
        R.check(f"{s.name}: {probe} is GET {path} on the admin port {admin}",
                port_number(c, get.get("port")) == admin and get.get("path") == path, str(p))

    # securityContext.
    sc = c.get("securityContext") or {}
    psc = spec.get("securityContext") or {}
    problems = []
    if sc.get("runAsNonRoot") is not True and psc.get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot")
    if (sc.get("runAsUser") or psc.get("runAsUser")) != 65532:
        problems.append("runAsUser 65532")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problems.append("capabilities.drop ALL")
    if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile RuntimeDefault")
    if sc.get("privileged"):
        problems.append("not privileged")
    R.check(f"{s.name}: auth-sidecar securityContext is hardened", not problems, "missing: " + ", ".join(problems))
    R.check(f"{s.name}: resources set", bool((c.get("resources") or {}).get("requests")))

    # Config file and args.
    R.check(f"{s.name}: args are --config {CONFIG_PATH}", c.get("args") == ["--config", CONFIG_PATH], str(c.get("args")))
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    R.check(f"{s.name}: config volume mounted read-only at {CONFIG_DIR}",
            CONFIG_DIR in mounts and mounts[CONFIG_DIR].get("readOnly") is True)

    # Checksums.
    ann = tpl["metadata"].get("annotations") or {}
    R.check(f"{s.name}: checksum/config and checksum/secret pod annotations",
            bool(HEX64.match(str(ann.get("checksum/config", "")))) and bool(HEX64.match(str(ann.get("checksum/secret", "")))),
            str(ann))

    # Drain: grace period covers preStop + shutdown_grace (+ the backend's preStop first, natively).
    drain = parse_duration_seconds(cfg["server"].get("shutdown_grace", "30s"))
    pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    need = pre + drain
    if is_init:
        backend_pre = max([((x.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
                           for x in spec["containers"]] or [0])
        need += backend_pre
    grace = spec.get("terminationGracePeriodSeconds", 30)
    R.check(f"{s.name}: terminationGracePeriodSeconds {grace} >= preStop {pre}s + drain {drain}s"
            + (" + backend preStop" if is_init else ""), grace >= need, f"need {need}")
    R.check(f"{s.name}: preStop sleep present", pre > 0 or merged["lifecycle"]["preStopSleepSeconds"] == 0)

    # Everything the config references is provided by the pod.
    files = provided_files(spec, c)
    envs = {e["name"] for e in c.get("env", [])}
    missing = []
    for section, key in SECRET_KEYS:
        ref = (cfg.get(section) or {}).get(key)
        if isinstance(ref, dict) and "file" in ref and ref["file"] not in files:
            missing.append(f"{section}.{key} file {ref['file']}")
        if isinstance(ref, dict) and "env" in ref and ref["env"] not in envs:
            missing.append(f"{section}.{key} env {ref['env']}")
    tls = cfg["server"].get("tls") or {}
    for k in ("cert_file", "key_file"):
        if k in tls and tls[k] not in files:
            missing.append(f"server.tls.{k} {tls[k]}")
    auth = cfg.get("auth") or {}
    for pk in auth.get("public_keys", []):
        if pk["file"] not in files:
            missing.append(f"auth.public_keys {pk['file']}")
    if "jwks_file" in auth and auth["jwks_file"] not in files:
        missing.append(f"auth.jwks_file {auth['jwks_file']}")
    if CONFIG_PATH not in files:
        missing.append(CONFIG_PATH)
    R.check(f"{s.name}: every file and env var the config references is provided by the pod", not missing,
            "\n".join(missing))

    # Service and NetworkPolicy (only when this chart renders the workload).
    for svc in kinds(docs, "Service"):
        if svc["spec"]["selector"].items() <= tpl["metadata"]["labels"].items():
            targets = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
            proxy_name = "https" if "tls" in cfg["server"] else "http"
            R.check(f"{s.name}: Service {svc['metadata']['name']} targets proxy and admin ports",
                    targets.get(proxy_name) in (proxy, "proxy") and targets.get("admin") in (admin, "admin"),
                    str(targets))
    for np in kinds(docs, "NetworkPolicy"):
        opened = {p["port"] for r in np["spec"].get("ingress", []) for p in r.get("ports", [])}
        R.check(f"{s.name}: NetworkPolicy admits exactly the proxy and admin ports", opened == {proxy, admin},
                str(opened))


def provided_files(spec: dict[str, Any], c: dict[str, Any]) -> set[str]:
    """Absolute paths the container sees from projected/configMap/secret volumes."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    out: set[str] = set()
    for m in c.get("volumeMounts", []):
        for _, items in volume_items(vols.get(m["name"], {})):
            for key_path in items:
                out.add(f"{m['mountPath'].rstrip('/')}/{key_path[1]}")
    return out


def volume_items(vol: dict[str, Any]) -> list[tuple[tuple[str, str], list[tuple[str, str]]]]:
    """[((kind, name), [(key, path), ...])] for a volume's ConfigMap/Secret sources.

    Only explicit items are listed: the chart always lists them.
    """
    sources = []
    if "projected" in vol:
        for src in vol["projected"].get("sources", []):
            if "configMap" in src:
                sources.append((("ConfigMap", src["configMap"]["name"]), src["configMap"].get("items", [])))
            if "secret" in src:
                sources.append((("Secret", src["secret"]["name"]), src["secret"].get("items", [])))
    if "configMap" in vol:
        sources.append((("ConfigMap", vol["configMap"]["name"]), vol["configMap"].get("items", [])))
    if "secret" in vol:
        sources.append((("Secret", vol["secret"]["secretName"]), vol["secret"].get("items", [])))
    return [(ref, [(i["key"], i["path"]) for i in items]) for ref, items in sources]


# --------------------------------------------------------------------------------------
# check-config against the pod's view of the files
# --------------------------------------------------------------------------------------


def binary() -> Path:
    return Path(os.environ.get("AUTH_SIDECAR_BIN", ROOT / "target" / "debug" / "auth-sidecar"))


def object_data(docs: list[dict[str, Any]], s: Scenario, kind: str, name: str) -> dict[str, str] | None:
    for d in kinds(docs, kind):
        if d["metadata"]["name"] == name:
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
                data.update(d.get("stringData") or {})
                return data
            return dict(d.get("data") or {})
    if kind == "Secret" and name in s.external_secrets:
        return s.external_secrets[name]
    return None


def materialize(s: Scenario, docs: list[dict[str, Any]], root: Path) -> tuple[Path, dict[str, str]]:
    """Writes the container's files under root (same absolute layout) and returns the
    config path to check and the container's environment."""
    _, tpl = pod_specs(docs)[0]
    spec = tpl["spec"]
    c, _ = sidecar_container(spec)
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mount_paths = []
    for m in c.get("volumeMounts", []):
        mount_paths.append(m["mountPath"].rstrip("/"))
        for (kind, name), items in volume_items(vols[m["name"]]):
            data = object_data(docs, s, kind, name)
            if data is None:
                raise RuntimeError(f"{kind}/{name} is neither rendered nor provided by the test")
            for key, path in items:
                if key not in data:
                    raise RuntimeError(f"{kind}/{name} has no key {key}")
                dest = root / m["mountPath"].lstrip("/") / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(data[key])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            data = object_data(docs, s, "Secret", ref["name"])
            if data is None or ref["key"] not in data:
                raise RuntimeError(f"env {e['name']}: Secret/{ref['name']} key {ref['key']} not available")
            env[e["name"]] = data[ref["key"]]
    # The config names absolute paths inside the pod; point them at the temp root.
    cfg_file = root / CONFIG_PATH.lstrip("/")
    text = cfg_file.read_text()
    for mp in sorted(set(mount_paths), key=len, reverse=True):
        text = text.replace(f'"{mp}/', f'"{root}{mp}/')
    cfg_file.write_text(text)
    return cfg_file, env


def run_check_config(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary()), "check-config", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=60)


def check_config_ok(name: str, build: Callable[[Path], tuple[Path, dict[str, str]]]) -> None:
    label = f"{name}: auth-sidecar check-config accepts the rendered config"
    if not binary().is_file():
        if os.environ.get("CHART_TEST_SKIP_CHECK_CONFIG") == "1":
            R.skip(label, f"no binary at {binary()}")
        else:
            R.check(label, False, f"no binary at {binary()}: run `cargo build`, set AUTH_SIDECAR_BIN, "
                                  "or CHART_TEST_SKIP_CHECK_CONFIG=1")
        return
    with tempfile.TemporaryDirectory(prefix="chart-test-") as d:
        try:
            cfg, env = build(Path(d))
        except Exception as e:  # noqa: BLE001
            R.check(label, False, f"cannot build the pod's files: {e}")
            return
        p = run_check_config(cfg, env)
        R.check(label, p.returncode == 0,
                f"exit {p.returncode}\n--- config.toml\n{cfg.read_text()}--- output\n{p.stdout}{p.stderr}")


def check_config_rejects(name: str, build: Callable[[Path], tuple[Path, dict[str, str]]],
                         break_it: Callable[[Path, Path], None], expect: str, mentions: str = "") -> None:
    label = f"{name}: check-config rejects it when {expect}"
    if not binary().is_file():
        if os.environ.get("CHART_TEST_SKIP_CHECK_CONFIG") == "1":
            R.skip(label, f"no binary at {binary()}")
        else:
            R.check(label, False, f"no binary at {binary()}")
        return
    with tempfile.TemporaryDirectory(prefix="chart-test-") as d:
        cfg, env = build(Path(d))
        break_it(Path(d), cfg)
        p = run_check_config(cfg, env)
        # A crash (panic, exit 101) is not a rejection.
        R.check(label, p.returncode not in (0, 101) and mentions in p.stdout + p.stderr,
                f"exit {p.returncode}\n{p.stdout}{p.stderr}")


def container_config(root: Path) -> tuple[Path, dict[str, str]]:
    """deploy/container-config.toml as the image ships it, with its secret files present."""
    text = CONTAINER_CONFIG.read_text()
    cfg = tomllib.loads(text)
    for section, key in SECRET_KEYS:
        ref = (cfg.get(section) or {}).get(key)
        if isinstance(ref, dict) and "file" in ref:
            dest = root / ref["file"].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(LONG + "\n")
    text = text.replace(f'"{CONFIG_DIR}/', f'"{root}{CONFIG_DIR}/')
    path = root / CONFIG_PATH.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


# --------------------------------------------------------------------------------------
# Bad values must fail the render
# --------------------------------------------------------------------------------------


def check_refusals(chart: helm.Chart) -> None:
    gateway = ci_values("gateway")
    sidecar = ci_values("sidecar")
    store = ci_values("shared-store")
    cases = [
        ("default values (no HMAC secret)", {}, "secrets.hmacSecret is required"),
        ("gateway without backend.url", deep_merge(gateway, {"config": {"backend": {"url": ""}}}),
         "config.backend.url is required"),
        ("inline secret in config", deep_merge(gateway, {"config": {"auth": {"hmac_secret": "inline-secret-value-123456"}}}),
         "hmac_secret"),
        ("short HMAC secret", deep_merge(gateway, {"secrets": {"hmacSecret": "short"}}), "at least 32 bytes"),
        ("initiate without API key", deep_merge(gateway, {"secrets": {"initiateApiKey": ""}}),
         "secrets.initiateApiKey is required"),
        ("sidecar with a remote backend", deep_merge(sidecar, {"config": {"backend": {"url": "http://chat.other:3000"}}}),
         "localhost only"),
        ("sidecar without backend container", deep_merge(sidecar, {"sidecar": {"backendContainer": None}}),
         "sidecar.backendContainer"),
        ("server.listen set by hand", deep_merge(gateway, {"config": {"server": {"listen": "0.0.0.0:1"}}}), "listen"),
        ("grace period shorter than drain", deep_merge(gateway, {"terminationGracePeriodSeconds": 10}),
         "terminationGracePeriodSeconds"),
        ("bad shutdown_grace", deep_merge(gateway, {"config": {"server": {"shutdown_grace": "30 seconds"}}}),
         "shutdown_grace"),
        ("TLS without certificate", deep_merge(gateway, {"tls": {"enabled": True}}), "tls.cert is required"),
        ("app_identity without initiate",
         deep_merge(gateway, {"config": {"initiate": None, "app_identity": {"max_age": "15m"}},
                              "secrets": {"appIdentitySecret": "app-identity-secret-0123456789abcdef"}}),
         "config.app_identity needs config.initiate"),
        ("unknown config section", deep_merge(gateway, {"config": {"sever": {"listen": "x"}}}), "sever"),
        ("shared_store without its secret", deep_merge(store, {"secrets": {"sharedStoreSecret": ""}}),
         "secrets.sharedStoreSecret is required: the config needs it (shared_store.secret)"),
        ("short revocation admin secret",
         deep_merge(gateway, {"config": {"revocation": {"max_token_lifetime": "1h"}},
                              "secrets": {"revocationAdminSecret": "too-short"}}),
         "secrets.revocationAdminSecret must be at least 16 bytes"),
        ("short shared store secret", deep_merge(store, {"secrets": {"sharedStoreSecret": "too-short-for-a-key"}}),
         "secrets.sharedStoreSecret must be at least 32 bytes"),
        ("shared_store without url", deep_merge(gateway, {"config": {"shared_store": {"lease": "10s"}},
                                                          "secrets": {"sharedStoreSecret": LONG}}),
         "config.shared_store.url is required"),
        ("shared_store with a non-Redis url",
         deep_merge(store, {"config": {"shared_store": {"url": "http://redis:6379"}}}), "shared_store"),
        ("password inside shared_store.url",
         deep_merge(store, {"config": {"shared_store": {"url": "redis://:hunter2-password@redis:6379/0"}}}),
         "secrets.sharedStorePassword"),
        ("inline shared_store.password",
         deep_merge(store, {"config": {"shared_store": {"password": "inline-redis-password-123"}}}),
         "shared_store/password"),
        ("unknown existingSecretOptional name",
         deep_merge(store, {"secrets": {"existingSecret": "x", "existingSecretOptional": ["redisPassword"]}}),
         "existingSecretOptional"),
    ]
    for label, values, needle in cases:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
            R.check(f"refuses {label}", False, "rendered without error")
        except helm.HelmError as e:
            R.check(f"refuses {label}", needle in str(e), f"error does not mention {needle!r}:\n{e}")


def check_checksums_roll(chart: helm.Chart) -> None:
    base = ci_values("gateway")

    def annotations(values: dict[str, Any]) -> dict[str, str]:
        docs = manifests_of(chart.render(values, name=RELEASE, namespace=NAMESPACE))
        return kinds(docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]

    a = annotations(base)
    b = annotations(deep_merge(base, {"config": {"log": {"level": "debug"}}}))
    c = annotations(deep_merge(base, {"secrets": {"initiateApiKey": "rotated-initiate-key-0002"}}))
    R.check("checksum/config changes with the config, checksum/secret does not",
            a["checksum/config"] != b["checksum/config"] and a["checksum/secret"] == b["checksum/secret"])
    R.check("checksum/secret changes with a secret, checksum/config does not",
            a["checksum/secret"] != c["checksum/secret"] and a["checksum/config"] == c["checksum/config"])
    R.check("renders are deterministic", a == annotations(base))


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def prepare_parent(tmp: Path) -> Path:
    """The example parent chart with this chart vendored into charts/ (as `helm dep up` would)."""
    dest = tmp / EXAMPLE.name
    shutil.copytree(EXAMPLE, dest)
    (dest / "charts").mkdir(exist_ok=True)
    shutil.copytree(CHART, dest / "charts" / CHART.name, ignore=shutil.ignore_patterns("ci"))
    return dest


def run_scenario(s: Scenario) -> None:
    chart = helm.Chart.load(s.chart)
    try:
        if s.chart == CHART:
            chart.validate_schema(s.values)
        R.check(f"{s.name}: values match values.schema.json", True)
    except helm.HelmError as e:
        R.check(f"{s.name}: values match values.schema.json", False, str(e))
    check_lint(s, s.chart)
    try:
        rendered = chart.render(s.values, name=RELEASE, namespace=NAMESPACE)
    except helm.HelmError as e:
        R.check(f"{s.name}: renders", False, str(e))
        return
    R.check(f"{s.name}: renders", True)
    docs = manifests_of(rendered)
    R.check(f"{s.name}: every manifest has apiVersion, kind and metadata.name",
            all(d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name") for d in docs))
    merged = chart.merge_values(s.values)
    check_schemas(s, docs)
    check_no_secret_leak(s, docs, merged)
    check_pod(s, docs, merged)
    if s.expect:
        s.expect(s, docs)
    check_config_ok(s.name, lambda root: materialize(s, docs, root))
    if s.name == "gateway":
        def drop_secret(root: Path, cfg: Path) -> None:
            (root / "etc/auth-sidecar/secrets/hmac-secret").unlink()

        def typo(root: Path, cfg: Path) -> None:
            cfg.write_text(cfg.read_text().replace("[server]\n", "[server]\nlistn = \"0.0.0.0:1\"\n"))

        check_config_rejects(s.name, lambda root: materialize(s, docs, root), drop_secret,
                             "the HMAC secret file is missing")
        check_config_rejects(s.name, lambda root: materialize(s, docs, root), typo, "a key is misspelt")
    if s.name == "shared-store":
        def short_store_secret(root: Path, cfg: Path) -> None:
            (root / "etc/auth-sidecar/secrets/shared-store-secret").write_text("shorter-than-32-bytes\n")

        check_config_rejects(s.name, lambda root: materialize(s, docs, root), short_store_secret,
                             "the shared store secret is shorter than 32 bytes",
                             mentions="shared_store.secret")


def guarded(name: str, fn: Callable[[], None]) -> None:
    """Runs a group of checks; a crash in it is one failure, not the end of the run."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        detail = str(e) if isinstance(e, helm.HelmError) else traceback.format_exc()
        R.check(f"{name}: checks ran to completion", False, detail)


def main() -> int:
    print(f"chart: {CHART.relative_to(ROOT)}  helm SDK {helm.helm_sdk_version()}  "
          f"kubernetes schemas {', '.join(KUBE_VERSIONS)}  binary {binary()}")
    chart = helm.Chart.load(CHART)
    with quiet_stderr():
        report = helm.lint(CHART, strict=True, kube_version="v1.30.0")
    errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 3] + report.get("errors", [])
    R.check("helm lint with default values has no errors", not errors, str(errors))
    with tempfile.TemporaryDirectory(prefix="chart-parent-") as tmp:
        parent = prepare_parent(Path(tmp))
        for s in scenarios():
            if s.chart == EXAMPLE:
                s.chart = parent
            guarded(s.name, lambda: run_scenario(s))
    guarded("refusals", lambda: check_refusals(chart))
    guarded("checksums", lambda: check_checksums_roll(chart))
    guarded("notes", lambda: check_notes(chart))
    if CONTAINER_CONFIG.exists():
        guarded("image config", lambda: check_config_ok("image config deploy/container-config.toml", container_config))
    else:
        R.check("deploy/container-config.toml exists", False)
    if R.failures:
        print("\nfailed:")
        for f in R.failures:
            print(f"  - {f}")
    print(R.summary())
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
