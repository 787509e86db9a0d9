#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/test_slurm_script.py and CI.
#
#   bash scripts/slurm_local_cluster.sh start    # munged, slurmctld, slurmd; waits until the node is idle
#   bash scripts/slurm_local_cluster.sh status   # what is running, what the cluster says
#   bash scripts/slurm_local_cluster.sh stop     # cancels its jobs, stops what start started
#
# Needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge).
# Both commands are idempotent: start leaves a running cluster alone, stop one that is stopped.
#
# The cluster: this host as controller and as the only compute node (NodeAddr 127.0.0.1),
# CPUs = the CPUs here (nproc), one partition "debug", root runs every daemon and may submit
# jobs, munge authentication with the key in /etc/munge/munge.key (made if missing),
# proctrack/linuxproc and task/none (no cgroups needed), select/cons_tres with CR_CPU
# (CPUs are the consumable resource), no accounting, no GRES (so no GPUs).
# The configuration is written to /etc/slurm/slurm.conf, where the client commands
# (sbatch, squeue, ...) look; a slurm.conf that this script did not write is never
# overwritten. State, spool, pid and log files live under $DROPLAB_SLURM_DIR
# (default /var/lib/droplab-slurm).
set -euo pipefail

DIR=${DROPLAB_SLURM_DIR:-/var/lib/droplab-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# Written by droplab scripts/slurm_local_cluster.sh"
TIMEOUT=${DROPLAB_SLURM_TIMEOUT:-60}   # seconds to wait for each daemon and for the node
MUNGE_RUN=/run/munge
HOST=$(hostname -s)

say() { echo "slurm_local_cluster: $*"; }
die() { echo "slurm_local_cluster: cannot start: $*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }   # alive PIDFILE
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
ctld_ok() { scontrol ping 2>/dev/null | grep -q "is UP"; }
node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1; }

tail_log() {   # tail_log FILE: the last lines of a daemon's log, to stderr
  if [ -f "$1" ]; then echo "--- last lines of $1:" >&2; tail -n 15 "$1" >&2; fi
}

wait_for() {   # wait_for WHAT COMMAND...: poll COMMAND every 0.5 s for $TIMEOUT seconds
  local what=$1; shift
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
  say "$what"
}

write_conf() {
  local cpus new
  cpus=$(nproc)
  new=$(cat <<EOF
$MARK: a one-node test cluster.
# Regenerated on every start; edit the script, not this file.
ClusterName=droplab
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# The node's CPUs are taken from this file, whatever slurmd detects (containers differ).
SlurmdParameters=config_overrides
ReturnToService=2
# sbatch --wait polls every 2 s while its sleep is under MinJobAge/2 (else up to 32 s):
# a short MinJobAge lets the test see a finished job within seconds.
MinJobAge=5
KillWait=5
MailProg=/bin/true
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP DisableRootJobs=NO
EOF
)
  if [ -f "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script; this machine has a Slurm configuration of its own (use that cluster, or move the file away)"
  fi
  mkdir -p "$(dirname "$CONF")" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
  if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new" ]; then
    say "$CONF is up to date (node $HOST, CPUs=$cpus, state in $DIR)"
    return
  fi
  printf '%s\n' "$new" > "$CONF"
  CONF_CHANGED=1
  say "wrote $CONF (node $HOST, CPUs=$cpus, state in $DIR)"
}

start_munge() {
  if munge_ok; then say "munged is already running"; return; fi
  command -v munged >/dev/null || die "munged not found: apt-get install munge"
  id munge >/dev/null 2>&1 || die "no user munge: reinstall the munge package"
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    say "made a munge key in /etc/munge/munge.key"
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge
  chmod 0600 /etc/munge/munge.key
  mkdir -p "$MUNGE_RUN" /var/lib/munge /var/log/munge
  chown munge:munge "$MUNGE_RUN" /var/lib/munge /var/log/munge
  chmod 0755 "$MUNGE_RUN"
  runuser -u munge -- munged || { tail_log /var/log/munge/munged.log; die "munged did not start"; }
  touch "$DIR/run/munged.ours"
  wait_for "started munged" munge_ok || { tail_log /var/log/munge/munged.log; die "munged does not answer"; }
}

start() {
  [ "$(id -u)" = 0 ] || die "run as root (the daemons run as root, munged as user munge)"
  for cmd in slurmctld slurmd sbatch scontrol sinfo munge; do
    command -v "$cmd" >/dev/null || die "$cmd not found: apt-get install slurm-wlm munge"
  done
  CONF_CHANGED=0
  write_conf
  start_munge

  if ctld_ok; then
    say "slurmctld is already running"
    if [ "$CONF_CHANGED" = 1 ]; then scontrol reconfigure && say "slurmctld re-read $CONF"; fi
  else
    if alive "$DIR/run/slurmctld.pid"; then
      say "slurmctld is running but does not answer yet"
    else
      slurmctld || { tail_log "$DIR/log/slurmctld.log"; die "slurmctld did not start"; }
    fi
    wait_for "started slurmctld" ctld_ok || { tail_log "$DIR/log/slurmctld.log"; die "slurmctld does not answer (scontrol ping)"; }
  fi

  if alive "$DIR/run/slurmd.pid"; then
    say "slurmd is already running"
  else
    slurmd || { tail_log "$DIR/log/slurmd.log"; die "slurmd did not start"; }
    say "started slurmd"
  fi

  local deadline=$(( $(date +%s) + TIMEOUT )) state
  while :; do
    state=$(node_state)
    case "$state" in
      idle*|mixed*|allocated*|completing*) break ;;
      down*|drain*)   # e.g. left down by an earlier run; ReturnToService=2 usually does this itself
        scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail_log "$DIR/log/slurmd.log"; tail_log "$DIR/log/slurmctld.log"
      die "node $HOST is '${state:-unknown}' after ${TIMEOUT}s, not idle (sinfo -R says: $(sinfo -h -R -o %E 2>/dev/null | head -n1))"
    fi
    sleep 0.5
  done
  say "cluster is up: node $HOST is $state, partition debug ($(sinfo -h -o '%C' | awk -F/ '{print $4}') CPUs)"
}

stop_pid() {   # stop_pid NAME PIDFILE: TERM, wait up to 10 s, then KILL
  local name=$1 pidfile=$2 pid i
  if ! alive "$pidfile"; then say "$name is not running"; rm -f "$pidfile"; return; fi
  pid=$(cat "$pidfile")
  kill "$pid"
  for i in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; say "killed $name (pid $pid)"; else say "stopped $name (pid $pid)"; fi
  rm -f "$pidfile"
}

stop() {
  if ctld_ok; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then scancel $jobs && say "cancelled jobs $jobs"; sleep 1; fi
  fi
  stop_pid slurmd "$DIR/run/slurmd.pid"
  stop_pid slurmctld "$DIR/run/slurmctld.pid"
  if [ -f "$DIR/run/munged.ours" ]; then
    stop_pid munged "$MUNGE_RUN/munged.pid"
    rm -f "$DIR/run/munged.ours"
  elif munge_ok; then
    say "munged was not started by this script; left alone"
  else
    say "munged is not running"
  fi
}

status() {
  local p
  for p in slurmctld slurmd; do
    if alive "$DIR/run/$p.pid"; then say "$p running (pid $(cat "$DIR/run/$p.pid"))"; else say "$p not running"; fi
  done
  if munge_ok; then say "munged answers"; else say "munged does not answer"; fi
  if ctld_ok; then sinfo; squeue; else say "slurmctld does not answer"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
