//! A bump allocator for the plugin's linear memory: every decision runs in a fresh instance
//! that is thrown away afterwards, so nothing needs to be freed — allocation is a pointer
//! increment and `free` does nothing. Memory is taken from `memory.grow` in 1 MiB steps;
//! the runtime's memory cap (64 MiB by default) still bounds it: past the cap `memory.grow`
//! fails, the allocation returns null and the plugin traps (the built-in policy decides).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const PAGE: usize = 65_536;
const STEP_PAGES: usize = 16;

/// Next free byte and end of the current region.
pub struct Bump {
    region: UnsafeCell<(usize, usize)>,
}

impl Bump {
    /// An empty allocator (the first allocation grows memory).
    pub const fn new() -> Self {
        Self { region: UnsafeCell::new((0, 0)) }
    }
}

// SAFETY: a wasm32 component instance runs on one thread; nothing shares the cell.
unsafe impl Sync for Bump {}

// SAFETY: every block returned lies in memory obtained from `memory.grow` and not handed out
// before (the region only moves forward), is aligned as asked, and is never reused.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded (see `Sync`), and no reference to the cell outlives this call.
        let (next, end) = unsafe { &mut *self.region.get() };
        let align = layout.align();
        let mut start = (*next + align - 1) & !(align - 1);
        let mut stop = match start.checked_add(layout.size()) {
            Some(stop) => stop,
            None => return core::ptr::null_mut(),
        };
        if stop > *end {
            let pages = (layout.size() + align).div_ceil(PAGE).max(STEP_PAGES);
            let previous = core::arch::wasm32::memory_grow(0, pages);
            if previous == usize::MAX {
                return core::ptr::null_mut();
            }
            let base = previous * PAGE;
            if base != *end {
                // Someone else grew memory meanwhile: start over in the new pages.
                *next = base;
                start = (base + align - 1) & !(align - 1);
                stop = start + layout.size();
            }
            *end = base + pages * PAGE;
        }
        *next = stop;
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let (next, end) = unsafe { &mut *self.region.get() };
        // The last block grows in place when there is room (a growing Vec or String).
        if ptr as usize + layout.size() == *next && ptr as usize + new_size <= *end {
            *next = ptr as usize + new_size;
            return ptr;
        }
        // SAFETY: the layout is valid (same alignment, a size the caller vouches for).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `alloc` with a non-zero size (the caller guarantees it).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap (the new
            // one lies past the old one).
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}

/// The canonical ABI's allocator: the host calls it once per string and list it lowers into
/// the plugin's memory (tens of thousands of times for a large placement). On `wasm32-wasip2`
/// the export would otherwise be wasi-libc's, which allocates with dlmalloc — twice the cost
/// of the whole guest-side sort in the profile. Defining it here routes it to the bump
/// allocator; wit-bindgen's lifted `String`s and `Vec`s are then freed by `Bump` too, which
/// is the allocator that made them.
///
/// # Safety
/// Called by the component model's lowering code with the canonical ABI's contract: `old`
/// is null with `old_len` 0, or a block this function returned with that size and `align`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    let ptr = if old_len == 0 {
        // SAFETY: a power-of-two alignment and a non-zero size, as the canonical ABI passes.
        unsafe { super::ALLOCATOR.alloc(Layout::from_size_align_unchecked(new_len, align)) }
    } else {
        // SAFETY: `old` came from this allocator with this size and alignment (see above).
        unsafe { super::ALLOCATOR.realloc(old, Layout::from_size_align_unchecked(old_len, align), new_len) }
    };
    if ptr.is_null() {
        // Out of memory under the cap: trap, the runtime reports it and the built-in decides.
        core::arch::wasm32::unreachable();
    }
    ptr
}
