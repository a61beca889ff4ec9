#!/usr/bin/env bash
# A SLURM cluster on this machine, for the tests and for trying the sweep scripts without a cluster: one node
# (`localhost`) by default, or several with GRPO_LAMBDA_SLURM_NODES=N (node1..nodeN: one slurmd each, on its own
# port, all at 127.0.0.1), which is how the tests run a multi-node job (vLLM server on one node, trainers on others).
#
#   slurm/local_cluster.sh start [STATE_DIR]   # prints `export SLURM_CONF=...`; eval it in your shell
#   slurm/local_cluster.sh stop  [STATE_DIR]   # stops the slurmd(s), slurmctld and munged by the PIDs it recorded
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
NODES=${GRPO_LAMBDA_SLURM_NODES:-1}

die() { echo "local_cluster: $*" >&2; exit 1; }

[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "GRPO_LAMBDA_SLURM_NODES is a number of nodes (1 or more), not '$NODES'."
# Per node: the machine's cores and 90% of its memory, shared between the nodes (at least one CPU each)
CPUS=${GRPO_LAMBDA_SLURM_CPUS:-$(( $(nproc) / NODES > 0 ? $(nproc) / NODES : 1 ))}
MEMORY_MB=${GRPO_LAMBDA_SLURM_MEMORY_MB:-$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 / NODES))}
SLURMD_PORT=${GRPO_LAMBDA_SLURMD_PORT:-6818}  # node i (from 0) listens on SLURMD_PORT + i
if (( NODES == 1 )); then NODE_NAMES=(localhost); else mapfile -t NODE_NAMES < <(seq -f 'node%g' "$NODES"); fi

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
  local i name
  mkdir -p "$STATE_DIR"/{munge,spool/ctld,log}
  for name in "${NODE_NAMES[@]}"; do mkdir -p "$STATE_DIR/spool/d/$name"; done
  chmod 700 "$STATE_DIR/munge"
  if [[ ! -f "$STATE_DIR/munge/munge.key" ]]; then
    head -c 1024 /dev/urandom > "$STATE_DIR/munge/munge.key"
    chmod 400 "$STATE_DIR/munge/munge.key"
  fi
  # Several slurmd on one host: each its own node name (slurmd -N), port, and (%n) spool folder, PID and log file
  cat > "$STATE_DIR/slurm.conf" <<EOF
ClusterName=grpo-lambda-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE_DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d/%n
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
SlurmctldPort=${GRPO_LAMBDA_SLURMCTLD_PORT:-6817}
SlurmdPort=$SLURMD_PORT
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
EOF
  for i in "${!NODE_NAMES[@]}"; do
    echo "NodeName=${NODE_NAMES[i]} NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i)) CPUs=$CPUS" \
      "RealMemory=$MEMORY_MB State=UNKNOWN"
  done >> "$STATE_DIR/slurm.conf"
  echo "PartitionName=local Nodes=$(IFS=,; echo "${NODE_NAMES[*]}") Default=YES MaxTime=INFINITE State=UP" \
    "OverSubscribe=NO" >> "$STATE_DIR/slurm.conf"
}

all_nodes_up() {
  [[ $(sinfo -h -N -o %t 2>/dev/null | grep -Ec '^(idle|mix|alloc)') == "$NODES" ]]
}

start() {
  local name
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
  for name in "${NODE_NAMES[@]}"; do running "$STATE_DIR/slurmd-$name.pid" || slurmd -N "$name"; done
  for _ in $(seq 60); do
    if all_nodes_up; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  for name in "${NODE_NAMES[@]}"; do scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true; done
  all_nodes_up && { echo "export SLURM_CONF=$SLURM_CONF"; return 0; }
  tail -n 20 "$STATE_DIR"/log/*.log >&2 || true
  die "not every node came up ($(sinfo -h -N -o '%N=%t' 2>/dev/null | paste -sd ' ' -)); logs are in $STATE_DIR/log"
}

stop_daemons() {  # SIGTERM to each, then wait for all (each takes ~2 s), SIGKILL after 10 s
  local file pids=()
  for file in "$@"; do
    running "$file" && { pids+=("$(cat "$file")"); kill "${pids[-1]}"; }
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  done
  rm -f "$@"
}

stop() {  # the slurmd(s) of this state folder, whatever node count started them, then slurmctld, then munged
  shopt -s nullglob
  stop_daemons "$STATE_DIR"/slurmd*.pid
  stop_daemons "$STATE_DIR/slurmctld.pid"
  stop_daemons "$STATE_DIR/munged.pid"
}

case "$command" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status)  # the nodes of the cluster last started from STATE_DIR
    [[ -f $STATE_DIR/slurm.conf ]] \
      && mapfile -t NODE_NAMES < <(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$STATE_DIR/slurm.conf")
    for name in munged slurmctld "${NODE_NAMES[@]/#/slurmd-}"; do
      if running "$STATE_DIR/$name.pid"; then echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"
      else echo "$name: stopped"; fi
    done ;;
  *) die "usage: $0 install|start|stop|status [STATE_DIR]" ;;
esac
