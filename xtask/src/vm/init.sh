#!/bin/busybox sh
# PID 1 of the `cargo xtask vm` guest. Generated: @...@ placeholders are
# filled in by xtask/src/vm/initramfs.rs.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

# steps: each line of /etc/xtask/steps ("NAME FS SECONDS RACER-ARGS...")
#   runs the racer on /mnt/FS under its own observer; results /results/NAME.*
# bench: faultbench bare / under the observer, on /mnt/xfs (see bench()).
MODE=@MODE@
# "FS:/dev/vdX[:OPTIONS] ..." for the disk filesystems; /dev/vda is the
# results disk.
DEVICES="@DEVICES@"
# 1: also mount a tmpfs on /mnt/tmpfs.
TMPFS=@TMPFS@
# 1: keep only the startup record, the summary, the alert counts by kind and
# a few alerts of each kind instead of every alert (see trim()).
TRIM=@TRIM@
# Not empty: each step runs as `observer run -- CMD`, CMD being the racer
# and then `exit $RUN_EXIT`; the observer's status goes to NAME.observer.rc.
RUN_EXIT=@RUN_EXIT@
BENCH_ROUNDS=@BENCH_ROUNDS@
BENCH_PAGES=@BENCH_PAGES@
BENCH_FAULT_ROUNDS=@BENCH_FAULT_ROUNDS@
# When not 0: fewer fault rounds if the two warm-up runs take longer (ms).
BENCH_BUDGET_MS=@BENCH_BUDGET_MS@
READY_TIMEOUT=60
STOP_TIMEOUT=30

log() { echo "xtask-vm: $*"; }
# Routine progress: one line per run would drown the bench's own lines.
note() { [ "$MODE" = bench ] || log "$@"; }
fail() {
	log "FAILED: $*"
	echo "$*" >>/results/errors
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Results collect on a tmpfs and leave in one tar at the end, so a guest
# that dies half-way leaves an empty results disk rather than a torn one.
mkdir -p /results /tmp
mount -t tmpfs tmpfs /results
mount -t tmpfs tmpfs /tmp
log "kernel $(uname -r) up after $(cut -d' ' -f1 /proc/uptime)s"
uname -r >/results/uname
mount -t tracefs tracefs /sys/kernel/tracing || fail "mount tracefs"
mount -t debugfs debugfs /sys/kernel/debug || fail "mount debugfs"
mount -t bpf bpf /sys/fs/bpf || fail "mount bpffs"
ulimit -l unlimited

for m in @MODULES@; do
	if ! out=$(insmod "/lib/modules/$(uname -r)/$m.ko" 2>&1); then
		case "$out" in
		*"File exists"*) ;;
		*) fail "insmod $m: $out" ;;
		esac
	fi
done
log "modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

wait_dev() {
	i=0
	while [ ! -b "$1" ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && return 1
		sleep 0.1
	done
}

# The filesystem's name is its mount type; fuse's disk is the ext4 its
# server (/bin/fusefs, the project's own) serves the files of.
mount_fs() {
	local dir=/mnt/$1 type=$1 opts=
	[ "$1" = fuse ] && dir=/mnt/fuse.backing type=ext4
	[ -n "$3" ] && opts="-o $3"
	mkdir -p "$dir"
	if ! wait_dev "$2"; then
		fail "$2 ($1 disk) never appeared"
	elif mount -t "$type" $opts "$2" "$dir"; then
		log "mounted $2 on $dir ($type${3:+, $3})"
		[ "$1" = fuse ] && mount_fuse
	else
		fail "mount -t $type $opts $2 $dir"
	fi
}

# The server mounts itself and says so on stdout; it runs until poweroff.
mount_fuse() {
	local i=0
	mkdir -p /mnt/fuse
	fusefs --backing /mnt/fuse.backing --mountpoint /mnt/fuse \
		>/tmp/fusefs.out 2>/tmp/fusefs.log </dev/null &
	while ! grep -q "fusefs: mounted" /tmp/fusefs.out 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt 100 ] || ! kill -0 $! 2>/dev/null; then
			fail "fusefs did not mount: $(cat /tmp/fusefs.log)"
			return
		fi
		sleep 0.1
	done
	log "mounted fuse on /mnt/fuse (fusefs over /mnt/fuse.backing)"
}
for d in $DEVICES; do
	IFS=: read -r fs dev opts <<EOF
$d
EOF
	mount_fs "$fs" "$dev" "$opts"
done
if [ "$TMPFS" = 1 ]; then
	# tmpfs-huge: huge pages always, which shmem maps by PMD across EOF.
	for t in tmpfs:size=256m tmpfs-huge:size=256m,huge=always; do
		mkdir -p "/mnt/${t%%:*}"
		if mount -t tmpfs -o "${t#*:}" tmpfs "/mnt/${t%%:*}"; then
			log "mounted tmpfs on /mnt/${t%%:*} (${t#*:})"
		else
			fail "mount -t tmpfs -o ${t#*:} tmpfs /mnt/${t%%:*}"
		fi
	done
fi
wait_dev /dev/vda || fail "/dev/vda (results disk) never appeared"
cat /proc/filesystems >/results/filesystems

# Runs in the background while the observer runs in the foreground: a
# background job of a non-interactive shell starts with SIGINT ignored, so
# the observer must not be one. Waits for the observer (started by
# /etc/xtask/observer.sh PREFIX) to print "ready" in PREFIX.observer.log,
# runs the rest of its arguments as a command, then SIGINTs the observer
# and waits for it to exit. Writes PREFIX.ready, and PREFIX.stop if the
# observer had to be killed.
controller() {
	label=$1
	r=$2
	shift 2
	start=$(date +%s)
	state=not-ready
	while [ $(($(date +%s) - start)) -lt $READY_TIMEOUT ]; do
		pid=$(cat /tmp/observer.pid 2>/dev/null)
		if [ -n "$pid" ]; then
			if grep -qw ready "$r.observer.log" 2>/dev/null; then
				state=ready
				break
			fi
			if ! kill -0 "$pid" 2>/dev/null; then
				state=exited-early
				break
			fi
		fi
		sleep 0.2
	done
	echo "$state" >"$r.ready"
	case $state in
	ready) note "[$label] observer ready after $(($(date +%s) - start))s" ;;
	exited-early)
		log "[$label] observer exited before printing ready"
		return
		;;
	*) log "[$label] observer not ready after ${READY_TIMEOUT}s; stopping it" ;;
	esac
	[ $state = ready ] && "$@"
	kill -INT "$pid" 2>/dev/null
	i=0
	while kill -0 "$pid" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt $((STOP_TIMEOUT * 5)) ]; then
			log "[$label] observer ignored SIGINT for ${STOP_TIMEOUT}s; killing it"
			echo "ignored SIGINT, killed" >"$r.stop"
			kill -KILL "$pid"
			break
		fi
		sleep 0.2
	done
}

# under_observer LABEL PREFIX OBSERVER_ARGS CMD...: runs the observer
# (/etc/xtask/observer.sh PREFIX OBSERVER_ARGS, the latter split by the
# shell) in the foreground and `controller LABEL PREFIX CMD...` in the
# background; the observer's exit status goes to PREFIX.observer.rc.
under_observer() {
	local label=$1 r=$2 args=$3 ctl rc
	shift 3
	rm -f /tmp/observer.pid
	: >"$r.observer.log"
	controller "$label" "$r" "$@" &
	ctl=$!
	note "[$label] starting observer"
	/etc/xtask/observer.sh "$r" $args
	rc=$?
	echo $rc >"$r.observer.rc"
	wait $ctl
	return $rc
}

# racer_run NAME FS SECONDS RACER-ARGS: one racer run (racer arguments split
# by the shell); its report goes to /results/NAME.racer.json, its exit status
# (77: the filesystem lacks the operation) to NAME.racer.rc.
racer_run() {
	local name=$1 fs=$2 secs=$3 args=$4 r=/results/$1 rc
	if [ -x /bin/racer ]; then
		log "[$name] racer --file /mnt/$fs/racer.dat --duration $secs $args"
		racer --file "/mnt/$fs/racer.dat" --duration "$secs" $args \
			>"$r.racer.json" 2>"$r.racer.log" </dev/null
		rc=$?
		echo $rc >"$r.racer.rc"
		case $rc in
		0) note "[$name] racer done" ;;
		77) log "[$name] not supported: $(cat "$r.racer.log")" ;;
		*) log "[$name] racer exited with status $rc: $(cat "$r.racer.log")" ;;
		esac
	else
		log "[$name] no racer in the initramfs; idling ${secs}s"
		sleep "$secs"
	fi
}

# trim PREFIX: PREFIX.alerts.json → PREFIX.observer.json (startup record and
# summary), PREFIX.kinds ("COUNT KIND" lines) and PREFIX.samples.json (the
# first 3 alerts of each kind); the alerts file goes.
trim() {
	local r=$1 k
	[ -e "$r.alerts.json" ] || return
	head -n 1 "$r.alerts.json" >"$r.observer.json"
	tail -n 1 "$r.alerts.json" >>"$r.observer.json"
	grep '"type":"alert"' "$r.alerts.json" | grep -o '"kind":"[a-z_]*"' |
		sed 's/"kind":"\(.*\)"/\1/' | sort | uniq -c >"$r.kinds"
	: >"$r.samples.json"
	for k in $(awk '{ print $2 }' "$r.kinds"); do
		grep -m 3 "\"kind\":\"$k\"" "$r.alerts.json" >>"$r.samples.json"
	done
	rm -f "$r.alerts.json"
}

steps_scenario() {
	local name fs secs args r rc t0
	while read -r name fs secs args <&3; do
		[ -n "$name" ] || continue
		r=/results/$name
		t0=$(cut -d' ' -f1 /proc/uptime)
		if ! grep -q " /mnt/$fs " /proc/mounts; then
			fail "[$name] /mnt/$fs not mounted; skipped"
			continue
		fi
		# An operation the filesystem lacks needs no observer run.
		if [ -x /bin/racer ]; then
			racer --file "/mnt/$fs/racer.dat" --probe $args \
				>/dev/null 2>"$r.racer.log" </dev/null
			if [ $? = 77 ]; then
				echo 77 >"$r.racer.rc"
				log "[$name] not supported: $(cat "$r.racer.log")"
				rm -f "/mnt/$fs/racer.dat" "/mnt/$fs/racer.dat.src"
				echo "$t0 $(cut -d' ' -f1 /proc/uptime)" >"$r.uptime"
				save
				continue
			fi
		fi
		if [ -n "$RUN_EXIT" ]; then
			: >"$r.observer.log"
			/etc/xtask/observer.sh "$r" run --fail-on critical -- sh -c \
				'racer --file "$1" --duration "$2" $3 >"$4.racer.json" 2>"$4.racer.log" </dev/null
				echo $? >"$4.racer.rc"; exit $5' \
				sh "/mnt/$fs/racer.dat" "$secs" "$args" "$r" "$RUN_EXIT"
			rc=$?
			echo $rc >"$r.observer.rc"
		else
			under_observer "$name" "$r" "" racer_run "$name" "$fs" "$secs" "$args"
			rc=$?
		fi
		log "[$name] observer exited with status $rc; $(grep -c '"type":"alert"' "$r.alerts.json" 2>/dev/null) alerts"
		[ "$TRIM" = 1 ] && trim "$r"
		rm -f "/mnt/$fs/racer.dat" "/mnt/$fs/racer.dat.src"
		echo "$t0 $(cut -d' ' -f1 /proc/uptime)" >"$r.uptime"
		save
	done 3</etc/xtask/steps
}

# Writes /results to the results disk now, so that a guest that hangs in a
# later step (killed by the host) still hands back the finished ones. Only
# with TRIM: the results are small then.
save() {
	[ "$TRIM" = 1 ] || return 0
	tar -cf /dev/vda -C /results . && sync
}

# faultbench PREFIX [--punch]: one measured run; its report line goes to
# PREFIX.faultbench.json, its exit status to PREFIX.faultbench.rc.
faultbench_run() {
	local fb=$1
	shift
	faultbench --file /mnt/xfs/faultbench.dat --pages "$BENCH_PAGES" \
		--rounds "$BENCH_FAULT_ROUNDS" "$@" \
		>"$fb.faultbench.json" 2>"$fb.faultbench.log" </dev/null
	echo $? >"$fb.faultbench.rc"
}

# Prints BENCH_FAULT_ROUNDS scaled down so that the warm-up runs given as
# arguments would have taken BENCH_BUDGET_MS together; at least 50.
scaled_fault_rounds() {
	cat "$@" | awk -v fr="$BENCH_FAULT_ROUNDS" -v budget="$BENCH_BUDGET_MS" '
		match($0, /"elapsed_s":[0-9.]+/) { t += substr($0, RSTART + 12, RLENGTH - 12) }
		END {
			n = fr
			if (t * 1000 > budget) n = int(fr * budget / (t * 1000))
			if (n < 50) n = 50
			if (n > fr) n = fr
			print n
		}'
}

# The guest side of `cargo xtask bench --kernel`: the host bench's schedule
# (warm-up runs, then per round: no punch, punch; each bare, observer,
# observer --full-stream) with every file under /results/bench named
# ROUND.WORKLOAD.CONFIG.*; the host parses them.
bench() {
	d=/results/bench
	mkdir -p $d
	if ! grep -q " /mnt/xfs " /proc/mounts; then
		fail "bench: /mnt/xfs not mounted"
		return
	fi
	nproc >/results/nproc
	log "bench: $BENCH_ROUNDS rounds of faultbench --pages $BENCH_PAGES --rounds $BENCH_FAULT_ROUNDS on /mnt/xfs"
	t0=$(cut -d' ' -f1 /proc/uptime)
	# Both workloads once, unmeasured: the first run on a fresh filesystem
	# pays for allocating its blocks. They also time the kernel at hand,
	# which can be several times slower than another under TCG.
	for w in nopunch punch; do
		flag=
		[ $w = punch ] && flag=--punch
		faultbench_run $d/warmup.$w $flag
		[ "$(cat $d/warmup.$w.faultbench.rc)" = 0 ] ||
			fail "bench: warm-up faultbench $flag failed: $(cat $d/warmup.$w.faultbench.log)"
		log "bench: warm-up $w: $(cat $d/warmup.$w.faultbench.json)"
	done
	if [ "$BENCH_BUDGET_MS" -gt 0 ]; then
		fr=$(scaled_fault_rounds $d/warmup.nopunch.faultbench.json $d/warmup.punch.faultbench.json)
		if [ -n "$fr" ] && [ "$fr" -lt "$BENCH_FAULT_ROUNDS" ]; then
			log "bench: slow kernel: $fr fault rounds per run instead of $BENCH_FAULT_ROUNDS"
			BENCH_FAULT_ROUNDS=$fr
		fi
	fi
	echo "$BENCH_FAULT_ROUNDS" >$d/fault_rounds
	total=$((BENCH_ROUNDS * 6))
	n=0
	round=1
	while [ $round -le "$BENCH_ROUNDS" ]; do
		for workload in nopunch punch; do
			flag=
			[ $workload = punch ] && flag=--punch
			for config in bare observer full-stream; do
				n=$((n + 1))
				p=$d/$round.$workload.$config
				label="$n/$total"
				case $config in
				bare) faultbench_run "$p" $flag ;;
				observer) under_observer "$label" "$p" "" faultbench_run "$p" $flag ;;
				full-stream) under_observer "$label" "$p" --full-stream faultbench_run "$p" $flag ;;
				esac
				if [ -e "$p.alerts.json" ]; then
					# Only the startup record and the summary are needed, and
					# alerts pile up under --punch.
					head -n 1 "$p.alerts.json" >"$p.observer.json"
					tail -n 1 "$p.alerts.json" >>"$p.observer.json"
					rm -f "$p.alerts.json"
				fi
				rate=$(sed -n 's/.*"faults_per_s":\([0-9.]*\).*/\1/p' "$p.faultbench.json" 2>/dev/null)
				if [ -n "$rate" ]; then
					log "bench: [$label] round $round, $workload, $config: ${rate%.*} faults/s"
				else
					fail "bench: [$label] round $round, $workload, $config: no faultbench report ($(cat "$p.faultbench.log" "$p.observer.log" 2>/dev/null | tail -n 5 | tr '\n' ' '))"
				fi
			done
		done
		round=$((round + 1))
	done
	t1=$(cut -d' ' -f1 /proc/uptime)
	echo "$t0 $t1" >$d/uptime
}

case $MODE in
bench) bench ;;
*) steps_scenario ;;
esac

cut -d' ' -f1 /proc/modules >/results/modules
ls /sys/kernel/btf >/results/btf 2>&1
dmesg >/results/dmesg
echo ok >/results/done
log "writing results"
tar -cf /dev/vda -C /results . || log "FAILED: tar to /dev/vda"
sync
log "powering off"
poweroff -f
