#!/usr/bin/env bash
# Stop what tests/cluster/start_slurm.sh started: cancel the test jobs, then stop the daemons
# by their pid files (waiting until each has exited), MariaDB and munged.
set -uo pipefail

SLURM_TEST_DIR=${SLURM_TEST_DIR:-/tmp/d3po-slurm}

stop_pid() { # pid: TERM, wait up to 60 s, then KILL
	local pid=$1
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 60); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 1
	done
	kill -9 "$pid" 2>/dev/null
}

squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null
for daemon in slurmd slurmctld slurmdbd; do
	pidfile="$SLURM_TEST_DIR/$daemon.pid"
	[ -s "$pidfile" ] && stop_pid "$(cat "$pidfile")"
done
mysqladmin shutdown 2>/dev/null
[ -s /run/munge/munged.pid ] && stop_pid "$(cat /run/munge/munged.pid)"
exit 0
