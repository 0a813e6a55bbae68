#!/bin/bash
# In-namespace init of a fleet test host (see fleetlab/host.py, which starts it).
#
# Runs as PID 1 of fresh pid/mount/uts/cgroup(/net) namespaces made by
#   unshare --pid --fork --mount --uts --cgroup --mount-proc [--net] bash host_init.sh [BIND...]
# prepares private mounts, then execs systemd. Every step below protects the SHARED real
# machine: without them a namespaced systemd boots the real machine's enabled units, applies
# sysctls to the real kernel, writes into the real /var/log and /dev and empties the real /tmp.
#
# Env in: FH_NAME (hostname), FH_MID (32 hex machine-id), FH_NET (0/1: own netns, wait for eth0),
#         FH_MANAGER_CONF (optional system.conf drop-in text), FH_MIN (1 = mask non-essential
#         units; default 1), FH_JOURNAL_MAX (default 16M), FH_LOGLEVEL (default info).
# Args:   host paths to keep visible and writable at the same path inside (e.g. a checkout
#         or venv under /tmp, which is a private tmpfs in here).
set -eu
N=$FH_NAME
P=/run/fleet-testhost
# 0. nothing we mount here may propagate back (unshare already defaults to private; be explicit)
mount --make-rprivate /

# 1. private /run (system bus socket, systemd runtime dirs, unit dirs)
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mkdir -p /run/lock $P /run/systemd/system /run/systemd/system.control

# 2. private /dev (like nspawn): tmpfs with bind-mounted basic nodes, own devpts, own shm
mkdir -p /run/.hostdev && mount --rbind /dev /run/.hostdev
mount -t tmpfs -o mode=755,nosuid tmpfs /dev
for n in null zero full random urandom tty; do touch /dev/$n; mount --bind /run/.hostdev/$n /dev/$n; done
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
: > $P/console; touch /dev/console; mount --bind $P/console /dev/console
umount -l /run/.hostdev; rmdir /run/.hostdev

# 3. private identity (bind mounts over shared /etc files; real files untouched)
echo "$N" > $P/hostname; mount --bind $P/hostname /etc/hostname
echo "$FH_MID" > $P/machine-id; mount --bind $P/machine-id /etc/machine-id
[ -f /var/lib/dbus/machine-id ] && mount --bind $P/machine-id /var/lib/dbus/machine-id
hostname "$N"

# 4. hide the real machine's enabled units (postgresql, etcd, timers...) and private writable dirs
mount -t tmpfs -o mode=755 tmpfs /etc/systemd/system
# binds: park them (recursive binds) before the private tmpfs mounts hide them, then move them back
i=0; for b in "$@"; do mkdir -p /run/.keep/$i; mount --rbind "$b" /run/.keep/$i; i=$((i+1)); done
for d in /tmp /var/tmp /var/log /var/lib/systemd; do mount -t tmpfs -o mode=755 tmpfs $d; done
chmod 1777 /tmp /var/tmp
i=0; for b in "$@"; do mkdir -p "$b" 2>/dev/null || true; mount --move /run/.keep/$i "$b"; i=$((i+1)); done
rm -rf /run/.keep

# 5. /sys: own sysfs if own netns; read-only; cgroup2 rooted at our cgroup namespace
if [ "${FH_NET:-0}" = 1 ]; then mount -t sysfs sysfs /sys; fi
mount -o remount,bind,ro /sys           # per-mount flag only (never without 'bind')
mount -t cgroup2 cgroup2 /sys/fs/cgroup

# 6. read-only view of the shared root fs (per-mount flag only; submounts above stay rw)
mount -o remount,bind,ro /

# journald: small runtime journal (default = 10% of /run tmpfs, pre-allocates 8 MiB)
mkdir -p /run/systemd/journald.conf.d
printf "[Journal]\nStorage=volatile\nRuntimeMaxUse=${FH_JOURNAL_MAX:-16M}\nRuntimeMaxFileSize=1M\nForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\n" > /run/systemd/journald.conf.d/fleet-testhost.conf

# manager settings from the harness (e.g. DefaultEnvironment=)
if [ -n "${FH_MANAGER_CONF:-}" ]; then
  mkdir -p /run/systemd/system.conf.d
  printf '%s\n' "$FH_MANAGER_CONF" > /run/systemd/system.conf.d/fleet-testhost.conf
fi

# 7. boot target + runtime masks (highest-priority unit dir, beats /etc)
cat > /run/systemd/system/fleet-testhost.target <<'EOF'
[Unit]
Description=Fleet test host
Requires=basic.target
Wants=dbus.socket dbus.service
After=basic.target dbus.service
AllowIsolate=yes
EOF
if [ "${FH_MIN:-1}" = 1 ]; then
  for u in systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.timer \
           systemd-tmpfiles-clean.service systemd-sysusers.service systemd-random-seed.service \
           systemd-update-utmp.service systemd-update-utmp-runlevel.service systemd-journal-flush.service \
           systemd-machine-id-commit.service systemd-firstboot.service systemd-repart.service \
           systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
           systemd-modules-load.service systemd-sysctl.service kmod-static-nodes.service \
           dev-hugepages.mount dev-mqueue.mount sys-fs-fuse-connections.mount sys-kernel-config.mount \
           sys-kernel-debug.mount sys-kernel-tracing.mount systemd-ask-password-console.path \
           systemd-ask-password-wall.path systemd-pcrphase-sysinit.service systemd-pcrphase.service \
           systemd-pstore.service systemd-timesyncd.service systemd-remount-fs.service systemd-fsck-root.service \
           systemd-initctl.socket systemd-journald-audit.socket e2scrub_reap.service \
           postgresql.service etcd.service console-getty.service getty.target systemd-logind.service \
           apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer man-db.timer \
           systemd-hwdb-update.service systemd-journal-catalog-update.service ldconfig.service \
           systemd-boot-system-token.service systemd-boot-update.service systemd-udevd.service \
           systemd-udev-trigger.service systemd-udev-settle.service; do
    ln -sf /dev/null /run/systemd/system.control/$u
  done
fi

# own netns: wait (max 5s) until the launcher has moved our veth end in, so units see the network at boot
if [ "${FH_NET:-0}" = 1 ]; then ip link set lo up; for i in $(seq 500); do ip -4 addr show eth0 2>/dev/null | grep -q inet && break; sleep 0.01; done; fi
export container=fleettest
exec /lib/systemd/systemd --system --unit=fleet-testhost.target --show-status=no --log-target=journal --log-level=${FH_LOGLEVEL:-info} </dev/null >/dev/console 2>&1
