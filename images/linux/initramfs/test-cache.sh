# tmem_test=cache: kclient's cache device (cache_backing=/dev/vda, a virtio disk the host made
# ext4 and throttles) under ext4, against one appliance the host kills and restarts on cue
# (qemu-tests/tests/kclient_cache.rs). Every pass verifies every byte of every file; counters are
# taken around each pass. Ends with `TMEM-RESULT test=cache ...`.
#   tmem_files=N tmem_file_mib=N   the file set (default 48 x 8 MiB)
#   tmem_overwrite=N               files rewritten with new contents (default 8)
#   tmem_second=N                  a second cache device, /dev/kcache1 over /dev/vdb (also ext4,
#                                  the same layout: the same block numbers hold other contents),
#                                  with N files of seed 3 read cold and warm (default 0: none)
files=${tmem_files:-48}
fmib=${tmem_file_mib:-8}
over=${tmem_overwrite:-8}
second=${tmem_second:-0}
backing=/dev/vda
[ "$second" -gt 0 ] && backing=/dev/vda,/dev/vdb
kstat() { awk -v k="$1" '$1 == k { print $2 }' /sys/kernel/debug/kclient/stats; }
cache_up() {
	load_kclient cache_backing=$backing && mount -t ext4 /dev/kcache0 /mnt || return 1
	[ "$second" = 0 ] || mount -t ext4 /dev/kcache1 /mnt2
}
cache_down() {
	[ "$second" = 0 ] || umount /mnt2 || return 1
	umount /mnt && rmmod kclient
}
# Waits (bounded) until the fill thread has put what the last pass queued: cache_fills and
# cache_fills_dropped stop moving for a second.
fills_settle() {
	n=0; last=
	while [ $n -lt 60 ]; do
		now="$(kstat cache_fills) $(kstat cache_fills_dropped)"
		[ "$now" = "$last" ] && return 0
		last=$now; sleep 1; n=$((n + 1))
	done
}
# pass NAME ARGS...: drop the page cache, then `tmem-files verify $dir ARGS` (one or more groups
# separated by `+`); once its fills settled, prints `TMEM-PASS name=NAME rc=.. hits=.. misses=..
# ms=.. fills=.. dropped=..` (fills put and dropped since the pass began) and sets pass_rc.
dir=/mnt
pass() {
	name=$1; shift
	echo 3 > /proc/sys/vm/drop_caches
	h0=$(kstat cache_hits); m0=$(kstat cache_misses)
	f0=$(kstat cache_fills); d0=$(kstat cache_fills_dropped)
	ms=0; pass_rc=0
	while [ $# -gt 0 ]; do
		out=$(/bin/tmem-files verify $dir "$1" "$2" "$fmib" "$3") || pass_rc=1
		echo "$out"
		ms=$((ms + $(echo "$out" | sed -n 's/.* ms=\([0-9]*\).*/\1/p')))
		shift 3; [ "$1" = + ] && shift
	done
	hits=$(( $(kstat cache_hits) - h0 )); misses=$(( $(kstat cache_misses) - m0 ))
	fills_settle
	echo "TMEM-PASS name=$name rc=$pass_rc hits=$hits misses=$misses ms=$ms fills=$(( $(kstat cache_fills) - f0 )) dropped=$(( $(kstat cache_fills_dropped) - d0 ))"
}
phase cache-setup
mkdir -p /mnt /mnt2
# Bad input first: a backing device named twice is refused with a message and makes no device.
refused_rc=0
if load_kclient cache_backing=/dev/vda,/dev/vda 2>/dev/null; then
	refused_rc=1; rmmod kclient
fi
dmesg | grep -q "cache_backing=.*each once" || refused_rc=1
[ -e /dev/kcache0 ] && refused_rc=1
cache_up; setup_rc=$?
if [ "$setup_rc" != 0 ]; then
	echo "TMEM-RESULT test=cache status=fail setup=$setup_rc oops=$(oopses) $(kstats)"
	dmesg | tail -40
	return 0
fi
/bin/tmem-files write /mnt 0 "$files" "$fmib" 1; write_rc=$?
second_rc=0
[ "$second" = 0 ] || /bin/tmem-files write /mnt2 0 "$second" "$fmib" 3 || second_rc=1
sync
# A cold cache for the first read pass: a new load has a new key epoch and a new pool.
cache_down; cache_up; reload_rc=$?
pass cold 0 "$files" 1; cold_rc=$pass_rc
pass warm 0 "$files" 1; warm_rc=$pass_rc
if [ "$second" -gt 0 ]; then
	dir=/mnt2
	pass second-cold 0 "$second" 3; [ "$pass_rc" = 0 ] || second_rc=1
	pass second-warm 0 "$second" 3; [ "$pass_rc" = 0 ] || second_rc=1
	dir=/mnt
fi
/bin/tmem-files write /mnt 0 "$over" "$fmib" 2; over_rc=$?
sync
# From here on files 0..over-1 hold contents of seed 2.
all="0 $over 2 + $over $((files - over)) 1"
pass overwritten $all; overwritten_rc=$pass_rc
# The host kills the appliance while this pass reads.
( pass killed $all; exit $pass_rc ) > /tmp/killed.out &
reader=$!
sleep 2
phase kill-appliance
wait $reader; killed_rc=$?
cat /tmp/killed.out
phase restart-appliance
n=0
while [ $n -lt 600 ] && [ "$(kstat connections_up)" = 0 ]; do sleep 0.1; n=$((n + 1)); done
# The restarted appliance is smaller than the file set: this pass fills it past its memory
# (evictions). A sequential loop over more than an LRU cache holds never hits, so hits come
# back on a working set that fits: its second pass.
pass refill $all; refill_rc=$pass_rc
subset=$((files / 4))
pass subset $subset $((files / 4)) 1; subset_rc=$pass_rc
pass rewarm $subset $((files / 4)) 1; rewarm_rc=$pass_rc
stats=$(kstats)
cache_down; down_rc=$?
oops=$(oopses)
status=pass
for rc in $refused_rc $setup_rc $write_rc $second_rc $reload_rc $cold_rc $warm_rc $over_rc $overwritten_rc $killed_rc $refill_rc $subset_rc $rewarm_rc $down_rc; do
	[ "$rc" = 0 ] || status=fail
done
[ "$oops" = 0 ] || status=fail
echo "TMEM-RESULT test=cache status=$status refused=$refused_rc setup=$setup_rc write=$write_rc second=$second_rc reload=$reload_rc cold=$cold_rc warm=$warm_rc overwrite=$over_rc overwritten=$overwritten_rc killed=$killed_rc refill=$refill_rc subset=$subset_rc rewarm=$rewarm_rc down=$down_rc oops=$oops files=$files file_mib=$fmib $stats"
[ "$oops" = 0 ] || dmesg | tail -80
