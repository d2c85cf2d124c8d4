#!/usr/bin/env bash
# setup-containers.sh - real container runtimes for consist's tests on Debian 12 (bookworm), x86_64,
# as root, on a machine that reaches Debian's archive and PyPI but NO container registry.
#
#   Docker engine : Debian docker.io 20.10 (dockerd + containerd + runc), started in the background
#                   with overlay2 (falls back to vfs), --bridge=none --iptables=false (containers get
#                   loopback only; no netfilter rules; no 172.17/16 bridge; dockerd still sets
#                   net.ipv4.ip_forward=1, its default, which keeps `docker run` free of a warning).
#   Podman        : Debian podman 4.3 (rootful, overlay, cgroupfs v1, netns=none).
#   Apptainer     : Debian sid's apptainer .deb (bookworm has none), re-packed for bookworm's glibc 2.36
#                   (two C23 libc symbols, __isoc23_strtol/strtoul, redirected to a tiny shim library).
#   Registry      : Debian docker-registry (distribution 2.8) on 127.0.0.1:5000, loopback only; the test
#                   images are pushed there so they also have real registry digests (RepoDigests).
#   Auth registries: two more docker-registry instances, loopback only: one with token authentication
#                   (127.0.0.1:5001) and its token service (127.0.0.1:5002, scripts/registry_token_service.py:
#                   JWTs signed with a key generated here; anonymous pull on public/*, like public
#                   registries), one with htpasswd basic authentication (127.0.0.1:5003). Each holds
#                   busybox; the token registry also a multi-arch image index. skopeo (Debian) pushes them.
#   Test images   : local/busybox:test (FROM scratch + Debian busybox-static, ~2 MB) and
#                   local/python:test (debootstrap --variant=minbase --include=python3, ~120 MB),
#                   saved as docker-archive tarballs and converted to SIF files.
#
# Idempotent: re-running skips whatever is already installed / running / built.
# Usage:  bash setup-container-runtime.sh [all|setup|verify|stop]   (default all = setup, then verify)
# Knobs (environment):
#   CI_CONTAINERS_DIR=/tmp/ci-containers   where tarballs, SIFs, logs, the env file live
#   SETUP_DOCKER=1 SETUP_PODMAN=1 SETUP_APPTAINER=1 SETUP_REGISTRY=1 SETUP_PYTHON_IMAGE=1 (0 skips a part)
#   REGISTRY_ADDR=127.0.0.1:5000                where the local registry listens
#   REGISTRY_TOKEN_ADDR=127.0.0.1:5001          the registry with token authentication
#   TOKEN_SERVICE_ADDR=127.0.0.1:5002           its token service
#   REGISTRY_BASIC_ADDR=127.0.0.1:5003          the registry with htpasswd basic authentication
#   SETUP_AUTH_REGISTRIES=1                     0 skips the two registries above
#   TOKEN_SERVICE_PYTHON=.venv/bin/python       a Python with PyJWT and cryptography (constraints.txt)
#   DOCKER_STORAGE_DRIVERS="overlay2 vfs"       tried in order
#   APPTAINER_DEB=/path/apptainer_X_amd64.deb   use this Debian .deb (must match the pinned sha256, or
#   APPTAINER_DEB_SHA256=...                     state its own checksum here)
#   SKIP_APT_UPDATE=1                           skip apt-get update
#   DEBIAN_MIRROR=URL                           Debian mirror (default: the first non-security one in apt's sources)
# Output: $CI_CONTAINERS_DIR/containers.env (KEY=VALUE lines: image names, IDs, SIF paths, dockerd pid).
set -Eeuo pipefail

DIR=${CI_CONTAINERS_DIR:-/tmp/ci-containers}
SETUP_DOCKER=${SETUP_DOCKER:-1}
SETUP_PODMAN=${SETUP_PODMAN:-1}
SETUP_APPTAINER=${SETUP_APPTAINER:-1}
SETUP_REGISTRY=${SETUP_REGISTRY:-1}
SETUP_PYTHON_IMAGE=${SETUP_PYTHON_IMAGE:-1}
REGISTRY=${REGISTRY_ADDR:-127.0.0.1:5000}
[ "$SETUP_DOCKER" = 1 ] || [ "$SETUP_PODMAN" = 1 ] || SETUP_REGISTRY=0   # pushing needs docker or podman
SETUP_AUTH_REGISTRIES=${SETUP_AUTH_REGISTRIES:-$SETUP_REGISTRY}
[ "$SETUP_REGISTRY" = 1 ] || SETUP_AUTH_REGISTRIES=0
REGISTRY_TOKEN=${REGISTRY_TOKEN_ADDR:-127.0.0.1:5001}
TOKEN_SERVICE=${TOKEN_SERVICE_ADDR:-127.0.0.1:5002}
REGISTRY_BASIC=${REGISTRY_BASIC_ADDR:-127.0.0.1:5003}
REG_USER=consist
TOKEN_REALM_SERVICE=consist-test-registry
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${CONSIST_VENV:-.venv}" in /*) VENV_DIR=${CONSIST_VENV} ;; *) VENV_DIR=$ROOT/${CONSIST_VENV:-.venv} ;; esac
TOKEN_PY=${TOKEN_SERVICE_PYTHON:-$VENV_DIR/bin/python}
DOCKER_STORAGE_DRIVERS=${DOCKER_STORAGE_DRIVERS:-overlay2 vfs}
# Debian mirror: the one this machine's apt sources already use (deb822 or one-line format).
MIRROR=${DEBIAN_MIRROR:-$( { awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
                             awk '/^deb / && !/security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true
                           } | head -1)}
PY=${PYTHON:-python3}
IMG_BB=local/busybox:test
IMG_PY=local/python:test
DOCKERD_LOG=$DIR/dockerd.log
export DEBIAN_FRONTEND=noninteractive
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin   # debootstrap, dockerd live in sbin
APT_OPTS=(-y -q --no-install-recommends -o Acquire::Retries=3 -o Dpkg::Use-Pty=0)
T_START=$(date +%s)

log() { printf '[setup-containers %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T_START ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
[ -n "$MIRROR" ] || die "no Debian mirror found in apt sources; set DEBIAN_MIRROR"
mkdir -p "$DIR"

retry() { # retry N cmd...
  local n=$1 i; shift
  for i in $(seq 1 "$n"); do "$@" && return 0; log "attempt $i/$n failed: $*"; sleep $((i * 3)); done
  return 1
}

# ---------------------------------------------------------------- packages
install_packages() {
  local pkgs=(busybox-static debootstrap curl)
  [ "$SETUP_DOCKER" = 1 ] && pkgs+=(docker.io)
  [ "$SETUP_PODMAN" = 1 ] && pkgs+=(podman)
  [ "$SETUP_REGISTRY" = 1 ] && pkgs+=(docker-registry)
  [ "$SETUP_AUTH_REGISTRIES" = 1 ] && pkgs+=(skopeo apache2-utils openssl)
  [ "$SETUP_APPTAINER" = 1 ] && pkgs+=(patchelf binutils gcc libc6-dev squashfs-tools uidmap
                                        containernetworking-plugins ca-certificates e2fsprogs)
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && { log "packages already installed"; return; }
  if [ "${SKIP_APT_UPDATE:-0}" != 1 ]; then log "apt-get update"; retry 3 apt-get update -q >/dev/null; fi
  # Never let a package's maintainer script start a service (docker.io would start a default dockerd).
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
  log "apt-get install ${missing[*]}"
  retry 3 apt-get install "${APT_OPTS[@]}" "${missing[@]}" >"$DIR/apt-install.log" 2>&1 \
    || { tail -20 "$DIR/apt-install.log" >&2; die "apt-get install failed"; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

# ---------------------------------------------------------------- docker engine
docker_ok() { timeout 10 docker info >/dev/null 2>&1; }
start_dockerd() {
  if docker_ok; then log "dockerd already answering"; return; fi
  local drv pid i
  for drv in $DOCKER_STORAGE_DRIVERS; do
    log "starting dockerd (storage driver $drv)"
    rm -f /var/run/docker.pid
    # setsid + all three std streams redirected: the daemon must not hold CI's stdout/stderr pipes open.
    setsid /usr/sbin/dockerd --host=unix:///var/run/docker.sock --storage-driver="$drv" \
      --bridge=none --iptables=false --ip-masq=false --log-level=warn \
      </dev/null >>"$DOCKERD_LOG" 2>&1 &
    for i in $(seq 1 120); do
      if docker_ok; then
        pid=$(cat /var/run/docker.pid); echo "$pid" >"$DIR/dockerd.pid"
        log "dockerd up (pid $pid, storage $drv) after ~$((i / 4))s"; return 0
      fi
      # gave up early if the daemon already exited (e.g. storage driver not supported)
      if [ "$i" -gt 8 ] && ! pgrep -x dockerd >/dev/null; then break; fi
      sleep 0.25
    done
    log "dockerd with $drv did not come up; last log lines:"; tail -5 "$DOCKERD_LOG" >&2 || true
    [ -s /var/run/docker.pid ] && kill "$(cat /var/run/docker.pid)" 2>/dev/null || true; sleep 1
  done
  die "could not start dockerd"
}
stop_dockerd() {
  [ -s "$DIR/dockerd.pid" ] || { log "no dockerd pid file in $DIR"; return 0; }
  local pid; pid=$(cat "$DIR/dockerd.pid")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd pid $pid"; kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$DIR/dockerd.pid"
}

# ---------------------------------------------------------------- root filesystems
busybox_context() { # a docker build context: FROM scratch + Debian's static busybox
  local ctx=$DIR/busybox-ctx
  mkdir -p "$ctx"
  cp /bin/busybox "$ctx/busybox"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /etc /root /tmp && chmod 1777 /tmp && printf 'root:x:0:0:root:/root:/bin/sh\\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\\n' >/etc/passwd && printf 'root:x:0:\\nnogroup:x:65534:\\n' >/etc/group"]
ENV PATH=/bin
CMD ["/bin/sh"]
EOF
  echo "$ctx"
}
PY_ROOTFS=""
python_rootfs() { # debootstrap a minimal bookworm with python3 (tmpfs is ~2x faster than disk here)
  [ -n "$PY_ROOTFS" ] && [ -x "$PY_ROOTFS/usr/bin/python3" ] && return 0
  local base=/dev/shm
  [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')" -gt 1048576 ] 2>/dev/null || base=$DIR
  PY_ROOTFS=$base/ci-rootfs-python
  rm -rf "$PY_ROOTFS"
  log "debootstrap bookworm minbase + python3 into $PY_ROOTFS (about a minute)"
  retry 3 bash -c "rm -rf '$PY_ROOTFS'; debootstrap --variant=minbase --include=python3 bookworm '$PY_ROOTFS' '$MIRROR' >'$DIR/debootstrap.log' 2>&1" \
    || { tail -20 "$DIR/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$PY_ROOTFS"/var/cache/apt/archives/*.deb "$PY_ROOTFS"/var/lib/apt/lists/* \
         "$PY_ROOTFS"/usr/share/doc/* "$PY_ROOTFS"/usr/share/man/* "$PY_ROOTFS"/usr/share/locale/*
}
cleanup_rootfs() { [ -n "$PY_ROOTFS" ] && rm -rf "$PY_ROOTFS"; PY_ROOTFS=""; }

# ---------------------------------------------------------------- docker images
docker_images() {
  if ! docker image inspect "$IMG_BB" >/dev/null 2>&1; then
    log "docker build $IMG_BB"
    docker build -q -t "$IMG_BB" "$(busybox_context)" >/dev/null 2>>"$DIR/docker-build.log" \
      || { cat "$DIR/docker-build.log" >&2; die "docker build failed"; }
  fi
  [ -s "$DIR/busybox.docker.tar" ] || docker save -o "$DIR/busybox.docker.tar" "$IMG_BB"
  if [ "$SETUP_PYTHON_IMAGE" = 1 ]; then
    if ! docker image inspect "$IMG_PY" >/dev/null 2>&1; then
      python_rootfs
      log "docker import $IMG_PY"
      tar --numeric-owner -C "$PY_ROOTFS" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["/usr/bin/python3"]' - "$IMG_PY" >/dev/null
    fi
    [ -s "$DIR/python.docker.tar" ] || docker save -o "$DIR/python.docker.tar" "$IMG_PY"
  fi
}

# ---------------------------------------------------------------- podman
podman_setup() {
  mkdir -p /etc/containers
  # This VM's root lacks CAP_SYS_RESOURCE, so podman's root defaults (nofile=1048576, nproc=4194304)
  # make runc fail ("error setting rlimit type 7: operation not permitted"). netns=none: no CNI bridge.
  cat >/etc/containers/containers.conf <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
EOF
  mkdir -p /etc/containers/registries.conf.d
  printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$REGISTRY" >/etc/containers/registries.conf.d/50-ci-local-registry.conf
  local name tar
  for name in busybox python; do
    [ $name = python ] && [ "$SETUP_PYTHON_IMAGE" != 1 ] && continue
    podman image exists "local/$name:test" && continue
    tar=$DIR/$name.docker.tar
    if [ -s "$tar" ]; then
      log "podman load $tar"; podman load -q -i "$tar" >/dev/null
    elif [ $name = busybox ]; then
      log "podman build local/busybox:test"; podman build -q -t local/busybox:test "$(busybox_context)" >/dev/null
    else
      python_rootfs; log "podman import local/python:test"
      tar --numeric-owner -C "$PY_ROOTFS" -c . | podman import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["/usr/bin/python3"]' - local/python:test >/dev/null
    fi
  done
}

# ---------------------------------------------------------------- apptainer
# Symbols glibc >= 2.37 added that the shim provides (forwarding to the pre-C23 functions).
SHIM_SYMS="__isoc23_strtol __isoc23_strtoul __isoc23_strtoll __isoc23_strtoull __isoc23_strtoimax __isoc23_strtoumax __isoc23_sscanf __isoc23_vsscanf __isoc23_fscanf __isoc23_vfscanf __isoc23_scanf __isoc23_vscanf"
SHIM_PATH=/usr/lib/x86_64-linux-gnu/apptainer/lib/libisoc23compat.so
# The one Apptainer build the tests use, wherever it comes from: Debian's 1.4.5-2 .deb, checked by
# SHA-256. A pinned copy in shared/vendor (or vendor/) beside the checkout is used first; otherwise
# exactly this version is downloaded from Debian unstable and must match the checksum.
PINNED_APPTAINER_VERSION=1.4.5-2
PINNED_APPTAINER_SHA256=26cf96e08fccb0e50ea0f285a5a19f940ee873d167a0680584fe6eba7d197d65
PINNED_APPTAINER_FILE=apptainer_${PINNED_APPTAINER_VERSION}_amd64.deb

sha_ok() { [ -s "$1" ] && echo "$2  $1" | sha256sum -c --status; }

apptainer_fetch_deb() {
  local d=$DIR/apptainer f want=$PINNED_APPTAINER_SHA256
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  if [ -n "${APPTAINER_DEB:-}" ]; then
    # Another build is accepted only with its checksum stated explicitly.
    want=${APPTAINER_DEB_SHA256:-$PINNED_APPTAINER_SHA256}
    sha_ok "$APPTAINER_DEB" "$want" \
      || die "APPTAINER_DEB=$APPTAINER_DEB does not match sha256 $want (set APPTAINER_DEB_SHA256 to use another build)"
    echo "$APPTAINER_DEB"; return
  fi
  local here; here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  for f in "$here/../../shared/vendor/$PINNED_APPTAINER_FILE" "$here/../vendor/$PINNED_APPTAINER_FILE" "$d/$PINNED_APPTAINER_FILE"; do
    if sha_ok "$f" "$want"; then echo "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"; return; fi
  done
  # Only Debian unstable (sid) packages apptainer. Separate index dirs: the host's apt state is untouched.
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR sid main" >"$d/sid.list"
  local o=(-o Dir::Etc::SourceList="$d/sid.list" -o Dir::Etc::SourceParts=/nonexistent
           -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o Acquire::Languages=none
           -o APT::Sandbox::User=root -o Acquire::Retries=3)
  log "fetching apptainer $PINNED_APPTAINER_VERSION from Debian sid"
  retry 3 apt-get "${o[@]}" -q update >/dev/null || die "cannot read Debian sid's package index from $MIRROR"
  rm -f "$d/$PINNED_APPTAINER_FILE"
  (cd "$d" && apt-get "${o[@]}" -q download "apptainer=$PINNED_APPTAINER_VERSION" >/dev/null 2>&1) \
    || die "Debian's archive no longer serves apptainer $PINNED_APPTAINER_VERSION. Put $PINNED_APPTAINER_FILE" \
           "(sha256 $PINNED_APPTAINER_SHA256) in vendor/ beside scripts/, or set APPTAINER_DEB and" \
           "APPTAINER_DEB_SHA256 to a build you trust"
  f=$d/$PINNED_APPTAINER_FILE
  sha_ok "$f" "$want" || die "the downloaded $PINNED_APPTAINER_FILE does not match sha256 $want; refusing to install it"
  echo "$f"
}

apptainer_repack() { # $1 = Debian .deb built for glibc >= 2.38 -> prints path of a bookworm-installable .deb
  local src=$1 d=$DIR/apptainer pkg out f s v need newv
  pkg=$d/pkg; rm -rf "$pkg"; dpkg-deb -R "$src" "$pkg"
  newv="$(sed -n 's/^Version: //p' "$pkg/DEBIAN/control")+glibc236compat1"
  out=$d/apptainer_${newv//:/%3a}_amd64.glibc236compat.deb
  [ -s "$out" ] && { echo "$out"; return; }
  cat >"$d/isoc23compat.c" <<'EOF'
/* glibc 2.38 added C23 variants of strto* and *scanf (they also accept "0b" binary literals).
   Debian bookworm has glibc 2.36: forward them to the classic functions. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
long __isoc23_strtol(const char *s, char **e, int b) { return strtol(s, e, b); }
unsigned long __isoc23_strtoul(const char *s, char **e, int b) { return strtoul(s, e, b); }
long long __isoc23_strtoll(const char *s, char **e, int b) { return strtoll(s, e, b); }
unsigned long long __isoc23_strtoull(const char *s, char **e, int b) { return strtoull(s, e, b); }
intmax_t __isoc23_strtoimax(const char *s, char **e, int b) { return strtoimax(s, e, b); }
uintmax_t __isoc23_strtoumax(const char *s, char **e, int b) { return strtoumax(s, e, b); }
int __isoc23_vsscanf(const char *s, const char *f, va_list a) { return vsscanf(s, f, a); }
int __isoc23_vfscanf(FILE *s, const char *f, va_list a) { return vfscanf(s, f, a); }
int __isoc23_vscanf(const char *f, va_list a) { return vscanf(f, a); }
int __isoc23_sscanf(const char *s, const char *f, ...) { va_list a; va_start(a, f); int r = vsscanf(s, f, a); va_end(a); return r; }
int __isoc23_fscanf(FILE *s, const char *f, ...) { va_list a; va_start(a, f); int r = vfscanf(s, f, a); va_end(a); return r; }
int __isoc23_scanf(const char *f, ...) { va_list a; va_start(a, f); int r = vscanf(f, a); va_end(a); return r; }
EOF
  mkdir -p "$pkg$(dirname $SHIM_PATH)"
  gcc -O2 -shared -fPIC -o "$pkg$SHIM_PATH" "$d/isoc23compat.c"
  cat >"$d/drop_verneed.py" <<'EOF'
"""Unlink Vernaux entries (e.g. libc.so.6 GLIBC_2.38) from an ELF64-LE .gnu.version_r, in place.
Run `patchelf --clear-symbol-version SYM` for every symbol bound to those versions first."""
import struct, sys
path, names = sys.argv[1], set(sys.argv[2:])
data = bytearray(open(path, 'rb').read())
assert data[:4] == b'\x7fELF' and data[4] == 2 and data[5] == 1, 'need ELF64 LE'
shoff, = struct.unpack_from('<Q', data, 0x28)
shentsize, shnum = struct.unpack_from('<HH', data, 0x3A)
shdrs = [struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize) for i in range(shnum)]
for sh in shdrs:
    if sh[1] != 0x6ffffffe:  # SHT_GNU_verneed
        continue
    off, stroff = sh[4], shdrs[sh[6]][4]
    cstr = lambda o: data[stroff + o:data.index(b'\0', stroff + o)].decode()
    vn = off
    for _ in range(sh[7]):
        _, cnt, vfile, aux, nxt = struct.unpack_from('<HHIII', data, vn)
        a, keep = vn + aux, []
        for _ in range(cnt):
            _, _, _, name, anext = struct.unpack_from('<IHHII', data, a)
            if cstr(name) in names:
                print(f'{path}: dropped {cstr(vfile)} {cstr(name)}')
            else:
                keep.append(a)
            a += anext
        if len(keep) != cnt:
            assert keep
            struct.pack_into('<H', data, vn + 2, len(keep))
            struct.pack_into('<I', data, vn + 8, keep[0] - vn)
            for cur, n2 in zip(keep, keep[1:] + [None]):
                struct.pack_into('<I', data, cur + 12, 0 if n2 is None else n2 - cur)
        if not nxt:
            break
        vn += nxt
open(path, 'wb').write(data)
EOF
  while IFS= read -r -d '' f; do
    [ "$(head -c4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
    need=$(objdump -T "$f" | awk '/\(GLIBC_2\.(3[7-9]|[4-9][0-9])\)/ {print $NF}' | sort -u)
    v=$(readelf -V "$f" | grep -oE 'GLIBC_2\.(3[7-9]|[4-9][0-9])' | sort -u | tr '\n' ' ')
    [ -z "$need$v" ] && continue
    for s in $need; do
      case " $SHIM_SYMS " in *" $s "*) ;; *) die "$f needs $s from glibc > 2.36, which the shim lacks";; esac
      patchelf --clear-symbol-version "$s" "$f"
    done
    # shellcheck disable=SC2086
    "$PY" "$d/drop_verneed.py" "$f" $v >&2
    patchelf --add-needed "$SHIM_PATH" "$f"
    ! readelf -V "$f" | grep -qE 'GLIBC_2\.(3[7-9]|[4-9][0-9])' || die "still needs new glibc: $f"
  done < <(find "$pkg" -type f ! -path "$pkg/DEBIAN/*" -print0)
  sed -i -e "s/^Version: .*/Version: $newv/" -e 's/libc6 (>= 2\.[0-9]*)/libc6 (>= 2.36)/' "$pkg/DEBIAN/control"
  (cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
  dpkg-deb --root-owner-group -Znone -b "$pkg" "$out" >/dev/null
  rm -rf "$pkg"
  echo "$out"
}

apptainer_setup() {
  local installed; installed=$(dpkg-query -W -f='${Version}' apptainer 2>/dev/null || true)
  if [ "${installed%%+*}" != "$PINNED_APPTAINER_VERSION" ] || ! apptainer --version >/dev/null 2>&1; then
    local deb; deb=$(apptainer_repack "$(apptainer_fetch_deb)")
    log "installing $(basename "$deb")"
    apt-get install "${APT_OPTS[@]}" "$deb" >"$DIR/apt-apptainer.log" 2>&1 \
      || { tail -20 "$DIR/apt-apptainer.log" >&2; die "apptainer install failed"; }
  fi
  apptainer --version >/dev/null || die "apptainer does not run"
  # Root's default is 'full' capabilities, but CAP_SYS_RESOURCE is not in this VM's bounding set
  # ("Requesting capability set 0x1ffffffffff while permitted capability set is 0x1fffeffffff").
  # Keep everything root has instead: 'file' mode + capability.json listing all caps but SYS_RESOURCE.
  local conf=/etc/apptainer/apptainer.conf
  if ! grep -q '^root default capabilities = file' $conf; then
    sed -i 's/^root default capabilities = .*/root default capabilities = file/' $conf
    local caps; caps=$(apptainer capability avail | grep -oE '^CAP_[A-Z_]+' | grep -vx CAP_SYS_RESOURCE | paste -sd,)
    apptainer capability add --user root "$caps" >/dev/null 2>&1
  fi
  # No systemd here: --memory/--cpus etc. need apptainer to drive cgroupfs (v1) itself.
  sed -i 's/^systemd cgroups = yes/systemd cgroups = no/' $conf
  # SIFs (zstd: ~3x faster to build than the default gzip here; the kernel mounts it fine).
  local sqopt="-comp zstd -Xcompression-level 3"
  if [ ! -s "$DIR/busybox.sif" ]; then
    log "apptainer build busybox.sif"
    if [ -s "$DIR/busybox.docker.tar" ]; then
      apptainer -q build --force --mksquashfs-args "$sqopt" "$DIR/busybox.sif" "docker-archive://$DIR/busybox.docker.tar"
    else # no docker: make a sandbox dir from the same busybox
      local sb=$DIR/busybox-sandbox; rm -rf "$sb"; mkdir -p "$sb/bin" "$sb/etc" "$sb/root" "$sb/tmp"
      cp /bin/busybox "$sb/bin/"   # relative links: `busybox --install` would point them at the host's /usr/bin/busybox
      (cd "$sb/bin" && for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$a"; done)
      printf 'root:x:0:0:root:/root:/bin/sh\n' >"$sb/etc/passwd"; printf 'root:x:0:\n' >"$sb/etc/group"
      apptainer -q build --force --mksquashfs-args "$sqopt" "$DIR/busybox.sif" "$sb"; rm -rf "$sb"
    fi
  fi
  if [ "$SETUP_PYTHON_IMAGE" = 1 ] && [ ! -s "$DIR/python.sif" ]; then
    log "apptainer build python.sif"
    if [ -z "$PY_ROOTFS" ] && [ -s "$DIR/python.docker.tar" ]; then
      apptainer -q build --force --mksquashfs-args "$sqopt" "$DIR/python.sif" "docker-archive://$DIR/python.docker.tar"
    else
      python_rootfs; apptainer -q build --force --mksquashfs-args "$sqopt" "$DIR/python.sif" "$PY_ROOTFS"
    fi
  fi
}

# ---------------------------------------------------------------- local registry (loopback only)
registry_ok() { curl -sf --max-time 3 "http://$REGISTRY/v2/" >/dev/null; }
registry_start() {
  if registry_ok; then log "registry already answering on $REGISTRY"; return; fi
  mkdir -p "$DIR/registry/data"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n' \
    "$DIR/registry/data" "$REGISTRY" >"$DIR/registry/config.yml"
  log "starting docker-registry on $REGISTRY"
  setsid /usr/bin/docker-registry serve "$DIR/registry/config.yml" </dev/null >>"$DIR/registry.log" 2>&1 &
  echo $! >"$DIR/registry.pid"
  local i
  for i in $(seq 1 40); do registry_ok && return 0; sleep 0.25; done
  tail -5 "$DIR/registry.log" >&2; die "registry did not start"
}
registry_push() { # push the test images; their RepoDigests then hold real manifest digests
  local name ref
  for name in busybox python; do
    [ $name = python ] && [ "$SETUP_PYTHON_IMAGE" != 1 ] && continue
    ref=$REGISTRY/ci/$name:test
    if [ "$SETUP_DOCKER" = 1 ]; then
      docker tag "local/$name:test" "$ref"
      docker push "$ref" >/dev/null || die "docker push $ref failed"
    else
      podman push --tls-verify=false "local/$name:test" "$ref" >/dev/null 2>&1 || die "podman push $ref failed"
    fi
  done
  log "pushed test images to $REGISTRY/ci/"
}
registry_digest() { # manifest digest the registry holds for ci/$1:test
  curl -sf --max-time 5 -o /dev/null -D - \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REGISTRY/v2/ci/$1/manifests/test" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest" {print $2}'
}
stop_registry() {
  [ -s "$DIR/registry.pid" ] || return 0
  local pid; pid=$(cat "$DIR/registry.pid")
  if kill -0 "$pid" 2>/dev/null && grep -q docker-registry "/proc/$pid/cmdline"; then log "stopping registry pid $pid"; kill -TERM "$pid"; fi
  rm -f "$DIR/registry.pid"
}

# ---------------------------------------------------------------- registries with authentication (loopback only)
AUTH_DIR=$DIR/registry-auth
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@" || true; }
auth_password() { # the test user's password: generated once, kept in a 0600 file
  mkdir -p "$AUTH_DIR"; chmod 700 "$AUTH_DIR"
  if [ ! -s "$AUTH_DIR/password" ]; then
    (umask 077; openssl rand -hex 16 >"$AUTH_DIR/password")
    rm -f "$AUTH_DIR/users.json" "$AUTH_DIR/htpasswd" "$AUTH_DIR/skopeo-auth.json"
  fi
  cat "$AUTH_DIR/password"
}
token_python() { # PyJWT + cryptography at the versions in constraints.txt
  if "$TOKEN_PY" -c 'import jwt, cryptography' 2>/dev/null; then return; fi
  [ -x "$TOKEN_PY" ] || die "no Python for the token service at $TOKEN_PY: run scripts/test.sh (it creates .venv), or set TOKEN_SERVICE_PYTHON"
  log "installing PyJWT and cryptography into $VENV_DIR (constraints.txt)"
  "$TOKEN_PY" -m pip install -q -c "$ROOT/constraints.txt" pyjwt cryptography >"$DIR/pip-token.log" 2>&1 \
    || { tail -5 "$DIR/pip-token.log" >&2; die "pip install pyjwt cryptography failed"; }
}
token_service_start() {
  local pass d=$DIR/registry-token
  pass=$(auth_password); mkdir -p "$d"
  if [ ! -s "$d/key.pem" ] || [ ! -s "$d/cert.pem" ]; then
    log "generating the token signing key"
    (umask 077; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=consist-test-token-service" -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null) \
      || die "openssl could not make the token signing key"
  fi
  if [ ! -s "$AUTH_DIR/users.json" ]; then
    token_python
    printf '%s\n' "$pass" | "$TOKEN_PY" "$ROOT/scripts/registry_token_service.py" adduser --users "$AUTH_DIR/users.json" --user "$REG_USER"
  fi
  if [ "$(http_code "http://$TOKEN_SERVICE/token?service=$TOKEN_REALM_SERVICE")" = 200 ]; then
    log "token service already answering on $TOKEN_SERVICE"; return
  fi
  token_python
  log "starting the registry token service on $TOKEN_SERVICE"
  setsid "$TOKEN_PY" "$ROOT/scripts/registry_token_service.py" serve --listen "$TOKEN_SERVICE" \
    --key "$d/key.pem" --cert "$d/cert.pem" --users "$AUTH_DIR/users.json" --log "$d/requests.jsonl" \
    --service "$TOKEN_REALM_SERVICE" --issuer consist-test-token-service --anonymous-prefix public/ \
    </dev/null >>"$d/service.log" 2>&1 &
  echo $! >"$DIR/token-service.pid"
  local i
  for i in $(seq 1 40); do
    [ "$(http_code "http://$TOKEN_SERVICE/token?service=$TOKEN_REALM_SERVICE")" = 200 ] && return 0; sleep 0.25
  done
  tail -5 "$d/service.log" >&2; die "the token service did not start"
}
auth_registry_start() { # $1 = token|basic
  local kind=$1 addr d pass auth
  if [ "$kind" = token ]; then addr=$REGISTRY_TOKEN; else addr=$REGISTRY_BASIC; fi
  d=$DIR/registry-$kind; mkdir -p "$d/data"
  if [ "$(http_code "http://$addr/v2/")" = 401 ]; then log "$kind registry already answering on $addr"; return; fi
  if [ "$kind" = token ]; then
    auth=$(printf '  token:\n    realm: http://%s/token\n    service: %s\n    issuer: consist-test-token-service\n    rootcertbundle: %s\n' \
      "$TOKEN_SERVICE" "$TOKEN_REALM_SERVICE" "$d/cert.pem")
  else
    pass=$(auth_password)
    if [ ! -s "$AUTH_DIR/htpasswd" ]; then
      printf '%s' "$pass" | htpasswd -B -i -c "$AUTH_DIR/htpasswd" "$REG_USER" 2>/dev/null || die "htpasswd failed"
      chmod 600 "$AUTH_DIR/htpasswd"
    fi
    auth=$(printf '  htpasswd:\n    realm: consist-test-basic\n    path: %s\n' "$AUTH_DIR/htpasswd")
  fi
  printf 'version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\nauth:\n%s\n' \
    "$d/data" "$addr" "$auth" >"$d/config.yml"
  log "starting docker-registry with $kind authentication on $addr"
  setsid /usr/bin/docker-registry serve "$d/config.yml" </dev/null >>"$DIR/registry-$kind.log" 2>&1 &
  echo $! >"$DIR/registry-$kind.pid"
  local i
  for i in $(seq 1 40); do [ "$(http_code "http://$addr/v2/")" = 401 ] && return 0; sleep 0.25; done
  tail -5 "$DIR/registry-$kind.log" >&2; die "the $kind registry did not start"
}
skopeo_auth() { # an auth file for the set-up's own pushes (0600, beside the password)
  local f=$AUTH_DIR/skopeo-auth.json pass b64
  if [ ! -s "$f" ]; then
    pass=$(auth_password); b64=$(printf '%s:%s' "$REG_USER" "$pass" | base64 -w0)
    (umask 077; printf '{"auths": {"%s": {"auth": "%s"}, "%s": {"auth": "%s"}}}\n' "$REGISTRY_TOKEN" "$b64" "$REGISTRY_BASIC" "$b64" >"$f")
  fi
  echo "$f"
}
raw_manifest() { skopeo inspect --raw --authfile "$(skopeo_auth)" --tls-verify=false "docker://$1" 2>/dev/null; }
manifest_digest() { local m; m=$(raw_manifest "$1") && [ -n "$m" ] && printf '%s' "$m" | sha256sum | awk '{print "sha256:" $1}'; }
push_once() { # $1 = source (skopeo transport), $2 = destination host/repo:tag, $3.. = skopeo copy options
  local src=$1 dst=$2; shift 2
  if raw_manifest "$dst" >/dev/null; then return; fi
  skopeo copy -q --authfile "$(skopeo_auth)" --dest-tls-verify=false "$@" "$src" "docker://$dst" >/dev/null 2>>"$DIR/skopeo.log" \
    || { tail -5 "$DIR/skopeo.log" >&2; die "skopeo copy $src -> $dst failed"; }
}
auth_registry_push() {
  local src
  if [ -s "$DIR/busybox.docker.tar" ]; then src=docker-archive:$DIR/busybox.docker.tar
  else src=containers-storage:localhost/local/busybox:test; fi
  push_once "$src" "$REGISTRY_TOKEN/public/busybox:test"
  push_once "$src" "$REGISTRY_TOKEN/private/busybox:test"
  push_once "$src" "$REGISTRY_BASIC/ci/busybox:test"
  # A multi-arch image index: two single-arch manifests of one repository, then an OCI index naming them.
  push_once "$src" "$REGISTRY_TOKEN/public/multi:amd64" --format v2s2
  push_once "$src" "$REGISTRY_TOKEN/public/multi:arm64" --format oci
  if raw_manifest "$REGISTRY_TOKEN/public/multi:test" >/dev/null; then return; fi
  local a r index tok pass
  a=$(raw_manifest "$REGISTRY_TOKEN/public/multi:amd64"); r=$(raw_manifest "$REGISTRY_TOKEN/public/multi:arm64")
  index=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s,%s]}' \
    "$(printf '{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":%s,"digest":"sha256:%s","platform":{"architecture":"amd64","os":"linux"}}' \
        "$(printf '%s' "$a" | wc -c)" "$(printf '%s' "$a" | sha256sum | cut -d' ' -f1)")" \
    "$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":%s,"digest":"sha256:%s","platform":{"architecture":"arm64","os":"linux","variant":"v8"}}' \
        "$(printf '%s' "$r" | wc -c)" "$(printf '%s' "$r" | sha256sum | cut -d' ' -f1)")")
  pass=$(auth_password)
  tok=$(printf 'user = "%s:%s"\n' "$REG_USER" "$pass" | curl -sf --max-time 5 -K- \
        "http://$TOKEN_SERVICE/token?service=$TOKEN_REALM_SERVICE&scope=repository:public/multi:pull,push" \
        | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
  [ -n "$tok" ] || die "the token service gave no push token"
  printf '%s' "$index" | curl -sf --max-time 10 -o /dev/null -X PUT -H "Authorization: Bearer $tok" \
    -H 'Content-Type: application/vnd.oci.image.index.v1+json' --data-binary @- \
    "http://$REGISTRY_TOKEN/v2/public/multi/manifests/test" || die "uploading the image index failed"
  log "pushed busybox and a multi-arch index to the registries with authentication"
}
auth_registries_conf() { # Podman, skopeo and Apptainer (containers/image) reach them over plain HTTP
  mkdir -p /etc/containers/registries.conf.d
  printf '[[registry]]\nlocation = "%s"\ninsecure = true\n\n[[registry]]\nlocation = "%s"\ninsecure = true\n' \
    "$REGISTRY_TOKEN" "$REGISTRY_BASIC" >/etc/containers/registries.conf.d/51-ci-auth-registries.conf
}
auth_registries_setup() {
  auth_registries_conf
  token_service_start
  auth_registry_start token
  auth_registry_start basic
  auth_registry_push
}
stop_pidfile() { # $1 = pid file, $2 = what the process's command line must contain
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null && grep -q "$2" "/proc/$pid/cmdline"; then log "stopping $2 pid $pid"; kill -TERM "$pid"; fi
  rm -f "$1"
}

# ---------------------------------------------------------------- env file + verification
write_env() {
  local f=$DIR/containers.env py=$SETUP_PYTHON_IMAGE
  {
    echo "CI_CONTAINERS_DIR=$DIR"
    echo "CI_IMAGE_BUSYBOX=$IMG_BB"
    if [ "$py" = 1 ]; then echo "CI_IMAGE_PYTHON=$IMG_PY"; fi
    if [ "$SETUP_DOCKER" = 1 ]; then
      echo "CI_DOCKER=1"
      echo "CI_DOCKERD_PID=$(cat "$DIR/dockerd.pid" 2>/dev/null || cat /var/run/docker.pid 2>/dev/null || true)"
      echo "CI_IMAGE_BUSYBOX_ID=$(docker image inspect -f '{{.Id}}' "$IMG_BB")"
      echo "CI_DOCKER_ARCHIVE_BUSYBOX=$DIR/busybox.docker.tar"
      if [ "$py" = 1 ]; then
        echo "CI_IMAGE_PYTHON_ID=$(docker image inspect -f '{{.Id}}' "$IMG_PY")"
        echo "CI_DOCKER_ARCHIVE_PYTHON=$DIR/python.docker.tar"
      fi
    fi
    if [ "$SETUP_PODMAN" = 1 ]; then echo "CI_PODMAN=1"; fi
    if [ "$SETUP_REGISTRY" = 1 ]; then
      echo "CI_REGISTRY=$REGISTRY"
      echo "CI_REGISTRY_PID=$(cat "$DIR/registry.pid" 2>/dev/null || true)"
      echo "CI_IMAGE_BUSYBOX_REF=$REGISTRY/ci/busybox@$(registry_digest busybox)"
      if [ "$py" = 1 ]; then echo "CI_IMAGE_PYTHON_REF=$REGISTRY/ci/python@$(registry_digest python)"; fi
    fi
    if [ "$SETUP_AUTH_REGISTRIES" = 1 ]; then
      echo "CI_SKOPEO=1"
      echo "CI_REGISTRY_TOKEN=$REGISTRY_TOKEN"
      echo "CI_REGISTRY_TOKEN_PID=$(cat "$DIR/registry-token.pid" 2>/dev/null || true)"
      echo "CI_REGISTRY_TOKEN_ACCESS_LOG=$DIR/registry-token.log"
      echo "CI_TOKEN_SERVICE=$TOKEN_SERVICE"
      echo "CI_TOKEN_SERVICE_PID=$(cat "$DIR/token-service.pid" 2>/dev/null || true)"
      echo "CI_TOKEN_SERVICE_LOG=$DIR/registry-token/requests.jsonl"
      echo "CI_REGISTRY_BASIC=$REGISTRY_BASIC"
      echo "CI_REGISTRY_BASIC_PID=$(cat "$DIR/registry-basic.pid" 2>/dev/null || true)"
      echo "CI_REGISTRY_BASIC_ACCESS_LOG=$DIR/registry-basic.log"
      echo "CI_REGISTRY_USER=$REG_USER"
      echo "CI_REGISTRY_PASSWORD=$(auth_password)"
      echo "CI_TOKEN_PUBLIC_BUSYBOX_DIGEST=$(manifest_digest "$REGISTRY_TOKEN/public/busybox:test")"
      echo "CI_TOKEN_PRIVATE_BUSYBOX_DIGEST=$(manifest_digest "$REGISTRY_TOKEN/private/busybox:test")"
      echo "CI_TOKEN_MULTI_DIGEST=$(manifest_digest "$REGISTRY_TOKEN/public/multi:test")"
      echo "CI_TOKEN_MULTI_AMD64_DIGEST=$(manifest_digest "$REGISTRY_TOKEN/public/multi:amd64")"
      echo "CI_BASIC_BUSYBOX_DIGEST=$(manifest_digest "$REGISTRY_BASIC/ci/busybox:test")"
    fi
    if [ "$SETUP_APPTAINER" = 1 ]; then
      echo "CI_APPTAINER=1"
      echo "CI_SIF_BUSYBOX=$DIR/busybox.sif"
      if [ "$py" = 1 ]; then echo "CI_SIF_PYTHON=$DIR/python.sif"; fi
    fi
  } >"$f"
  log "wrote $f"
}

verify() {
  local out
  if [ "$SETUP_DOCKER" = 1 ]; then
    out=$(docker run --rm "$IMG_BB" echo docker-ok) && [ "$out" = docker-ok ] || die "docker run failed"
    if [ "$SETUP_PYTHON_IMAGE" = 1 ]; then docker run --rm "$IMG_PY" python3 -c 'import json,hashlib,sqlite3' || die "docker python image broken"; fi
  fi
  if [ "$SETUP_PODMAN" = 1 ]; then
    out=$(podman run --rm local/busybox:test echo podman-ok) && [ "$out" = podman-ok ] || die "podman run failed"
  fi
  if [ "$SETUP_APPTAINER" = 1 ]; then
    out=$(apptainer exec "$DIR/busybox.sif" echo apptainer-ok) && [ "$out" = apptainer-ok ] || die "apptainer exec failed"
    if [ "$SETUP_PYTHON_IMAGE" = 1 ]; then apptainer exec "$DIR/python.sif" python3 -c 'import json,hashlib' || die "python.sif broken"; fi
  fi
  if [ "$SETUP_REGISTRY" = 1 ]; then
    [ -n "$(registry_digest busybox)" ] || die "registry has no ci/busybox:test"
  fi
  if [ "$SETUP_AUTH_REGISTRIES" = 1 ]; then
    [ "$(http_code "http://$REGISTRY_TOKEN/v2/")" = 401 ] || die "the token registry does not ask for authentication"
    [ "$(http_code "http://$REGISTRY_BASIC/v2/")" = 401 ] || die "the basic-auth registry does not ask for authentication"
    [ -n "$(manifest_digest "$REGISTRY_TOKEN/public/multi:test")" ] || die "the token registry has no public/multi:test"
    [ -n "$(manifest_digest "$REGISTRY_BASIC/ci/busybox:test")" ] || die "the basic-auth registry has no ci/busybox:test"
  fi
  log "verify: all requested runtimes run containers"
}

require_commands() { # an engine whose package is installed but whose command is gone: say which
  local c
  [ "$SETUP_DOCKER" = 1 ] && for c in docker dockerd; do command -v $c >/dev/null || die "docker: the $c command is missing (apt-get install --reinstall docker.io)"; done
  [ "$SETUP_PODMAN" = 1 ] && { command -v podman >/dev/null || die "podman: the podman command is missing (apt-get install --reinstall podman)"; }
  [ "$SETUP_REGISTRY" = 1 ] && { command -v docker-registry >/dev/null || die "registry: the docker-registry command is missing (apt-get install --reinstall docker-registry)"; }
  if [ "$SETUP_AUTH_REGISTRIES" = 1 ]; then
    for c in skopeo htpasswd openssl; do command -v $c >/dev/null || die "auth registries: the $c command is missing (apt-get install --reinstall skopeo apache2-utils openssl)"; done
  fi
  return 0
}

setup() {
  install_packages
  require_commands
  if [ "$SETUP_DOCKER" = 1 ]; then start_dockerd; docker_images; fi
  if [ "$SETUP_PODMAN" = 1 ]; then podman_setup; fi
  if [ "$SETUP_REGISTRY" = 1 ]; then registry_start; registry_push; fi
  if [ "$SETUP_AUTH_REGISTRIES" = 1 ]; then auth_registries_setup; fi
  if [ "$SETUP_APPTAINER" = 1 ]; then apptainer_setup; fi
  cleanup_rootfs
  write_env
}

case "${1:-all}" in
  all) setup; verify ;;
  setup) setup ;;
  verify) verify ;;
  stop) stop_dockerd; stop_registry
        stop_pidfile "$DIR/registry-token.pid" docker-registry; stop_pidfile "$DIR/registry-basic.pid" docker-registry
        stop_pidfile "$DIR/token-service.pid" registry_token_service ;;
  *) die "usage: $0 [all|setup|verify|stop]" ;;
esac
log "done in $(( $(date +%s) - T_START ))s"
