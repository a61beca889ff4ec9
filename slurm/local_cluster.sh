#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests and for trying the sweep scripts without a cluster.
#
#   slurm/local_cluster.sh start [STATE_DIR]   # prints `export SLURM_CONF=...`; eval it in your shell
#   slurm/local_cluster.sh stop  [STATE_DIR]   # stops slurmd, slurmctld and munged by the PIDs it recorded
#   slurm/local_cluster.sh status [STATE_DIR]
#   slurm/local_cluster.sh install              # the Debian packages only (CI does this before the tests)
#
# Needs Debian's `slurmctld slurmd slurm-client munge` (apt-get install --no-install-recommends ...; `install` below
# does it where apt-get is usable) and root (slurmd runs jobs as their user). No systemd: every daemon runs from
# STATE_DIR (default /tmp/grpo-lambda-slurm) with its own munge key and socket, so it neither needs nor touches a
# system-wide SLURM or munge.
set -euo pipefail

command=${1:-status}
STATE_DIR=$(realpath -m "${2:-${GRPO_LAMBDA_SLURM_DIR:-/tmp/grpo-lambda-slurm}}")
CPUS=${GRPO_LAMBDA_SLURM_CPUS:-$(nproc)}
MEMORY_MB=${GRPO_LAMBDA_SLURM_MEMORY_MB:-$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))}

die() { echo "local_cluster: $*" >&2; exit 1; }

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  command -v apt-get >/dev/null || die "install slurmctld, slurmd, slurm-client and munge (Debian/Ubuntu: apt-get)."
  [[ $(id -u) == 0 ]] || die "installing SLURM needs root: sudo apt-get install --no-install-recommends slurmctld slurmd slurm-client munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
}

write_config() {
  mkdir -p "$STATE_DIR"/{munge,spool/ctld,spool/d,log}
  chmod 700 "$STATE_DIR/munge"
  if [[ ! -f "$STATE_DIR/munge/munge.key" ]]; then
    head -c 1024 /dev/urandom > "$STATE_DIR/munge/munge.key"
    chmod 400 "$STATE_DIR/munge/munge.key"
  fi
  cat > "$STATE_DIR/slurm.conf" <<EOF
ClusterName=grpo-lambda-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE_DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldPort=${GRPO_LAMBDA_SLURMCTLD_PORT:-6817}
SlurmdPort=${GRPO_LAMBDA_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1,batch_sched_delay=0,sched_min_interval=0
EnforcePartLimits=ALL
KillWait=30
MinJobAge=600
MaxArraySize=10001
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
  install_packages
  [[ $(id -u) == 0 ]] || die "the local cluster runs its daemons as root (slurmd starts jobs as their user)."
  write_config
  export SLURM_CONF="$STATE_DIR/slurm.conf"
  if ! running "$STATE_DIR/munged.pid"; then
    munged --key-file="$STATE_DIR/munge/munge.key" --socket="$STATE_DIR/munge/munge.socket" \
      --pid-file="$STATE_DIR/munged.pid" --log-file="$STATE_DIR/log/munged.log" \
      --seed-file="$STATE_DIR/munge/munge.seed" --force
  fi
  running "$STATE_DIR/slurmctld.pid" || slurmctld -c -i
  running "$STATE_DIR/slurmd.pid" || slurmd -N localhost
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
  sinfo -h -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)' && { echo "export SLURM_CONF=$SLURM_CONF"; return 0; }
  tail -n 20 "$STATE_DIR"/log/*.log >&2 || true
  die "the node did not come up; logs are in $STATE_DIR/log"
}

stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    if running "$STATE_DIR/$name.pid"; then
      pid=$(cat "$STATE_DIR/$name.pid")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$STATE_DIR/$name.pid"
  done
}

case "$command" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status)
    for name in munged slurmctld slurmd; do
      if running "$STATE_DIR/$name.pid"; then echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"; else echo "$name: stopped"; fi
    done ;;
  *) die "usage: $0 install|start|stop|status [STATE_DIR]" ;;
esac
