#!/usr/bin/env bash
# setup-scaleout.sh - a real PostgreSQL and a real Slurm for consist's tests on Debian 12 (bookworm),
# as root, on a machine without systemd that reaches Debian's archive and PyPI.
#
#   PostgreSQL 15 : Debian's postgresql-15. A private, throwaway instance only for the tests (never the
#                   machine's own cluster): initdb into $CONSIST_SCALEOUT_DIR/pg as user postgres, port
#                   55432 on 127.0.0.1 only, Unix socket in $CONSIST_SCALEOUT_DIR/pg-sock, fsync=off,
#                   synchronous_commit=off, max_connections=200. Role `consist` (password `consist`,
#                   LOGIN CREATEDB) owns database `consist`. Password (scram-sha-256) over TCP, trust
#                   over the socket.
#   Slurm 22.05   : Debian's munge + slurmctld + slurmd, one node (this host, at 127.0.0.1), partition
#                   `debug`, no accounting database (jobcomp/filetxt only), proctrack/linuxproc. The node
#                   advertises $CONSIST_SLURM_NODE_CPUS CPUs (default 8) even on 2 real cores, so several
#                   1-CPU jobs (Dask workers) run at once; the scheduler starts queued jobs within ~1 s.
#
# Every daemon runs in its own session (setsid), stdin from /dev/null, output to $CONSIST_SCALEOUT_DIR/*.log.
# Each writes its own pid file, which is the source of truth: `stop` ends each one by that pid, never
# by name. Nothing starts by itself here (no systemd, policy-rc.d denies starts), so run `setup`
# before every test run; it is idempotent and takes about a second when everything is up.
#
# Usage:  bash scripts/setup-scaleout.sh [setup|stop|status]   (default setup)
# Knobs (environment):
#   CONSIST_SCALEOUT_DIR=/tmp/ci-scaleout   data, sockets, logs and the env file
#   SETUP_POSTGRES=1 SETUP_SLURM=1         0 skips a part
#   CONSIST_PG_PORT=55432                  the private PostgreSQL's TCP port
#   CONSIST_SLURM_NODE_CPUS=8              CPUs the node advertises (at least the real count)
#   SKIP_APT_UPDATE=1                      skip apt-get update before installing missing packages
# Output: $CONSIST_SCALEOUT_DIR/scaleout.env (KEY=VALUE lines, no quoting needed):
#   CONSIST_TEST_PG_URL, CONSIST_TEST_PG_ADMIN_URL, CONSIST_TEST_SLURM_PARTITION, ...
set -Eeuo pipefail

DIR=${CONSIST_SCALEOUT_DIR:-/tmp/ci-scaleout}
SETUP_POSTGRES=${SETUP_POSTGRES:-1}
SETUP_SLURM=${SETUP_SLURM:-1}
PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_PORT=${CONSIST_PG_PORT:-55432}
PG_DATA=$DIR/pg
PG_SOCK=$DIR/pg-sock
PG_ROLE=consist
PG_PASSWORD=consist
PG_DB=consist
PG_URL=postgresql://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
PARTITION=debug
CLUSTER=consist
NODE_CPUS=${CONSIST_SLURM_NODE_CPUS:-8}
ENV_FILE=$DIR/scaleout.env
export DEBIAN_FRONTEND=noninteractive
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin   # slurmctld, slurmd, munged live in sbin
APT_OPTS=(-y -q --no-install-recommends -o Acquire::Retries=3 -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=120)
T_START=$SECONDS

log() { printf '[consist] scaleout +%ss: %s\n' "$((SECONDS - T_START))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts munged, slurmctld, slurmd, postgres)"

# ---------------------------------------------------------------- helpers
APT_UPDATED=0
apt_install() { # install only the packages that are missing
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return 0
  if [ "$APT_UPDATED" = 0 ] && [ "${SKIP_APT_UPDATE:-0}" != 1 ]; then
    log "apt-get update"
    timeout 300 apt-get update -q >"$DIR/apt-update.log" 2>&1 || { tail -20 "$DIR/apt-update.log" >&2; die "apt-get update failed"; }
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  timeout 600 apt-get install "${APT_OPTS[@]}" "${missing[@]}" >>"$DIR/apt-install.log" 2>&1 \
    || { tail -30 "$DIR/apt-install.log" >&2; die "apt-get install ${missing[*]} failed (log: $DIR/apt-install.log)"; }
}

alive() { # alive PID: exists and is not a zombie (PID 1 here reaps orphans only every few seconds)
  local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

pid_of() { # pid_of PIDFILE COMM: prints the pid when that process is alive and is COMM
  local f=$1 comm=$2 pid
  [ -s "$f" ] || return 1
  pid=$(head -1 "$f" | tr -dc '0-9'); [ -n "$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && alive "$pid" || return 1
  echo "$pid"
}

start_daemon() { # start_daemon NAME PIDFILE COMM CMD...: own session, output to $DIR/NAME.log, waits for PIDFILE
  local name=$1 pidfile=$2 comm=$3 pid; shift 3
  pid_of "$pidfile" "$comm" >/dev/null && return 0
  rm -f "$pidfile"
  # 9>&-: the daemon must not inherit (and so hold forever) the set-up lock
  setsid "$@" >>"$DIR/$name.log" 2>&1 </dev/null 9>&- &
  for _ in $(seq 1 100); do
    if pid=$(pid_of "$pidfile" "$comm"); then log "$name started (pid $pid)"; return 0; fi
    sleep 0.1
  done
  tail -20 "$DIR/$name.log" >&2 || true
  die "$name did not start within 10 s (no live $comm in $pidfile; log: $DIR/$name.log)"
}

stop_daemon() { # stop_daemon NAME PIDFILE COMM: SIGTERM by pid, wait up to 30 s, then SIGKILL
  local name=$1 pidfile=$2 comm=$3 pid
  pid=$(pid_of "$pidfile" "$comm") || { rm -f "$pidfile"; return 0; }
  log "stopping $name (pid $pid)"; kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then log "$name (pid $pid) still alive after 30 s: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$pidfile"
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...: retry CMD every 0.2 s, die after SECONDS
  local secs=$1 what=$2 end; shift 2
  end=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$end" ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "timed out after ${secs}s waiting for $what"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- PostgreSQL (private instance)
AS_POSTGRES=(setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$DIR")   # initdb refuses root
pg_pid() { pid_of "$PG_DATA/postmaster.pid" postgres; }
pg_admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres "$@"; }

pg_conf() { # settings of the private instance (included from postgresql.conf)
  cat <<EOF
# written by scripts/setup-scaleout.sh: a throwaway instance for tests; durability off on purpose
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
log_min_messages = warning
EOF
}

setup_postgres() {
  apt_install "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR"
  [ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb missing (apt-get install --reinstall postgresql-$PG_MAJOR)"
  install -d -o postgres -g postgres -m 755 "$PG_SOCK"
  if [ -s "$PG_DATA/PG_VERSION" ] && [ "$(cat "$PG_DATA/PG_VERSION")" != "$PG_MAJOR" ] && ! pg_pid >/dev/null; then
    log "$PG_DATA holds PostgreSQL $(cat "$PG_DATA/PG_VERSION"), not $PG_MAJOR: recreating it"; rm -rf "$PG_DATA"
  fi
  if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    log "initdb $PG_DATA (PostgreSQL $PG_MAJOR)"
    rm -rf "$PG_DATA"; install -d -o postgres -g postgres -m 700 "$PG_DATA"
    "${AS_POSTGRES[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$DIR/initdb.log" 2>&1 \
      || { tail -20 "$DIR/initdb.log" >&2; die "initdb failed (log: $DIR/initdb.log)"; }
    echo "include_if_exists = 'consist-tests.conf'" >>"$PG_DATA/postgresql.conf"
    cat >"$PG_DATA/pg_hba.conf" <<'EOF'
# written by scripts/setup-scaleout.sh
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  scram-sha-256
EOF
    chown postgres:postgres "$PG_DATA/pg_hba.conf"
  fi
  local tmp; tmp=$(mktemp); pg_conf >"$tmp"
  if ! cmp -s "$tmp" "$PG_DATA/consist-tests.conf"; then
    if pg_pid >/dev/null; then log "PostgreSQL settings changed: restarting it"; stop_postgres; fi
    install -o postgres -g postgres -m 600 "$tmp" "$PG_DATA/consist-tests.conf"
  fi
  rm -f "$tmp"
  if ! pg_pid >/dev/null; then
    port_busy "$PG_PORT" && die "port $PG_PORT on 127.0.0.1 is taken by another process; set CONSIST_PG_PORT"
    rm -f "$PG_DATA/postmaster.pid"   # stale: its process is gone
    touch "$DIR/postgres.log"; chown postgres:postgres "$DIR/postgres.log"   # the server writes it as postgres
    # pg_ctl -w returns once the server accepts connections; the postmaster runs in its own session
    setsid -w "${AS_POSTGRES[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$DIR/postgres.log" -w -t 30 start >"$DIR/pg_ctl.log" 2>&1 </dev/null 9>&- \
      || { cat "$DIR/pg_ctl.log" >&2; tail -20 "$DIR/postgres.log" >&2 || true; die "PostgreSQL did not start (log: $DIR/postgres.log)"; }
    log "PostgreSQL started (pid $(pg_pid), port $PG_PORT)"
  fi
  wait_for 30 "PostgreSQL on $PG_SOCK" pg_admin -tAc 'select 1'
  # role and database, created or repaired only when needed
  local state; state=$(pg_admin -tAc "SELECT (SELECT rolcanlogin AND rolcreatedb FROM pg_roles WHERE rolname = '$PG_ROLE')::text
    || ' ' || (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$PG_DB')")
  if [ "$state" != "true $PG_ROLE" ] || ! PGCONNECT_TIMEOUT=5 psql -X "$PG_URL" -tAc 'select 1' >/dev/null 2>&1; then
    log "creating role $PG_ROLE and database $PG_DB"
    pg_admin <<EOF
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE "$PG_ROLE" LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE "$PG_ROLE" LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END\$\$;
EOF
    if [ -z "$(pg_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
      pg_admin -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_ROLE\""
    else
      pg_admin -c "ALTER DATABASE \"$PG_DB\" OWNER TO \"$PG_ROLE\""
    fi
    wait_for 10 "a password login as $PG_ROLE over 127.0.0.1:$PG_PORT" env PGCONNECT_TIMEOUT=5 psql -X "$PG_URL" -tAc 'select 1'
  fi
}

stop_postgres() {
  local pid; pid=$(pg_pid) || return 0
  log "stopping PostgreSQL (pid $pid)"
  # pg_ctl signals the pid in postmaster.pid (fast: roll back open transactions, close sessions)
  "${AS_POSTGRES[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  if alive "$pid"; then log "PostgreSQL (pid $pid) still up: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; sleep 0.5; fi
}

# ---------------------------------------------------------------- munge + Slurm
setup_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key --force
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
  # setpriv execs munged as user munge (no wrapper process is left); munged -F writes its pid file
  start_daemon munged /run/munge/munged.pid munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
  wait_for 10 "a munge round trip" sh -c 'munge -n | unmunge'
}

slurm_conf() { # prints the wanted slurm.conf
  local host hw cpus mem node overrides=""
  host=$(hostname -s)
  hw=$(slurmd -C | head -1)   # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs and RealMemory from 'slurmd -C': $hw"
  mem=$((mem > 2048 ? mem - 1024 : mem))   # headroom for the daemons themselves
  if [ "$NODE_CPUS" -gt "$cpus" ]; then
    # more CPUs than the hardware has: slurmd must take the configured count, not what it detects
    node="NodeName=$host NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$mem State=UNKNOWN"
    overrides="SlurmdParameters=config_overrides"
  else
    node="$(sed -e "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/" -e "s/RealMemory=[0-9]*/RealMemory=$mem/" <<<"$hw") State=UNKNOWN"
  fi
  cat <<EOF
# written by scripts/setup-scaleout.sh: a one-node cluster on this host for consist's tests
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MailProg=/bin/true
MpiDefault=none
# no cgroups: processes tracked through /proc, no task binding or memory enforcement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SchedulerType=sched/backfill
# start queued jobs within ~1 s instead of the defaults' 3 s batch delay and 30 s backfill interval
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
# no accounting database (sacct answers that it is disabled); one line per finished job in jobcomp.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
$overrides
$node
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1024
EOF
}

setup_slurm() {
  apt_install munge slurm-wlm slurmctld slurmd slurm-client
  for c in munged slurmctld slurmd srun sinfo; do
    command -v $c >/dev/null || die "the $c command is missing (apt-get install --reinstall munge slurm-wlm)"
  done
  setup_munge
  install -d -o slurm -g slurm -m 755 /run/slurm /var/log/slurm /var/lib/slurm /var/lib/slurm/slurmctld
  install -d -o root -g root -m 755 /var/lib/slurm/slurmd
  local tmp host st; tmp=$(mktemp); slurm_conf >"$tmp"
  if ! cmp -s "$tmp" /etc/slurm/slurm.conf; then
    log "writing /etc/slurm/slurm.conf ((re)starting slurmctld and slurmd)"
    stop_daemon slurmd /run/slurm/slurmd.pid slurmd
    stop_daemon slurmctld /run/slurm/slurmctld.pid slurmctld
    install -m 644 "$tmp" /etc/slurm/slurm.conf
  fi
  rm -f "$tmp"
  start_daemon slurmctld /run/slurm/slurmctld.pid slurmctld /usr/sbin/slurmctld -D
  start_daemon slurmd /run/slurm/slurmd.pid slurmd /usr/sbin/slurmd -D
  wait_for 60 "slurmctld to answer (log: $DIR/slurmctld.log)" scontrol ping
  # after a config change the node can come up DOWN or DRAINED: resume it (harmless when idle)
  host=$(hostname -s)
  for _ in $(seq 1 50); do
    st=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$st" in
      idle*|mixed*|allocated*|completing*) break ;;
      down*|drain*|inval*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  wait_for 60 "a job step to run (srun -t 1 true; logs: $DIR/slurmd.log, /var/log/slurm/)" \
    timeout 20 srun -p "$PARTITION" -t 1 -n 1 true
}

cancel_jobs() { # cancel every job and wait (up to 30 s) for the queue to drain
  pid_of /run/slurm/slurmctld.pid slurmctld >/dev/null || return 0
  local ids; ids=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)
  [ -n "${ids// /}" ] || return 0
  log "cancelling Slurm jobs: $ids"
  # shellcheck disable=SC2086  # job ids are plain numbers
  scancel --full $ids 2>/dev/null || true
  # job steps run under slurmstepd, which outlives slurmd: let slurmd reap them before it stops
  local end=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$end" ] && squeue -h -o %i 2>/dev/null | grep -q .; do sleep 0.2; done
  if squeue -h -o %i 2>/dev/null | grep -q .; then log "jobs still listed after 30 s: $(squeue -h -o '%i %T' | tr '\n' ' ')"; fi
}

# ---------------------------------------------------------------- env file, setup, stop, status
write_env() {
  local tmp=$ENV_FILE.tmp
  {
    echo "CONSIST_SCALEOUT_DIR=$DIR"
    if [ "$SETUP_POSTGRES" = 1 ]; then
      echo "CONSIST_TEST_PG_URL=$PG_URL"
      # the superuser over the Unix socket (trust), percent-encoded socket directory as the host
      echo "CONSIST_TEST_PG_ADMIN_URL=postgresql://postgres@${PG_SOCK//\//%2F}:$PG_PORT/postgres"
      echo "CONSIST_TEST_PG_PORT=$PG_PORT"
      echo "CONSIST_TEST_PG_SOCKET_DIR=$PG_SOCK"
      echo "CONSIST_TEST_PG_VERSION=$(pg_admin -tAc 'show server_version' | cut -d' ' -f1)"
    fi
    if [ "$SETUP_SLURM" = 1 ]; then
      echo "CONSIST_TEST_SLURM_PARTITION=$PARTITION"
      echo "CONSIST_TEST_SLURM_CLUSTER=$CLUSTER"
      echo "CONSIST_TEST_SLURM_NODE=$(hostname -s)"
      echo "CONSIST_TEST_SLURM_CPUS=$(sinfo -h -p "$PARTITION" -o %c | head -1)"
      echo "CONSIST_TEST_SLURM_VERSION=$(sinfo --version | awk '{print $2}')"
      echo "CONSIST_TEST_SLURM_JOBCOMP_LOG=/var/log/slurm/jobcomp.log"
      # scheduler and workers must talk over loopback: Dask's default address is eth0's
      echo "CONSIST_TEST_DASK_INTERFACE=lo"
    fi
  } >"$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

do_setup() {
  mkdir -p "$DIR"; chmod 755 "$DIR"
  exec 9>"$DIR/.setup.lock"
  flock -w 240 9 || die "another setup-scaleout.sh still holds $DIR/.setup.lock after 240 s"
  if [ "$SETUP_POSTGRES" = 1 ]; then setup_postgres; fi
  if [ "$SETUP_SLURM" = 1 ]; then setup_slurm; fi
  write_env
  log "ready in $((SECONDS - T_START))s (facts in $ENV_FILE)"
}

do_stop() {
  [ -d "$DIR" ] && { exec 9>"$DIR/.setup.lock"; flock -w 240 9 || die "another setup-scaleout.sh still holds $DIR/.setup.lock after 240 s"; }
  cancel_jobs
  stop_daemon slurmd /run/slurm/slurmd.pid slurmd
  stop_daemon slurmctld /run/slurm/slurmctld.pid slurmctld
  stop_daemon munged /run/munge/munged.pid munged
  stop_postgres
  log "stopped"
}

do_status() {
  local d p rc=0
  for d in "munged /run/munge/munged.pid munged" "slurmctld /run/slurm/slurmctld.pid slurmctld" \
           "slurmd /run/slurm/slurmd.pid slurmd" "postgres $PG_DATA/postmaster.pid postgres"; do
    set -- $d
    if p=$(pid_of "$2" "$3"); then echo "$1: running (pid $p)"; else echo "$1: stopped"; rc=1; fi
  done
  if pid_of /run/slurm/slurmctld.pid slurmctld >/dev/null; then
    sinfo -o '%P %a %D %T %c CPUs %m MB' 2>/dev/null || true
    echo "jobs: $(squeue -h 2>/dev/null | wc -l)"
  fi
  return $rc
}

case "${1:-setup}" in
  setup) do_setup ;;
  stop) do_stop ;;
  status) do_status ;;
  *) echo "usage: $0 [setup|stop|status]" >&2; exit 2 ;;
esac
