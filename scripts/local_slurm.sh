#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian's slurm-wlm and munge), for the tests and for trying
# hydra/launcher=submitit_slurm without a site. Run as root:
#   scripts/local_slurm.sh install   # apt-get install slurm-wlm munge, if missing
#   scripts/local_slurm.sh start     # install if missing, write slurm.conf, start munged, slurmctld, slurmd, wait for the node
#   export SLURM_CONF=/var/tmp/aos_slurm/slurm.conf   # start prints this line; sbatch, sinfo, scancel read it
#   scripts/local_slurm.sh status    # exit 0 when the node answers
#   scripts/local_slurm.sh stop      # stop the daemons this script started
# Everything lives under $AOS_SLURM_DIR (default /var/tmp/aos_slurm): /etc/slurm is not touched.
# The node gets min(2, cores) CPUs (AOS_SLURM_CPUS overrides) and partition `debug`.
set -euo pipefail

DIR="${AOS_SLURM_DIR:-/var/tmp/aos_slurm}"
CONF="$DIR/slurm.conf"
PACKAGES=(slurm-wlm munge)
HOST="$(hostname -s)"
export SLURM_CONF="$CONF"

# Install the packages, unless their daemons are already on this machine.
install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

# slurm.conf for this host: one node, processes tracked without cgroups, no accounting database.
write_conf() {
  local cpus="${AOS_SLURM_CPUS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}"
  local memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # leave 1 GiB to the system
  mkdir -p "$DIR/state" "$DIR/spool"
  cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh for $HOST
ClusterName=aoslocal
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=10
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# Whether the process whose id is in file $1 is alive.
alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# munged, unless a running one already answers; remembered in $DIR/munged.pid when this script started it.
start_munge() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$DIR/munged.pid"
}

# Poll sinfo until the node is idle, for at most $1 seconds.
wait_idle() {
  local deadline=$(( SECONDS + $1 ))
  until [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ]; do
    if (( SECONDS >= deadline )); then
      echo "local_slurm: node not idle after $1 s: $(sinfo -h -N -o '%t %E' 2>&1)" >&2
      tail -n 5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

start() {
  if status 2>/dev/null; then
    echo "export SLURM_CONF=$CONF"
    return
  fi
  install
  write_conf
  start_munge
  alive "$DIR/slurmctld.pid" || slurmctld -c -i
  alive "$DIR/slurmd.pid" || slurmd
  wait_idle "${AOS_SLURM_WAIT_S:-60}"
  echo "export SLURM_CONF=$CONF"
}

# Exit 0 when our controller runs and its node is idle or allocated.
status() {
  alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && sinfo -h -N -o %t | grep -q -E '^(idle|mix|alloc)'
}

# SIGTERM to each daemon this script started (by its pid file), then wait for it to exit.
stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    alive "$DIR/$name.pid" || { rm -f "$DIR/$name.pid"; continue; }
    pid="$(cat "$DIR/$name.pid")"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$DIR/$name.pid"
  done
}

case "${1:-}" in
  install | start | status | stop) "$1" ;;
  *) echo "usage: $0 install|start|status|stop" >&2; exit 2 ;;
esac
