"""Registry digests against real registries on loopback (scripts/setup-containers.sh starts them).

- 127.0.0.1:5001: distribution 2.8 with token authentication; its token service
  (scripts/registry_token_service.py) gives anonymous pull on public/* and
  everything to the test user; public/multi:test is a multi-arch image index.
- 127.0.0.1:5003: distribution 2.8 with htpasswd basic authentication.
- 127.0.0.1:5000: the plain registry.

Each resolution is checked with every client an engine may use: ``daemon``
(Docker), ``skopeo`` (Podman and Apptainer when it is installed) and ``http``
(the built-in client, when it is not).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from consist.containers import registry
from engines import facts, need

CLIENTS = ["http", "skopeo", "daemon"]


def fact(key: str) -> str:
    """A value the set-up must provide: missing is a failure, never a skip."""
    value = facts().get(key)
    if not value:
        pytest.fail(f"{key} is missing from the containers facts: run scripts/setup-containers.sh", pytrace=False)
    return value


def engine_for(client: str) -> str:
    """The engine whose resolution path uses ``client``."""
    if client == "daemon":
        need("docker")
        return "docker"
    if client == "skopeo" and not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed: run scripts/setup-containers.sh", pytrace=False)
    return "podman"


def docker_api():  # type: ignore[no-untyped-def]
    from consist.containers.oci import DockerBackend

    return DockerBackend().client().api


def resolve(ref: str, client: str) -> registry.Resolution:
    engine = engine_for(client)
    os.environ["CONSIST_REGISTRY_CLIENT"] = client
    registry.clear_cache()
    return registry.resolve(ref, engine, docker_api=docker_api if engine == "docker" else None)


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials but the ones a test writes; records in the test's own directory."""
    home = tmp_path / "home"
    (home / "docker").mkdir(parents=True)
    (home / "docker" / "config.json").write_text('{"auths": {}}')  # Podman 4.3 wants the file when DOCKER_CONFIG is set
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "docker"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    monkeypatch.setenv("APPTAINER_CONFIGDIR", str(home / "apptainer"))
    monkeypatch.setenv("CONSIST_CACHE_DIR", str(tmp_path / "consist-cache"))
    monkeypatch.setenv("APPTAINER_NOHTTPS", "1")  # the loopback registries speak plain HTTP
    monkeypatch.setenv("CONSIST_REGISTRY_CLIENT", "auto")  # restored after the test, whatever it sets
    for var in (
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "APPTAINER_DOCKER_USERNAME",
        "APPTAINER_DOCKER_PASSWORD",
        "SINGULARITY_DOCKER_USERNAME",
        "SINGULARITY_DOCKER_PASSWORD",
        "CONTAINERS_REGISTRIES_CONF",
    ):
        monkeypatch.delenv(var, raising=False)  # fmt: skip
    registry.clear_cache()
    return home


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield isolate(tmp_path, monkeypatch)
    registry.clear_cache()


def login(home: Path, password: str, hosts: tuple[str, ...] | None = None) -> Path:
    """Docker's config.json with a login for the auth registries (what `docker login` writes)."""
    hosts = hosts or (fact("CI_REGISTRY_TOKEN"), fact("CI_REGISTRY_BASIC"))
    auth = base64.b64encode(f"{fact('CI_REGISTRY_USER')}:{password}".encode()).decode()
    path = home / "docker" / "config.json"
    path.write_text(json.dumps({"auths": {h: {"auth": auth} for h in hosts}}))
    return path


def token_log_size() -> int:
    p = Path(fact("CI_TOKEN_SERVICE_LOG"))
    return p.stat().st_size if p.exists() else 0


def tokens_since(offset: int) -> list[dict]:
    with open(fact("CI_TOKEN_SERVICE_LOG"), "rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("client", CLIENTS)
def test_anonymous_pull_resolves_through_the_token_flow(client: str) -> None:
    """A public image on a token registry: 401 challenge → anonymous token → digest."""
    start = token_log_size()
    got = resolve(f"{fact('CI_REGISTRY_TOKEN')}/public/busybox:test", client)
    assert got.digest == fact("CI_TOKEN_PUBLIC_BUSYBOX_DIGEST")
    issued = [t for t in tokens_since(start) if t["status"] == 200]
    assert issued and all(t["account"] is None for t in issued), issued
    assert {"type": "repository", "name": "public/busybox", "actions": ["pull"]} in issued[-1]["granted"]


@pytest.mark.parametrize("kind", ["token", "basic"])
@pytest.mark.parametrize("client", CLIENTS)
def test_credentialed_pull_resolves(client: str, kind: str, isolated: Path) -> None:
    """A private image with the login from Docker's config.json: token flow with basic
    credentials on one registry, HTTP basic authentication on the other."""
    login(isolated, fact("CI_REGISTRY_PASSWORD"))
    if kind == "token":
        start = token_log_size()
        got = resolve(f"{fact('CI_REGISTRY_TOKEN')}/private/busybox:test", client)
        assert got.digest == fact("CI_TOKEN_PRIVATE_BUSYBOX_DIGEST")
        assert [t["account"] for t in tokens_since(start) if t["status"] == 200][-1] == fact("CI_REGISTRY_USER")
    else:
        got = resolve(f"{fact('CI_REGISTRY_BASIC')}/ci/busybox:test", client)
        assert got.digest == fact("CI_BASIC_BUSYBOX_DIGEST")


@pytest.mark.parametrize("client", CLIENTS)
def test_private_image_without_a_login_says_to_log_in_or_pin(client: str) -> None:
    for ref in (f"{fact('CI_REGISTRY_TOKEN')}/private/busybox:test", f"{fact('CI_REGISTRY_BASIC')}/ci/busybox:test"):
        with pytest.raises(registry.RegistryAuthError) as err:
            resolve(ref, client)
        text = str(err.value)
        assert "login" in text and "pin the image by digest" in text and ref in text


@pytest.mark.parametrize("client", CLIENTS)
def test_wrong_password_is_a_clear_error_that_holds_no_secret(client: str, isolated: Path) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    login(isolated, wrong)
    user = fact("CI_REGISTRY_USER")
    secrets = [wrong, base64.b64encode(f"{user}:{wrong}".encode()).decode()]
    for ref in (f"{fact('CI_REGISTRY_TOKEN')}/private/busybox:test", f"{fact('CI_REGISTRY_BASIC')}/ci/busybox:test"):
        with pytest.raises(registry.RegistryAuthError) as err:
            resolve(ref, client)
        text = " ".join([str(err.value), repr(err.value), str(getattr(err.value, "detail", ""))])
        assert not [s for s in secrets if s in text], text
        assert "refused the login" in text or "needs a login" in text
        if client != "daemon":  # consist read the login itself, so it can say from where
            assert str(isolated / "docker" / "config.json") in text


@pytest.mark.parametrize("client", CLIENTS)
def test_multi_arch_index_keys_on_the_index_digest(client: str) -> None:
    """The digest users see on the registry page and in `docker pull`: the index's, not one platform's."""
    got = resolve(f"{fact('CI_REGISTRY_TOKEN')}/public/multi:test", client)
    assert got.digest == fact("CI_TOKEN_MULTI_DIGEST") != fact("CI_TOKEN_MULTI_AMD64_DIGEST")
    assert got.is_index


def test_a_pinned_reference_never_asks() -> None:
    before = registry.requests_made
    digest = "sha256:" + "0" * 64
    got = registry.resolve(f"127.0.0.1:9/never/asked@{digest}", "apptainer")  # nothing listens on port 9
    assert got.digest == digest and got.client == "pinned" and registry.requests_made == before


# ----------------------------------------------------------------------------- where logins come from


def test_credential_helper_from_docker_config(isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """credHelpers: consist (and skopeo) run docker-credential-<name> as Docker does."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    answer = json.dumps({"Username": fact("CI_REGISTRY_USER"), "Secret": fact("CI_REGISTRY_PASSWORD")})
    helper = bindir / "docker-credential-consisttest"
    helper.write_text(f"#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho '{answer}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (isolated / "docker" / "config.json").write_text(
        json.dumps({"credHelpers": {fact("CI_REGISTRY_BASIC"): "consisttest"}})
    )
    creds = registry.find_credentials(f"{fact('CI_REGISTRY_BASIC')}/ci/busybox:test", "podman")
    assert creds is not None and "consisttest" in creds.source and fact("CI_REGISTRY_PASSWORD") not in repr(creds)
    for client in ("http", "skopeo"):
        got = resolve(f"{fact('CI_REGISTRY_BASIC')}/ci/busybox:test", client)
        assert got.digest == fact("CI_BASIC_BUSYBOX_DIGEST")


@pytest.mark.parametrize("client", ["http", "skopeo"])
def test_registry_auth_file_and_apptainer_logins(client: str, isolated: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """REGISTRY_AUTH_FILE (Podman), Apptainer's `registry login` file and its environment variables."""
    ref = f"{fact('CI_REGISTRY_BASIC')}/ci/busybox:test"
    engine_for(client)
    os.environ["CONSIST_REGISTRY_CLIENT"] = client
    auth = base64.b64encode(f"{fact('CI_REGISTRY_USER')}:{fact('CI_REGISTRY_PASSWORD')}".encode()).decode()
    podman_auth = tmp_path / "auth.json"
    podman_auth.write_text(json.dumps({"auths": {fact("CI_REGISTRY_BASIC"): {"auth": auth}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman_auth))
    registry.clear_cache()
    assert registry.resolve(ref, "podman").digest == fact("CI_BASIC_BUSYBOX_DIGEST")
    monkeypatch.delenv("REGISTRY_AUTH_FILE")

    (isolated / "apptainer").mkdir()
    (isolated / "apptainer" / "docker-config.json").write_text(podman_auth.read_text())
    registry.clear_cache()
    assert registry.resolve(ref, "apptainer").digest == fact("CI_BASIC_BUSYBOX_DIGEST")
    (isolated / "apptainer" / "docker-config.json").unlink()

    monkeypatch.setenv("APPTAINER_DOCKER_USERNAME", fact("CI_REGISTRY_USER"))
    monkeypatch.setenv("APPTAINER_DOCKER_PASSWORD", fact("CI_REGISTRY_PASSWORD"))
    registry.clear_cache()
    assert registry.resolve(ref, "apptainer").digest == fact("CI_BASIC_BUSYBOX_DIGEST")
    registry.clear_cache()
    with pytest.raises(registry.RegistryAuthError):  # Podman does not read Apptainer's variables
        registry.resolve(ref, "podman")


@pytest.mark.parametrize("client", ["http", "skopeo"])
def test_mirror_from_registries_conf(client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that cannot be reached (nothing listens on port 9), mirrored by the loopback one."""
    conf = tmp_path / "registries.conf"
    conf.write_text(
        '[[registry]]\nprefix = "127.0.0.1:9"\nlocation = "127.0.0.1:9"\n'
        f'[[registry.mirror]]\nlocation = "{fact("CI_REGISTRY")}"\ninsecure = true\n'
    )
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    got = resolve("127.0.0.1:9/ci/busybox:test", client)
    assert got.digest == fact("CI_IMAGE_BUSYBOX_REF").split("@", 1)[1]


# ----------------------------------------------------------------------------- odd registries


class _Proxy:
    """A loopback HTTP proxy in front of the plain registry that changes its answers."""

    def __init__(self, upstream: str, mode: str) -> None:
        import requests

        outer = self
        self.hits = 0
        self.authorizations: list[str] = []
        self.expected: str | None = None  # the one Authorization header mode "basic" accepts

        class Handler(BaseHTTPRequestHandler):
            timeout = 0.5  # a TLS handshake attempt (skopeo tries HTTPS first) is dropped, not waited on

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self, method: str) -> None:
                outer.hits += 1
                if mode == "basic":  # a registry that wants a login; what it is sent is kept
                    sent = self.headers.get("Authorization")
                    if sent:
                        outer.authorizations.append(sent)
                    if sent is None or sent != outer.expected:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="proxy"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if mode == "429" and "/manifests/" in self.path:  # like Docker Hub: only manifests count
                    self.send_response(429)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit reached"}]}'
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                accept = ", ".join(self.headers.get_all("Accept") or ["*/*"])
                resp = requests.request(method, f"http://{upstream}{self.path}", headers={"Accept": accept}, timeout=20)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() in ("docker-content-digest", "transfer-encoding", "connection", "content-length"):
                        continue  # the digest header is what this proxy takes away
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content) if method == "GET" else 0))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(resp.content)

            def do_GET(self) -> None:
                self._relay("GET")

            def do_HEAD(self) -> None:
                self._relay("HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    made: list[_Proxy] = []

    def make(mode: str) -> _Proxy:
        p = _Proxy(fact("CI_REGISTRY"), mode)
        made.append(p)
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{p.addr}"\ninsecure = true\n')
        monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))  # skopeo may speak plain HTTP to it
        return p

    yield make
    for p in made:
        p.close()


@pytest.mark.parametrize("client", ["http", "skopeo"])
def test_missing_content_digest_header_is_computed_from_the_manifest(client: str, proxy_conf) -> None:  # type: ignore[no-untyped-def]
    proxy = proxy_conf("strip-digest")
    got = resolve(f"{proxy.addr}/ci/busybox:test", client)
    assert got.digest == fact("CI_IMAGE_BUSYBOX_REF").split("@", 1)[1] and proxy.hits >= 1


@pytest.mark.parametrize("client", ["http", "skopeo"])
def test_rate_limit_is_a_clear_error(client: str, proxy_conf) -> None:  # type: ignore[no-untyped-def]
    proxy = proxy_conf("429")
    with pytest.raises(registry.RegistryRateLimitError) as err:
        resolve(f"{proxy.addr}/ci/busybox:test", client)
    text = str(err.value)
    assert "rate limit" in text and "log in" in text.lower() and "pin the image by digest" in text
    assert isinstance(err.value, consist_errors().ImageNotFoundError)


@pytest.mark.parametrize("client", ["http", "skopeo"])
def test_a_mirror_gets_its_own_login_never_the_registrys(client: str, isolated: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    proxy = _Proxy(fact("CI_REGISTRY"), "basic")
    try:
        conf = tmp_path / "registries.conf"
        conf.write_text('[[registry]]\nprefix = "127.0.0.1:9"\nlocation = "127.0.0.1:9"\n'
                        f'[[registry.mirror]]\nlocation = "{proxy.addr}"\ninsecure = true\n')  # fmt: skip
        monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
        registry_secret, mirror_secret = f"registry-{uuid.uuid4().hex}", f"mirror-{uuid.uuid4().hex}"
        login(isolated, registry_secret, hosts=("127.0.0.1:9",))
        mirror_auth = base64.b64encode(f"{fact('CI_REGISTRY_USER')}:{mirror_secret}".encode()).decode()
        proxy.expected = f"Basic {mirror_auth}"
        with pytest.raises(registry.RegistryError):
            resolve("127.0.0.1:9/ci/busybox:test", client)

        def sent() -> list[str]:
            return [base64.b64decode(a.split(" ", 1)[1]).decode(errors="replace") for a in proxy.authorizations]

        assert not [a for a in sent() if registry_secret in a], "the mirror was sent the registry's password"
        config = json.loads((isolated / "docker" / "config.json").read_text())
        config["auths"][proxy.addr] = {"auth": mirror_auth}
        (isolated / "docker" / "config.json").write_text(json.dumps(config))
        got = resolve("127.0.0.1:9/ci/busybox:test", client)
        assert got.digest == fact("CI_IMAGE_BUSYBOX_REF").split("@", 1)[1]
        assert f"{fact('CI_REGISTRY_USER')}:{mirror_secret}" in sent()
        assert not [a for a in sent() if registry_secret in a]
    finally:
        proxy.close()


def consist_errors():  # type: ignore[no-untyped-def]
    import consist.errors

    return consist.errors


# ----------------------------------------------------------------------------- caching


def test_answers_are_kept_for_the_ttl_and_asked_again_after(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = f"{fact('CI_REGISTRY_TOKEN')}/public/busybox:test"
    monkeypatch.setenv("CONSIST_REGISTRY_CLIENT", "http")
    start = token_log_size()
    for _ in range(5):
        assert registry.resolve(ref, "apptainer").digest == fact("CI_TOKEN_PUBLIC_BUSYBOX_DIGEST")
    assert len(tokens_since(start)) == 1
    monkeypatch.setenv("CONSIST_REGISTRY_TTL", "0")
    start = token_log_size()
    for _ in range(3):
        registry.resolve(ref, "apptainer")
    assert len(tokens_since(start)) == 3
    monkeypatch.setenv("CONSIST_REGISTRY_TTL", "soon")
    with pytest.raises(consist_errors().ImageNotFoundError, match="CONSIST_REGISTRY_TTL"):
        registry.resolve(ref, "apptainer")


def test_every_fresh_answer_is_recorded(tmp_path: Path) -> None:
    ref = f"{fact('CI_REGISTRY_TOKEN')}/public/multi:test"
    os.environ["CONSIST_REGISTRY_CLIENT"] = "http"
    registry.resolve(ref, "apptainer")
    seen = registry.recorded(f"docker://{ref}")
    assert seen is not None and seen.digest == fact("CI_TOKEN_MULTI_DIGEST")
    data = json.loads((tmp_path / "consist-cache" / "image-digests.json").read_text())
    assert data["references"][ref]["digest"] == fact("CI_TOKEN_MULTI_DIGEST")


def test_unknown_registry_client_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSIST_REGISTRY_CLIENT", "curl")
    with pytest.raises(consist_errors().ImageNotFoundError, match="CONSIST_REGISTRY_CLIENT"):
        registry.resolve(f"{fact('CI_REGISTRY')}/ci/busybox:test", "podman")


@pytest.mark.parametrize("client", ["http", "skopeo"])
def test_apptainer_registry_login_is_found(client: str, isolated: Path) -> None:
    """`apptainer registry login` (the real command, password on stdin) is where the login is read from."""
    need("apptainer")
    host = fact("CI_REGISTRY_BASIC")
    proc = subprocess.run(
        [
            "apptainer",
            "registry",
            "login",
            "--username",
            fact("CI_REGISTRY_USER"),
            "--password-stdin",
            f"docker://{host}",
        ],
        input=fact("CI_REGISTRY_PASSWORD") + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert list((isolated / "apptainer").glob("*config.json")), "apptainer wrote its login elsewhere"
    creds = registry.find_credentials(f"{host}/ci/busybox:test", "apptainer")
    assert creds is not None and "Apptainer" in creds.source
    engine_for(client)
    os.environ["CONSIST_REGISTRY_CLIENT"] = client
    registry.clear_cache()
    assert registry.resolve(f"{host}/ci/busybox:test", "apptainer").digest == fact("CI_BASIC_BUSYBOX_DIGEST")
    registry.clear_cache()
    with pytest.raises(registry.RegistryAuthError):  # Podman does not read Apptainer's login
        registry.resolve(f"{host}/ci/busybox:test", "podman")


def test_skopeo_gets_apptainer_credentials_without_argv_or_disk(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """Apptainer's login reaches skopeo in a memory-only file: record every argument list skopeo gets."""
    real = shutil.which("skopeo")
    if real is None:
        pytest.fail("skopeo is not installed: run scripts/setup-containers.sh", pytrace=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    wrapper = bindir / "skopeo"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("CONSIST_REGISTRY_CLIENT", "skopeo")
    monkeypatch.setenv("APPTAINER_DOCKER_USERNAME", fact("CI_REGISTRY_USER"))
    monkeypatch.setenv("APPTAINER_DOCKER_PASSWORD", fact("CI_REGISTRY_PASSWORD"))
    got = registry.resolve(f"{fact('CI_REGISTRY_BASIC')}/ci/busybox:test", "apptainer")
    assert got.digest == fact("CI_BASIC_BUSYBOX_DIGEST") and got.client == "skopeo"
    argv = calls.read_text()
    assert "--authfile /proc/self/fd/" in argv and fact("CI_REGISTRY_PASSWORD") not in argv


def test_skopeo_is_what_podman_and_apptainer_use_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSIST_REGISTRY_CLIENT", raising=False)
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed: run scripts/setup-containers.sh", pytrace=False)
    for engine in ("podman", "apptainer"):
        registry.clear_cache()
        assert registry.resolve(f"{fact('CI_REGISTRY')}/ci/busybox:test", engine).client == "skopeo"
    monkeypatch.setenv("PATH", "/nonexistent")
    registry.clear_cache()
    assert registry.resolve(f"{fact('CI_REGISTRY')}/ci/busybox:test", "apptainer").client == "http"


def test_references_normalise_like_the_engines() -> None:
    r = registry.Reference.parse("busybox")
    assert (r.registry, r.repository, r.tag) == ("docker.io", "library/busybox", "latest")
    r = registry.Reference.parse("docker://ghcr.io/org/model:1.2")
    assert (r.registry, r.repository, r.tag, str(r)) == ("ghcr.io", "org/model", "1.2", "ghcr.io/org/model:1.2")
    r = registry.Reference.parse("index.docker.io/org/model@sha256:" + "a" * 64)
    assert (r.registry, r.repository, r.digest) == ("docker.io", "org/model", "sha256:" + "a" * 64)
    r = registry.Reference.parse("localhost:5000/x/y:z")
    assert (r.registry, r.repository, r.tag) == ("localhost:5000", "x/y", "z")


def test_a_refused_connection_is_unreachable_whatever_digits_its_port_holds() -> None:
    """Ports such as 40161 hold "401": that is no login failure."""
    from consist.containers.registry import SkopeoClient, split_reference

    for port in (40161, 54033, 5000):
        ref = split_reference(f"127.0.0.1:{port}/off/busybox:test")
        stderr = (
            f'time="2026-11-25T14:00:00Z" level=fatal msg="pinging container registry 127.0.0.1:{port}: '
            f'Get \\"http://127.0.0.1:{port}/v2/\\": dial tcp 127.0.0.1:{port}: connect: connection refused"'
        )
        err = SkopeoClient._error(ref, stderr, None)
        assert type(err) is registry.RegistryUnreachableError, (port, err)
    denied = SkopeoClient._error(split_reference("127.0.0.1:40161/x:y"), "reading manifest: 401 Unauthorized", None)
    assert type(denied) is registry.RegistryAuthError
