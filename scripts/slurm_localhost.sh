#!/usr/bin/env bash
# A real one-node SLURM on this machine, for the SLURM tests (tests/slurm_test.sh) and for trying slurm/*.sbatch:
# installs Debian's munge, slurmctld and slurmd (apt, as root or through sudo), writes /etc/slurm/slurm.conf for one
# node (this host's short name, nproc CPUs) and one partition, creates a munge key when there is none, starts munged,
# slurmctld and slurmd as plain daemons and waits until `sinfo` shows the node usable.
#
#   scripts/slurm_localhost.sh            install, configure, start (a second run leaves running daemons alone and
#                                         restarts them only when the configuration it writes has changed)
#   scripts/slurm_localhost.sh --stop     stop slurmd and slurmctld (and munged when this script started it)
#   scripts/slurm_localhost.sh --status   say what runs; exit 0 when the node is usable
#
# Containers and CI machines run no systemd, so the daemons are started directly, not through their units; for the
# same reason there are no cgroups to use: processes are tracked by their parent ids (proctrack/linuxproc) and tasks
# are not bound (task/none). No accounting database: jobs are followed with `scontrol show job` (kept an hour).
#
# Environment:
#   CARVE_SLURM_DIR       state, spool, logs and pid files (default /var/lib/carve-slurm)
#   CARVE_SLURM_WAIT      seconds to wait for the node to become usable (default 60)
#   CARVE_SLURM_PARTITION the partition's name (default debug)
#   CARVE_SLURM_CRED_EXPIRE  step credential lifetime, which is also the requeue delay (default 20 s; Slurm's is 120)
#   CARVE_SLURM_FORCE=1   overwrite an /etc/slurm/slurm.conf that this script did not write (a real cluster's!)
set -euo pipefail

ME="slurm_localhost.sh"
say() { echo "$ME: $*"; }
die() { echo "$ME: error: $*" >&2; exit 1; }

ACTION=start
case "${1:-}" in
  "") ;;
  --stop) ACTION=stop ;;
  --status) ACTION=status ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (expected nothing, --stop or --status)" ;;
esac
[ $# -le 1 ] || die "one argument at most (got: $*)"

# Everything below writes /etc and starts daemons that must run as root (slurmd starts jobs as their users): run
# the whole script as root, through sudo when needed, keeping the variables that configure it.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "must run as root, or with sudo available (it is not)"
  exec sudo --preserve-env=CARVE_SLURM_DIR,CARVE_SLURM_WAIT,CARVE_SLURM_PARTITION,CARVE_SLURM_CRED_EXPIRE \
    --preserve-env=CARVE_SLURM_FORCE bash "$0" "$@"
fi

DIR=${CARVE_SLURM_DIR:-/var/lib/carve-slurm}
WAIT=${CARVE_SLURM_WAIT:-60}
PARTITION=${CARVE_SLURM_PARTITION:-debug}
CRED_EXPIRE=${CARVE_SLURM_CRED_EXPIRE:-20}
[[ "$CRED_EXPIRE" =~ ^[0-9]+$ ]] && [ "$CRED_EXPIRE" -ge 5 ] ||
  die "CARVE_SLURM_CRED_EXPIRE='$CRED_EXPIRE': expected whole seconds, at least 5 (Slurm's minimum)"
[[ "$WAIT" =~ ^[0-9]+$ ]] || die "CARVE_SLURM_WAIT='$WAIT': expected a whole number of seconds"
[[ "$PARTITION" =~ ^[A-Za-z0-9_-]+$ ]] || die "CARVE_SLURM_PARTITION='$PARTITION': expected letters, digits, - or _"
[[ "$DIR" = /* ]] || die "CARVE_SLURM_DIR='$DIR': expected an absolute path"
CONF=/etc/slurm/slurm.conf       # where Debian's sbatch, srun, sinfo and the daemons look without SLURM_CONF
MARK="# Written by carve's scripts/slurm_localhost.sh"  # first line of a slurm.conf this script owns
NODE=$(hostname -s)
MUNGE_PID=/run/munge/munged.pid

# ---- small helpers ----------------------------------------------------------------------------------------------

# True when the pid file names a live process whose command name is $2 (a stale file after a reboot names nothing,
# or some other process).
alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}

# Stops the daemon of pid file $1 (command name $2): SIGTERM, then SIGKILL after 20 s.
stop_daemon() {
  local pidfile=$1 name=$2 pid i
  if ! alive "$pidfile" "$name"; then rm -f "$pidfile"; return 0; fi
  pid=$(cat "$pidfile")
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do
    alive "$pidfile" "$name" || break
    sleep 0.5
  done
  if alive "$pidfile" "$name"; then
    say "$name (pid $pid) did not stop in 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$pidfile"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# The daemons' logs, for any failure: what went wrong is almost always written there.
show_logs() {
  local f
  for f in "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" /var/log/munge/munged.log; do
    if [ -s "$f" ]; then
      echo "---- last 40 lines of $f ----" >&2
      tail -n 40 "$f" >&2
    else
      echo "---- $f: missing or empty ----" >&2
    fi
  done
}
fail() { echo "$ME: error: $*" >&2; show_logs; exit 1; }

# The node's state as sinfo prints it, without the flag characters (* not responding, ~ powered off, ...).
node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 | tr -d '*~#!%$@^-' || true; }

# ---- stop and status --------------------------------------------------------------------------------------------

if [ "$ACTION" = stop ]; then
  stop_daemon "$DIR/run/slurmd.pid" slurmd
  stop_daemon "$DIR/run/slurmctld.pid" slurmctld
  # munged may serve others (a real installation's service): stop it only when this script started it.
  if [ -f "$DIR/run/munged.ours" ]; then
    stop_daemon "$MUNGE_PID" munged
    rm -f "$DIR/run/munged.ours"
  fi
  say "stopped"
  exit 0
fi

if [ "$ACTION" = status ]; then
  for d in slurmctld slurmd; do
    if alive "$DIR/run/$d.pid" "$d"; then say "$d runs (pid $(cat "$DIR/run/$d.pid"))"; else say "$d does not run"; fi
  done
  if munge_works; then say "munged answers"; else say "munged does not answer"; fi
  state=$(node_state)
  say "node $NODE: ${state:-unknown to sinfo}"
  case "$state" in idle|mixed|allocated|completing) exit 0 ;; *) exit 1 ;; esac
fi

# ---- install ----------------------------------------------------------------------------------------------------

PACKAGES=(munge slurmctld slurmd slurm-client)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself (Debian/Ubuntu packages)"
  say "installing ${missing[*]}"
  # The packages' maintainer scripts would start the daemons through invoke-rc.d before any slurm.conf exists (and
  # fail the install); a policy-rc.d that denies service starts during the install stops that. Ours is removed
  # afterwards; one that was there already is left alone.
  OUR_POLICY=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from carve scripts/slurm_localhost.sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    OUR_POLICY=/usr/sbin/policy-rc.d
  fi
  trap '[ -z "$OUR_POLICY" ] || rm -f "$OUR_POLICY"' EXIT
  env DEBIAN_FRONTEND=noninteractive apt-get update -q
  env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ -z "$OUR_POLICY" ] || rm -f "$OUR_POLICY"
  OUR_POLICY=""
fi
for b in munged munge unmunge slurmctld slurmd sinfo scontrol sbatch; do
  command -v "$b" >/dev/null || die "$b not found after installing ${PACKAGES[*]}"
done

# ---- munge: the key and the daemon ------------------------------------------------------------------------------

getent passwd munge >/dev/null || die "no user 'munge' (the munge package creates it; is it installed properly?)"
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
# munged refuses a key that others can read or that another user owns.
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

if ! munge_works; then
  say "starting munged"
  # --force: a socket left behind by a daemon that died (container restart) would otherwise stop it.
  runuser -u munge -- munged --force || fail "munged did not start"
  mkdir -p "$DIR/run"
  touch "$DIR/run/munged.ours"
  for i in $(seq 1 20); do munge_works && break; sleep 0.5; done
  munge_works || fail "munged started but 'munge -n | unmunge' fails"
fi

# ---- slurm.conf -------------------------------------------------------------------------------------------------

install -d -m 0755 "$DIR" "$DIR/ctld" "$DIR/d" "$DIR/log" "$DIR/run" /etc/slurm
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# Modest on purpose: memory is not a scheduled resource here (CR_Core), and a RealMemory above what slurmd finds
# would drain the node.
REAL_MEM=$(( MEM_MB / 2 )); [ "$REAL_MEM" -le 8192 ] || REAL_MEM=8192; [ "$REAL_MEM" -ge 256 ] || REAL_MEM=256

NEW_CONF=$(mktemp)
trap 'rm -f "$NEW_CONF"; [ -z "${OUR_POLICY:-}" ] || rm -f "$OUR_POLICY"' EXIT
cat > "$NEW_CONF" <<EOF
$MARK (rerun it to rewrite; --stop to stop the daemons).
# One node, this host, for tests and trying carve's slurm/*.sbatch. No systemd and no cgroups in containers: plain
# daemons, processes tracked by parent id, no task binding, no accounting.
ClusterName=carve-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
# One small node: look at pending jobs every 2 s instead of every 30-60 s, so that a job whose dependency finished or
# whose requeue delay passed starts at once.
SchedulerParameters=sched_interval=2,bf_interval=2
# A requeued job waits cred_expire + 1 seconds before it may start again (Slurm 22.05: job_mgr.c); the default 120 s
# is long for tests. Step credentials must still be used within this window, which one local node easily does.
AuthInfo=cred_expire=$CRED_EXPIRE
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The node as configured here wins over what slurmd detects, so a container's view of the hardware cannot drain it.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to 'scontrol show job' for an hour (there is no accounting database for sacct).
MinJobAge=3600
KillWait=10
InactiveLimit=0
SlurmctldTimeout=120
SlurmdTimeout=300
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

CHANGED=0
if [ -f "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
  [ "${CARVE_SLURM_FORCE:-0}" = 1 ] || die "$CONF exists and was not written by this script (a real installation?);" \
    "set CARVE_SLURM_FORCE=1 to replace it (it is kept as $CONF.carve-backup)"
  cp -p "$CONF" "$CONF.carve-backup"
fi
if ! cmp -s "$NEW_CONF" "$CONF"; then
  install -m 0644 "$NEW_CONF" "$CONF"
  CHANGED=1
  say "wrote $CONF (node $NODE, $CPUS CPUs, partition $PARTITION, state in $DIR)"
fi

# ---- the slurm daemons ------------------------------------------------------------------------------------------

if [ "$CHANGED" = 1 ]; then
  # Daemons running with another configuration: restart them so that they read this one.
  stop_daemon "$DIR/run/slurmd.pid" slurmd
  stop_daemon "$DIR/run/slurmctld.pid" slurmctld
fi
if alive "$DIR/run/slurmctld.pid" slurmctld; then
  say "slurmctld already runs (pid $(cat "$DIR/run/slurmctld.pid"))"
else
  say "starting slurmctld"
  # Keeps the saved state (jobs, node states) of an earlier run; the daemon forks into the background.
  slurmctld || fail "slurmctld did not start"
fi
for i in $(seq 1 "$WAIT"); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 1; done
scontrol ping 2>/dev/null | grep -q "is UP" || fail "slurmctld does not answer 'scontrol ping' after ${WAIT} s"

if alive "$DIR/run/slurmd.pid" slurmd; then
  say "slurmd already runs (pid $(cat "$DIR/run/slurmd.pid"))"
else
  say "starting slurmd"
  slurmd -N "$NODE" || fail "slurmd did not start"
fi

# The node registers within seconds; a node drained or downed earlier (a crash, a killed slurmd) is resumed.
state=""
for i in $(seq 1 "$WAIT"); do
  state=$(node_state)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    *drain*|down|fail*)
      [ "$i" -lt 5 ] || scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) sinfo -N -l >&2 || true; sinfo -R >&2 || true
     fail "node $NODE is '${state:-unknown}' after ${WAIT} s, expected idle" ;;
esac
say "ready: node $NODE is $state in partition $PARTITION" \
  "($(sinfo -h -o %C -p "$PARTITION") CPUs allocated/idle/other/total)"
