# tmem_test=run (`cargo xtask client-vm --run FILE`): a user's program, with swap on /dev/kclient0.
#   tmem_run=PATH          the program (xtask packs it into an extra initramfs archive); its
#                          arguments, one per line, in PATH.args if that file exists
#   tmem_run_timeout=S     the program is killed after S seconds (default 3600)
#   tmem_zswap=0|1         zswap in front of kclient (default 1, as deployed)
#   tmem_printk=N          console log level while it runs (default 5: warnings and worse)
# Prints `TMEM-PHASE run-start` / `TMEM-PHASE run-done rc=N` around the program's output, then
# kclient's counters as one `TMEM-KCLIENT key=value ...` line (read before swapoff), the kernel's
# swap counters as `TMEM-VMSTAT ...`, and `TMEM-RESULT test=run status=pass|fail ...`.
echo "${tmem_zswap:-1}" > /sys/module/zswap/parameters/enabled
phase insmod
load_kclient; insmod_rc=$?
mkswap /dev/kclient0 >/dev/null; mkswap_rc=$?
swapon /dev/kclient0; swapon_rc=$?
echo "TMEM-SETUP insmod=$insmod_rc mkswap=$mkswap_rc swapon=$swapon_rc"
run_rc=na
t0=$(date +%s); t1=$t0
if [ "$insmod_rc" = 0 ] && [ "$mkswap_rc" = 0 ] && [ "$swapon_rc" = 0 ] && [ -x "$tmem_run" ]; then
	set --
	if [ -r "$tmem_run.args" ]; then
		while IFS= read -r arg; do set -- "$@" "$arg"; done < "$tmem_run.args"
	fi
	echo "${tmem_printk:-5}" > /proc/sys/kernel/printk
	phase run-start
	t0=$(date +%s)
	timeout -s KILL "${tmem_run_timeout:-3600}" "$tmem_run" "$@"
	run_rc=$?
	t1=$(date +%s)
	phase run-done rc=$run_rc
	echo 8 > /proc/sys/kernel/printk
elif [ ! -x "$tmem_run" ]; then
	echo "tmem run: no program at '$tmem_run'"
fi
echo "TMEM-KCLIENT $(kstats)"
echo "TMEM-VMSTAT pswpout=$(vmstat_val pswpout) pswpin=$(vmstat_val pswpin) zswpout=$(vmstat_val zswpout) zswpin=$(vmstat_val zswpin) zswpwb=$(vmstat_val zswpwb)"
swapoff /dev/kclient0; swapoff_rc=$?
rmmod kclient; rmmod_rc=$?
oops=$(oopses)
status=pass
for rc in $insmod_rc $mkswap_rc $swapon_rc $run_rc $swapoff_rc $rmmod_rc; do [ "$rc" = 0 ] || status=fail; done
[ "$oops" = 0 ] || status=fail
echo "TMEM-RESULT test=run status=$status rc=$run_rc seconds=$((t1 - t0)) insmod=$insmod_rc mkswap=$mkswap_rc swapon=$swapon_rc swapoff=$swapoff_rc rmmod=$rmmod_rc oops=$oops"
[ "$oops" = 0 ] || dmesg | tail -80
