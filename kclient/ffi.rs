//! Declarations of the C helpers in `kclient_helpers.c` (see `kclient_helpers.h` for their contracts).
//!
//! Only the thin safe wrappers (`blk`, `net`, `thread`, `lz4`, `params`, `debugfs`) call these.

// Raw pointers to kernel structs only; bindgen marks a few nested lockdep types zero-sized.
#![allow(improper_ctypes)]

use kernel::bindings;
use kernel::ffi::{c_char, c_int, c_void};

extern "C" {
    pub(crate) fn kc_rq_copy(
        rq: *mut bindings::request,
        offset: usize,
        buf: *mut c_void,
        len: usize,
        to_rq: bool,
    ) -> usize;
    pub(crate) fn kc_tag_to_rq(
        set: *mut bindings::blk_mq_tag_set,
        hctx_idx: u32,
        tag: u32,
    ) -> *mut bindings::request;
    pub(crate) fn kc_alloc_disk(
        set: *mut bindings::blk_mq_tag_set,
        lim: *mut bindings::queue_limits,
        queuedata: *mut c_void,
    ) -> *mut bindings::gendisk;
    pub(crate) fn kc_lim_write_cache(lim: *mut bindings::queue_limits);

    pub(crate) fn kc_tcp_connect(
        addr: u32,
        port: u16,
        connect_timeout_ms: u32,
        io_timeout_ms: u32,
        out: *mut *mut bindings::socket,
    ) -> c_int;
    pub(crate) fn kc_sock_send(
        sock: *mut bindings::socket,
        buf: *const c_void,
        len: usize,
    ) -> c_int;
    pub(crate) fn kc_sock_recv(sock: *mut bindings::socket, buf: *mut c_void, len: usize) -> c_int;
    pub(crate) fn kc_sock_shutdown(sock: *mut bindings::socket);
    pub(crate) fn kc_sock_release(sock: *mut bindings::socket);

    pub(crate) fn kc_lz4_wrkmem_size() -> usize;
    pub(crate) fn kc_lz4_compress(
        src: *const c_void,
        len: usize,
        dst: *mut c_void,
        cap: usize,
        wrkmem: *mut c_void,
    ) -> c_int;
    pub(crate) fn kc_lz4_decompress(
        src: *const c_void,
        len: usize,
        dst: *mut c_void,
        cap: usize,
    ) -> c_int;

    pub(crate) fn kc_blake2s(out: *mut u8, parts: *const *const u8, lens: *const usize, n: usize);
    pub(crate) fn kc_x25519_keypair(secret: *mut u8, public: *mut u8);
    pub(crate) fn kc_x25519(out: *mut u8, secret: *const u8, public: *const u8) -> bool;
    pub(crate) fn kc_aead_seal(
        dst: *mut u8,
        src: *const u8,
        len: usize,
        ad: *const u8,
        ad_len: usize,
        nonce: u64,
        key: *const u8,
    );
    pub(crate) fn kc_aead_open(
        dst: *mut u8,
        src: *const u8,
        len: usize,
        ad: *const u8,
        ad_len: usize,
        nonce: u64,
        key: *const u8,
    ) -> bool;
    pub(crate) fn kc_random(buf: *mut c_void, len: usize);
    pub(crate) fn kc_wall_ns() -> u64;
    pub(crate) fn kc_cond_resched();
    pub(crate) fn kc_memzero(buf: *mut c_void, len: usize);

    pub(crate) fn kc_spill_open(path: *const c_char) -> *mut bindings::file;
    pub(crate) fn kc_spill_close(f: *mut bindings::file);
    pub(crate) fn kc_spill_pages(f: *mut bindings::file) -> u64;
    pub(crate) fn kc_spill_rw(
        f: *mut bindings::file,
        index: u64,
        bounce: *mut bindings::page,
        write: bool,
    ) -> c_int;
    pub(crate) fn kc_spill_flush(f: *mut bindings::file) -> c_int;
    pub(crate) fn kc_page_alloc() -> *mut bindings::page;
    pub(crate) fn kc_page_free(p: *mut bindings::page);
    pub(crate) fn kc_page_address(p: *mut bindings::page) -> *mut c_void;

    pub(crate) fn kc_param_remote_target(buf: *mut c_char, len: usize) -> usize;
    pub(crate) fn kc_param_take_key(out: *mut u8) -> bool;
    pub(crate) fn kc_param_client_id_given() -> bool;
    pub(crate) fn kc_param_replicas() -> u32;
    pub(crate) fn kc_param_down_after_ms() -> u32;
    pub(crate) fn kc_param_keepalive_ms() -> u32;
    pub(crate) fn kc_param_repair_pages_per_s() -> u32;
    pub(crate) fn kc_param_spill(buf: *mut c_char, len: usize) -> usize;
    pub(crate) fn kc_param_cache_backing(buf: *mut c_char, len: usize) -> usize;
    pub(crate) fn kc_param_insecure() -> bool;
    pub(crate) fn kc_param_encrypt_pages() -> bool;
    pub(crate) fn kc_param_size_bytes() -> u64;
    pub(crate) fn kc_param_io_timeout_ms() -> u32;
    pub(crate) fn kc_param_compress() -> bool;
    pub(crate) fn kc_param_nr_conns() -> u32;
    pub(crate) fn kc_param_client_id() -> u64;
    pub(crate) fn kc_num_online_cpus() -> u32;
    pub(crate) fn kc_params_set_live(live: bool);

    pub(crate) fn kc_debugfs_init() -> c_int;
    pub(crate) fn kc_debugfs_exit();
}
