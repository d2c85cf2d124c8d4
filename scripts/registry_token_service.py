"""A token service for a test registry (Docker's distribution, ``auth: token``), loopback only.

It implements the registry token flow the way public registries do: a client that
gets ``401`` with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` asks this
service for a token (``GET /token?service=…&scope=repository:NAME:pull``), with
HTTP basic credentials or anonymously, and retries with ``Authorization: Bearer``.

- Tokens are JWTs signed (ES256) with the key the set-up generated; the header
  carries the certificate (``x5c``) that the registry checks against its
  ``rootcertbundle``.
- Anonymous clients get ``pull`` on repositories under ``--anonymous-prefix``
  (like public images on Docker Hub), nothing else. Known users get what they
  ask for. Wrong credentials get ``401``.
- Every request is appended to ``--log`` as one JSON line (time, account, scopes,
  status), never with a password, so tests can count registry round trips.

Usage::

    registry_token_service.py serve --listen 127.0.0.1:5002 --key key.pem --cert cert.pem \\
        --users users.json --log requests.jsonl --service S --issuer I --anonymous-prefix public/
    registry_token_service.py adduser --users users.json --user NAME   # password on stdin
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TOKEN_SECONDS = 300
PBKDF2_ROUNDS = 200_000


def hash_password(password: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ROUNDS).hex()


def add_user(users_file: Path, user: str, password: str) -> None:
    users = json.loads(users_file.read_text()) if users_file.exists() else {}
    salt = secrets.token_bytes(16)
    users[user] = {"salt": salt.hex(), "pbkdf2_sha256": hash_password(password, salt)}
    tmp = users_file.with_name(users_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(users, f)
    os.replace(tmp, users_file)


class TokenService:
    def __init__(self, args: argparse.Namespace) -> None:
        import jwt  # PyJWT, with cryptography for ES256
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self.jwt = jwt
        self.key = serialization.load_pem_private_key(Path(args.key).read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(Path(args.cert).read_bytes())
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.users = json.loads(Path(args.users).read_text())
        self.service = args.service
        self.issuer = args.issuer
        self.anonymous_prefix = args.anonymous_prefix
        self.log_path = Path(args.log)
        self.lock = threading.Lock()

    def check(self, header: str | None) -> tuple[str | None, bool]:
        """(account, credentials ok). No header: anonymous."""
        if not header:
            return None, True
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, False
        entry = self.users.get(user)
        if entry is None:
            return user, False
        ok = hmac.compare_digest(hash_password(password, bytes.fromhex(entry["salt"])), entry["pbkdf2_sha256"])
        return user, ok

    def grant(self, account: str | None, scopes: list[str]) -> list[dict[str, object]]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = [a for a in actions.split(",") if a]
            if account is None:
                wanted = [a for a in wanted if a == "pull"] if name.startswith(self.anonymous_prefix) else []
            if wanted:
                access.append({"type": "repository", "name": name, "actions": wanted})
        return access

    def token(self, account: str | None, access: list[dict[str, object]]) -> dict[str, object]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": now + TOKEN_SECONDS,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signed = self.jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": self.x5c})
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"token": signed, "access_token": signed, "expires_in": TOKEN_SECONDS, "issued_at": issued}

    def record(self, entry: dict[str, object]) -> None:
        line = json.dumps(entry) + "\n"
        with self.lock, open(self.log_path, "a") as f:
            f.write(line)


def make_handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "consist-test-token-service"

        def log_message(self, format: str, *args: object) -> None:
            pass  # requests are recorded as JSON lines instead, without credentials

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._send(404, {"errors": [{"code": "NOT_FOUND", "message": "only /token is served"}]})
                return
            query = parse_qs(url.query)
            scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
            account, ok = service.check(self.headers.get("Authorization"))
            entry: dict[str, object] = {"time": time.time(), "account": account, "scope": scopes}
            if not ok:
                entry["status"] = 401
                service.record(entry)
                self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]})
                return
            access = service.grant(account, scopes)
            entry.update(status=200, granted=access)
            service.record(entry)
            self._send(200, service.token(account, access))

        def do_POST(self) -> None:
            # The OAuth2 form flow is optional in the specification; clients fall back to GET.
            self._send(404, {"errors": [{"code": "UNSUPPORTED", "message": "use GET /token"}]})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--listen", required=True, help="HOST:PORT (loopback)")
    serve.add_argument("--key", required=True)
    serve.add_argument("--cert", required=True)
    serve.add_argument("--users", required=True)
    serve.add_argument("--log", required=True)
    serve.add_argument("--service", required=True)
    serve.add_argument("--issuer", required=True)
    serve.add_argument("--anonymous-prefix", default="public/")
    adduser = sub.add_parser("adduser")
    adduser.add_argument("--users", required=True)
    adduser.add_argument("--user", required=True)
    args = parser.parse_args(argv)

    if args.command == "adduser":
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            parser.error("no password on stdin")
        add_user(Path(args.users), args.user, password)
        return 0

    host, _, port = args.listen.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the token service listens on loopback only")
    server = ThreadingHTTPServer((host, int(port)), make_handler(TokenService(args)))
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
