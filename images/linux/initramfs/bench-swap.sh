# tmem_test=bench: the swap benchmark (`cargo xtask bench --swap`). One backend per boot, every
# workload x size in one boot. Kernel command-line words:
#   tmem_backend=ram|kclient|nbd|zram|disk[-nozswap]  where swap goes (ram: no swap at all);
#                kclient-lz4[-nozswap]: kclient with compress=1 (pages go LZ4-compressed)
#   tmem_target=HOST:PORT   kclient: the appliance; nbd: the NBD server
#   tmem_sizes="128 256"    working sets in MiB (quoted list; words separated by commas also work)
#   tmem_workloads=seq,rand,sort
#   tmem_run_timeout=S      per-workload limit (busybox timeout), default 900
#   tmem_seq_only_above=MIB larger working sets run only the seq workload (keeps TCG runs short)
# zswap is on in front of kclient, nbd and disk (the recommended deployment) unless the backend
# name ends in -nozswap; zram never has zswap in front. Prints `TMEM-BENCH key=value ...` per
# run and one `TMEM-RESULT test=bench ...` line.
backend=${tmem_backend:-kclient}
base=${backend%%-*}
zswap=1
case "$backend" in *-nozswap*) zswap=0 ;; esac
case "$backend" in *-lz4*) tmem_compress=1 ;; esac
[ "$base" = zram ] || [ "$base" = ram ] && zswap=0
echo $zswap > /sys/module/zswap/parameters/enabled
target=${tmem_target:-10.0.2.2:7000}
setup_rc=0
dev=
phase bench-setup backend=$backend zswap=$zswap
case "$base" in
ram) ;;
kclient)
	load_kclient || setup_rc=1
	dev=/dev/kclient0 ;;
nbd)
	insmod /lib/modules/nbd.ko nbds_max=1 || setup_rc=1
	n=0
	while [ $n -lt 50 ] && [ ! -b /dev/nbd0 ]; do sleep 0.1; n=$((n + 1)); done
	/bin/tmem-nbd-client "${target%:*}" "${target#*:}" /dev/nbd0 || setup_rc=1
	dev=/dev/nbd0 ;;
zram)
	insmod /lib/modules/zram.ko num_devices=1 || setup_rc=1
	n=0
	while [ $n -lt 50 ] && [ ! -e /sys/block/zram0/disksize ]; do sleep 0.1; n=$((n + 1)); done
	echo lzo-rle > /sys/block/zram0/comp_algorithm
	echo "${tmem_size:-1G}" > /sys/block/zram0/disksize || setup_rc=1
	dev=/dev/zram0 ;;
disk)
	dev=/dev/vda ;;
*) setup_rc=1 ;;
esac
if [ -n "$dev" ]; then
	mkswap "$dev" >/dev/null || setup_rc=1
	swapon "$dev" || setup_rc=1
fi
sched=$([ -n "$dev" ] && sed 's/.*\[\(.*\)\].*/\1/' "/sys/block/${dev#/dev/}/queue/scheduler" 2>/dev/null)
echo "TMEM-BENCH-SETUP backend=$backend dev=$dev rc=$setup_rc ram_mib=$(ram_mib) zswap=$zswap scheduler=${sched:-none}"

uptime_cs() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
netbytes() { cat "/sys/class/net/eth0/statistics/$1" 2>/dev/null || echo 0; }
kstat() { awk -v k="$1" '$1 == k { print $2 }' /sys/kernel/debug/kclient/stats 2>/dev/null; }
zram_compr() { [ -r /sys/block/zram0/mm_stat ] && awk '{ print $2 }' /sys/block/zram0/mm_stat; }
# Block-layer counters of the swap device: "reads read_sectors read_ticks writes write_sectors write_ticks".
dstat() { [ -n "$dev" ] && awk '{ print $1, $3, $4, $5, $7, $8 }' "/sys/block/${dev#/dev/}/stat" 2>/dev/null || echo 0 0 0 0 0 0; }
num0() { [ -n "$1" ] && echo "$1" || echo 0; }

runs=0
fails=0
if [ "$setup_rc" = 0 ]; then
	for w in $(echo "${tmem_workloads:-seq,rand,sort}" | tr ',' ' '); do
		for mib in $(echo "${tmem_sizes:-128,256,512}" | tr ',' ' '); do
			[ "$w" != seq ] && [ "$mib" -gt "${tmem_seq_only_above:-1000000}" ] && continue
			sync
			echo 3 > /proc/sys/vm/drop_caches
			phase bench-run backend=$backend workload=$w mib=$mib
			in0=$(vmstat_val pswpin); out0=$(vmstat_val pswpout)
			zo0=$(vmstat_val zswpout); zi0=$(vmstat_val zswpin)
			tx0=$(netbytes tx_bytes); rx0=$(netbytes rx_bytes)
			ks0=$(num0 "$(kstat bytes_sent)"); kr0=$(num0 "$(kstat bytes_received)")
			kq0=$(num0 "$(kstat requests)")
			set -- $(dstat); r0=$1 rs0=$2 rt0=$3 w0=$4 ws0=$5 wt0=$6
			oom0=$(dmesg | grep -c 'Out of memory')
			t0=$(uptime_cs)
			case "$w" in
			seq) timeout "${tmem_run_timeout:-900}" /bin/tmem-workload "$mib" 1 0x746d656d 1 > /tmp/run.out ;;
			rand) timeout "${tmem_run_timeout:-900}" /bin/tmem-workload "$mib" 1 0x746d656d 7919 > /tmp/run.out ;;
			sort) timeout "${tmem_run_timeout:-900}" /bin/tmem-sort "$mib" > /tmp/run.out ;;
			*) echo "status=fail unknown-workload" > /tmp/run.out; false ;;
			esac
			rc=$?
			t1=$(uptime_cs)
			zc=$(num0 "$(zram_compr)")
			set -- $(dstat)
			blk="blk_reads=$(($1 - r0)) blk_read_kib=$((($2 - rs0) / 2)) blk_read_ms=$(($3 - rt0)) blk_writes=$(($4 - w0)) blk_write_kib=$((($5 - ws0) / 2)) blk_write_ms=$(($6 - wt0))"
			ks1=$(num0 "$(kstat bytes_sent)"); kr1=$(num0 "$(kstat bytes_received)")
			kq1=$(num0 "$(kstat requests)")
			ok=fail
			grep -q 'status=ok' /tmp/run.out && [ "$rc" = 0 ] && ok=ok
			[ "$(dmesg | grep -c 'Out of memory')" != "$oom0" ] && ok=oom
			[ "$ok" = ok ] || fails=$((fails + 1))
			runs=$((runs + 1))
			echo "TMEM-BENCH backend=$backend workload=$w mib=$mib status=$ok rc=$rc ms=$(( (t1 - t0) * 10 ))" \
				"pswpin=$(( $(vmstat_val pswpin) - in0 )) pswpout=$(( $(vmstat_val pswpout) - out0 ))" \
				"zswpin=$(( $(vmstat_val zswpin) - zi0 )) zswpout=$(( $(vmstat_val zswpout) - zo0 ))" \
				"net_tx=$(( $(netbytes tx_bytes) - tx0 )) net_rx=$(( $(netbytes rx_bytes) - rx0 ))" \
				"kc_sent=$((ks1 - ks0)) kc_received=$((kr1 - kr0)) kc_requests=$((kq1 - kq0)) zram_compr=$zc $blk"
			cat /tmp/run.out
		done
	done
fi
# An OOM kill (zram holding more than the VM's RAM) is a result, not a kernel problem.
oops=$(dmesg | grep -v -e oom -e 'Out of memory' | grep -cE 'WARNING:|BUG:|Oops|kernel BUG|general protection|sleeping function called from invalid context|INFO: task .* blocked')
status=pass
[ "$setup_rc" = 0 ] && [ "$fails" = 0 ] && [ "$oops" = 0 ] || status=fail
echo "TMEM-RESULT test=bench backend=$backend status=$status setup=$setup_rc runs=$runs fails=$fails oops=$oops $(kstats)"
[ "$oops" = 0 ] || dmesg | tail -60
