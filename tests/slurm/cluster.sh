#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost for the tests (and for trying the sbatch scripts by hand).
#
#   bash tests/slurm/cluster.sh start    # install Debian packages if missing, start every daemon, wait
#   eval "$(bash tests/slurm/cluster.sh env)"   # SLURM_CONF=... so sbatch/squeue/sacct find the cluster
#   bash tests/slurm/cluster.sh status   # exit 0 when every daemon is up and the node answers
#   bash tests/slurm/cluster.sh stop     # cancel the cluster's jobs, stop the daemons this script started
#
# Needs root (slurmd runs jobs as their user; munged and mariadbd drop to their own users). No systemd:
# every daemon is started directly with its stdio on /dev/null (so a CI pipe closes) and stopped by the
# pid this script recorded, after checking /proc/PID/exe is the binary it started (the real slurm binaries
# are *-wlm behind alternatives symlinks). All state lives in one directory:
#
#   MINIALBERT_SLURM_DIR   state directory (default /tmp/minialbert-slurm): etc/ spool/ log/ run/ mysql/
#   MINIALBERT_SLURM_PORT  slurmctld port; slurmd and slurmdbd take the next two (default 6817)
#   MINIALBERT_SLURM_DB_PORT  the private MariaDB's port on 127.0.0.1 (default 3307)
#
# Accounting (slurmdbd + MariaDB) is part of the cluster because submitit reads job states through sacct.
set -euo pipefail

STATE=${MINIALBERT_SLURM_DIR:-/tmp/minialbert-slurm}
CTLD_PORT=${MINIALBERT_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT=${MINIALBERT_SLURM_DB_PORT:-3307}
CLUSTER=minialbert
DB_PASS=minialbert-slurm
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
export SLURM_CONF=$STATE/etc/slurm.conf

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes we started: run/<name>.started holds the pid, checked against the binary ------------------

declare -A BINARY=([munged]=munged [mariadbd]=mariadbd [slurmdbd]=slurmdbd
                   [slurmctld]=slurmctld-wlm [slurmd]=slurmd-wlm)

pid_is() {  # pid_is PID NAME: PID is alive and runs NAME's binary
    local exe
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    [ "$(basename "${exe% (deleted)}")" = "${BINARY[$2]}" ]
}

started_pid() {  # the live pid this script recorded for NAME, or nothing
    local f=$STATE/run/$1.started pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    pid_is "$pid" "$1" && echo "$pid"
}

record() {  # record NAME PIDFILE: wait for the daemon's pid file, then remember that pid as ours
    local name=$1 pidfile=$2 pid
    for _ in $(seq 100); do
        if [ -s "$pidfile" ]; then
            pid=$(tr -d ' \n' <"$pidfile")
            if pid_is "$pid" "$name"; then
                echo "$pid" >"$STATE/run/$name.started"
                return 0
            fi
        fi
        sleep 0.1
    done
    die "$name did not start; see $STATE/log/$name.log"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "timed out after ${seconds}s waiting for $what; logs in $STATE/log"
}

# --- install --------------------------------------------------------------------------------------------

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # policy-rc.d 101: the packages' postinst must not try to start their (systemd) services.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null \
        || { [ $own_policy = 1 ] && rm -f "$policy"; die "apt-get install ${missing[*]} failed"; }
    [ $own_policy = 1 ] && rm -f "$policy"
    return 0
}

# --- configuration --------------------------------------------------------------------------------------

write_configs() {
    mkdir -p "$STATE"/{etc,log,run,spool/ctld,spool/d}
    local layout mem
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
    layout=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//')
    mem=$(slurmd -C | head -1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    # A node that reports less memory than configured is drained; leave headroom.
    mem=$((mem * 9 / 10))
    cat >"$STATE/etc/slurm.conf" <<EOF
# Written by tests/slurm/cluster.sh; edits are overwritten on start.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): keep requeue tests quick.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroups on these machines.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
# Requeue and preemption: jobs may be requeued; a job in "urgent" preempts (requeues) one in "debug",
# which gets SIGTERM and GraceTime seconds to checkpoint first.
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
ReturnToService=2
MinJobAge=60
KillWait=30
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 $layout RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
    cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$STATE/etc/slurmdbd.conf"  # slurmdbd refuses a readable file holding the DB password
    cat >"$STATE/etc/my.cnf" <<EOF
[mysqld]
user=mysql
datadir=$STATE/mysql
socket=$STATE/run/mysql/mysqld.sock
pid-file=$STATE/run/mysql/mariadbd.pid
log-error=$STATE/log/mysql/mariadbd.log
port=$DB_PORT
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=64M
[client]
socket=$STATE/run/mysql/mysqld.sock
EOF
}

# --- daemons --------------------------------------------------------------------------------------------

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_works && return 0  # a munged already serves /run/munge (ours or the system's): use it
    [ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create >/dev/null
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid </dev/null >/dev/null 2>&1 9>&-
    record munged /run/munge/munged.pid
    wait_for 10 munge munge_works
}

db() { mariadb --defaults-file="$STATE/etc/my.cnf" -uroot "$@"; }

start_mariadb() {
    started_pid mariadbd >/dev/null && return 0
    mkdir -p "$STATE/run/mysql" "$STATE/log/mysql" && chown mysql:mysql "$STATE/run/mysql" "$STATE/log/mysql"
    if [ ! -d "$STATE/mysql/mysql" ]; then
        mkdir -p "$STATE/mysql" && chown mysql:mysql "$STATE/mysql"
        mariadb-install-db --defaults-file="$STATE/etc/my.cnf" --user=mysql \
            >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $STATE/log"
    fi
    setsid /usr/sbin/mariadbd --defaults-file="$STATE/etc/my.cnf" </dev/null >/dev/null 2>&1 9>&- &
    record mariadbd "$STATE/run/mysql/mariadbd.pid"
    wait_for 30 mariadb db -e "SELECT 1"
    # slurmdbd connects over TCP to 127.0.0.1; skip-name-resolve makes the host match by address.
    db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    started_pid slurmdbd >/dev/null && return 0
    /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1 9>&-
    record slurmdbd "$STATE/run/slurmdbd.pid"
    wait_for 30 slurmdbd sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    started_pid slurmctld >/dev/null && return 0
    /usr/sbin/slurmctld </dev/null >/dev/null 2>&1 9>&-
    record slurmctld "$STATE/run/slurmctld.pid"
    wait_for 30 slurmctld scontrol ping
}

start_slurmd() {
    started_pid slurmd >/dev/null && return 0
    /usr/sbin/slurmd -N localhost </dev/null >/dev/null 2>&1 9>&-
    record slurmd "$STATE/run/slurmd.pid"
}

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -1; }
node_idle() { case "$(node_state)" in idle | mixed | allocated) return 0 ;; *) return 1 ;; esac; }

cluster_up() {
    local name
    for name in mariadbd slurmdbd slurmctld slurmd; do
        started_pid "$name" >/dev/null || return 1
    done
    munge_works && node_idle && sacct -n -X -S now >/dev/null 2>&1
}

# --- commands -------------------------------------------------------------------------------------------

cmd_start() {
    [ "$(id -u)" = 0 ] || die "must run as root (slurmd, munged and mariadbd need it)"
    install_packages
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock 9  # two test sessions starting at once share one cluster; daemons get 9>&- so they never hold it
    if cluster_up; then
        log "already running ($STATE)"
        return 0
    fi
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    if ! node_idle; then  # a node left DOWN/DRAIN by an earlier run: bring it back
        sleep 1
        node_idle || scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
    fi
    wait_for 60 "node localhost idle (state: $(node_state))" node_idle
    wait_for 30 "sacct" sacct -n -X -S now
    log "running ($STATE); export SLURM_CONF=$SLURM_CONF"
}

stop_daemon() {  # TERM the pid we recorded for NAME, KILL after 20 s
    local name=$1 pid
    pid=$(started_pid "$name") || { rm -f "$STATE/run/$name.started"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        pid_is "$pid" "$name" || break
        sleep 0.1
    done
    pid_is "$pid" "$name" && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$STATE/run/$name.started"
}

cmd_stop() {
    [ -d "$STATE" ] || return 0
    exec 9>"$STATE/.lock"
    flock 9
    # The cluster is private: its jobs are ours. Cancel them so no job step outlives slurmd.
    if started_pid slurmctld >/dev/null; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 80); do
                [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    local name
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        stop_daemon "$name"
    done
    log "stopped ($STATE)"
}

cmd_status() {
    local name rc=0 pid
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid=$(started_pid "$name"); then
            echo "$name: running (pid $pid)"
        elif [ "$name" = munged ] && munge_works; then
            echo "munged: running (not started by this script)"
        else
            echo "$name: stopped"
            rc=1
        fi
    done
    if [ $rc = 0 ]; then
        echo "node localhost: $(node_state)"
        cluster_up || rc=1
    fi
    return $rc
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) die "usage: cluster.sh start|stop|status|env (got '${1:-}')" ;;
esac
