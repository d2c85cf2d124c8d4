"""Docker and Podman: OCI engines with the same command line.

Both run through their CLI (``run --rm``), so what runs is exactly what a user
would type. Image resolution for Docker goes through the Docker SDK (one API
call, about 2 ms, against about 30 ms for the CLI), for Podman through its CLI.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, ImageNotFoundError
from .base import ENGINE_CALL_TIMEOUT_S, Backend, ContainerSpec, ImageRef, Launch, check_environment
from .mounts import check_mount_args
from .registry import split_reference
from .watchdog import Watchdog

# Pulling a multi-gigabyte model image can take a while; it still must end.
PULL_TIMEOUT_S = 3600.0


def _registry_of(repo_digest: str) -> str:
    first = repo_digest.split("/", 1)[0]
    return first if ("." in first or ":" in first or first == "localhost") and "/" in repo_digest else "docker.io"


def choose_digest(requested: str, image_id: str, repo_digests: list[str]) -> tuple[str, str]:
    """The cache key digest of an inspected image and where it came from.

    The registry manifest digest when the image came from a registry (a repo
    digest not on ``localhost``, preferring the requested repository), else the
    local image ID.
    """
    repo, _tag, _ = split_reference(requested)
    remote = [d for d in repo_digests if _registry_of(d) != "localhost"]
    if remote:
        same = [d for d in remote if d.split("@", 1)[0] in (repo, f"docker.io/{repo}", f"docker.io/library/{repo}")]
        chosen = sorted(same or remote)[0]
        return chosen.split("@", 1)[1], "registry"
    iid = image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"
    return iid, "local-id"


class _OCIBackend(Backend):
    exe: str

    def _binary(self) -> str:
        path = shutil.which(self.exe)
        if path is None:
            raise BackendUnavailableError(
                f"The {self.exe} command is not installed",
                f"backend_type={self.name!r} runs containers through the {self.exe} CLI",
                f"install {self.exe} (Debian: apt-get install {'docker.io' if self.exe == 'docker' else self.exe}), "
                "or pick another backend_type",
            )
        return path

    def launch(self, spec: ContainerSpec) -> Launch:
        """``run --rm`` with ``--mount`` per volume. Environment values go through an
        environment file read from an inherited pipe: the engine command's own
        environment stays the caller's (a container's PATH or DOCKER_HOST must not
        change which engine runs, or where)."""
        cmd = [self.exe, "run", "--rm"]
        if spec.name:
            cmd += ["--name", spec.name]
        for m in spec.mounts:
            cmd += [
                "--mount",
                f"type=bind,source={m.source},target={m.container}" + (",readonly" if m.read_only else ""),
            ]
        if spec.working_dir:
            cmd += ["--workdir", spec.working_dir]
        if spec.user:
            cmd += ["--user", spec.user]
        check_mount_args(self.mounts_in(cmd), spec.mounts)  # engine options only: the command is the tool's
        check_environment(spec.environment)
        launch = Launch(cmd)
        if spec.environment:
            body = "".join(f"{k}={v}\n" for k, v in sorted(spec.environment.items()))
            cmd += ["--env-file", launch.pipe(body.encode())]
        cmd.append(spec.image.run_ref)
        cmd += list(spec.command)
        return launch

    @staticmethod
    def mounts_in(argv: list[str]) -> list[tuple[str, str, bool]]:
        """The bind mounts the engine will read from ``argv`` (before the image)."""
        found = []
        for flag, value in itertools.pairwise(argv):
            if flag != "--mount":
                continue
            fields = dict(f.split("=", 1) if "=" in f else (f, "true") for f in value.split(","))
            if set(fields) - {"type", "source", "target", "readonly"} or fields.get("type") != "bind":
                found.append(("?", value, False))
                continue
            found.append((fields.get("source", "?"), fields.get("target", "?"), "readonly" in fields))
        return found

    def _rerun_argv(self, spec: ContainerSpec, names: list[str]) -> list[str]:
        argv, out, skip = self.argv(spec), [], False
        for i, tok in enumerate(argv):
            if skip:
                skip = False
                continue
            if tok in ("--env-file", "--name") and i + 1 < len(argv):
                skip = True  # the pipe of this process, and a name that must stay unique
                continue
            out.append(tok)
        at = out.index(spec.image.run_ref)
        return [*out[:at], *(a for n in names for a in ("-e", n)), *out[at:]]  # -e NAME: from the caller

    def watchdog(self, spec: ContainerSpec) -> Watchdog | None:
        """A cancelled job or killed worker must not leave its container running (see :mod:`.watchdog`)."""
        return Watchdog(self._binary(), spec.name) if spec.name else None

    def stop(self, spec: ContainerSpec) -> None:
        """Remove the named container: it outlives a killed ``run`` client."""
        if spec.name:
            subprocess.run(
                [self._binary(), "rm", "--force", spec.name],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=ENGINE_CALL_TIMEOUT_S,
            )

    def _engine(
        self, args: list[str], what: str, timeout: float = ENGINE_CALL_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run a short engine command with a time limit; a hang becomes a clear error."""
        try:
            return subprocess.run(
                [self._binary(), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise BackendUnavailableError(
                f"`{self.exe} {' '.join(args)}` did not answer within {timeout:g} s ({what})",
                f"the {self.exe} engine hangs or its storage is locked by another process",
                f"check `{self.exe} info`; restart the engine if it does not answer",
            ) from exc

    def _pull_failed(self, image: str, detail: str) -> ImageNotFoundError:
        err = ImageNotFoundError(
            f"Image {image!r} is not available locally and could not be pulled: {detail.strip()[:300]}",
            "a misspelled name or tag, no access to the registry, or the image was never built here",
            f"build it, or run `{self.exe} pull {image}` (after `{self.exe} login` for a private registry)",
        )
        err.detail = detail.strip()[:300]  # type: ignore[attr-defined]
        return err


class DockerBackend(_OCIBackend):
    """Docker engine: the SDK resolves images, the CLI runs containers."""

    name = "docker"
    exe = "docker"

    # One client per process and daemon address: creating one and pinging the daemon
    # costs about 10 ms, more than the whole rest of a cache hit.
    _clients: dict[tuple[str | None, ...], Any] = {}

    def __init__(self) -> None:
        self._client: Any = None

    def client(self) -> Any:
        import os

        where = tuple(
            os.environ.get(k) for k in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
        )
        if self._client is None:
            self._client = self._clients.get(where)
        if self._client is None:
            try:
                import docker
            except ImportError as exc:  # pragma: no cover - a core dependency
                raise BackendUnavailableError(
                    "The Docker SDK for Python is not installed", None, "pip install 'docker>=7'"
                ) from exc
            try:
                client = docker.from_env(timeout=120)
                client.api.ping()
            except Exception as exc:
                raise BackendUnavailableError(
                    f"Cannot reach the Docker daemon: {exc}",
                    "dockerd is not running, DOCKER_HOST points elsewhere, or this user may not use the socket",
                    "start the daemon (`sudo systemctl start docker`, or `sudo dockerd &`) and check `docker info`",
                ) from exc
            self._client = self._clients[where] = client
        return self._client

    def resolve(self, image: str, *, pull_latest: bool = False) -> ImageRef:
        import docker

        _repo, _tag, pinned = split_reference(image)
        if pinned and not pull_latest:
            return ImageRef(image, pinned, image, "pinned")
        self._binary()
        api = self.client().api
        pull_failed: ImageNotFoundError | None = None
        if pull_latest:
            served = self._registry_ref(api, image)
            if isinstance(served, ImageRef):
                return served
            # The daemon could not say what the registry serves (it asked as `docker pull` would):
            # a local image may still be there, used with a warning.
            pull_failed = served
        try:
            attrs = api.inspect_image(image)
        except docker.errors.ImageNotFound:
            if pull_failed is not None:
                raise pull_failed from None
            self._pull(api, image)  # what `docker run` would do; fails fast without a registry
            attrs = api.inspect_image(image)
        except docker.errors.APIError as exc:
            raise BackendUnavailableError(f"Docker could not inspect {image!r}: {exc}", None, "check `docker info`")
        except Exception as exc:  # connection refused etc.: the daemon went away since the client was made
            self._clients.clear()
            raise BackendUnavailableError(
                f"Cannot reach the Docker daemon: {exc}",
                "dockerd stopped or restarted",
                "start the daemon (`sudo systemctl start docker`, or `sudo dockerd &`) and check `docker info`",
            ) from exc
        digest, source = choose_digest(image, attrs["Id"], attrs.get("RepoDigests") or [])
        if pull_failed is not None:
            _warn_local_fallback(image, digest, source, pull_failed)
        # Run exactly what was resolved: the image ID cannot move under us between
        # the cache decision and the start of the container.
        return ImageRef(image, digest, attrs["Id"], source)

    def _registry_ref(self, api: Any, image: str) -> ImageRef | ImageNotFoundError:
        """pull_latest: the digest the registry serves now (asked through the daemon, once per TTL),
        and the local image with that digest, pulled by digest when it is not here yet."""
        import docker

        from . import registry

        repo, _tag, _ = split_reference(image)
        try:
            served = registry.resolve(image, "docker", docker_api=lambda: api)
        except registry.RegistryError as exc:
            return exc
        pinned = f"{repo}@{served.digest}"
        try:
            attrs = api.inspect_image(pinned)
        except docker.errors.ImageNotFound:
            self._pull(api, pinned)
            attrs = api.inspect_image(pinned)
        except docker.errors.APIError as exc:
            return self._pull_failed(pinned, str(exc))
        return ImageRef(image, served.digest, attrs["Id"], "registry")

    def _pull(self, api: Any, image: str) -> None:
        import docker

        repo, tag, digest = split_reference(image)
        try:
            api.reload_config()  # the login `docker pull` would use now (config.json, credential helpers)
        except Exception:
            pass
        try:
            api.pull(repo, tag=digest or tag or "latest")
        except docker.errors.APIError as exc:
            raise self._pull_failed(image, str(exc)) from exc


class PodmanBackend(_OCIBackend):
    """Podman, rootful or rootless, through its CLI."""

    name = "podman"
    exe = "podman"

    # The Podman CLI needs about 50 ms to start, more than a whole cache hit. Its image
    # store rewrites images.json whenever an image or a tag changes, so a resolution
    # stays valid while that file's stat is unchanged.
    _images_json: dict[tuple[str | None, ...], Path | None] = {}
    _resolved: dict[tuple[Any, ...], tuple[tuple[int, ...], ImageRef]] = {}

    def _store_key(self) -> tuple[str | None, ...]:
        import os

        return (self._binary(), *(os.environ.get(k) for k in ("CONTAINERS_STORAGE_CONF", "CONTAINER_HOST", "HOME")))

    def _store_stamp(self) -> tuple[int, ...] | None:
        key = self._store_key()
        if key not in self._images_json:
            proc = self._engine(
                ["info", "--format", "{{.Store.GraphRoot}} {{.Store.GraphDriverName}}"], "finding the image store"
            )
            found = None
            if proc.returncode == 0 and " " in proc.stdout.strip():
                root, driver = proc.stdout.strip().rsplit(" ", 1)
                candidate = Path(root) / f"{driver}-images" / "images.json"
                found = candidate if candidate.is_file() else None
            self._images_json[key] = found
        path = self._images_json[key]
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _inspect(self, image: str) -> dict[str, Any] | None:
        proc = self._engine(["image", "inspect", "--format", "json", image], "inspecting the image")
        if proc.returncode != 0:
            if "image not known" in proc.stderr or "no such" in proc.stderr.lower():
                return None
            raise BackendUnavailableError(
                f"podman could not inspect {image!r}: {proc.stderr.strip()[:300]}",
                "podman is misconfigured or its storage is locked",
                "run `podman info` to see what is wrong",
            )
        return json.loads(proc.stdout)[0]

    def _pull(self, image: str) -> None:
        proc = self._engine(["pull", "-q", image], "pulling the image", timeout=PULL_TIMEOUT_S)
        if proc.returncode != 0:
            raise self._pull_failed(image, proc.stderr)

    def resolve(self, image: str, *, pull_latest: bool = False) -> ImageRef:
        repo, _tag, pinned = split_reference(image)
        if pinned and not pull_latest:
            return ImageRef(image, pinned, image, "pinned")
        if pull_latest:
            # Podman lists every manifest digest it has seen for an image, so ask the
            # registry which one it serves now (once per TTL), and run exactly that.
            from . import registry

            try:
                served: str | None = registry.resolve(image, "podman").digest
                resolve_failed: ImageNotFoundError | None = None
            except registry.RegistryError as exc:
                served, resolve_failed = None, exc
            if served:
                pinned_ref = f"{repo}@{served}"
                attrs = self._inspect(pinned_ref)
                if attrs is None:  # not here yet: pull exactly that digest
                    self._pull(pinned_ref)
                    attrs = self._inspect(pinned_ref)
                    assert attrs is not None
                return ImageRef(image, served, attrs["Id"], "registry")
            try:
                self._pull(image)
            except ImageNotFoundError as exc:
                attrs = self._inspect(image)
                if attrs is None:
                    raise (resolve_failed or exc) from None
                ref = self._ref_from(image, attrs)
                _warn_local_fallback(image, ref.digest, ref.source, resolve_failed or exc)
                return ref
        stamp = self._store_stamp()
        memo_key = (*self._store_key(), image)
        cached = self._resolved.get(memo_key)
        if stamp is not None and cached is not None and cached[0] == stamp:
            return cached[1]
        attrs = self._inspect(image)
        if attrs is None:
            try:
                self._pull(image)
            except ImageNotFoundError as exc:
                raise self._with_docker_hint(image, exc) from None
            attrs = self._inspect(image)
            assert attrs is not None
            stamp = self._store_stamp()
        ref = self._ref_from(image, attrs)
        if stamp is not None:
            self._resolved[memo_key] = (stamp, ref)
        return ref

    def _with_docker_hint(self, image: str, exc: ImageNotFoundError) -> ImageNotFoundError:
        """Podman and Docker keep separate image stores: say so when Docker has the image."""
        docker = shutil.which("docker")
        if docker is None:
            return exc
        try:
            found = (
                subprocess.run(
                    [docker, "image", "inspect", image], capture_output=True, stdin=subprocess.DEVNULL, timeout=30
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            found = False
        if not found:
            return exc
        return ImageNotFoundError(
            f"Image {image!r} exists in Docker's image store but not in Podman's",
            "Docker and Podman keep separate image stores; an image built or pulled with one is not seen by the other",
            f"copy it: `docker save {image} | podman load`, or use backend_type='docker'",
        )

    @staticmethod
    def _ref_from(image: str, attrs: dict[str, Any]) -> ImageRef:
        repo_digests = attrs.get("RepoDigests") or []
        digest, source = choose_digest(image, attrs["Id"], repo_digests)
        primary = attrs.get("Digest")
        if source == "registry" and primary and any(d.endswith("@" + primary) for d in repo_digests):
            digest = primary  # stable: later pulls add digests to the list, not to this field
        return ImageRef(image, digest, attrs["Id"], source)


def _warn_local_fallback(image: str, digest: str, source: str, exc: ImageNotFoundError) -> None:
    import warnings

    from ..errors import ConsistWarning

    what = "its local image ID" if source == "local-id" else "the manifest digest the engine records for it"
    warnings.warn(
        f"pull_latest: could not pull {image!r} ({getattr(exc, 'detail', exc.problem)}); using the local image. "
        f"The cache key is {what}, {digest}.",
        ConsistWarning,
        stacklevel=4,
    )
