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
#include <crypto/blake2s.h>
#include <crypto/chacha20poly1305.h>
#include <crypto/curve25519.h>
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/hex.h>
#include <linux/timekeeping.h>
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

/* The disk has a volatile write cache (so the block layer sends flushes, and emulates FUA with
 * them): the cache device's backing device may have one. BLK_FEAT_* are casts bindgen skips. */
void kc_lim_write_cache(struct queue_limits *lim)
{
	lim->features |= BLK_FEAT_WRITE_CACHE;
}

struct gendisk *kc_alloc_disk(struct blk_mq_tag_set *set, struct queue_limits *lim, void *queuedata)
{
	return blk_mq_alloc_disk(set, lim, queuedata);
}

/* ---- TCP ---- */

static int kc_tcp_connect_noio(u32 addr, u16 port, u32 connect_timeout_ms, u32 io_timeout_ms,
			       struct socket **out);

/* A reconnect happens when memory is shortest (swap-out is what needs the connection): nothing
 * allocated while connecting may start I/O to reclaim memory. */
int kc_tcp_connect(u32 addr, u16 port, u32 connect_timeout_ms, u32 io_timeout_ms, struct socket **out)
{
	unsigned int noio = memalloc_noio_save();
	int err = kc_tcp_connect_noio(addr, port, connect_timeout_ms, io_timeout_ms, out);

	memalloc_noio_restore(noio);
	return err;
}

static int kc_tcp_connect_noio(u32 addr, u16 port, u32 connect_timeout_ms, u32 io_timeout_ms,
			       struct socket **out)
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

/* ---- crypto (lib/crypto: what WireGuard uses) ---- */

void kc_blake2s(u8 out[32], const u8 *const *parts, const size_t *lens, size_t n)
{
	struct blake2s_state st;
	size_t i;

	blake2s_init(&st, BLAKE2S_HASH_SIZE);
	for (i = 0; i < n; i++)
		blake2s_update(&st, parts[i], lens[i]);
	blake2s_final(&st, out);
}

void kc_x25519_keypair(u8 secret[32], u8 public[32])
{
	curve25519_generate_secret(secret);
	if (!curve25519_generate_public(public, secret))
		memset(public, 0, CURVE25519_KEY_SIZE);
}

bool kc_x25519(u8 out[32], const u8 secret[32], const u8 public[32])
{
	return curve25519(out, secret, public);
}

void kc_aead_seal(u8 *dst, const u8 *src, size_t len, const u8 *ad, size_t ad_len, u64 nonce,
		  const u8 key[32])
{
	chacha20poly1305_encrypt(dst, src, len, ad, ad_len, nonce, key);
}

bool kc_aead_open(u8 *dst, const u8 *src, size_t len, const u8 *ad, size_t ad_len, u64 nonce,
		  const u8 key[32])
{
	return chacha20poly1305_decrypt(dst, src, len, ad, ad_len, nonce, key);
}

void kc_random(void *buf, size_t len)
{
	get_random_bytes(buf, len);
}

u64 kc_wall_ns(void)
{
	return ktime_get_real_ns();
}

/* cond_resched() is a macro: kthreads that loop while work keeps coming yield here. */
void kc_cond_resched(void)
{
	cond_resched();
}

void kc_memzero(void *buf, size_t len)
{
	memzero_explicit(buf, len);
}

/* ---- spill device: a local block device for pages no appliance can take ---- */

struct file *kc_spill_open(const char *path)
{
	return bdev_file_open_by_path(path, BLK_OPEN_READ | BLK_OPEN_WRITE, NULL, NULL);
}

void kc_spill_close(struct file *f)
{
	fput(f);
}

u64 kc_spill_pages(struct file *f)
{
	return bdev_nr_sectors(file_bdev(f)) >> 3;
}

/* Synchronous 4 KiB read or write at page index `index` through `bounce` (one page the caller
 * allocated with kc_page_alloc). 0 or -errno. */
int kc_spill_rw(struct file *f, u64 index, struct page *bounce, bool write)
{
	struct bio bio;
	struct bio_vec bvec;
	int err;

	bio_init(&bio, file_bdev(f), &bvec, 1, (write ? REQ_OP_WRITE | REQ_SYNC : REQ_OP_READ));
	bio.bi_iter.bi_sector = index << 3;
	__bio_add_page(&bio, bounce, PAGE_SIZE, 0);
	err = submit_bio_wait(&bio);
	bio_uninit(&bio);
	return err;
}

/* Flushes the device's volatile write cache (a flush of the cache device). 0 or -errno. */
int kc_spill_flush(struct file *f)
{
	return blkdev_issue_flush(file_bdev(f));
}

struct page *kc_page_alloc(void)
{
	return alloc_page(GFP_KERNEL);
}

void kc_page_free(struct page *p)
{
	__free_page(p);
}

void *kc_page_address(struct page *p)
{
	return page_address(p);
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
MODULE_PARM_DESC(remote_target, "Appliances, HOST:PORT[,HOST:PORT...] (IPv4, at most 8); pages are spread over all of them, each on `replicas` appliances");

static char *size = "1G";
module_param(size, charp, 0444);
MODULE_PARM_DESC(size, "Device size, with K/M/G suffix (default 1G)");

static uint io_timeout_ms = 10000;
module_param(io_timeout_ms, uint, 0444);
MODULE_PARM_DESC(io_timeout_ms, "Fail a request still unanswered after this long; also the connect and handshake timeout (default 10000)");

static bool compress;
module_param(compress, bool, 0444);
MODULE_PARM_DESC(compress, "LZ4-compress pages before sending them, and accept LZ4 pages back (default N: pays off only on slow links)");

static uint nr_conns;
module_param(nr_conns, uint, 0444);
MODULE_PARM_DESC(nr_conns, "TCP connections per appliance = hardware queues (default: online CPUs, at most 8)");

static unsigned long long client_id;
module_param(client_id, ullong, 0444);
MODULE_PARM_DESC(client_id, "Client identity sent in HELLO; required with key (default: random per load)");

static uint replicas;
module_param(replicas, uint, 0444);
MODULE_PARM_DESC(replicas, "Copies of every page, on different appliances, 1..3 (default 2 with at least 2 targets, else 1)");

static uint down_after_ms = 3000;
module_param(down_after_ms, uint, 0444);
MODULE_PARM_DESC(down_after_ms, "A connection owing answers for this long, or silent to a keepalive, is reset and its appliance marked down (default 3000)");

static uint keepalive_ms = 1000;
module_param(keepalive_ms, uint, 0444);
MODULE_PARM_DESC(keepalive_ms, "Idle connections are checked this often (default 1000)");

static uint repair_pages_per_s = 8192;
module_param(repair_pages_per_s, uint, 0444);
MODULE_PARM_DESC(repair_pages_per_s, "Most pages per second repair copies to an appliance that missed writes (default 8192 = 32 MiB/s)");

static char *spill;
module_param(spill, charp, 0444);
MODULE_PARM_DESC(spill, "Block device for pages no appliance has room for (default none: such writes fail)");

static char *cache_backing;
module_param(cache_backing, charp, 0444);
MODULE_PARM_DESC(cache_backing, "Block devices to cache, comma-separated (at most 8): creates /dev/kcache0, kcache1... instead of /dev/kclient0, their reads served from the appliances' ephemeral pools (default none)");

static bool insecure;
module_param(insecure, bool, 0444);
MODULE_PARM_DESC(insecure, "Talk to appliances without authentication or encryption (only if no key is given; default N)");

static bool encrypt_pages;
module_param(encrypt_pages, bool, 0444);
MODULE_PARM_DESC(encrypt_pages, "Seal every page with a key that never leaves this machine, so appliances store only ciphertext (default N)");

/* The client's key: written once (hex), never readable back (no get, mode 0200); the Rust client
 * takes it at load and the copy here is wiped. */
static u8 kc_key[32];
static bool kc_key_set;

static int kc_key_param_set(const char *val, const struct kernel_param *kp)
{
	size_t n = strcspn(val, "\n");
	u8 tmp[32];
	int err = 0;

	if (n != 64 || hex2bin(tmp, val, 32))
		err = -EINVAL;
	mutex_lock(&kc_param_lock);
	if (!err) {
		memcpy(kc_key, tmp, 32);
		kc_key_set = true;
	}
	mutex_unlock(&kc_param_lock);
	memzero_explicit(tmp, sizeof(tmp));
	return err;
}

static const struct kernel_param_ops kc_key_ops = {
	.set = kc_key_param_set,
};
module_param_cb(key, &kc_key_ops, NULL, 0200);
MODULE_PARM_DESC(key, "This client's 32-byte key, 64 hex digits (tmemctl keygen); write-only");

bool kc_param_take_key(u8 out[32])
{
	bool set;

	mutex_lock(&kc_param_lock);
	set = kc_key_set;
	if (set)
		memcpy(out, kc_key, 32);
	memzero_explicit(kc_key, sizeof(kc_key));
	kc_key_set = false;
	mutex_unlock(&kc_param_lock);
	return set;
}

bool kc_param_client_id_given(void)
{
	return client_id != 0;
}

u32 kc_param_replicas(void)
{
	return replicas;
}

u32 kc_param_down_after_ms(void)
{
	return clamp_t(u32, down_after_ms, 100, 600 * 1000);
}

u32 kc_param_keepalive_ms(void)
{
	return clamp_t(u32, keepalive_ms, 50, 600 * 1000);
}

u32 kc_param_repair_pages_per_s(void)
{
	return max_t(u32, repair_pages_per_s, 1);
}

/* Returns the length copied, or len if it did not fit. */
size_t kc_param_spill(char *buf, size_t len)
{
	if (!len || !spill || !*spill)
		return 0;
	return strscpy(buf, spill, len) < 0 ? len : strlen(buf);
}

/* Returns the length copied, or len if it did not fit. */
size_t kc_param_cache_backing(char *buf, size_t len)
{
	if (!len || !cache_backing || !*cache_backing)
		return 0;
	return strscpy(buf, cache_backing, len) < 0 ? len : strlen(buf);
}

bool kc_param_insecure(void)
{
	return insecure;
}

bool kc_param_encrypt_pages(void)
{
	return encrypt_pages;
}

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
	char *buf = kmalloc(4 * PAGE_SIZE, GFP_KERNEL);
	size_t n;

	if (!buf)
		return -ENOMEM;
	n = kclient_stats_format(buf, 4 * PAGE_SIZE);
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
