"""Apptainer / Singularity: SIF files and docker:// references.

A SIF file's identity is the SHA-256 of its content (through the hash memo,
so a multi-GB image is hashed once per file version): overwriting a ``.sif``
in place changes the cache key. ``docker://`` references resolve to their
registry manifest digest (:mod:`consist.containers.registry`, asked the way
Apptainer asks, once per reference and TTL) and run pinned to it; when
Apptainer's cache already holds the image built from that digest, that SIF runs
directly, so executing a step does not ask the registry again. On a node that
cannot reach the registry, the digest recorded when the reference was last
resolved keys the run, if Apptainer's cache holds that image.
"""

from __future__ import annotations

import itertools
import os
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path

from ..errors import BackendUnavailableError, ConsistWarning, ContainerError, ImageNotFoundError
from ..hashing import FileHasher, HashMemo, NullMemo
from . import registry, sif
from .base import Backend, ContainerSpec, ImageRef, Launch, check_environment
from .mounts import check_mount_args
from .registry import split_reference


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
            return self._resolve_docker(image)
        path = Path(image.removeprefix("sif://")).expanduser()
        if not path.is_file():
            raise ImageNotFoundError(
                f"SIF image {image!r} does not exist",
                "the path is wrong or relative to another directory",
                f"check the .sif path (resolved to {path.resolve()}), or build it with `apptainer build`",
            )
        digest = FileHasher(self.memo).hash_file(path.resolve())
        return ImageRef(image, digest, str(path.resolve()), "sif-file", sif.working_dir(path))

    def _resolve_docker(self, image: str) -> ImageRef:
        """Key on the registry digest; run Apptainer's cached SIF of it when there is one."""
        ref = image[len("docker://") :]
        repo, _tag, pinned = split_reference(ref)
        if pinned:
            digest, source = pinned, "pinned"
        else:
            try:
                digest, source = registry.resolve(ref, "apptainer").digest, "registry"
            except registry.RegistryUnreachableError as exc:
                return self._offline(image, repo, exc)
        cached = registry.apptainer_cached_sif(digest)
        if cached is None:
            cached = self._fetch(f"docker://{repo}@{digest}", digest)
        workdir = sif.working_dir(cached) if cached else None
        return ImageRef(image, digest, str(cached) if cached else f"docker://{repo}@{digest}", source, workdir)

    def _fetch(self, ref: str, digest: str) -> Path | None:
        """Let Apptainer fetch and convert the image into its cache now (what its first run would
        do), so that the image's working directory is known before the first run, not after it."""
        import subprocess

        try:
            subprocess.run(
                [self.executable(), "exec", "--cleanenv", "--contain", ref, "true"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=3600,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return registry.apptainer_cached_sif(digest)

    def _offline(self, image: str, repo: str, exc: registry.RegistryError) -> ImageRef:
        """No registry: the digest recorded at the last resolution, if Apptainer's cache has that image."""
        seen = registry.recorded(image)
        sif_path = registry.apptainer_cached_sif(seen.digest) if seen else None
        if seen is None or sif_path is None:
            why = (
                "no digest was ever recorded for it on this machine"
                if seen is None
                else f"the digest recorded for it ({seen.digest}) is not in Apptainer's cache"
            )
            raise ImageNotFoundError(
                f"Cannot key {image}: its registry cannot be reached ({getattr(exc, 'detail', exc.problem)}) and {why}",
                "the node is offline, and consist never keys a run on a tag alone",
                f"pin the image by digest (docker://{repo}@sha256:...), or build a .sif file where the registry "
                f"can be reached (`apptainer build model.sif docker://{repo}@sha256:...`) and pass its path",
            )
        when = datetime.fromtimestamp(seen.resolved_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        warnings.warn(
            f"The registry of {image} cannot be reached ({getattr(exc, 'detail', exc.problem)}); running the "
            f"image from Apptainer's cache, keyed on the digest recorded on {when}: {seen.digest}. "
            "A tag re-pointed since then is not seen.",
            ConsistWarning,
            stacklevel=4,
        )
        return ImageRef(image, seen.digest, str(sif_path), "recorded", sif.working_dir(sif_path))

    def launch(self, spec: ContainerSpec) -> Launch:
        """``exec --cleanenv --contain`` with ``--bind src:dst[:ro]`` per volume.

        Environment values travel as ``APPTAINERENV_<NAME>`` in the engine's
        environment, the one channel ``--cleanenv`` lets through; the host's own
        variables stay as they are for the engine process.
        """
        cmd = [Path(self.executable()).name, "exec", "--cleanenv", "--contain", "--writable-tmpfs"]
        for m in spec.mounts:
            cmd += ["--bind", f"{m.source}:{m.container}" + (":ro" if m.read_only else "")]
        workdir = spec.working_dir or spec.image.workdir  # Apptainer ignores the image's own WORKDIR
        if workdir:
            cmd += ["--pwd", workdir]
        check_mount_args(self.mounts_in(cmd), spec.mounts)  # engine options only: the command is the tool's
        cmd.append(spec.image.run_ref)
        cmd += list(spec.command)
        check_environment(spec.environment)
        if "HOME" in spec.environment:
            raise ContainerError(
                "Apptainer does not let the environment set HOME inside the container",
                "it always sets HOME itself (from the host user, or --home)",
                "pass the value under another name, or use backend_type='docker' or 'podman'",
            )
        env = dict(os.environ)
        if spec.image.run_ref.startswith("docker://"):
            _pass_credentials(spec.image.run_ref, env)
        for key, value in spec.environment.items():
            # Apptainer evaluates these values like a here-document: $, ` and \ would be expanded.
            literal = value.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
            env[f"APPTAINERENV_{key}"] = literal
            env[f"SINGULARITYENV_{key}"] = literal
        return Launch(cmd, env)

    def _rerun_prelude(self, names: list[str]) -> list[str]:
        # As launch() does: Apptainer expands $, ` and \ in these values, so they are escaped first.
        esc = "sed 's/[\\\\$`]/\\\\&/g'"
        return [f'APPTAINERENV_{n}=$(printf "%s" "${n}" | {esc}); export APPTAINERENV_{n}' for n in names]

    @staticmethod
    def mounts_in(argv: list[str]) -> list[tuple[str, str, bool]]:
        """The bind mounts apptainer will read from ``argv``."""
        found = []
        for flag, value in itertools.pairwise(argv):
            if flag != "--bind":
                continue
            parts = value.split(":")
            if "," in value or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "ro"):
                found.append(("?", value, False))
                continue
            found.append((parts[0], parts[1], len(parts) == 3))
        return found


def _pass_credentials(run_ref: str, env: dict[str, str]) -> None:
    """The login that resolved the digest also pulls the image: Apptainer reads it from its
    environment (APPTAINER_DOCKER_USERNAME/_PASSWORD), never from a file or the command line.
    Credentials the caller already set for Apptainer are left alone."""
    if any(env.get(f"{p}_DOCKER_USERNAME") for p in ("APPTAINER", "SINGULARITY")):
        return
    try:
        creds = registry.find_credentials(run_ref, "apptainer")
    except ImageNotFoundError:
        return
    if creds is None or creds.identity_token:
        return
    env["APPTAINER_DOCKER_USERNAME"] = creds.username
    env["APPTAINER_DOCKER_PASSWORD"] = creds.secret
