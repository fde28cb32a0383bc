// SPDX-License-Identifier: GPL-2.0
/*
 * kclient C helpers: macros and static inline functions that Rust cannot call in Linux 6.12,
 * module parameters and debugfs. No client logic lives here (see kclient_main.rs).
 */
#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#include <linux/debugfs.h>
#include <linux/highmem.h>
#include <linux/in.h>
#include <linux/lz4.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/net.h>
#include <linux/random.h>
#include <linux/sched/mm.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/tcp.h>
#include <linux/uio.h>
#include <net/net_namespace.h>
#include <net/sock.h>

#include "kclient_helpers.h"

/* Implemented in Rust. */
int kclient_target_changed(const char *val);
size_t kclient_stats_format(char *buf, size_t len);

/* ---- block ---- */

/* blk.rs writes these BLK_STS_* values as literals (bindgen cannot evaluate the casting macros):
 * keep both sides in step, or fail the build here. */
static_assert(BLK_STS_OK == 0);
static_assert(BLK_STS_NOTSUPP == (__force blk_status_t)1);
static_assert(BLK_STS_TIMEOUT == (__force blk_status_t)2);
static_assert(BLK_STS_NOSPC == (__force blk_status_t)3);
static_assert(BLK_STS_IOERR == (__force blk_status_t)10);
/* blk.rs computes REQ_OP_MASK from REQ_OP_BITS. */
static_assert(REQ_OP_MASK == (__force blk_opf_t)((1 << REQ_OP_BITS) - 1));

size_t kc_rq_copy(struct request *rq, size_t offset, void *buf, size_t len, bool to_rq)
{
	struct req_iterator iter;
	struct bio_vec bvec;
	size_t pos = 0, done = 0;

	rq_for_each_segment(bvec, rq, iter) {
		size_t seg_start = pos, seg_len = bvec.bv_len, skip, n;
		void *p;

		pos += seg_len;
		if (pos <= offset)
			continue;
		skip = offset > seg_start ? offset - seg_start : 0;
		n = min(seg_len - skip, len - done);
		p = bvec_kmap_local(&bvec);
		if (to_rq)
			memcpy(p + skip, buf + done, n);
		else
			memcpy(buf + done, p + skip, n);
		kunmap_local(p);
		if (to_rq)
			flush_dcache_page(bvec.bv_page);
		done += n;
		offset += n;
		if (done == len)
			break;
	}
	return done;
}

struct request *kc_tag_to_rq(struct blk_mq_tag_set *set, u32 hctx_idx, u32 tag)
{
	if (hctx_idx >= set->nr_hw_queues || tag >= set->queue_depth || !set->tags ||
	    !set->tags[hctx_idx])
		return NULL;
	return blk_mq_tag_to_rq(set->tags[hctx_idx], tag);
}

struct gendisk *kc_alloc_disk(struct blk_mq_tag_set *set, struct queue_limits *lim, void *queuedata)
{
	return blk_mq_alloc_disk(set, lim, queuedata);
}

/* ---- TCP ---- */

int kc_tcp_connect(u32 addr, u16 port, u32 connect_timeout_ms, u32 io_timeout_ms, struct socket **out)
{
	struct sockaddr_in sin = {
		.sin_family = AF_INET,
		.sin_port = htons(port),
		.sin_addr.s_addr = htonl(addr),
	};
	struct socket *sock;
	int err;

	err = sock_create_kern(&init_net, AF_INET, SOCK_STREAM, IPPROTO_TCP, &sock);
	if (err)
		return err;
	/* Swap-out runs under memory pressure: never recurse into reclaim from the socket. */
	sk_set_memalloc(sock->sk);
	sock->sk->sk_allocation = GFP_NOIO | __GFP_MEMALLOC;
	sock->sk->sk_use_task_frag = false;
	tcp_sock_set_nodelay(sock->sk);
	/* A blocking connect waits at most sk_sndtimeo. */
	sock->sk->sk_sndtimeo = msecs_to_jiffies(connect_timeout_ms);
	err = kernel_connect(sock, (struct sockaddr *)&sin, sizeof(sin), 0);
	if (err) {
		sock_release(sock);
		return err;
	}
	/* A send blocked on a full window gives up after the I/O timeout; a receive wakes up
	 * after it with -EAGAIN (see kc_sock_recv). */
	sock->sk->sk_sndtimeo = msecs_to_jiffies(io_timeout_ms);
	sock->sk->sk_rcvtimeo = msecs_to_jiffies(io_timeout_ms);
	*out = sock;
	return 0;
}

int kc_sock_send(struct socket *sock, const void *buf, size_t len)
{
	unsigned int noreclaim = memalloc_noreclaim_save();
	int err = 0;

	while (len > 0) {
		struct kvec vec = { .iov_base = (void *)buf, .iov_len = len };
		struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
		int n = kernel_sendmsg(sock, &msg, &vec, 1, len);

		if (n <= 0) {
			err = n ? n : -EPIPE;
			break;
		}
		buf += n;
		len -= n;
	}
	memalloc_noreclaim_restore(noreclaim);
	return err;
}

int kc_sock_recv(struct socket *sock, void *buf, size_t len)
{
	size_t got = 0;

	while (len > 0) {
		struct kvec vec = { .iov_base = buf, .iov_len = len };
		struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
		int n = kernel_recvmsg(sock, &msg, &vec, 1, len, MSG_WAITALL);

		if (n == 0)
			return -ECONNRESET;
		/* Idle for the whole receive timeout: -EAGAIN; stalled inside a frame: give up. */
		if (n == -EAGAIN && got)
			return -ETIMEDOUT;
		if (n < 0)
			return n;
		buf += n;
		len -= n;
		got += n;
	}
	return 0;
}

void kc_sock_shutdown(struct socket *sock)
{
	kernel_sock_shutdown(sock, SHUT_RDWR);
}

void kc_sock_release(struct socket *sock)
{
	sock_release(sock);
}

/* ---- LZ4 ---- */

size_t kc_lz4_wrkmem_size(void)
{
	return LZ4_MEM_COMPRESS;
}

int kc_lz4_compress(const void *src, size_t len, void *dst, size_t cap, void *wrkmem)
{
	if (len > INT_MAX || cap > INT_MAX)
		return 0;
	return LZ4_compress_default(src, dst, (int)len, (int)cap, wrkmem);
}

int kc_lz4_decompress(const void *src, size_t len, void *dst, size_t cap)
{
	if (len > INT_MAX || cap > INT_MAX)
		return -EINVAL;
	return LZ4_decompress_safe(src, dst, (int)len, (int)cap);
}

/* ---- module parameters ---- */

#define KC_TARGET_MAX 256
static DEFINE_MUTEX(kc_param_lock);
static char kc_target[KC_TARGET_MAX];
static bool kc_live;

static int kc_target_set(const char *val, const struct kernel_param *kp)
{
	size_t n = strcspn(val, "\n");
	char tmp[KC_TARGET_MAX];
	int err = 0;

	if (n >= KC_TARGET_MAX)
		return -ENOSPC;
	memcpy(tmp, val, n);
	tmp[n] = '\0';
	/* Under the lock, so the Rust client cannot go away during the call. */
	mutex_lock(&kc_param_lock);
	if (kc_live)
		err = kclient_target_changed(tmp);
	if (!err)
		memcpy(kc_target, tmp, n + 1);
	mutex_unlock(&kc_param_lock);
	return err;
}

static int kc_target_get(char *buffer, const struct kernel_param *kp)
{
	int n;

	mutex_lock(&kc_param_lock);
	n = sysfs_emit(buffer, "%s\n", kc_target);
	mutex_unlock(&kc_param_lock);
	return n;
}

static const struct kernel_param_ops kc_target_ops = {
	.set = kc_target_set,
	.get = kc_target_get,
};
module_param_cb(remote_target, &kc_target_ops, NULL, 0644);
MODULE_PARM_DESC(remote_target, "Appliances, HOST:PORT[,HOST:PORT...] (IPv4); first reachable is used");

static char *size = "1G";
module_param(size, charp, 0444);
MODULE_PARM_DESC(size, "Device size, with K/M/G suffix (default 1G)");

static uint io_timeout_ms = 10000;
module_param(io_timeout_ms, uint, 0444);
MODULE_PARM_DESC(io_timeout_ms, "Fail I/O the appliance has not answered after this long (default 10000)");

static bool compress;
module_param(compress, bool, 0444);
MODULE_PARM_DESC(compress, "LZ4-compress pages before sending them, and accept LZ4 pages back (default N: pays off only on slow links)");

static uint nr_conns;
module_param(nr_conns, uint, 0444);
MODULE_PARM_DESC(nr_conns, "TCP connections = hardware queues (default: online CPUs, at most 8)");

static unsigned long long client_id;
module_param(client_id, ullong, 0444);
MODULE_PARM_DESC(client_id, "Client identity sent in HELLO (default: random per load)");

size_t kc_param_remote_target(char *buf, size_t len)
{
	size_t n;

	if (!len)
		return 0;
	mutex_lock(&kc_param_lock);
	n = strscpy(buf, kc_target, len) < 0 ? len - 1 : strlen(buf);
	mutex_unlock(&kc_param_lock);
	return n;
}

u64 kc_param_size_bytes(void)
{
	return size ? memparse(size, NULL) : 0;
}

u32 kc_param_io_timeout_ms(void)
{
	return clamp_t(u32, READ_ONCE(io_timeout_ms), 100, 3600 * 1000);
}

bool kc_param_compress(void)
{
	return compress;
}

u32 kc_param_nr_conns(void)
{
	return nr_conns;
}

u64 kc_param_client_id(void)
{
	if (!client_id)
		client_id = get_random_u64() | 1;
	return client_id;
}

u32 kc_num_online_cpus(void)
{
	return num_online_cpus();
}

void kc_params_set_live(bool live)
{
	mutex_lock(&kc_param_lock);
	kc_live = live;
	mutex_unlock(&kc_param_lock);
}

/* ---- debugfs ---- */

static struct dentry *kc_debugfs_dir;

static int kc_stats_show(struct seq_file *m, void *v)
{
	char *buf = kmalloc(PAGE_SIZE, GFP_KERNEL);
	size_t n;

	if (!buf)
		return -ENOMEM;
	n = kclient_stats_format(buf, PAGE_SIZE);
	seq_write(m, buf, n);
	kfree(buf);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(kc_stats);

int kc_debugfs_init(void)
{
	kc_debugfs_dir = debugfs_create_dir("kclient", NULL);
	if (IS_ERR(kc_debugfs_dir))
		return PTR_ERR(kc_debugfs_dir);
	debugfs_create_file("stats", 0444, kc_debugfs_dir, NULL, &kc_stats_fops);
	return 0;
}

void kc_debugfs_exit(void)
{
	debugfs_remove_recursive(kc_debugfs_dir);
	kc_debugfs_dir = NULL;
}
