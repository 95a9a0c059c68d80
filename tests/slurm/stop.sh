#!/usr/bin/env bash
# Stops what tests/slurm/start.sh DIR started.
dir=$(realpath -m "$1")
for pidfile in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munge/munged.pid; do
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
done
exit 0
