//! blk-mq glue: a tag set, a disk, and requests whose lifetime is tracked so that several threads
//! (the submitter, receive threads, the timeout handler) can touch a request safely.
//!
//! The 6.12 `kernel::block::mq` abstraction has no per-device data, no error completion, no timeout
//! handler and no discard limits, so this module talks to blk-mq directly, with every `unsafe` here.
//!
//! # Request lifecycle
//!
//! Every request carries a [`Pdu`] holding its [`RequestState`] (`logic/request.rs`, the
//! kernel-free state machine tested with loom on the host): `queue_rq` starts it with a fresh
//! generation and one use (the submitter); other threads find a request by (hardware queue, tag,
//! generation) with [`TagSet::acquire`], which adds a use only while it is active and not
//! finished, so stale replies fail to acquire it; whoever drops the last use of a finished request
//! (or finishes one nobody uses) completes it, exactly once, never while another thread still
//! copies its pages.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::logic::request::{RequestState, GEN_MASK};

use kernel::bindings;
use kernel::error::{from_err_ptr, to_result};
use kernel::ffi::{c_int, c_uint, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::ffi;

/// Block operations a driver implements. Called from blk-mq in process context (the tag set is
/// `BLK_MQ_F_BLOCKING`), so implementations may sleep.
pub(crate) trait Driver: Send + Sync + 'static {
    /// A new request on hardware queue `hctx`. The driver must eventually finish it (see
    /// [`Inflight::page_done`], [`Inflight::fail`]); dropping `rq` only drops the submitter's use.
    fn queue_rq(&self, hctx: u32, rq: Inflight<'_>);
    /// A request is being completed (from any context, possibly interrupt: must not sleep);
    /// `flags` are what the driver set with [`Inflight::set_driver_flags`].
    fn completed(&self, op: Op, sector: u64, bytes: u32, flags: u32);
}

/// The operation of a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op {
    Read,
    Write,
    Flush,
    Discard,
    Other(u32),
}

/// Status a request completes with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    Ok,
    IoErr,
    Timeout,
    NoSpace,
    NotSupported,
}

/// `BLK_STS_*` values bindgen cannot see (`include/linux/blk_types.h` defines them as casts).
/// `kclient_helpers.c` checks each against the kernel's macro at compile time (`static_assert`),
/// so a kernel that changes one fails to build this module instead of misreporting errors.
const BLK_STS_NOTSUPP: u8 = 1;
const BLK_STS_TIMEOUT: u8 = 2;
const BLK_STS_NOSPC: u8 = 3;
const BLK_STS_IOERR: u8 = 10;

impl Status {
    fn raw(self) -> u8 {
        match self {
            Status::Ok => bindings::BLK_STS_OK as u8,
            Status::NotSupported => BLK_STS_NOTSUPP,
            Status::Timeout => BLK_STS_TIMEOUT,
            Status::NoSpace => BLK_STS_NOSPC,
            Status::IoErr => BLK_STS_IOERR,
        }
    }
}

/// `REQ_OP_MASK` (a cast macro bindgen skips), from `REQ_OP_BITS` (which it sees).
const REQ_OP_MASK: u32 = (1 << bindings::REQ_OP_BITS) - 1;
/// Most parts (pages) one request may be split into: each part is answered at most once.
pub(crate) const MAX_PARTS: u32 = crate::logic::request::MAX_PARTS as u32;

static NEXT_GEN: AtomicU32 = AtomicU32::new(1);

fn next_gen() -> u32 {
    loop {
        let gen = NEXT_GEN.fetch_add(1, Ordering::Relaxed) & GEN_MASK;
        if gen != 0 {
            return gen;
        }
    }
}

/// Per-request driver data (blk-mq's "pdu", `cmd_size` bytes after `struct request`).
#[repr(C)]
struct Pdu {
    req: RequestState,
    start_ns: AtomicU64,
    /// The status [`RequestState::complete`] returned, for `complete_cb`.
    status: AtomicU32,
    /// The driver's own bits about the request (reset for each request).
    driver_flags: AtomicU32,
}

/// A reference to a started, not yet completed request. While it exists the request is not
/// completed, so its pages may be read and written.
pub(crate) struct Inflight<'a> {
    rq: NonNull<bindings::request>,
    _set: PhantomData<&'a ()>,
}

// SAFETY: the request is shared with blk-mq and other threads only through atomics in the `Pdu`
// and the kernel's own locking; `Inflight` carries no thread-affine state.
unsafe impl Send for Inflight<'_> {}

impl Inflight<'_> {
    fn pdu(&self) -> &Pdu {
        // SAFETY: `self.rq` is a request of a tag set whose `cmd_size` is `size_of::<Pdu>()`, and its
        // `Pdu` was initialised in `init_request_cb`; requests live as long as the tag set.
        unsafe { &*bindings::blk_mq_rq_to_pdu(self.rq.as_ptr()).cast::<Pdu>() }
    }

    fn raw(&self) -> &bindings::request {
        // SAFETY: the request is started and cannot complete while `self` exists (type invariant).
        unsafe { self.rq.as_ref() }
    }

    pub(crate) fn op(&self) -> Op {
        op_of(self.raw().cmd_flags)
    }

    /// First 512-byte sector.
    pub(crate) fn sector(&self) -> u64 {
        self.raw().__sector
    }

    /// Length in bytes.
    pub(crate) fn bytes(&self) -> u32 {
        self.raw().__data_len
    }

    /// The hardware queue the request came on.
    pub(crate) fn hctx(&self) -> u32 {
        // SAFETY: a started request's `mq_hctx` points to its live hardware context.
        unsafe { (*self.raw().mq_hctx).queue_num }
    }

    pub(crate) fn tag(&self) -> u32 {
        // Tags of started requests are non-negative.
        self.raw().tag as u32
    }

    pub(crate) fn gen(&self) -> u32 {
        self.pdu().req.gen()
    }

    /// Sets driver bits, reported back by [`Driver::completed`].
    pub(crate) fn set_driver_flags(&self, flags: u32) {
        self.pdu().driver_flags.fetch_or(flags, Ordering::AcqRel);
    }

    /// Microseconds since the request started.
    pub(crate) fn age_us(&self) -> u64 {
        now_ns().saturating_sub(self.pdu().start_ns.load(Ordering::Relaxed)) / 1000
    }

    /// The request's state machine: parts, replica answers.
    pub(crate) fn state(&self) -> &RequestState {
        &self.pdu().req
    }

    /// One part finished; the last one finishes the request (with `Ok` unless it failed meanwhile).
    pub(crate) fn page_done(&self) {
        if self.pdu().req.part_done() {
            self.finish(None);
        }
    }

    /// Fails the request; it completes when the last user drops its reference.
    pub(crate) fn fail(&self, status: Status) {
        self.finish(Some(status));
    }

    /// Finishes with `Ok` regardless of pending parts.
    pub(crate) fn succeed(&self) {
        self.finish(None);
    }

    fn finish(&self, status: Option<Status>) {
        if self.pdu().req.finish(status.map(Status::raw)) {
            // The caller holds a use (`self`), so `finish` cannot report "no users": nothing to
            // complete here; the last `Drop` completes it.
        }
    }

    /// Copies `buf.len()` bytes out of the request's data, starting `offset` bytes into it.
    pub(crate) fn copy_out(&self, offset: usize, buf: &mut [u8]) -> bool {
        // SAFETY: the request is started and not completed (type invariant), so its bios are valid;
        // `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe {
            ffi::kc_rq_copy(
                self.rq.as_ptr(),
                offset,
                buf.as_mut_ptr().cast::<c_void>(),
                buf.len(),
                false,
            )
        };
        n == buf.len()
    }

    /// Copies `buf` into the request's data, starting `offset` bytes into it.
    pub(crate) fn copy_in(&self, offset: usize, buf: &[u8]) -> bool {
        // SAFETY: as in `copy_out`; `kc_rq_copy` only reads `buf` when `to_rq` is true.
        let n = unsafe {
            ffi::kc_rq_copy(
                self.rq.as_ptr(),
                offset,
                buf.as_ptr().cast_mut().cast::<c_void>(),
                buf.len(),
                true,
            )
        };
        n == buf.len()
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if self.pdu().req.release() {
            // SAFETY: we dropped the last use of a finished request: nobody else touches it any
            // more, and only that transition (once) gets here.
            unsafe { complete(self.rq.as_ptr(), self.pdu()) };
        }
    }
}

/// # Safety
///
/// `rq` must be a started request that finished with no users left, completed only once.
unsafe fn complete(rq: *mut bindings::request, pdu: &Pdu) {
    // Makes it inactive (nothing can acquire it any more); the status stays for `complete_cb`.
    pdu.status
        .store(u32::from(pdu.req.complete()), Ordering::Release);
    // SAFETY: guaranteed by the caller; blk-mq then calls `complete_cb`.
    unsafe { bindings::blk_mq_complete_request(rq) };
}

fn op_of(cmd_flags: u32) -> Op {
    match cmd_flags & REQ_OP_MASK {
        bindings::req_op_REQ_OP_READ => Op::Read,
        bindings::req_op_REQ_OP_WRITE => Op::Write,
        bindings::req_op_REQ_OP_FLUSH => Op::Flush,
        bindings::req_op_REQ_OP_DISCARD => Op::Discard,
        other => Op::Other(other),
    }
}

fn now_ns() -> u64 {
    // SAFETY: `ktime_get` has no preconditions.
    let t = unsafe { bindings::ktime_get() };
    t.max(0) as u64
}

/// A blk-mq tag set driving `T`.
///
/// # Invariants
///
/// `set` and `ops` were allocated by `KBox` and `set` was initialised by `blk_mq_alloc_tag_set`.
pub(crate) struct TagSet<T: Driver> {
    set: NonNull<bindings::blk_mq_tag_set>,
    ops: NonNull<bindings::blk_mq_ops>,
    _p: PhantomData<T>,
}

// SAFETY: the tag set is used through blk-mq functions that do their own locking.
unsafe impl<T: Driver> Send for TagSet<T> {}
// SAFETY: as above.
unsafe impl<T: Driver> Sync for TagSet<T> {}

impl<T: Driver> TagSet<T> {
    /// `nr_hw_queues` queues of `depth` tags; requests time out after `timeout_ms`.
    pub(crate) fn new(nr_hw_queues: u32, depth: u32, timeout_ms: u32) -> Result<Arc<Self>> {
        let ops = bindings::blk_mq_ops {
            queue_rq: Some(queue_rq_cb::<T>),
            complete: Some(complete_cb::<T>),
            timeout: Some(timeout_cb::<T>),
            init_hctx: Some(init_hctx_cb),
            init_request: Some(init_request_cb),
            // SAFETY: all remaining fields are optional function pointers; zero means "none".
            ..unsafe { core::mem::zeroed() }
        };
        let ops = KBox::into_raw(KBox::new(ops, GFP_KERNEL)?);
        // SAFETY: `blk_mq_tag_set` is a C struct of integers, pointers, a mutex and a list head:
        // all-zero bytes are a valid value, and `blk_mq_alloc_tag_set` (on the boxed copy below,
        // which never moves again) initialises the lock and the list.
        let mut set: bindings::blk_mq_tag_set = unsafe { core::mem::zeroed() };
        set.ops = ops;
        set.nr_hw_queues = nr_hw_queues;
        set.queue_depth = depth;
        set.numa_node = bindings::NUMA_NO_NODE;
        set.cmd_size = core::mem::size_of::<Pdu>() as c_uint;
        set.flags = bindings::BLK_MQ_F_SHOULD_MERGE | bindings::BLK_MQ_F_BLOCKING;
        set.nr_maps = 1;
        // SAFETY: `__msecs_to_jiffies` has no preconditions.
        set.timeout = unsafe { bindings::__msecs_to_jiffies(timeout_ms) } as c_uint;
        let set = match KBox::new(set, GFP_KERNEL) {
            Ok(set) => KBox::into_raw(set),
            Err(e) => {
                // SAFETY: `ops` came from `KBox::into_raw` above and is not used by anyone yet.
                drop(unsafe { KBox::from_raw(ops) });
                return Err(e.into());
            }
        };
        // SAFETY: `set` is a valid, zero-initialised tag set with ops and sizes filled in.
        if let Err(e) = to_result(unsafe { bindings::blk_mq_alloc_tag_set(set) }) {
            // SAFETY: both came from `KBox::into_raw` above and blk-mq did not keep them.
            unsafe {
                drop(KBox::from_raw(set));
                drop(KBox::from_raw(ops));
            }
            return Err(e);
        }
        Ok(Arc::new(
            Self {
                // SAFETY: `KBox::into_raw` never returns null.
                set: unsafe { NonNull::new_unchecked(set) },
                // SAFETY: as above.
                ops: unsafe { NonNull::new_unchecked(ops) },
                _p: PhantomData,
            },
            GFP_KERNEL,
        )?)
    }

    /// Finds the request with `tag` on queue `hctx` if it is still the one of generation `gen`.
    pub(crate) fn acquire(&self, hctx: u32, tag: u32, gen: u32) -> Option<Inflight<'_>> {
        // SAFETY: `self.set` is an allocated tag set (invariant); the helper bounds-checks.
        let rq = unsafe { ffi::kc_tag_to_rq(self.set.as_ptr(), hctx, tag) };
        let rq = NonNull::new(rq)?;
        // SAFETY: requests of this tag set carry a `Pdu` initialised in `init_request_cb` and live
        // until the tag set is freed, which cannot happen while `self` is borrowed.
        let pdu = unsafe { &*bindings::blk_mq_rq_to_pdu(rq.as_ptr()).cast::<Pdu>() };
        try_acquire(pdu, Some(gen))?;
        Some(Inflight {
            rq,
            _set: PhantomData,
        })
    }

    /// Calls `f` for every request in flight (started, not finished) on any queue.
    pub(crate) fn for_each_inflight(&self, mut f: impl FnMut(Inflight<'_>)) {
        let mut f: &mut dyn FnMut(Inflight<'_>) = &mut f;
        // SAFETY: `self.set` is allocated; `busy_iter_cb` receives `&mut f` back synchronously.
        unsafe {
            bindings::blk_mq_tagset_busy_iter(
                self.set.as_ptr(),
                Some(busy_iter_cb),
                (&mut f as *mut &mut dyn FnMut(Inflight<'_>)).cast::<c_void>(),
            )
        };
    }
}

impl<T: Driver> Drop for TagSet<T> {
    fn drop(&mut self) {
        // SAFETY: no disk uses the tag set any more (a `Disk` holds an `Arc` to it); both boxes came
        // from `KBox::into_raw` (type invariant).
        unsafe {
            bindings::blk_mq_free_tag_set(self.set.as_ptr());
            drop(KBox::from_raw(self.set.as_ptr()));
            drop(KBox::from_raw(self.ops.as_ptr()));
        }
    }
}

fn try_acquire(pdu: &Pdu, gen: Option<u32>) -> Option<()> {
    pdu.req.acquire(gen).then_some(())
}

/// # Safety
///
/// Called by `blk_mq_tagset_busy_iter` for a started request `rq` of our tag set, with the `data`
/// that [`TagSet::for_each_inflight`] passed.
unsafe extern "C" fn busy_iter_cb(rq: *mut bindings::request, data: *mut c_void) -> bool {
    // SAFETY: `data` is the `&mut &mut dyn FnMut` passed by `for_each_inflight`, alive for the call.
    let f = unsafe { &mut *data.cast::<&mut dyn FnMut(Inflight<'_>)>() };
    // SAFETY: blk-mq passes started requests of our tag set, each carrying the `Pdu` written by
    // `init_request_cb`.
    let pdu = unsafe { &*bindings::blk_mq_rq_to_pdu(rq).cast::<Pdu>() };
    if try_acquire(pdu, None).is_some() {
        if let Some(rq) = NonNull::new(rq) {
            f(Inflight {
                rq,
                _set: PhantomData,
            });
        }
    }
    true
}

/// # Safety
///
/// Called by blk-mq for a newly allocated request `rq` of our tag set, with `cmd_size` bytes of
/// driver data after it.
unsafe extern "C" fn init_request_cb(
    _set: *mut bindings::blk_mq_tag_set,
    rq: *mut bindings::request,
    _hctx_idx: c_uint,
    _numa_node: c_uint,
) -> c_int {
    // SAFETY: blk-mq allocated `cmd_size = size_of::<Pdu>()` bytes after `rq`, suitably aligned.
    unsafe {
        bindings::blk_mq_rq_to_pdu(rq).cast::<Pdu>().write(Pdu {
            req: RequestState::new(),
            start_ns: AtomicU64::new(0),
            status: AtomicU32::new(0),
            driver_flags: AtomicU32::new(0),
        })
    };
    0
}

/// # Safety
///
/// Called by blk-mq with a valid `hctx` of a disk of our tag set and the tag set's `driver_data`.
unsafe extern "C" fn init_hctx_cb(
    hctx: *mut bindings::blk_mq_hw_ctx,
    data: *mut c_void,
    _idx: c_uint,
) -> c_int {
    // SAFETY: blk-mq passes a valid hctx and the tag set's `driver_data` (our `T`, see `Disk::new`).
    unsafe { (*hctx).driver_data = data };
    0
}

/// # Safety
///
/// Called by blk-mq with a valid `hctx` (set up by [`init_hctx_cb`], so its `driver_data` is the
/// `T` of the disk) and queue data holding a request of our tag set that is not started yet.
unsafe extern "C" fn queue_rq_cb<T: Driver>(
    hctx: *mut bindings::blk_mq_hw_ctx,
    bd: *const bindings::blk_mq_queue_data,
) -> bindings::blk_status_t {
    // SAFETY: blk-mq passes a valid hctx whose `driver_data` is the `T` kept alive by the `Disk`
    // (set in `init_hctx_cb`), and valid queue data with a request of our tag set.
    let (driver, hctx_idx, rq) = unsafe {
        (
            &*(*hctx).driver_data.cast::<T>(),
            (*hctx).queue_num,
            (*bd).rq,
        )
    };
    let Some(rq) = NonNull::new(rq) else {
        return Status::IoErr.raw();
    };
    // SAFETY: `rq` is a request of our tag set, so `cmd_size` bytes after it hold the `Pdu`
    // written by `init_request_cb`, alive as long as the tag set.
    let pdu = unsafe { &*bindings::blk_mq_rq_to_pdu(rq.as_ptr()).cast::<Pdu>() };
    // Parts are set by the driver once it knows them (`RequestState::start` again with the
    // same generation); until then the request has none.
    pdu.start_ns.store(now_ns(), Ordering::Relaxed);
    pdu.driver_flags.store(0, Ordering::Relaxed);
    pdu.req.start(next_gen(), 0);
    crate::stats::STATS
        .inflight_requests
        .fetch_add(1, Ordering::Relaxed);
    // SAFETY: `rq` is a request handed to us by blk-mq and not started yet.
    unsafe { bindings::blk_mq_start_request(rq.as_ptr()) };
    driver.queue_rq(
        hctx_idx,
        Inflight {
            rq,
            _set: PhantomData,
        },
    );
    Status::Ok.raw()
}

/// # Safety
///
/// Called by blk-mq, once, for a request of our tag set completed with `blk_mq_complete_request`.
unsafe extern "C" fn complete_cb<T: Driver>(rq: *mut bindings::request) {
    // SAFETY: blk-mq passes a request of our tag set, which carries the `Pdu` written by
    // `init_request_cb`; its hctx `driver_data` is our `T` (set in `init_hctx_cb`), kept alive by
    // the disk.
    let (pdu, raw, driver) = unsafe {
        (
            &*bindings::blk_mq_rq_to_pdu(rq).cast::<Pdu>(),
            &*rq,
            &*(*(*rq).mq_hctx).driver_data.cast::<T>(),
        )
    };
    let status = pdu.status.load(Ordering::Acquire) as bindings::blk_status_t;
    crate::stats::record_latency(now_ns().saturating_sub(pdu.start_ns.load(Ordering::Relaxed)));
    crate::stats::STATS
        .inflight_requests
        .fetch_sub(1, Ordering::Relaxed);
    driver.completed(
        op_of(raw.cmd_flags),
        raw.__sector,
        raw.__data_len,
        pdu.driver_flags.load(Ordering::Acquire),
    );
    // SAFETY: the request was completed once via `blk_mq_complete_request` and is ended here once.
    unsafe { bindings::blk_mq_end_request(rq, status) };
}

/// # Safety
///
/// Called by blk-mq for a started request of our tag set.
unsafe extern "C" fn timeout_cb<T: Driver>(
    rq: *mut bindings::request,
) -> bindings::blk_eh_timer_return {
    // SAFETY: blk-mq passes a started request of our tag set, carrying the `Pdu` written by
    // `init_request_cb`.
    let pdu = unsafe { &*bindings::blk_mq_rq_to_pdu(rq).cast::<Pdu>() };
    // Connections that stall are found and reset by the failure detector well before this fires
    // (`down_after_ms` < `io_timeout_ms`); this is the last resort for the request itself.
    if pdu.req.in_flight() {
        crate::stats::STATS.timeouts.fetch_add(1, Ordering::Relaxed);
    }
    if pdu.req.finish(Some(Status::Timeout.raw())) {
        // SAFETY: `finish` returned true: it finished the request and nobody holds a use, so it is
        // ours to complete, once.
        unsafe { complete(rq, pdu) };
    }
    bindings::blk_eh_timer_return_BLK_EH_DONE
}

/// Disk geometry and limits.
pub(crate) struct DiskConfig {
    pub(crate) capacity_sectors: u64,
    /// Largest request, in 4 KiB pages.
    pub(crate) max_pages: u32,
    pub(crate) discard: bool,
    /// Announce a volatile write cache, so flushes (and FUA, as flushes) reach the driver.
    pub(crate) write_cache: bool,
}

/// A registered disk (`/dev/<name>`) served by `T`.
///
/// # Invariants
///
/// `disk` was allocated by `kc_alloc_disk` and added with `device_add_disk`; `fops` came from
/// `KBox::into_raw`.
pub(crate) struct Disk<T: Driver> {
    disk: NonNull<bindings::gendisk>,
    fops: NonNull<bindings::block_device_operations>,
    _set: Arc<TagSet<T>>,
    _driver: Arc<T>,
}

// SAFETY: the gendisk is only touched through blk-mq functions that do their own locking.
unsafe impl<T: Driver> Send for Disk<T> {}
// SAFETY: as above.
unsafe impl<T: Driver> Sync for Disk<T> {}

impl<T: Driver> Disk<T> {
    /// Creates and registers `/dev/<name>`; 4 KiB logical and physical blocks.
    pub(crate) fn new(
        name: &[u8],
        set: Arc<TagSet<T>>,
        driver: Arc<T>,
        cfg: &DiskConfig,
        module: &'static ThisModule,
    ) -> Result<Self> {
        // SAFETY: `set.set` is an allocated tag set; `driver_data` is read by `init_hctx_cb` during
        // disk allocation below, and `driver` outlives the disk (we keep the `Arc`).
        unsafe {
            (*set.set.as_ptr()).driver_data = (&*driver as *const T).cast_mut().cast::<c_void>()
        };

        // SAFETY: `queue_limits` holds integers for which zero means "use the default".
        let mut lim: bindings::queue_limits = unsafe { core::mem::zeroed() };
        lim.logical_block_size = 4096;
        lim.physical_block_size = 4096;
        lim.io_min = 4096;
        lim.max_hw_sectors = cfg.max_pages * 8;
        lim.max_segments = cfg.max_pages as u16;
        if cfg.discard {
            lim.max_hw_discard_sectors = 2048;
            lim.discard_granularity = 4096;
        }
        if cfg.write_cache {
            // SAFETY: `lim` is a valid, exclusively borrowed `queue_limits`.
            unsafe { ffi::kc_lim_write_cache(&mut lim) };
        }
        // SAFETY: `set` is allocated; `lim` is valid for the call.
        let disk = from_err_ptr(unsafe {
            ffi::kc_alloc_disk(set.set.as_ptr(), &mut lim, core::ptr::null_mut())
        })?;

        // SAFETY: all fields of `block_device_operations` are optional pointers; zero is "none".
        let mut fops: bindings::block_device_operations = unsafe { core::mem::zeroed() };
        fops.owner = module.as_ptr();
        let fops = match KBox::new(fops, GFP_KERNEL) {
            Ok(f) => KBox::into_raw(f),
            Err(e) => {
                // SAFETY: `disk` was allocated above and never added.
                unsafe { bindings::put_disk(disk) };
                return Err(e.into());
            }
        };
        // SAFETY: `disk` is allocated and not yet visible to anyone else.
        unsafe {
            (*disk).fops = fops;
            let dst = &mut (*disk).disk_name;
            let n = name.len().min(dst.len() - 1);
            for (d, s) in dst.iter_mut().zip(name.iter().take(n)) {
                *d = *s as _;
            }
            dst[n] = 0;
            bindings::set_capacity(disk, cfg.capacity_sectors);
        }
        // SAFETY: `disk` is fully set up.
        let added = to_result(unsafe {
            bindings::device_add_disk(core::ptr::null_mut(), disk, core::ptr::null_mut())
        });
        if let Err(e) = added {
            // SAFETY: `disk` was not added; `fops` came from `KBox::into_raw` and is unused now.
            unsafe {
                bindings::put_disk(disk);
                drop(KBox::from_raw(fops));
            }
            return Err(e);
        }
        Ok(Self {
            // SAFETY: `from_err_ptr` succeeded, so `disk` is not null.
            disk: unsafe { NonNull::new_unchecked(disk) },
            // SAFETY: `KBox::into_raw` never returns null.
            fops: unsafe { NonNull::new_unchecked(fops) },
            _set: set,
            _driver: driver,
        })
    }
}

impl<T: Driver> Drop for Disk<T> {
    fn drop(&mut self) {
        // SAFETY: the disk was added (invariant). `del_gendisk` waits for in-flight I/O, which the
        // driver (still alive: we hold it) completes or fails within its timeout.
        unsafe {
            bindings::del_gendisk(self.disk.as_ptr());
            bindings::put_disk(self.disk.as_ptr());
            drop(KBox::from_raw(self.fops.as_ptr()));
        }
    }
}
