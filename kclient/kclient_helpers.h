/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C surface of kclient: only what Rust cannot reach in Linux 6.12 (macros, static inline
 * functions, module parameters, debugfs). Every function here is declared again, with the same
 * types, in kclient/ffi.rs.
 */
#ifndef KCLIENT_HELPERS_H
#define KCLIENT_HELPERS_H

#include <linux/types.h>

struct request;
struct socket;
struct blk_mq_tag_set;
struct queue_limits;
struct gendisk;
struct file;
struct page;

/* Copies `len` bytes between `buf` and the request's data segments starting at byte `offset`
 * of the request. `to_rq` selects the direction. Returns the bytes copied. */
size_t kc_rq_copy(struct request *rq, size_t offset, void *buf, size_t len, bool to_rq);
/* blk_mq_tag_to_rq() for hardware queue `hctx_idx`; NULL if out of range or never used. */
struct request *kc_tag_to_rq(struct blk_mq_tag_set *set, u32 hctx_idx, u32 tag);
/* blk_mq_alloc_disk() (a macro with a lock class key). Returns an ERR_PTR on failure. */
struct gendisk *kc_alloc_disk(struct blk_mq_tag_set *set, struct queue_limits *lim, void *queuedata);
void kc_lim_write_cache(struct queue_limits *lim);

/* TCP to an IPv4 address (host byte order). Tunes the socket for the swap path (memalloc, NOIO,
 * nodelay, send timeout). 0 or -errno; *out is set on success. */
int kc_tcp_connect(u32 addr, u16 port, u32 connect_timeout_ms, u32 io_timeout_ms, struct socket **out);
/* Sends the whole buffer (looping on short sends) with reclaim disabled: 0 or -errno. */
int kc_sock_send(struct socket *sock, const void *buf, size_t len);
/* Receives exactly `len` bytes: 0, -ECONNRESET on EOF, -EAGAIN if nothing arrived within the
 * I/O timeout, -ETIMEDOUT if data stopped arriving part-way, or another -errno. */
int kc_sock_recv(struct socket *sock, void *buf, size_t len);
void kc_sock_shutdown(struct socket *sock);
void kc_sock_release(struct socket *sock);

/* The kernel's LZ4 block codec (lib/lz4, the format lz4_flex speaks on the appliance).
 * kc_lz4_compress: compressed length, or 0 if it does not fit `cap`; `wrkmem` holds
 * kc_lz4_wrkmem_size() bytes. kc_lz4_decompress: decoded length, or < 0 for malformed input (never
 * writes outside `dst[0..cap]`). */
size_t kc_lz4_wrkmem_size(void);
int kc_lz4_compress(const void *src, size_t len, void *dst, size_t cap, void *wrkmem);
int kc_lz4_decompress(const void *src, size_t len, void *dst, size_t cap);

/* lib/crypto, as WireGuard uses it. kc_blake2s: BLAKE2s-256 of the concatenation of n parts.
 * kc_x25519_keypair: a random clamped secret and its public key. kc_x25519: the shared secret,
 * false if it is all zeros. kc_aead_seal/open: ChaCha20-Poly1305 with the 64-bit nonce (as
 * 0^32 || le64), dst holds len + 16 (seal) or len - 16 (open, len includes the tag); open is
 * false if the tag does not verify. */
void kc_blake2s(u8 out[32], const u8 *const *parts, const size_t *lens, size_t n);
void kc_x25519_keypair(u8 secret[32], u8 public[32]);
bool kc_x25519(u8 out[32], const u8 secret[32], const u8 public[32]);
void kc_aead_seal(u8 *dst, const u8 *src, size_t len, const u8 *ad, size_t ad_len, u64 nonce,
		  const u8 key[32]);
bool kc_aead_open(u8 *dst, const u8 *src, size_t len, const u8 *ad, size_t ad_len, u64 nonce,
		  const u8 key[32]);
void kc_random(void *buf, size_t len);
/* Wall clock, ns since 1970 (the Noise handshake's timestamp). */
u64 kc_wall_ns(void);
/* memzero_explicit: wipes key material. */
void kc_cond_resched(void);
void kc_memzero(void *buf, size_t len);

/* The spill device. kc_spill_open: an ERR_PTR or the opened block device; kc_spill_pages: its
 * size in 4 KiB pages; kc_spill_rw: synchronous 4 KiB I/O at page `index` through `bounce`
 * (0 or -errno). */
struct file *kc_spill_open(const char *path);
void kc_spill_close(struct file *f);
u64 kc_spill_pages(struct file *f);
int kc_spill_rw(struct file *f, u64 index, struct page *bounce, bool write);
int kc_spill_flush(struct file *f);
struct page *kc_page_alloc(void);
void kc_page_free(struct page *p);
void *kc_page_address(struct page *p);

/* Module parameters (owned by C, parsed by Rust). */
size_t kc_param_remote_target(char *buf, size_t len);
u64 kc_param_size_bytes(void);
u32 kc_param_io_timeout_ms(void);
bool kc_param_compress(void);
u32 kc_param_nr_conns(void);
u64 kc_param_client_id(void);
u32 kc_num_online_cpus(void);
/* Copies the key into out and wipes the module's copy; false if none was given. */
bool kc_param_take_key(u8 out[32]);
bool kc_param_client_id_given(void);
u32 kc_param_replicas(void);
u32 kc_param_down_after_ms(void);
u32 kc_param_keepalive_ms(void);
u32 kc_param_repair_pages_per_s(void);
size_t kc_param_spill(char *buf, size_t len);
size_t kc_param_cache_backing(char *buf, size_t len);
bool kc_param_insecure(void);
bool kc_param_encrypt_pages(void);
/* While live, writes to remote_target call Rust's kclient_target_changed(val) under the parameter
 * lock (an error rejects the write); clearing it waits for a running call. */
void kc_params_set_live(bool live);

/* debugfs: /sys/kernel/debug/kclient/stats, formatted by Rust's kclient_stats_format(). */
int kc_debugfs_init(void);
void kc_debugfs_exit(void);

#endif
