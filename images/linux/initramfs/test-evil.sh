# tmem_test=evil: kclient against malicious appliances (qemu-tests/src/evil_appliance.rs), one per
# mode: tmem_evil=MODE:PORT[,MODE:PORT...] (host ports, reached as 10.0.2.2:PORT). For each mode:
# insmod, then block I/O straight on /dev/kclient0 (O_DIRECT, every command bounded; no swapon: a
# failing swap device would OOM-kill): write pages 0-3 (the appliance stores these honestly), read
# them one by one and all at once (the appliance misbehaves on gets), write pages 8-11 (it
# misbehaves on these puts), rmmod. Modes that break the handshake must make insmod fail (no I/O).
# One `TMEM-EVIL mode=...` line per mode, then `TMEM-RESULT`. With tmem_honest=PORT an honest
# appliance is the second replica (replicas=2): every read must then return the right data.
# Outcomes: w1/w2 = dd exit codes; r1_ok/r1_bad/r1_fail = single-page reads that returned the
# right data / wrong data / an error; r2 = ok|bad|fail for the 4-page read; hang = commands that
# had to be killed.
dev=/dev/kclient0
t_all=$(date +%s)
dd if=/dev/urandom of=/tmp/evil.w1 bs=4096 count=4 2>/dev/null
dd if=/dev/urandom of=/tmp/evil.w2 bs=4096 count=4 2>/dev/null
for i in 0 1 2 3; do dd if=/tmp/evil.w1 of=/tmp/evil.p$i bs=4096 skip=$i count=1 2>/dev/null; done

# Runs a command with a time bound; its exit code is the result (124/137/143: it had to be killed).
bounded() { timeout 60 "$@" 2>/dev/null; }
is_hang() { case $1 in 124 | 137 | 143) return 0 ;; esac; return 1; }

modes=0
for item in $(echo "${tmem_evil:-}" | tr ',' ' '); do
	mode=${item%%:*}
	port=${item#*:}
	phase "evil-$mode port=$port"
	t0=$(date +%s)
	hang=0
	targets="10.0.2.2:$port"
	replicas=1
	if [ -n "${tmem_honest:-}" ]; then
		# An honest replica beside the evil one: every misbehaviour must make kclient read (and
		# write) through the honest appliance instead.
		targets="$targets,10.0.2.2:$tmem_honest"
		replicas=2
	fi
	bounded insmod /lib/modules/kclient.ko remote_target="$targets" size=16M replicas=$replicas \
		io_timeout_ms="${tmem_timeout_ms:-2000}" down_after_ms="${tmem_down_ms:-1500}" insecure=1
	insmod_rc=$?
	is_hang $insmod_rc && hang=$((hang + 1))
	if [ "$insmod_rc" != 0 ]; then
		# No device: nothing to do I/O on (and a dd would create a plain file in /dev).
		echo "TMEM-EVIL mode=$mode insmod=$insmod_rc hang=$hang rmmod=na seconds=$(($(date +%s) - t0))"
		modes=$((modes + 1))
		continue
	fi
	bounded dd if=/tmp/evil.w1 of=$dev bs=16384 count=1 oflag=direct
	w1=$?
	is_hang $w1 && hang=$((hang + 1))
	r1_ok=0 r1_bad=0 r1_fail=0
	for i in 0 1 2 3; do
		rm -f /tmp/evil.r
		bounded dd if=$dev of=/tmp/evil.r bs=4096 skip=$i count=1 iflag=direct
		rc=$?
		is_hang $rc && hang=$((hang + 1))
		if [ $rc != 0 ]; then
			r1_fail=$((r1_fail + 1))
		elif cmp -s /tmp/evil.r /tmp/evil.p$i; then
			r1_ok=$((r1_ok + 1))
		else
			r1_bad=$((r1_bad + 1))
		fi
	done
	rm -f /tmp/evil.r
	bounded dd if=$dev of=/tmp/evil.r bs=16384 count=1 iflag=direct
	rc=$?
	is_hang $rc && hang=$((hang + 1))
	if [ $rc != 0 ]; then
		r2=fail
	elif cmp -s /tmp/evil.r /tmp/evil.w1; then
		r2=ok
	else
		r2=bad
	fi
	bounded dd if=/tmp/evil.w2 of=$dev bs=16384 seek=2 count=1 oflag=direct
	w2=$?
	is_hang $w2 && hang=$((hang + 1))
	# Beside an honest replica, reads spread over both (by stripe): read pages of several stripes.
	r3_ok=na
	if [ -n "${tmem_honest:-}" ]; then
		r3_ok=0
		for i in 1 2 3 4; do
			bounded dd if=/tmp/evil.p$((i - 1)) of=$dev bs=4096 seek=$((i * 64)) count=1 oflag=direct
		done
		for i in 1 2 3 4; do
			rm -f /tmp/evil.r
			bounded dd if=$dev of=/tmp/evil.r bs=4096 skip=$((i * 64)) count=1 iflag=direct
			rc=$?
			is_hang $rc && hang=$((hang + 1))
			[ $rc = 0 ] && cmp -s /tmp/evil.r /tmp/evil.p$((i - 1)) && r3_ok=$((r3_ok + 1))
		done
	fi
	stats=$(kstats)
	bounded rmmod kclient
	rmmod_rc=$?
	t1=$(date +%s)
	echo "TMEM-EVIL mode=$mode insmod=$insmod_rc w1=$w1 r1_ok=$r1_ok r1_bad=$r1_bad r1_fail=$r1_fail r2=$r2 w2=$w2 r3_ok=$r3_ok hang=$hang rmmod=$rmmod_rc seconds=$((t1 - t0)) $stats"
	modes=$((modes + 1))
done
# KASAN and lockdep reports (the debug kernel has both; qemu-tests/tests/kclient_debug.rs).
debug_reports='KASAN|possible (circular|recursive) locking|inconsistent lock state|invalid context'
oops=$(($(oopses) + $(dmesg | grep -cE "$debug_reports")))
echo "TMEM-RESULT test=evil modes=$modes oops=$oops seconds=$(($(date +%s) - t_all))"
[ "$oops" = 0 ] || dmesg | tail -80
