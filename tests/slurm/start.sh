#!/usr/bin/env bash
# A real single-node Slurm on this machine, for tests/test_slurm.py: munge for authentication, slurmctld and
# slurmd for localhost, no cgroups, no accounting database. Needs root and Debian's packages:
#     apt-get install --no-install-recommends munge slurmctld slurmd slurm-client
# (the daemons and clients of Debian's slurm-wlm, without its optional plugins).
#
#     tests/slurm/start.sh DIR    writes DIR/slurm.conf, starts the daemons, waits until the node is idle;
#                                 then use the cluster with SLURM_CONF=DIR/slurm.conf
#     tests/slurm/stop.sh DIR     stops them
set -euo pipefail
dir=$(realpath -m "$1")
mkdir -p "$dir"/state "$dir"/spool "$dir"/log "$dir"/munge
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))   # MiB the node offers: half of this machine

# munge: its own socket and pid file under DIR, so a machine's own munged (if any) is left alone.
munged --force --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" 2>>"$dir/log/munged.log"

cat > "$dir/slurm.conf" <<CONF
ClusterName=continual-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmctldPort=$((6817 + RANDOM % 1000))
SlurmdPort=$((7817 + RANDOM % 1000))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=5
MinJobAge=300
SlurmdTimeout=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -i
slurmd
for _ in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then exit 0; fi
    sleep 0.2
done
echo "slurm did not come up; logs in $dir/log" >&2
exit 1
