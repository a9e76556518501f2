#!/usr/bin/env bash
# A real one-node SLURM cluster on THIS machine, for the workflow's SLURM tests.
#
#   tests/slurm/cluster.sh start    install Debian's packages if missing, write the
#                                   config, start munge, mariadb, slurmdbd, slurmctld,
#                                   slurmd, then prove that srun, sbatch --wait, a
#                                   --gpus=1 job and sacct work. Idempotent.
#   tests/slurm/cluster.sh status   exit 0 only if every daemon answers and the node is usable
#   tests/slurm/cluster.sh stop     stop the daemons this script started (by pid file)
#
# Root only (it installs packages and writes /etc/slurm). Every wait is bounded;
# on any failure it prints what failed, the end of the daemon's log, and exits
# non-zero. It refuses to touch a slurm.conf it did not write (a real cluster).
#
# The node: hostname, CPUs and RealMemory as `slurmd -C` reports them at run time;
# one fake GPU (gres.conf points at a device file made for it; nothing runs on it);
# select/cons_tres, proctrack/linuxproc, task/none, jobacct_gather/linux (no cgroups
# needed); accounting through slurmdbd on a local MariaDB, so sacct works as the
# snakemake SLURM executor's status checks need.
#
# Environment (all optional):
#   AGEATLAS_SLURM_CLUSTER    cluster name             (default: ageatlas)
#   AGEATLAS_SLURM_ACCOUNT    account for test jobs    (default: ageatlas)
#   AGEATLAS_SLURM_PARTITION  the single partition     (default: debug)
#   AGEATLAS_SLURM_USERS      extra users to add to the account (space separated)
#   AGEATLAS_SLURM_WAIT       seconds for each bounded wait (default: 90)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

CLUSTER=${AGEATLAS_SLURM_CLUSTER:-ageatlas}
ACCOUNT=${AGEATLAS_SLURM_ACCOUNT:-ageatlas}
PARTITION=${AGEATLAS_SLURM_PARTITION:-debug}
WAIT=${AGEATLAS_SLURM_WAIT:-90}

MARK="# Written by ageatlas tests/slurm/cluster.sh; rewritten on every start."
ETC=/etc/slurm
RUNDIR=/run/slurm
LOGDIR=/var/log/slurm
STATE=/var/lib/ageatlas-slurm           # timings, mariadb log, our own bookkeeping
GPU_DEV=/dev/ageatlas-fake-gpu0         # the fake GPU's device file (a copy of /dev/null)
DB_NAME=slurm_acct_db
DB_USER=slurm
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)

log() { printf '[cluster.sh %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() {
    printf '[cluster.sh] ERROR: %s\n' "$*" >&2
    exit 1
}
# die_with_logs MESSAGE LOGFILE...: the error, then the end of each log.
die_with_logs() {
    local msg=$1; shift
    printf '[cluster.sh] ERROR: %s\n' "$msg" >&2
    local f
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf -- '----- last lines of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2
        fi
    done
    exit 1
}

# wait_until SECONDS DESCRIPTION CMD...: poll CMD once a second until it succeeds.
wait_until() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "gave up after ${limit}s waiting for: $what"
            return 1
        fi
        sleep 1
    done
}

pid_alive() {  # pid_alive PIDFILE (works for non-root callers of `status` too)
    local pid
    [[ -s $1 ]] && pid=$(cat "$1") && [[ $pid =~ ^[0-9]+$ ]] && [[ -d /proc/$pid ]]
}

need_root() {
    [[ $(id -u) == 0 ]] || die "must run as root (it installs packages and writes $ETC); try: sudo $0 $*"
}

# ---------------------------------------------------------------- install
missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages | tr '\n' ' ')
    if [[ -z ${missing// /} ]]; then
        log "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    command -v apt-get >/dev/null || die "packages missing ($missing) and no apt-get: this script needs Debian/Ubuntu"
    log "installing: $missing"
    local t0=$SECONDS policy_added=0
    # Do not let the packages' maintainer scripts start the daemons: we start them.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    local apt_opts=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    local rc=0
    timeout 900 apt-get -q -o DPkg::Lock::Timeout=300 update >"$STATE/apt.log" 2>&1 || rc=$?
    if ((rc == 0)); then
        # shellcheck disable=SC2086
        timeout 1200 apt-get install "${apt_opts[@]}" --no-install-recommends $missing >>"$STATE/apt.log" 2>&1 || rc=$?
    fi
    ((policy_added)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die_with_logs "apt-get failed (exit $rc; 124 = timed out) installing: $missing" "$STATE/apt.log"
    missing=$(missing_packages | tr '\n' ' ')
    [[ -z ${missing// /} ]] || die_with_logs "still not installed after apt-get: $missing" "$STATE/apt.log"
    local took=$((SECONDS - t0))
    log "packages installed in ${took}s"
    echo "$(date -Is) install_seconds=$took packages=${PACKAGES[*]}" >>"$STATE/timings.log"
}

# ---------------------------------------------------------------- config
node_line() {
    # slurmd -C prints this machine's NodeName, CPUs, topology and RealMemory.
    local line
    line=$(slurmd -C 2>/dev/null | grep '^NodeName=') || die "slurmd -C did not describe this machine"
    # Drop the UpTime, give the node one GPU, reach it over the loopback.
    line=$(sed -E 's/ ?UpTime=[^ ]*//' <<<"$line")
    echo "$line NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN"
}

db_password() {
    # Keep the password of an earlier start (the database user already has it).
    local pw=""
    [[ -f $ETC/slurmdbd.conf ]] && pw=$(sed -n 's/^StoragePass=//p' "$ETC/slurmdbd.conf")
    [[ -n $pw ]] || pw=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    echo "$pw"
}

refuse_foreign_config() {
    local f
    for f in "$ETC/slurm.conf" "$ETC/slurmdbd.conf" "$ETC/gres.conf"; do
        if [[ -f $f ]] && ! grep -qF "$MARK" "$f"; then
            die "$f exists and was not written by this script (a real cluster's config?); refusing to overwrite it. Move it away to use this test cluster."
        fi
    done
}

# write_if_changed FILE MODE CONTENT: returns 0 if the file changed.
write_if_changed() {
    local file=$1 mode=$2 content=$3
    if [[ -f $file ]] && [[ "$(cat "$file")" == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" >"$file.tmp"
    chmod "$mode" "$file.tmp"
    mv "$file.tmp" "$file"
    return 0
}

write_config() {
    mkdir -p "$ETC" "$RUNDIR" "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd "$STATE"
    # The fake GPU: a character device equal to /dev/null, made fresh (devtmpfs forgets it).
    if [[ ! -c $GPU_DEV ]]; then
        rm -f "$GPU_DEV"
        mknod -m 666 "$GPU_DEV" c 1 3 || die "cannot create the fake GPU device $GPU_DEV"
    fi
    local host node pw changed=1
    host=$(hostname -s)
    node=$(node_line)
    pw=$(db_password)

    local slurm_conf
    slurm_conf=$(cat <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
# No cgroups in containers/VMs without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=256
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_min_interval=0
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=300
MaxArraySize=1001
# Accounting (sacct) through slurmdbd on a local MariaDB.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
# sacct shows the executor's --comment (rule_<rule>_wildcards_<...>).
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
GresTypes=gpu
$node
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
    local gres_conf
    gres_conf=$(cat <<EOF
$MARK
# A fake GPU so that --gpus=1 / --gres=gpu:1 jobs are scheduled (nothing runs on it).
AutoDetect=off
Name=gpu File=$GPU_DEV
EOF
)
    local dbd_conf
    dbd_conf=$(cat <<EOF
$MARK
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
PidFile=$RUNDIR/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$pw
StorageLoc=$DB_NAME
EOF
)
    changed=0
    write_if_changed "$ETC/slurm.conf" 644 "$slurm_conf" && changed=1
    write_if_changed "$ETC/gres.conf" 644 "$gres_conf" && changed=1
    write_if_changed "$ETC/slurmdbd.conf" 600 "$dbd_conf" && changed=1
    CONFIG_CHANGED=$changed
    DB_PASSWORD=$pw
    NODE_NAME=$host
}

# ---------------------------------------------------------------- daemons
start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munge: running"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "munge: creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    log "munge: starting"
    touch "$STATE/munge.ours"
    runuser -u munge -- /usr/sbin/munged 9>&- || die_with_logs "munged did not start" /var/log/munge/munged.log
    wait_until "$WAIT" "munge to answer" sh -c 'munge -n | unmunge' ||
        die_with_logs "munge does not answer" /var/log/munge/munged.log
}

mysql_up() { mysqladmin --connect-timeout=5 ping >/dev/null 2>&1; }

start_mariadb() {
    if mysql_up; then
        log "mariadb: running"
    else
        mkdir -p /run/mysqld
        chown mysql:mysql /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            log "mariadb: initialising the data directory"
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/mariadb-install.log" 2>&1 ||
                die_with_logs "mariadb-install-db failed" "$STATE/mariadb-install.log"
        fi
        mkdir -p /var/log/mysql
        chown mysql:adm /var/log/mysql
        log "mariadb: starting"
        touch "$STATE/mariadb.ours"  # `stop` stops only a mariadb this script started
        setsid mysqld_safe --skip-syslog --log-error=/var/log/mysql/error.log \
            </dev/null >"$STATE/mysqld_safe.log" 2>&1 9>&- &
        local safe_pid=$! deadline=$((SECONDS + WAIT))
        until mysql_up; do
            if ! kill -0 "$safe_pid" 2>/dev/null && ! mysql_up; then
                die_with_logs "mariadb stopped while starting" /var/log/mysql/error.log "$STATE/mysqld_safe.log"
            fi
            ((SECONDS < deadline)) ||
                die_with_logs "mariadb does not answer after ${WAIT}s" /var/log/mysql/error.log "$STATE/mysqld_safe.log"
            sleep 1
        done
    fi
    # The accounting database and its user (idempotent; keeps the password in sync).
    mysql --connect-timeout=10 <<EOF || die "could not create the accounting database in mariadb"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

dbd_up() { timeout 20 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

start_slurmdbd() {
    if pid_alive "$RUNDIR/slurmdbd.pid" && dbd_up; then
        log "slurmdbd: running"
        return 0
    fi
    log "slurmdbd: starting"
    slurmdbd 9>&- || die_with_logs "slurmdbd did not start" "$LOGDIR/slurmdbd.log"
    wait_until "$WAIT" "slurmdbd to answer sacctmgr" dbd_up ||
        die_with_logs "slurmdbd does not answer (sacctmgr list cluster fails)" "$LOGDIR/slurmdbd.log"
}

sacctmgr_has() {  # sacctmgr_has ENTITY NAME [where...]
    local entity=$1 name=$2; shift 2
    timeout 20 sacctmgr -n -P list "$entity" "$name" "$@" format="${entity}" 2>/dev/null | grep -qx "$name"
}

setup_accounting() {
    sacctmgr_has cluster "$CLUSTER" ||
        timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr could not add cluster $CLUSTER"
    sacctmgr_has account "$ACCOUNT" ||
        timeout 30 sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="ageatlas tests" Organization=ageatlas >/dev/null ||
        die "sacctmgr could not add account $ACCOUNT"
    local users=(root) u
    [[ -n ${SUDO_USER:-} ]] && users+=("$SUDO_USER")
    # shellcheck disable=SC2206
    [[ -n ${AGEATLAS_SLURM_USERS:-} ]] && users+=($AGEATLAS_SLURM_USERS)
    for u in "${users[@]}"; do
        id "$u" >/dev/null 2>&1 || die "AGEATLAS_SLURM_USERS: no such user $u"
        if ! timeout 20 sacctmgr -n -P list assoc user="$u" account="$ACCOUNT" cluster="$CLUSTER" format=user | grep -qx "$u"; then
            timeout 30 sacctmgr -i add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null ||
                die "sacctmgr could not add user $u to account $ACCOUNT"
        fi
        timeout 30 sacctmgr -i modify user where name="$u" set DefaultAccount="$ACCOUNT" >/dev/null 2>&1 || true
    done
    log "accounting: cluster $CLUSTER, account $ACCOUNT, users ${users[*]}"
}

ctld_up() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() {
    if pid_alive "$RUNDIR/slurmctld.pid" && ctld_up; then
        log "slurmctld: running"
        return 0
    fi
    log "slurmctld: starting"
    slurmctld 9>&- || die_with_logs "slurmctld did not start" "$LOGDIR/slurmctld.log"
    wait_until "$WAIT" "slurmctld to answer scontrol ping" ctld_up ||
        die_with_logs "slurmctld does not answer" "$LOGDIR/slurmctld.log"
}

node_state() { timeout 10 sinfo -h -N -n "$NODE_NAME" -o '%T' 2>/dev/null | head -1; }
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurmd() {
    if ! pid_alive "$RUNDIR/slurmd.pid"; then
        log "slurmd: starting"
        slurmd 9>&- || die_with_logs "slurmd did not start" "$LOGDIR/slurmd.log"
    else
        log "slurmd: running"
    fi
    local deadline=$((SECONDS + WAIT)) state
    while ! node_usable; do
        state=$(node_state)
        if [[ $state =~ (down|drain|fail) ]]; then
            # A node drained by an earlier configuration comes back once it registers.
            timeout 10 scontrol update NodeName="$NODE_NAME" State=RESUME >/dev/null 2>&1 || true
        fi
        if ((SECONDS >= deadline)); then
            timeout 10 scontrol show node "$NODE_NAME" >&2 || true
            die_with_logs "node $NODE_NAME is '$state', not idle, after ${WAIT}s" "$LOGDIR/slurmd.log" "$LOGDIR/slurmctld.log"
        fi
        sleep 1
    done
    log "node $NODE_NAME: $(node_state)"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local name=$1 pidfile=$2 pid
    pid_alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    log "$name: stopping (pid $pid)"
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$name: still alive after 30s, sending KILL"
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------- checks
smoke_tests() {
    local out jobid t=$((WAIT + 30))
    out=$(timeout "$t" srun -Q -A "$ACCOUNT" -N1 -n1 -t 2 hostname 2>&1) ||
        die_with_logs "srun hostname failed: $out" "$LOGDIR/slurmd.log" "$LOGDIR/slurmctld.log"
    log "srun: ran on $out"
    # A batch job, followed through the accounting database (what the executor's
    # status checks read): quicker than sbatch --wait, which polls every 10 s.
    out=$(timeout "$t" sbatch -A "$ACCOUNT" --parsable -t 2 -o /dev/null --wrap true 2>&1) ||
        die_with_logs "sbatch failed: $out" "$LOGDIR/slurmctld.log"
    jobid=${out%%;*}
    # shellcheck disable=SC2016
    out=$(timeout "$t" srun -Q -A "$ACCOUNT" -N1 -n1 -t 2 --gpus=1 sh -c 'echo "gpus=${SLURM_JOB_GPUS:-} cuda=${CUDA_VISIBLE_DEVICES:-}"' 2>&1) ||
        die_with_logs "a --gpus=1 job failed: $out" "$LOGDIR/slurmd.log" "$LOGDIR/slurmctld.log"
    [[ $out == *cuda=0* ]] || die "a --gpus=1 job ran but saw no GPU (CUDA_VISIBLE_DEVICES unset): $out"
    log "srun --gpus=1: $out"
    wait_until "$WAIT" "sacct to report batch job $jobid COMPLETED" \
        sh -c "sacct -n -X -P -j $jobid -o State | grep -qx COMPLETED" ||
        die_with_logs "sacct does not report job $jobid as COMPLETED: $(sacct -n -X -P -j "$jobid" -o JobID,State 2>&1)" "$LOGDIR/slurmdbd.log"
    log "sbatch: job $jobid COMPLETED according to sacct"
}

# ---------------------------------------------------------------- commands
cmd_start() {
    need_root start
    mkdir -p "$STATE"
    # One start at a time. Daemons are started with fd 9 closed (9>&-), or they
    # would hold the lock for their whole life.
    exec 9>"$STATE/lock"
    flock -w 900 9 || die "another cluster.sh holds $STATE/lock for 900s"
    local t_all=$SECONDS
    install_packages
    refuse_foreign_config
    local t0=$SECONDS
    write_config
    if ((CONFIG_CHANGED)); then
        log "configuration written to $ETC (slurm.conf, gres.conf, slurmdbd.conf)"
        # Daemons still running with an older configuration must read the new one.
        stop_pidfile slurmd "$RUNDIR/slurmd.pid"
        stop_pidfile slurmctld "$RUNDIR/slurmctld.pid"
        stop_pidfile slurmdbd "$RUNDIR/slurmdbd.pid"
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    setup_accounting
    start_slurmctld
    start_slurmd
    smoke_tests
    local took=$((SECONDS - t0))
    echo "$(date -Is) start_seconds=$took config_changed=$CONFIG_CHANGED" >>"$STATE/timings.log"
    log "cluster $CLUSTER is up: partition $PARTITION, account $ACCOUNT, node $NODE_NAME (start ${took}s, total $((SECONDS - t_all))s)"
}

cmd_stop() {
    need_root stop
    stop_pidfile slurmd "$RUNDIR/slurmd.pid"
    stop_pidfile slurmctld "$RUNDIR/slurmctld.pid"
    stop_pidfile slurmdbd "$RUNDIR/slurmdbd.pid"
    if [[ -e $STATE/mariadb.ours ]] && mysql_up; then
        log "mariadb: stopping"
        timeout 60 mysqladmin shutdown || log "mariadb: mysqladmin shutdown failed"
    fi
    rm -f "$STATE/mariadb.ours"
    [[ -e $STATE/munge.ours ]] && stop_pidfile munged /run/munge/munged.pid
    rm -f "$STATE/munge.ours"
    log "stopped"
}

cmd_status() {
    local ok=0 name
    NODE_NAME=$(hostname -s)
    for name in slurmdbd slurmctld slurmd; do
        if pid_alive "$RUNDIR/$name.pid"; then
            echo "$name: running (pid $(cat "$RUNDIR/$name.pid"))"
        else
            echo "$name: not running"; ok=1
        fi
    done
    if command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then echo "munge: running"; else echo "munge: not answering"; ok=1; fi
    if command -v mysqladmin >/dev/null && mysql_up; then echo "mariadb: running"; else echo "mariadb: not answering"; ok=1; fi
    if command -v sacctmgr >/dev/null && dbd_up; then echo "accounting: answering"; else echo "accounting: not answering"; ok=1; fi
    if command -v sinfo >/dev/null && node_usable; then
        echo "node $NODE_NAME: $(node_state)"
        timeout 10 sinfo -o '%P %a %D %T %C %G' || true
    else
        local state=""
        command -v sinfo >/dev/null && state=$(node_state || true)
        echo "node $NODE_NAME: ${state:-unknown (slurmctld does not answer)}"; ok=1
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
