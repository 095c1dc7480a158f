"""Static checks of the deployment files: compose schema, loopback-only ports, Ray token auth, MLflow basic auth,
no committed secrets, KubeRay and `ray up` manifests, images, and the helper scripts' behaviour.

No Docker engine or Kubernetes runs here, so the files are checked against the published Compose schema (shipped
in the check-jsonschema wheel), Ray's own cluster-config validator, and the facts each file must state.
"""

from __future__ import annotations

import configparser
import copy
import json
import os
import re
import shlex
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
RAY_UP = ROOT / "cluster" / "ray-cluster.yaml"
KUBERAY = [ROOT / "cluster" / "kuberay" / "raycluster.yaml", ROOT / "cluster" / "kuberay" / "rayjob.yaml"]
WORKER_DOCKERFILE = ROOT / "cluster" / "Dockerfile.worker"
MLFLOW_DIR = ROOT / "mlflow"
START_SERVER = MLFLOW_DIR / "start-server.sh"

REQUIRED_REF = re.compile(r"^\$\{([A-Z0-9_]+):\?[^}]*\}$")  # ${VAR:?message}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


# --------------------------------------------------------------------------------------------- compose


def test_compose_matches_the_compose_specification() -> None:
    check_jsonschema = pytest.importorskip(
        "check_jsonschema", reason="check-jsonschema ships the Compose schema; add it to the dev extra"
    )
    from jsonschema import Draft202012Validator

    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    validator = Draft202012Validator(json.loads(schema_path.read_text()))
    document = compose()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == [], f"{COMPOSE} does not match the Compose spec:\n" + "\n".join(errors)

    # The schema is strict enough to catch a misspelt key, so the check above can fail.
    broken = copy.deepcopy(document)
    broken["services"]["mlflow"]["portz"] = broken["services"]["mlflow"].pop("ports")
    assert any("portz" in e.message for e in validator.iter_errors(broken))


def published_ports(service: dict[str, Any]) -> Iterator[tuple[str | None, str]]:
    """(host_ip, spec) for every published port, short or long syntax."""
    for port in service.get("ports", []):
        if isinstance(port, dict):
            yield port.get("host_ip"), json.dumps(port)
            continue
        spec = str(port)
        parts = spec.split(":")
        # IP:HOST:CONTAINER has three parts; HOST:CONTAINER and CONTAINER have no IP (= all interfaces).
        yield (parts[0] if len(parts) == 3 else None), spec


def test_every_published_port_is_bound_to_loopback() -> None:
    services = compose()["services"]
    seen: dict[str, list[str]] = {}
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{COMPOSE}: service {name} uses the host network"
        for host_ip, spec in published_ports(service):
            assert host_ip == "127.0.0.1", f"{COMPOSE}: service {name} publishes {spec!r} beyond 127.0.0.1"
            seen.setdefault(name, []).append(spec)
    # The two ports users need: MLflow and the Ray dashboard / Jobs API.
    assert "127.0.0.1:5000:5000" in seen["mlflow"]
    assert "127.0.0.1:8265:8265" in seen["ray-head"]


def ray_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if "ray start" in command_text(s)}


def test_compose_has_a_ray_head_and_a_gpu_worker() -> None:
    services = ray_services()
    heads = [n for n, s in services.items() if "--head" in command_text(s)]
    workers = {n: s for n, s in services.items() if "--head" not in command_text(s)}
    assert heads == ["ray-head"]
    assert workers, "no Ray worker service"
    for name, service in workers.items():
        assert "--address=ray-head:6379" in command_text(service), name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d.get("capabilities", []) for d in devices), f"{name} reserves no GPU"


def test_ray_services_require_token_auth() -> None:
    services = ray_services()
    assert len(services) >= 2
    for name, service in services.items():
        env = environment(service)
        assert env.get("RAY_AUTH_MODE") == "token", f"{COMPOSE}: {name} lacks RAY_AUTH_MODE=token"
        match = REQUIRED_REF.match(env.get("RAY_AUTH_TOKEN", ""))
        assert match and match.group(1) == "RAY_AUTH_TOKEN", f"{name}: RAY_AUTH_TOKEN must come from .env"


def test_mlflow_service_runs_basic_auth_with_the_password_from_env() -> None:
    services = compose()["services"]
    mlflow = services["mlflow"]
    env = environment(mlflow)
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        match = REQUIRED_REF.match(env.get(key, ""))
        assert match and match.group(1) == key, f"{COMPOSE}: mlflow {key} must be ${{{key}:?...}}"
    # The image's entrypoint is start-server.sh, which turns basic auth on when the password is set
    # (its behaviour is tested below); compose must not bypass it.
    assert "entrypoint" not in mlflow and "command" not in mlflow
    dockerfile = (ROOT / mlflow["build"]["context"] / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/opt/edgeseg-mlflow/start-server.sh"]' in dockerfile
    assert "mlflow[auth]" in dockerfile
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    # The driver on the Ray head logs in as the admin with the same password.
    head = environment(services["ray-head"])
    assert head["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    password_ref = REQUIRED_REF.match(head["MLFLOW_TRACKING_PASSWORD"])
    assert password_ref and password_ref.group(1) == "MLFLOW_AUTH_ADMIN_PASSWORD"


def test_env_example_names_every_required_variable_and_holds_no_secret() -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    assignments = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert required <= set(assignments), f"{ENV_EXAMPLE} lacks {sorted(required - set(assignments))}"
    for key, value in assignments.items():
        if SECRET_KEY.search(key) and not NOT_SECRET_KEY.search(key):
            assert value == "", f"{ENV_EXAMPLE}: {key} must be left empty, found a value"


# ------------------------------------------------------------------------------------ secret scanning

SECRET_KEY = re.compile(r"(?i)(passw|secret|token|private_key|access_key|api_key|credential)")
NOT_SECRET_KEY = re.compile(r"(?i)(_PATH|_FILE|_ID|_USER|USERNAME|_MODE|_URI|_URL|secretKeyRef|secretName)$")
SAFE_VALUE = re.compile(
    r"""^(
        |\$\{[A-Za-z0-9_]+(:?[-?][^}]*)?\}      # ${VAR}, ${VAR:?msg}, ${VAR:-default}
        |\$\$?[A-Za-z_][A-Za-z0-9_]*            # $VAR / $$VAR (shell)
        |"\$\$?\{?[A-Za-z_][A-Za-z0-9_]*\}?"    # "$VAR"
        |\\?\$\(.*                              # $(openssl rand ...): generated at run time
        |<[^>]+>                                # <placeholder>
        |(~|\.|\$HOME)?/\S*                     # a path
    )$""",
    re.X,
)
URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^@\s]+)@")
# 32+ hex characters, or 40+ base64 characters mixing letters and digits (paths and names are not tokens).
LONG_TOKEN = re.compile(
    r"(?<![A-Za-z0-9+/_.-])([0-9a-fA-F]{32,}|(?=[A-Za-z+_-]*[0-9])(?=[0-9+_-]*[A-Za-z])[A-Za-z0-9+_-]{40,}={0,2})"
    r"(?![A-Za-z0-9+/_.-])"
)


def _pairs_from_yaml(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        # A Kubernetes env entry {name: X, value: Y} is the pair (X, Y).
        if "name" in node and "value" in node and isinstance(node["name"], str):
            yield node["name"], node["value"]
        for key, value in node.items():
            yield str(key), value
            yield from _pairs_from_yaml(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", item):
                yield tuple(item.split("=", 1))  # type: ignore[misc]
            yield from _pairs_from_yaml(item)


def _pairs_from_text(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        whole = re.fullmatch(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", stripped)
        if whole:  # KEY=VALUE (env file) or key = value (ini): the value is the rest of the line
            yield whole.group(1), whole.group(2).strip().strip("'\"")
            continue
        for m in re.finditer(r"\b([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|'[^']*'|[^\s;]*)", stripped):
            yield m.group(1), m.group(2)


def find_literal_secrets(path: Path) -> list[str]:
    """Literal secret values in a file: secret-named keys with real values, URL passwords, long tokens."""
    text = path.read_text()
    findings: list[str] = []
    pairs: list[tuple[str, Any]]
    if path.suffix in (".yml", ".yaml"):
        pairs = [p for doc in yaml.safe_load_all(text) for p in _pairs_from_yaml(doc)]
    else:
        pairs = list(_pairs_from_text(text))
    for key, value in pairs:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            continue
        if SECRET_KEY.search(key) and not NOT_SECRET_KEY.search(key):
            shown = str(value).strip()
            if not (SAFE_VALUE.match(shown) or SAFE_VALUE.match(shown.strip("'\""))):
                findings.append(f"{path.name}: {key} = {value!r}")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for m in URL_PASSWORD.finditer(body):
        if not SAFE_VALUE.match(m.group(1)):
            findings.append(f"{path.name}: password in URL {m.group(0)!r}")
    for m in LONG_TOKEN.finditer(body):
        findings.append(f"{path.name}: long token {m.group(1)[:12]}...")
    return findings


def committed_deployment_files() -> list[Path]:
    files = [COMPOSE, ENV_EXAMPLE]
    for folder in (ROOT / "cluster", MLFLOW_DIR):
        files += [p for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return files


def test_no_literal_secrets_in_deployment_files() -> None:
    files = committed_deployment_files()
    assert {p.name for p in files} >= {"docker-compose.yml", ".env.example", "ray-cluster.yaml", "raycluster.yaml",
                                       "rayjob.yaml", "Dockerfile.worker", "basic_auth.ini", "start-server.sh"}  # fmt: skip
    findings = [f for path in files for f in find_literal_secrets(path)]
    assert findings == [], "literal secrets:\n" + "\n".join(findings)


def test_secret_scanner_finds_planted_secrets(tmp_path: Path) -> None:
    env = tmp_path / "bad.env"
    env.write_text("POSTGRES_PASSWORD=hunter2hunter2\nRAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:?set it}\n")
    compose_file = tmp_path / "bad.yml"
    compose_file.write_text(
        "services:\n  db:\n    environment:\n      - MINIO_ROOT_PASSWORD=minio123\n"
        "  app:\n    environment:\n      URL: postgresql://mlflow:pw1234@db/mlflow\n"
        "  k8s:\n    env:\n      - name: MLFLOW_TRACKING_PASSWORD\n        value: letmein\n"
        f"    note: {'a1' * 20}\n"
    )
    env_findings = find_literal_secrets(env)
    assert len(env_findings) == 1 and "POSTGRES_PASSWORD" in env_findings[0]
    yml_findings = " ".join(find_literal_secrets(compose_file))
    for needle in ("MINIO_ROOT_PASSWORD", "pw1234", "MLFLOW_TRACKING_PASSWORD", "long token"):
        assert needle in yml_findings


# ------------------------------------------------------------------------------------- Ray clusters


def _kuberay_json_resources(value: str) -> dict[str, Any]:
    # KubeRay passes rayStartParams verbatim to `ray start --resources=`, so the JSON must be quoted once more.
    assert value.startswith('"') and value.endswith('"'), f"resources must be a quoted JSON string: {value!r}"
    return json.loads(value[1:-1].replace('\\"', '"'))


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest(path: Path) -> None:
    import ray

    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1
    manifest = docs[0]
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] in ("RayCluster", "RayJob")
    spec = manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}, f"{path}: authOptions must be {{mode: token}}"
    assert spec["rayVersion"] == ray.__version__  # the Ray the driver (this venv) speaks
    head = spec["headGroupSpec"]
    assert _kuberay_json_resources(head["rayStartParams"]["resources"])["trial_driver"] >= 1
    gpu_groups = [
        group
        for group in spec["workerGroupSpecs"]
        if any(
            int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
            for c in group["template"]["spec"]["containers"]
        )
    ]
    assert gpu_groups, f"{path}: no worker group requests nvidia.com/gpu"
    containers = head["template"]["spec"]["containers"] + [
        c for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]
    ]
    for container in containers:
        for item in container.get("env", []):
            if SECRET_KEY.search(item["name"]) and not NOT_SECRET_KEY.search(item["name"]):
                assert "secretKeyRef" in item.get("valueFrom", {}), (
                    f"{path}: {item['name']} must use a Secret"
                )
    if manifest["kind"] == "RayJob":
        assert manifest["spec"]["entrypoint"].startswith("edgeseg search ")
        assert manifest["spec"]["shutdownAfterJobFinishes"] is True


def test_ray_up_config_is_valid_and_enables_token_auth() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_yaml(RAY_UP)
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's own schema and checks
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("chmod 600 ~/.ray/auth_token" in c for c in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start, f"{RAY_UP}: {key} has no `ray start`"
        for command in start:
            assert "RAY_AUTH_MODE=token" in command, f"{RAY_UP}: {key} starts Ray without RAY_AUTH_MODE=token"
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head
    resources = re.search(r"--resources='([^']+)'", head)
    assert resources and json.loads(resources.group(1))["trial_driver"] >= 1


def test_worker_dockerfile_builds_edgeseg_with_gpu_extra() -> None:
    import ray

    text = WORKER_DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and base.group(1) == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert re.search(r"^ARG EXTRAS=gpu$", text, re.M)
    assert '".[${EXTRAS}]"' in text and "onnxruntime-gpu" in text
    assert re.search(r"RAY_AUTH_MODE=token", text)
    ignore = (WORKER_DOCKERFILE.parent / "Dockerfile.worker.dockerignore").read_text().split()
    for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for source in shlex.split(line):
            assert (ROOT / source).exists(), f"{WORKER_DOCKERFILE}: COPY source {source} is missing"
            assert f"!{source.rstrip('/')}" in [i.rstrip("/") for i in ignore], (
                f"{source} is not in the build context"
            )


# ------------------------------------------------------------------------------------ MLflow server


def test_basic_auth_ini_has_no_password_and_a_relative_user_store() -> None:
    parser = configparser.ConfigParser()
    parser.read(MLFLOW_DIR / "basic_auth.ini")
    section = parser["mlflow"]
    assert "admin_password" not in section
    assert section["admin_username"] == "admin"
    assert section["database_uri"] == "sqlite:///basic_auth.db"
    assert section["default_permission"] in ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


@pytest.fixture()
def fake_mlflow(tmp_path: Path) -> Path:
    """A stand-in `mlflow` executable that records its arguments, environment and working directory.

    What is tested is start-server.sh's decision logic; the real server with this ini is started in
    tests/integration/test_ui_browser.py::test_basic_auth_server.
    """
    record = tmp_path / "record.json"
    stub = tmp_path / "mlflow"
    stub.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n"
    )
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return stub


def run_start_server(fake: Path, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    full_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MLFLOW_BIN": str(fake),
        "MLFLOW_DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    result = subprocess.run(
        ["bash", str(START_SERVER)], env=full_env, capture_output=True, text=True, timeout=30
    )
    record_path = fake.parent / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    return result, record


def test_start_server_defaults_to_sqlite_on_loopback(fake_mlflow: Path, tmp_path: Path) -> None:
    assert os.access(START_SERVER, os.X_OK)
    result, record = run_start_server(fake_mlflow, tmp_path)
    assert result.returncode == 0, result.stderr
    argv = record["argv"]
    data = tmp_path / "data"

    def option(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert argv[0] == "server"
    assert "--backend-store-uri" not in argv and "--artifacts-destination" not in argv  # env, not argv (ps)
    assert record["env"]["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{data}/mlflow.db"
    assert (
        record["env"]["MLFLOW_ARTIFACTS_DESTINATION"] == str(data / "artifacts")
        and "--serve-artifacts" in argv
    )
    assert option("--host") == "127.0.0.1" and option("--port") == "5000"
    assert "--app-name" not in argv
    assert record["cwd"] == str(data) and (data / "artifacts").is_dir()


def test_start_server_turns_on_basic_auth_when_the_password_is_set(fake_mlflow: Path, tmp_path: Path) -> None:
    result, record = run_start_server(
        fake_mlflow,
        tmp_path,
        MLFLOW_AUTH_ADMIN_PASSWORD="x" * 16,
        MLFLOW_FLASK_SERVER_SECRET_KEY="y" * 16,
        MLFLOW_HOST="0.0.0.0",
        MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow:pgpass-123@db:5432/mlflow",
    )
    assert result.returncode == 0, result.stderr
    argv = record["argv"]
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert record["env"]["MLFLOW_AUTH_CONFIG_PATH"] == str(MLFLOW_DIR / "basic_auth.ini")
    assert "pgpass-123" not in result.stderr + result.stdout  # the banner masks the database password


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MLFLOW_HOST": "0.0.0.0"}, "refusing to serve MLflow on 0.0.0.0"),
        ({"MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 16}, "MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ],
)
def test_start_server_refuses_unsafe_setups(
    fake_mlflow: Path, tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    result, record = run_start_server(fake_mlflow, tmp_path, **env)
    assert result.returncode == 2
    assert needle in result.stderr
    assert record == {}, "mlflow must not be started"


# ------------------------------------------------------------------------------------------- scripts


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs an installed /usr/bin/chromium")
def test_ensure_chromium_is_idempotent() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-chromium.sh")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("chromium already present: Chromium ")


@pytest.mark.parametrize(
    "script", [ROOT / "scripts" / "ensure-chromium.sh", START_SERVER], ids=lambda p: p.name
)
def test_shell_scripts_parse(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
