//! The appliance's own heap on Hermit, apart from the kernel's.
//!
//! A Hermit application allocates from the kernel heap, where the virtio-net driver also allocates
//! and frees buffers for every packet. Long-lived store allocations (slabs, index nodes) placed
//! between short-lived packet buffers leave the kernel allocator a growing list of small holes to
//! search on each packet: measured, puts fell from 1600/s to 350/s as 80 000 incompressible pages
//! accumulated, with 36 of 40 sampled guest instructions inside the kernel's `talc` malloc called
//! from the network driver. Giving the application its own `talc` instance, fed from the kernel
//! heap in large spans, keeps the two apart.

use std::alloc::{GlobalAlloc, Layout, System};

use talc::{OomHandler, Span, Talc, Talck};

/// Memory taken from the kernel heap at a time.
const SPAN_SIZE: usize = 32 << 20;
const SPAN_ALIGN: usize = 4096;

/// Grows the appliance heap by a span from the kernel heap whenever it runs out.
pub struct SpansFromKernel;

impl OomHandler for SpansFromKernel {
    fn handle_oom(talc: &mut Talc<Self>, layout: Layout) -> Result<(), ()> {
        let want = layout
            .size()
            .saturating_add(layout.align())
            .saturating_add(SPAN_ALIGN)
            .next_multiple_of(SPAN_ALIGN);
        // A whole span if the kernel heap has one, else smaller ones down to what is needed.
        let mut size = SPAN_SIZE.max(want);
        loop {
            let span_layout = Layout::from_size_align(size, SPAN_ALIGN).map_err(|_| ())?;
            // SAFETY: `span_layout` has a non-zero size.
            let base = unsafe { System.alloc(span_layout) };
            if !base.is_null() {
                // SAFETY: the span was just allocated for us and is never freed or used by anyone
                // else, so talc may own it for the rest of the program.
                return unsafe { talc.claim(Span::from_base_size(base, size)) }.map(|_| ());
            }
            if size == want {
                return Err(());
            }
            size = (size / 2).next_multiple_of(SPAN_ALIGN).max(want);
        }
    }
}

/// Smallest span the start-up probe counts.
const PROBE_MIN: usize = 1 << 20;

/// How much the kernel heap can still hand out, measured at start-up by taking spans (largest
/// first, halving down to 1 MiB) and giving every one back. Hermit sizes its heap from the VM's RAM
/// and offers no call to ask; a store budget above this would abort the appliance when it fills.
pub fn kernel_heap_available() -> usize {
    let mut taken: Vec<(*mut u8, Layout)> = Vec::new();
    let mut size = SPAN_SIZE;
    // Bounded: every round either takes a span (finitely many fit) or halves `size`.
    while size >= PROBE_MIN {
        let Ok(layout) = Layout::from_size_align(size, SPAN_ALIGN) else {
            break;
        };
        // SAFETY: `layout` has a non-zero size.
        let base = unsafe { System.alloc(layout) };
        if base.is_null() {
            size /= 2;
        } else if taken.try_reserve(1).is_ok() {
            taken.push((base, layout));
        } else {
            // SAFETY: allocated just above with this layout and not used.
            unsafe { System.dealloc(base, layout) };
            break;
        }
    }
    let total = taken.iter().map(|(_, l)| l.size()).sum();
    for (base, layout) in taken {
        // SAFETY: each span was allocated above with this layout and never used.
        unsafe { System.dealloc(base, layout) };
    }
    total
}

#[global_allocator]
static ALLOCATOR: Talck<spin::Mutex<()>, SpansFromKernel> = Talc::new(SpansFromKernel).lock();
