"""Apptainer / Singularity: SIF files and docker:// references.

A SIF file's identity is the SHA-256 of its content (through the hash memo,
so a multi-GB image is hashed once per file version): overwriting a ``.sif``
in place changes the cache key. ``docker://`` references resolve to their
registry manifest digest and run pinned to it.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import BackendUnavailableError, ImageNotFoundError
from ..hashing import FileHasher, HashMemo, NullMemo
from .base import Backend, ContainerSpec, ImageRef
from .oci import split_reference

_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def registry_digest(reference: str, timeout: float = 20.0) -> str:
    """The manifest digest a registry serves for ``host/repo:tag`` (HTTP for loopback hosts)."""
    repo, tag, digest = split_reference(reference)
    if digest:
        return digest
    host, _, path = repo.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        host, path = "registry-1.docker.io", repo if "/" in repo else f"library/{repo}"
    scheme = "http" if host.split(":")[0] in ("127.0.0.1", "localhost") else "https"
    req = urllib.request.Request(
        f"{scheme}://{host}/v2/{path}/manifests/{tag or 'latest'}", method="HEAD", headers={"Accept": _MANIFEST_TYPES}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            found = resp.headers.get("Docker-Content-Digest")
    except (urllib.error.URLError, OSError) as exc:
        raise ImageNotFoundError(
            f"Cannot resolve docker://{reference} at its registry: {exc}",
            "the registry is unreachable, the name or tag is wrong, or it needs a login",
            "build a .sif file (`apptainer build image.sif docker://...`) and pass its path",
        ) from exc
    if not found:
        raise ImageNotFoundError(f"The registry gave no digest for docker://{reference}", None, "pin it with @sha256:")
    return found


class ApptainerBackend(Backend):
    """Apptainer, or Singularity where only that is installed."""

    name = "apptainer"

    def __init__(self, memo: HashMemo | None = None) -> None:
        self.memo: HashMemo = memo or NullMemo()

    def executable(self) -> str:
        for exe in ("apptainer", "singularity"):
            path = shutil.which(exe)
            if path:
                return path
        raise BackendUnavailableError(
            "Neither apptainer nor singularity is installed",
            "backend_type='singularity'/'apptainer' runs containers through that CLI",
            "install Apptainer (https://apptainer.org) or load its module on the cluster (`module load apptainer`)",
        )

    def resolve(self, image: str, *, pull_latest: bool = False) -> ImageRef:
        self.executable()
        if image.startswith("docker://"):
            ref = image[len("docker://") :]
            digest = registry_digest(ref)
            repo, _tag, _ = split_reference(ref)
            return ImageRef(image, digest, f"docker://{repo}@{digest}", "registry")
        path = Path(image.removeprefix("sif://")).expanduser()
        if not path.is_file():
            raise ImageNotFoundError(
                f"SIF image {image!r} does not exist",
                "the path is wrong or relative to another directory",
                f"check the .sif path (resolved to {path.resolve()}), or build it with `apptainer build`",
            )
        digest = FileHasher(self.memo).hash_file(path.resolve())
        return ImageRef(image, digest, str(path.resolve()), "sif-file")

    def argv(self, spec: ContainerSpec) -> list[str]:
        cmd = [Path(self.executable()).name, "exec", "--cleanenv", "--contain", "--writable-tmpfs"]
        for m in spec.mounts:
            cmd += ["--bind", f"{m.host}:{m.container}"]
        if spec.working_dir:
            cmd += ["--pwd", spec.working_dir]
        cmd.append(spec.image.run_ref)
        cmd += list(spec.command)
        return cmd

    def child_env(self, spec: ContainerSpec) -> dict[str, str]:
        env = super().child_env(spec)
        for key in spec.environment:
            env.pop(key, None)  # --cleanenv: only the APPTAINERENV_ copies reach the container
            env[f"APPTAINERENV_{key}"] = spec.environment[key]
            env[f"SINGULARITYENV_{key}"] = spec.environment[key]
        return env
