#!/usr/bin/env bash
# Start a real single-node Slurm on this machine (loopback only) for tests/cluster/.
#
#   sudo tests/cluster/start_slurm.sh          # installs Debian's packages on first use
#   tests/cluster/stop_slurm.sh                # stops what this script started
#
# Partitions: `cpu` (the default) and `gpu`, both on the one node, which declares a GRES
# `gpu:1` backed by /dev/null (AutoDetect=off; slurmd drops a GPU without File=): Slurm then
# schedules `--gpus=1` although the machine has no GPU. Accounting goes through slurmdbd and MariaDB,
# so that `sacct`, which snakemake-executor-plugin-slurm polls, works. The account the tests
# submit to is `d3po-test` (cluster `d3po`); the daemons run as root and log to $SLURM_TEST_DIR.
set -euo pipefail

SLURM_TEST_DIR=${SLURM_TEST_DIR:-/tmp/d3po-slurm}
ACCOUNT=${SLURM_TEST_ACCOUNT:-d3po-test}
NODE=$(hostname -s)
CPUS=$(nproc)
# Memory the node offers jobs: most of the machine, in MB.
MEMORY_MB=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4))

log() { echo "start_slurm: $*" >&2; }
fail() {
	log "FAILED: $*"
	for file in "$SLURM_TEST_DIR"/*.log; do
		[ -f "$file" ] && {
			echo "--- $file" >&2
			tail -n 20 "$file" >&2
		}
	done
	exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs packages and starts daemons)"

install_packages() {
	local missing=()
	for command in slurmctld slurmd slurmdbd munged mariadbd; do
		command -v "$command" >/dev/null || [ -x "/usr/sbin/$command" ] || missing+=("$command")
	done
	[ ${#missing[@]} -eq 0 ] && return
	log "installing slurm-wlm, slurmdbd, munge, mariadb-server (missing: ${missing[*]})"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
		slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

write_configs() {
	rm -rf "$SLURM_TEST_DIR/state" # a fresh controller: no node or job state from a last run
	mkdir -p /etc/slurm "$SLURM_TEST_DIR"/{spool,state} /var/run/slurm
	cat >/etc/slurm/slurm.conf <<EOF
# Written by tests/cluster/start_slurm.sh: one node, a cpu and a gpu partition.
ClusterName=d3po
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$SLURM_TEST_DIR/state
SlurmdSpoolDir=$SLURM_TEST_DIR/spool
SlurmctldPidFile=$SLURM_TEST_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_TEST_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_TEST_DIR/slurmctld.log
SlurmdLogFile=$SLURM_TEST_DIR/slurmd.log
# No cgroups in a container: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Trust the counts below (the GRES gpu has no device for slurmd to find).
SlurmdParameters=config_overrides
JobRequeue=1
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations,limits
AccountingStorageTRES=gres/gpu
# sacct shows the comment the executor gives each job (rule_NAME_wildcards_...).
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=8:00:00 State=UP
PartitionName=gpu Nodes=$NODE MaxTime=24:00:00 State=UP
EOF
	cat >/etc/slurm/gres.conf <<EOF
# A GPU that Slurm counts and schedules, with no hardware behind it. slurmd 22.05 drops a GPU
# declared without File= ("Removing file-less GPU"), so it points at /dev/null.
AutoDetect=off
NodeName=$NODE Name=gpu Count=1 File=/dev/null
EOF
	cat >/etc/slurm/cgroup.conf <<EOF
# Not used (proctrack/linuxproc, task/none); present because slurmd looks for it.
CgroupPlugin=autodetect
IgnoreSystemd=yes
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
	cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$SLURM_TEST_DIR/slurmdbd.log
PidFile=$SLURM_TEST_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-test
StorageLoc=slurm_acct_db
EOF
	chmod 600 /etc/slurm/slurmdbd.conf
}

start_munge() {
	[ -s /etc/munge/munge.key ] || {
		if command -v mungekey >/dev/null; then mungekey --create --force; else
			dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
		fi
	}
	chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
	mkdir -p /run/munge && chown munge:munge /run/munge
	munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
	sleep 1
	munge -n | unmunge >/dev/null || fail "munge does not work"
}

start_mariadb() {
	if ! mysqladmin ping >/dev/null 2>&1; then
		mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
		(mysqld_safe >"$SLURM_TEST_DIR/mariadb.log" 2>&1 &)
		for _ in $(seq 60); do
			mysqladmin ping >/dev/null 2>&1 && break
			sleep 1
		done
	fi
	mysqladmin ping >/dev/null 2>&1 || fail "MariaDB did not start"
	# A fresh accounting database: job ids start again at 1 with the fresh controller state.
	mysql -u root <<EOF
DROP DATABASE IF EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-test';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurm() {
	pgrep -x slurmdbd >/dev/null || /usr/sbin/slurmdbd
	for _ in $(seq 60); do
		sacctmgr -i show cluster >/dev/null 2>&1 && break
		sleep 1
	done
	sacctmgr -i show cluster >/dev/null 2>&1 || fail "slurmdbd does not answer"
	sacctmgr -i add cluster d3po >/dev/null 2>&1 || true
	pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
	pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
	sacctmgr -i add account "$ACCOUNT" cluster=d3po description=tests organization=d3po \
		>/dev/null 2>&1 || true
	sacctmgr -i add user root account="$ACCOUNT" cluster=d3po >/dev/null 2>&1 || true
	for _ in $(seq 90); do
		state=$(sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' ')
		[ "$state" = "idle " ] && break
		scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
		sleep 1
	done
	[ "$state" = "idle " ] || fail "the node is not idle (sinfo says: ${state:-nothing})"
	sacctmgr -n -P show associations user=root format=account | grep -qx "$ACCOUNT" ||
		fail "account $ACCOUNT is not registered for root"
}

install_packages
# Daemons that an interrupted run left up would keep the old database and state: stop them.
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || pgrep -x slurmdbd >/dev/null; then
	log "stopping the daemons a previous run left up"
	"$(dirname "$0")/stop_slurm.sh"
	pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || pgrep -x slurmdbd >/dev/null &&
		fail "a Slurm daemon outlived stop_slurm.sh (no pid file in $SLURM_TEST_DIR): stop it by hand"
fi
write_configs
start_munge
start_mariadb
start_slurm
log "Slurm is up: $(sinfo -h -o '%P %a %D %T %G' | tr '\n' ';')"
