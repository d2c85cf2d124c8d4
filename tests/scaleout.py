"""Where the tests find the PostgreSQL and Slurm that scripts/setup-scaleout.sh starts.

The script writes its facts to ``/tmp/ci-scaleout/scaleout.env`` (``CONSIST_SCALEOUT_DIR``
moves it) and ``scripts/test.sh`` exports them. A variable set in the environment wins over
the file, so a test run can point at another server.

``pg_available()`` and ``slurm_available()`` return why a back end cannot be used, or None
when it can; the other functions assume it can.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_FILE = Path(os.environ.get("CONSIST_SCALEOUT_DIR", "/tmp/ci-scaleout")) / "scaleout.env"
SETUP_HINT = "start it with `bash scripts/setup-scaleout.sh setup` (as root)"
# Databases a test may create: plain lower-case identifiers, nothing to quote or mistake.
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RESERVED = {"postgres", "template0", "template1"}


def facts() -> dict[str, str]:
    """KEY=VALUE lines of the env file (empty when the set-up has not run)."""
    out: dict[str, str] = {}
    try:
        text = ENV_FILE.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        words = shlex.split(value) if value else [""]
        out[key.strip()] = words[0] if words else ""
    return out


def setting(name: str) -> str | None:
    """``name`` from the environment, else from the env file, else None."""
    value = os.environ.get(name)
    if value:
        return value
    return facts().get(name) or None


def pg_url() -> str | None:
    """URL of the test database (``postgresql://consist:consist@127.0.0.1:55432/consist``), or None."""
    return setting("CONSIST_TEST_PG_URL")


def slurm_partition() -> str | None:
    """The Slurm partition the tests submit to (``debug``), or None."""
    return setting("CONSIST_TEST_SLURM_PARTITION")


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (user, password, host, port and options kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def pg_available() -> str | None:
    """Why the test PostgreSQL cannot be used, or None when a login there works."""
    url = pg_url()
    if not url:
        return f"PostgreSQL: CONSIST_TEST_PG_URL is not set and {ENV_FILE} names none; {SETUP_HINT}"
    try:
        import psycopg
    except ImportError:
        return "PostgreSQL: psycopg is not installed (pip install -c constraints.txt -e '.[test]')"
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
        return f"PostgreSQL: cannot log in at {redacted(url)} ({detail[0][:200]}); {SETUP_HINT}"
    return None


def fresh_pg_database(name: str) -> str:
    """Drop database ``name`` if it exists, create it empty, owned by the test role; return its URL.

    Connections still open to the old database (of the test role) are ended. Each test that
    needs isolation passes its own name, so tests never see each other's tables.
    """
    if not _DB_NAME.fullmatch(name) or name in _RESERVED:
        raise ValueError(f"database name {name!r}: use lower-case letters, digits and _ (not {sorted(_RESERVED)})")
    url = pg_url()
    if not url:
        raise RuntimeError(f"no test PostgreSQL: CONSIST_TEST_PG_URL is unset and {ENV_FILE} names none; {SETUP_HINT}")
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    if parts.path.lstrip("/") == name:
        raise ValueError(f"database {name!r} is the shared test database itself; pick another name")
    owner = parts.username or "consist"
    # Work from the maintenance database: a database cannot be dropped from a session inside it.
    with psycopg.connect(with_database(url, "postgres"), connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
    return with_database(url, name)


def slurm_available() -> str | None:
    """Why the test Slurm cannot be used, or None when its partition is up with a usable node."""
    partition = slurm_partition()
    if not partition:
        return f"Slurm: CONSIST_TEST_SLURM_PARTITION is not set and {ENV_FILE} names none; {SETUP_HINT}"
    for exe in ("sinfo", "srun", "sbatch", "squeue", "scancel"):
        if shutil.which(exe) is None:
            return f"Slurm: the `{exe}` command is not on PATH; {SETUP_HINT}"
    probe = ["sinfo", "-h", "-p", partition, "-o", "%a %T"]
    try:
        proc = subprocess.run(probe, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"Slurm: `{' '.join(probe)}` did not answer within 20 s; {SETUP_HINT}"
    except OSError as exc:
        return f"Slurm: `{' '.join(probe)}` could not start ({exc})"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"Slurm: `{' '.join(probe)}` failed ({detail[0][:200]}); {SETUP_HINT}"
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    if not rows:
        return f"Slurm: partition {partition!r} does not exist; {SETUP_HINT}"
    usable = ("idle", "mixed", "allocated", "completing")
    if not any(len(row) == 2 and row[0] == "up" and row[1].rstrip("*~#!%$@^-").startswith(usable) for row in rows):
        states = ", ".join(" ".join(row) for row in rows)
        return f"Slurm: partition {partition!r} has no usable node ({states}); {SETUP_HINT}"
    return None
