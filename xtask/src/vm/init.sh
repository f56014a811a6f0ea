#!/bin/busybox sh
# PID 1 of the `cargo xtask vm` guest. Generated: @...@ placeholders are
# filled in by xtask/src/vm/initramfs.rs.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

FILESYSTEMS="@FILESYSTEMS@"
DURATION=@DURATION@
READY_TIMEOUT=60
STOP_TIMEOUT=30

log() { echo "xtask-vm: $*"; }
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

mount_fs() {
	mkdir -p "/mnt/$1"
	if ! wait_dev "$2"; then
		fail "$2 ($1 disk) never appeared"
	elif mount -t "$1" "$2" "/mnt/$1"; then
		log "mounted $2 on /mnt/$1 ($1)"
	else
		fail "mount -t $1 $2 /mnt/$1"
	fi
}
mount_fs xfs /dev/vda
mount_fs ext4 /dev/vdb
wait_dev /dev/vdc || fail "/dev/vdc (results disk) never appeared"

# Runs in the background while the observer runs in the foreground: a
# background job of a non-interactive shell starts with SIGINT ignored, so
# the observer must not be one.
controller() {
	fs=$1
	r=/results/$fs
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
	ready) log "[$fs] observer ready after $(($(date +%s) - start))s" ;;
	exited-early)
		log "[$fs] observer exited before printing ready"
		return
		;;
	*) log "[$fs] observer not ready after ${READY_TIMEOUT}s; stopping it" ;;
	esac
	if [ $state = ready ]; then
		if [ -x /bin/racer ]; then
			log "[$fs] racer --file /mnt/$fs/racer.dat --duration $DURATION"
			racer --file "/mnt/$fs/racer.dat" --duration "$DURATION" @RACER_ARGS@ \
				>"$r.racer.json" 2>"$r.racer.log" </dev/null
			rc=$?
			echo $rc >"$r.racer.rc"
			log "[$fs] racer exited with status $rc"
		else
			log "[$fs] no racer in the initramfs; idling ${DURATION}s"
			sleep "$DURATION"
		fi
	fi
	kill -INT "$pid" 2>/dev/null
	i=0
	while kill -0 "$pid" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt $((STOP_TIMEOUT * 5)) ]; then
			log "[$fs] observer ignored SIGINT for ${STOP_TIMEOUT}s; killing it"
			echo "ignored SIGINT, killed" >"$r.stop"
			kill -KILL "$pid"
			break
		fi
		sleep 0.2
	done
}

for fs in $FILESYSTEMS; do
	r=/results/$fs
	if ! grep -q " /mnt/$fs " /proc/mounts; then
		fail "[$fs] not mounted; skipped"
		continue
	fi
	rm -f /tmp/observer.pid
	: >"$r.observer.log"
	controller "$fs" &
	ctl=$!
	log "[$fs] starting observer"
	/etc/xtask/observer.sh "$r"
	rc=$?
	echo $rc >"$r.observer.rc"
	wait $ctl
	log "[$fs] observer exited with status $rc; $(cat "$r.alerts.json" 2>/dev/null | grep -c '"type":"alert"') alerts"
done

cut -d' ' -f1 /proc/modules >/results/modules
ls /sys/kernel/btf >/results/btf 2>&1
dmesg >/results/dmesg
echo ok >/results/done
log "writing results"
tar -cf /dev/vdc -C /results . || log "FAILED: tar to /dev/vdc"
sync
log "powering off"
poweroff -f
