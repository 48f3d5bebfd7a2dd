#!/usr/bin/env bash
# A real Slurm cluster on this machine for the tests (and for trying the sbatch scripts by hand): one node on
# localhost, or N nodes, each a Linux network namespace with its own hostname and address.
#
#   bash tests/slurm/cluster.sh start    # install Debian packages if missing, start every daemon, wait
#   bash tests/slurm/cluster.sh start --nodes 2   # two nodes: node1 10.213.0.11, node2 10.213.0.12
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
#
# Several nodes: slurmctld, slurmdbd, MariaDB and munge run here (the bridge ma-br0, 10.213.0.1); each node is a
# network namespace ma-nodeI (veth to the bridge, address 10.213.0.1I, hostname nodeI through `unshare --uts`)
# running its own slurmd, so jobs on it see that hostname and address. The disk (the cluster's shared file
# system), munge's socket and /dev/shm are shared. Names resolve inside the nodes through
# /etc/netns/ma-nodeI/hosts, mounted over /etc/hosts in the slurmd's own mount namespace. Traffic stays on the bridge: only the
# nodes' and the controller's addresses. `stop` removes the namespaces, links and host files.
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
NET_PREFIX=10.213.0
BRIDGE=ma-br0
CTL_ADDR=$NET_PREFIX.1

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes we started: run/<name>.started holds the pid, checked against the binary ------------------

declare -A BINARY=([munged]=munged [mariadbd]=mariadbd [slurmdbd]=slurmdbd
                   [slurmctld]=slurmctld-wlm [slurmd]=slurmd-wlm)

pid_is() {  # pid_is PID NAME: PID is alive and runs NAME's binary (slurmd-node1 is a slurmd)
    local exe
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    [ "$(basename "${exe% (deleted)}")" = "${BINARY[${2%%-*}]}" ]
}

node_count() { cat "$STATE/nodes" 2>/dev/null || echo 1; }

node_names() {  # the cluster's node names, one a line
    local n i
    n=$(node_count)
    if [ "$n" = 1 ]; then echo localhost; else for i in $(seq "$n"); do echo "node$i"; done; fi
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
    local layout mem nodes ctl_host node_lines i
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
    layout=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//')
    mem=$(slurmd -C | head -1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    # A node that reports less memory than configured is drained; leave headroom.
    mem=$((mem * 9 / 10))
    nodes=$(node_count)
    if [ "$nodes" = 1 ]; then
        ctl_host=localhost
        node_lines="NodeName=localhost NodeAddr=127.0.0.1 $layout RealMemory=$mem State=UNKNOWN"
    else
        # Every node is this machine: slurmd takes the configured sizes as they are (config_overrides), 4 CPUs
        # each so that one node can also hold the 4 ranks a 2-node run has (to compare the two).
        ctl_host="localhost($CTL_ADDR)"
        node_lines="SlurmdParameters=config_overrides"
        for i in $(seq "$nodes"); do
            node_lines+=$'\n'"NodeName=node$i NodeAddr=$NET_PREFIX.1$i CPUs=4 RealMemory=$((mem / nodes)) State=UNKNOWN"
        done
    fi
    cat >"$STATE/etc/slurm.conf" <<EOF
# Written by tests/slurm/cluster.sh; edits are overwritten on start.
ClusterName=$CLUSTER
SlurmctldHost=$ctl_host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): keep requeue tests quick.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
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
$node_lines
PartitionName=debug Nodes=$(node_names | paste -sd,) Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=$(node_names | paste -sd,) MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
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

start_slurmd() {  # start_slurmd NODE
    local node=$1
    started_pid "slurmd-$node" >/dev/null && return 0
    if [ "$node" = localhost ]; then
        /usr/sbin/slurmd -N localhost </dev/null >/dev/null 2>&1 9>&-
    else
        # The node's network, hostname and /etc/hosts; the rest (/sys with its cgroups, /run/munge, the disk) is
        # this machine's. (`ip netns exec` would remount /sys, where slurmd's cgroup plugin looks.)
        nsenter --net="/run/netns/ma-$node" unshare --uts --mount --propagation private sh -c \
            "mount --bind /etc/netns/ma-$node/hosts /etc/hosts && hostname $node && exec /usr/sbin/slurmd -N $node" \
            </dev/null >/dev/null 2>&1 9>&-
    fi
    record "slurmd-$node" "$STATE/run/slurmd-$node.pid"
}

# --- the nodes' network (several nodes) -----------------------------------------------------------------

start_network() {
    local n i ns
    n=$(node_count)
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$CTL_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in $(seq "$n"); do
        ns=ma-node$i
        mkdir -p "/etc/netns/$ns"
        {
            echo "127.0.0.1 localhost"
            echo "$CTL_ADDR $(hostname) controller"
            for j in $(seq "$n"); do echo "$NET_PREFIX.1$j node$j"; done
        } >"/etc/netns/$ns/hosts"
        ip netns list | grep -qw "$ns" && continue
        ip netns add "$ns"
        ip link add "ma-veth$i" type veth peer name "ma-peer$i"
        ip link set "ma-peer$i" netns "$ns"
        ip -n "$ns" link set "ma-peer$i" name eth0
        ip -n "$ns" addr add "$NET_PREFIX.1$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        ip link set "ma-veth$i" master "$BRIDGE" up
    done
}

stop_network() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '/^ma-node[0-9]+/ {print $1}'); do
        ip netns del "$ns" 2>/dev/null || true  # takes its end of the veth pair, and so the pair, with it
        rm -rf "/etc/netns/$ns"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -1; }
node_idle() { case "$(node_state "$1")" in idle | mixed | allocated) return 0 ;; *) return 1 ;; esac; }
all_idle() {
    local node
    for node in $(node_names); do node_idle "$node" || return 1; done
}

cluster_up() {
    local name
    for name in mariadbd slurmdbd slurmctld $(node_names | sed 's/^/slurmd-/'); do
        started_pid "$name" >/dev/null || return 1
    done
    munge_works && all_idle && sacct -n -X -S now >/dev/null 2>&1
}

# --- commands -------------------------------------------------------------------------------------------

cmd_start() {  # cmd_start [--nodes N]
    local nodes=1 node
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes=${2:-}; shift 2 ;;
            --nodes=*) nodes=${1#--nodes=}; shift ;;
            *) die "start: unknown option '$1' (expected --nodes N)" ;;
        esac
    done
    [[ "$nodes" =~ ^[1-9]$ ]] || die "start: --nodes '$nodes': expected 1 to 9"
    [ "$(id -u)" = 0 ] || die "must run as root (slurmd, munged and mariadbd need it)"
    install_packages
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock 9  # two test sessions starting at once share one cluster; daemons get 9>&- so they never hold it
    if [ "$(node_count)" = "$nodes" ] && cluster_up; then
        log "already running ($STATE, $nodes node(s))"
        return 0
    fi
    if [ "$(node_count)" != "$nodes" ]; then  # another shape was running here: stop all of it first
        flock -u 9
        cmd_stop
        flock 9
    fi
    echo "$nodes" >"$STATE/nodes"
    write_configs
    [ "$nodes" = 1 ] || start_network
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    for node in $(node_names); do start_slurmd "$node"; done
    for node in $(node_names); do
        if ! node_idle "$node"; then  # a node left DOWN/DRAIN by an earlier run: bring it back
            sleep 1
            node_idle "$node" || scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
        fi
    done
    wait_for 60 "nodes $(node_names | paste -sd' ') idle" all_idle
    wait_for 30 "sacct" sacct -n -X -S now
    log "running ($STATE, $nodes node(s)); export SLURM_CONF=$SLURM_CONF"
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
    for name in $(cd "$STATE/run" 2>/dev/null && ls slurmd-*.started slurmd.started 2>/dev/null | sed 's/\.started$//') \
                slurmctld slurmdbd mariadbd munged; do
        stop_daemon "$name"
    done
    [ "$(node_count)" = 1 ] || stop_network
    rm -f "$STATE/nodes"
    log "stopped ($STATE)"
}

cmd_status() {
    local name rc=0 pid
    for name in munged mariadbd slurmdbd slurmctld $(node_names | sed 's/^/slurmd-/'); do
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
        for name in $(node_names); do echo "node $name: $(node_state "$name")"; done
        cluster_up || rc=1
    fi
    return $rc
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) die "usage: cluster.sh start|stop|status|env (got '${1:-}')" ;;
esac
