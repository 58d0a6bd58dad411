"""The agent's Helm chart, rendered by Helm's own engine (helm-python-sdk, through
scripts/helm-template), validated against the OpenAPI documents of a real
kube-apiserver, and its RBAC compared with what the agent's code calls."""
import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from kube_openapi import KubeOpenAPI

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(REPO, "charts", "tether-agent")
HELM_TEMPLATE = os.path.join(REPO, "scripts", "helm-template")
FIXTURES = os.path.join(REPO, "Tests", "Fixtures")
BIN = os.environ.get("TETHER_BIN_DIR", os.path.join(REPO, ".build", "debug"))


def join_string(hub="hub.example.com:8443"):
    payload = json.dumps({"hub": hub, "id": "abcd1234", "secret": "s" * 43, "ca": "sha256:" + "0" * 64}, separators=(",", ":"))
    return "tether1." + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


JOIN = join_string()


def render(*args, expect_ok=True, cwd=REPO):
    """Runs scripts/helm-template; returns the parsed objects (or the failure)."""
    result = subprocess.run([sys.executable, HELM_TEMPLATE, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if not expect_ok:
        assert result.returncode != 0, f"expected a failure, got:\n{result.stdout[:2000]}"
        return result.stderr
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def install(*extra):
    return render("install", "tether-agent", CHART, "--namespace", "tether-system", *extra)


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind):
    found = by_kind(objects, kind)
    assert len(found) == 1, f"{kind}: {len(found)} objects"
    return found[0]


@pytest.fixture(scope="session")
def openapi():
    return KubeOpenAPI(os.path.join(FIXTURES, "openapi"))


def assert_valid(openapi, objects):
    errors = [e for o in objects for e in openapi.errors(o)]
    assert not errors, "\n".join(errors)


def agent_args(objects):
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_validator_catches_a_misspelled_field_and_a_wrong_type(openapi):
    objects = install("--set-string", f"joinToken={JOIN}")
    deployment = json.loads(json.dumps(one(objects, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    deployment["spec"]["replica"] = 1
    deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = "yes"
    errors = "\n".join(openapi.errors(deployment))
    assert "'replica' was unexpected" in errors
    assert "'Sometimes' is not one of" in errors
    assert "'yes' is not of type 'boolean'" in errors


def test_lint_passes_strict():
    result = subprocess.run([sys.executable, HELM_TEMPLATE, "lint", CHART, "--set-string", f"joinToken={JOIN}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_defaults_render_valid_objects(openapi):
    objects = install("--set-string", f"joinToken={JOIN}")
    assert_valid(openapi, objects)
    assert sorted(o["kind"] for o in objects) == sorted([
        "ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount",
    ])
    for o in objects:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == "tether-system", o["kind"]
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "tether:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {"name": "health", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    args = container["args"]
    assert args[0] == "run"
    assert "--identity-secret=tether-agent-identity" in args
    assert "--audit-listen=0.0.0.0:8444" in args and "--audit-spool-max=1Gi" in args
    assert "--audit-san=tether-agent.tether-system.svc" in args
    # The join string reaches the pod from the Secret, never in the spec.
    secret = one(objects, "Secret")
    assert base64.b64decode(secret["data"]["joinToken"]).decode() == JOIN
    assert JOIN not in json.dumps(deployment)
    env = {e["name"]: e for e in container["env"]}
    assert env["TETHER_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "joinToken", "optional": True}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "audit", "port": 8444, "targetPort": "audit", "protocol": "TCP"}]
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_pod_security():
    objects = install("--set-string", f"joinToken={JOIN}")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    state = volumes[mounts["/var/lib/tether-agent"]]
    assert state["emptyDir"]["sizeLimit"] == "2Gi"
    assert "--state-dir=/var/lib/tether-agent" in container["args"]
    assert not any(v.get("hostPath") for v in pod["volumes"])
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_overrides_render_valid_objects(openapi, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "image": {"repository": "registry.example.com/platform/tether", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-1a"]}]}]}}},
        "commonLabels": {"team": "platform"},
        "commonAnnotations": {"owner": "platform@example.com"},
        "podLabels": {"tier": "infra"},
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "logLevel": "debug",
        "audit": {"port": 9444, "spoolSize": "4Gi", "extraSANs": ["audit.example.com"],
                  "service": {"type": "NodePort", "clusterIP": "10.96.0.44", "nodePort": 30444}},
        "persistence": {"enabled": True, "size": "8Gi", "storageClass": "fast"},
        "networkPolicy": {"hub": {"cidrs": ["203.0.113.10/32"]}, "apiServer": {"ports": [6443], "cidrs": ["10.0.0.1/32"]},
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "identitySecret": {"name": "agent-id"},
        "serviceAccount": {"name": "tether", "annotations": {"iam.example.com/role": "none"}},
    }))
    objects = render("install", "edge", CHART, "--namespace", "edge-system", "-f", str(values),
                     "--set", "existingSecret=join-from-vault", "--set", "existingSecretKey=token")
    assert_valid(openapi, objects)
    assert not by_kind(objects, "Secret"), "an existing Secret is used, none rendered"
    for o in objects:
        assert o["metadata"]["labels"]["team"] == "platform", o["kind"]
        assert o["metadata"]["annotations"]["owner"] == "platform@example.com", o["kind"]
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/platform/tether:0.1.0-rc1"
    assert container["imagePullPolicy"] == "Always" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    assert "nodeAffinity" in pod["affinity"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["tier"] == "infra"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["serviceAccountName"] == "tether"
    assert one(objects, "ServiceAccount")["metadata"]["annotations"]["iam.example.com/role"] == "none"
    env = {e["name"]: e for e in container["env"]}
    assert env["TETHER_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "join-from-vault"
    assert env["TETHER_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    args = container["args"]
    for arg in ["--log-level=debug", "--audit-listen=0.0.0.0:9444", "--audit-spool-max=4Gi", "--identity-secret=agent-id",
                "--audit-san=10.96.0.44", "--audit-san=audit.example.com", "--audit-san=edge-tether-agent.edge-system.svc"]:
        assert arg in args
    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "8Gi" and pvc["spec"]["storageClassName"] == "fast"
    assert {"name": "state", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in pod["volumes"]
    service = one(objects, "Service")
    assert service["spec"]["type"] == "NodePort" and service["spec"]["clusterIP"] == "10.96.0.44"
    assert service["spec"]["ports"][0]["nodePort"] == 30444
    policy = one(objects, "NetworkPolicy")["spec"]
    egress_ports = [p["port"] for rule in policy["egress"] for p in rule["ports"]]
    assert 8443 in egress_ports, "the hub's default port without a join string to read it from"
    assert policy["egress"][0]["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]
    assert policy["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    role = one(objects, "Role")
    assert role["rules"][0]["resourceNames"] == ["agent-id", "edge-tether-agent-audit-webhook"]
    assert "--audit-secret=edge-tether-agent-audit-webhook" in args
    assert all(s["name"] == "tether" and s["namespace"] == "edge-system" for b in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding") for s in b["subjects"])


def test_network_policy_reads_the_hub_port_from_the_join_string(openapi):
    objects = install("--set-string", f"joinToken={join_string('[2001:db8::7]:7443')}")
    assert_valid(openapi, objects)
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert [p["port"] for p in policy["egress"][0]["ports"]] == [7443]
    ingress_ports = sorted(p["port"] for rule in policy["ingress"] for p in rule["ports"])
    assert ingress_ports == [8444, 9090], "only the audit and health/metrics ports"


def test_audit_disabled_drops_the_webhook(openapi):
    objects = install("--set-string", f"joinToken={JOIN}", "--set", "audit.enabled=false", "--set", "networkPolicy.enabled=false")
    assert_valid(openapi, objects)
    assert not by_kind(objects, "Service") and not by_kind(objects, "NetworkPolicy")
    args = agent_args(objects)
    assert "--audit-listen=none" in args and not any(a.startswith("--audit-san") for a in args)


@pytest.mark.parametrize("args, message", [
    ([], "at '/joinToken': minLength: got 0, want 1"),
    (["--set-json", "joinToken=12345"], "at '/joinToken': got number, want string"),
    (["--set-string", "joinToken=not-a-join-string"], "at '/joinToken'"),
    (["--set-string", f"joinToken={JOIN}", "--set", "audit.port=https"], "at '/audit/port': got string, want integer"),
    (["--set-string", f"joinToken={JOIN}", "--set", "audit.enabled=yes please"], "at '/audit/enabled': got string, want boolean"),
    (["--set-string", f"joinToken={JOIN}", "--set", "persistence.size=lots"], "at '/persistence/size'"),
    (["--set-string", f"joinToken={JOIN}", "--set", "logLevel=verbose"], "at '/logLevel'"),
    (["--set-string", f"joinToken={JOIN}", "--set", "jionToken=x"], "additional properties 'jionToken' not allowed"),
])
def test_bad_values_fail_with_the_schemas_message(args, message):
    error = render("install", "tether-agent", CHART, "--namespace", "tether-system", *args, expect_ok=False)
    assert "values don't meet the specifications of the schema" in error
    assert message in error


def test_a_join_string_that_does_not_decode_fails_clearly():
    error = render("install", "tether-agent", CHART, "--set-string", "joinToken=tether1.bm90LWpzb24", expect_ok=False)
    assert "joinToken is not a readable Tether join string" in error


def rule_tuples(rules, scope):
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((scope, group, resource, verb, tuple(rule.get("resourceNames") or ())))
    return out


@pytest.mark.parametrize("identity_secret, audit", [(None, True), ("agent-id", True), (None, False)])
def test_rbac_is_exactly_what_the_agent_calls(identity_secret, audit):
    """`tether-agent permissions` is the list the agent's code uses (its requests
    against the API emulator are checked against it in ReconcileTests)."""
    extra = ["--set", f"identitySecret.name={identity_secret}"] if identity_secret else []
    objects = install("--set-string", f"joinToken={JOIN}", "--set", f"audit.enabled={str(audit).lower()}", *extra)
    secret_name = identity_secret or "tether-agent-identity"
    args = agent_args(objects)
    assert f"--identity-secret={secret_name}" in args
    permissions = [os.path.join(BIN, "tether-agent"), "permissions", "--identity-secret", secret_name]
    if audit:
        assert "--audit-secret=tether-agent-audit-webhook" in args
        permissions += ["--audit-secret", "tether-agent-audit-webhook"]
    else:
        assert not any(a.startswith("--audit-secret") for a in args)
    declared = json.loads(subprocess.run(permissions, capture_output=True, text=True, check=True).stdout)
    expected = set()
    for rule in declared:
        assert rule["why"], rule
        expected |= rule_tuples([rule], rule["scope"])
    granted = rule_tuples(one(objects, "ClusterRole")["rules"], "cluster") | rule_tuples(one(objects, "Role")["rules"], "own-namespace")
    assert granted - expected == set(), "granted but never called"
    assert expected - granted == set(), "called but not granted"
    for rule in one(objects, "ClusterRole")["rules"] + one(objects, "Role")["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    # The bindings give exactly these roles to the agent's service account, in its namespace.
    account = one(objects, "ServiceAccount")["metadata"]
    for binding, role in [(one(objects, "ClusterRoleBinding"), one(objects, "ClusterRole")), (one(objects, "RoleBinding"), one(objects, "Role"))]:
        assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["roleRef"]["kind"] == role["kind"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}]


def test_rbac_rules_are_commented():
    with open(os.path.join(CHART, "templates", "rbac.yaml"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[i - 1].strip().startswith("#"), f"rule at line {i + 1} has no comment saying why"


def test_the_image_tag_is_the_agents_version():
    with open(os.path.join(CHART, "Chart.yaml"), encoding="utf-8") as f:
        chart = yaml.safe_load(f)
    version = subprocess.run([os.path.join(BIN, "tether-agent"), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert chart["appVersion"] == version
    with open(os.path.join(REPO, "Containerfile"), encoding="utf-8") as f:
        containerfile = f.read()
    assert "USER 65532" in containerfile, "the image runs as the uid the chart's securityContext names"


class Hub:
    """A real tether-hub process on loopback ports the kernel picks."""

    def __init__(self, directory):
        self.data = os.path.join(directory, "tether-data")
        self.process = subprocess.Popen(
            [os.path.join(BIN, "tether-hub"), "serve", "--data-dir", self.data, "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        for line in self.process.stderr:
            if "hub ready" in line:
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError("the hub exited before it was ready")

    def cli(self, *args):
        return subprocess.run([os.path.join(BIN, "tether-hub"), *args, "--credentials", self.data + "/admin-credentials.json"],
                              capture_output=True, text=True, timeout=60)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def test_the_helm_install_line_token_create_prints_renders_valid_objects(openapi, tmp_path):
    hub = Hub(str(tmp_path))
    try:
        assert hub.cli("cluster", "add", "edge-7").returncode == 0
        created = hub.cli("token", "create", "--cluster", "edge-7")
        assert created.returncode == 0, created.stderr
    finally:
        hub.stop()
    join = created.stdout.splitlines()[0]
    lines = [l.strip() for l in created.stderr.splitlines() if l.strip().startswith("helm install ")]
    assert len(lines) == 1, created.stderr
    argv = shlex.split(lines[0])
    assert argv[:2] == ["helm", "install"]
    # The same arguments, through Helm's engine instead of the helm binary.
    objects = render(*argv[1:])
    assert_valid(openapi, objects)
    assert base64.b64decode(one(objects, "Secret")["data"]["joinToken"]).decode() == join
    hub_port = int(json.loads(base64.urlsafe_b64decode(join[len("tether1."):] + "==="))["hub"].rsplit(":", 1)[1])
    assert [p["port"] for p in one(objects, "NetworkPolicy")["spec"]["egress"][0]["ports"]] == [hub_port]
    assert one(objects, "Deployment")["metadata"]["namespace"] == "tether-system"


UNIT = os.path.join(REPO, "deploy", "systemd", "tether-hub.service")


def unit_settings(path):
    settings = {}
    section = None
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if re.fullmatch(r"\[[A-Za-z]+\]", line):
                section = line[1:-1]
                continue
            assert section and "=" in line, f"{path}:{number}: not a section or key=value: {line}"
            key, value = line.split("=", 1)
            settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def test_the_systemd_unit_parses_and_is_hardened():
    settings = unit_settings(UNIT)
    def get(section, key):
        return settings.get((section, key), [None])[-1]
    assert get("Service", "User") == "tether-hub" and get("Service", "DynamicUser") in (None, "no")
    assert get("Service", "StateDirectory") == "tether-hub"
    assert get("Service", "StateDirectoryMode") == "0700"
    assert "--data-dir ${STATE_DIRECTORY}" in get("Service", "ExecStart") or "--data-dir /var/lib/tether-hub" in get("Service", "ExecStart")
    assert get("Service", "Restart") == "on-failure"
    assert get("Service", "ProtectSystem") == "strict"
    for key in ["NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectKernelTunables", "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality"]:
        assert get("Service", key) in ("yes", "true", "read-only"), key
    assert get("Service", "KillSignal") in (None, "SIGTERM")
    assert get("Install", "WantedBy") == "multi-user.target"


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # The parse check above still ran; this one needs systemd's own parser.
        pytest.fail("systemd-analyze is not installed (apt-get install systemd); scripts/install-deps installs it")
    # verify also checks that ExecStart's binary exists: point it at the built one.
    with open(UNIT, encoding="utf-8") as f:
        text = f.read()
    unit = tmp_path / "tether-hub.service"
    unit.write_text(text.replace("/usr/local/bin/tether-hub", os.path.join(BIN, "tether-hub")))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    own = [l for l in output.splitlines() if "tether-hub.service" in l]
    assert result.returncode == 0 and not own, output


def test_the_install_script_lays_out_the_service(tmp_path):
    script = os.path.join(REPO, "deploy", "systemd", "install")
    root = tmp_path / "root"
    binary = os.path.join(BIN, "tether-hub")
    result = subprocess.run([script, "--root", str(root), "--binary", binary, "--advertise", "hub.example.com"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    installed = root / "usr/local/bin/tether-hub"
    assert os.access(installed, os.X_OK)
    assert (root / "etc/systemd/system/tether-hub.service").read_text() == open(UNIT, encoding="utf-8").read()
    env = (root / "etc/tether-hub/tether-hub.env").read_text()
    assert 'TETHER_HUB_ARGS="--advertise hub.example.com --listen 0.0.0.0:8443' in env
    # An upgrade keeps the operator's settings.
    (root / "etc/tether-hub/tether-hub.env").write_text('TETHER_HUB_ARGS="--advertise edited.example.com"\n')
    again = subprocess.run([script, "--root", str(root), "--binary", binary], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "edited.example.com" in (root / "etc/tether-hub/tether-hub.env").read_text()
    # The unit's ExecStart runs what was installed, with the options from the env file.
    exec_start = unit_settings(UNIT)[("Service", "ExecStart")][-1]
    assert exec_start.startswith("/usr/local/bin/tether-hub serve ") and "$TETHER_HUB_ARGS" in exec_start
    missing = subprocess.run([script, "--root", str(root), "--binary", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 1 and "no tether-hub binary" in missing.stderr
