# tmem_test=cachebench: one configuration of the cache benchmark (`cargo xtask bench --cache`).
# The same read workload (tmem-files verify, every byte checked) on ext4 over a throttled virtio
# disk (/dev/vda), two passes after the files are written:
#   tmem_cache_mode=disk     ext4 on the disk itself; the page cache dropped before each pass
#   tmem_cache_mode=kcache   ext4 on /dev/kcache0 over the disk (kclient reloaded after writing,
#                            so the first pass starts cold); the page cache dropped before each
#   tmem_cache_mode=ram      ext4 on the disk in a VM large enough to keep every file in its page
#                            cache: the second pass is the lower bound
# Prints `TMEM-CACHEBENCH mode=.. pass1_ms=.. pass2_ms=.. hits=.. misses=.. ok=0|1`.
files=${tmem_files:-32}
fmib=${tmem_file_mib:-8}
mode=${tmem_cache_mode:-disk}
kstat() { awk -v k="$1" '$1 == k { print $2 }' /sys/kernel/debug/kclient/stats 2>/dev/null; }
ms_of() { sed -n 's/.* ms=\([0-9]*\).*/\1/p'; }
mkdir -p /mnt
mount_fs() {
	if [ "$mode" = kcache ]; then
		load_kclient cache_backing=/dev/vda && mount -t ext4 /dev/kcache0 /mnt
	else
		mount -t ext4 /dev/vda /mnt
	fi
}
umount_fs() {
	umount /mnt || return 1
	[ "$mode" = kcache ] && rmmod kclient
	return 0
}
ok=1
mount_fs || ok=0
/bin/tmem-files write /mnt 0 "$files" "$fmib" 1 > /dev/null || ok=0
sync
umount_fs || ok=0
mount_fs || ok=0
[ "$mode" = ram ] || echo 3 > /proc/sys/vm/drop_caches
out1=$(/bin/tmem-files verify /mnt 0 "$files" "$fmib" 1) || ok=0
echo "$out1"
if [ "$mode" = kcache ]; then
	# Let the fill thread put what the first pass queued (bounded).
	n=0; last=
	while [ $n -lt 60 ]; do
		now="$(kstat cache_fills) $(kstat cache_fills_dropped)"
		[ "$now" = "$last" ] && break
		last=$now; sleep 1; n=$((n + 1))
	done
fi
[ "$mode" = ram ] || echo 3 > /proc/sys/vm/drop_caches
h0=$(kstat cache_hits); m0=$(kstat cache_misses)
out2=$(/bin/tmem-files verify /mnt 0 "$files" "$fmib" 1) || ok=0
echo "$out2"
hits=$(( ${h0:+$(kstat cache_hits) - $h0} + 0 ))
misses=$(( ${m0:+$(kstat cache_misses) - $m0} + 0 ))
umount_fs || ok=0
[ "$(oopses)" = 0 ] || ok=0
echo "TMEM-CACHEBENCH mode=$mode files=$files file_mib=$fmib pass1_ms=$(echo "$out1" | ms_of) pass2_ms=$(echo "$out2" | ms_of) hits=$hits misses=$misses ok=$ok"
