//! Lifecycle events through libvirt's event loop — the one place with `unsafe` code in halo's
//! libvirt driver (`virt` 0.4 has no safe wrapper for domain events or the close callback).
//!
//! libvirt's default event loop is registered once, before any connection is opened, and a
//! thread runs it for the life of the process; callbacks run on that thread and only send to a
//! channel. A [`Subscription`] holds a reference on its connection (so the connection outlives
//! the callback) and deregisters the callback when dropped.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::Once;
use std::sync::mpsc::{Receiver, Sender, channel};

use virt::connect::Connect;
use virt::sys;

/// How a domain stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// The guest shut down (by itself, or asked by the host).
    Shutdown,
    /// Powered off (destroyed) by someone.
    Destroyed,
    /// The guest crashed.
    Crashed,
    /// QEMU failed (killed, or died).
    Failed,
    /// It migrated to another host.
    Migrated,
    /// Saved, restored from a snapshot, or anything else.
    Other,
}

/// What happened to a domain (or the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// It started (also: resumed on the destination of a migration).
    Started {
        /// Domain.
        domain: String,
    },
    /// It stopped.
    Stopped {
        /// Domain.
        domain: String,
        /// How.
        how: StopKind,
    },
    /// A shutdown began; `by_guest` is false when the host asked for it.
    ShuttingDown {
        /// Domain.
        domain: String,
        /// Whether the guest started it itself.
        by_guest: bool,
    },
    /// The guest crashed (it may stay defined as crashed).
    Crashed {
        /// Domain.
        domain: String,
    },
    /// QEMU paused it: a disk request failed (`error_policy='stop'`, or out of space).
    PausedOnIoError {
        /// Domain.
        domain: String,
    },
    /// It runs again after a pause (not a migration's resume: that is `Started`).
    Resumed {
        /// Domain.
        domain: String,
    },
    /// The connection closed (libvirtd died, or keepalive failed: the host may be gone).
    ConnectionClosed {
        /// libvirt's reason: 0 error, 1 end of file, 2 keepalive, 3 client.
        reason: i32,
    },
}

static EVENT_LOOP: Once = Once::new();

/// Registers libvirt's default event loop and runs it on a thread (once per process). Must
/// happen before the first connection is opened: `Hypervisor::connect` calls it.
pub fn init() {
    EVENT_LOOP.call_once(|| {
        // libvirt prints every error to stderr by default; ours go through LibvirtError.
        virt::error::clear_error_callback();
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!("libvirt's event loop could not be registered: {e}; no lifecycle events");
            return;
        }
        let spawned = std::thread::Builder::new().name("libvirt-events".into()).spawn(|| {
            loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::error!("libvirt's event loop: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("libvirt's event loop thread could not start: {e}");
        }
    });
}

/// Lifecycle events of every domain of one connection, until dropped.
pub struct Subscription {
    conn: sys::virConnectPtr,
    lifecycle: c_int,
    close_registered: bool,
    events: Receiver<LifecycleEvent>,
}

// SAFETY: the raw connection pointer is only used to deregister and release in `Drop`;
// libvirt connections are thread-safe (libvirt documents virConnectPtr as usable from any
// thread), and the `virt` crate marks `Connect` Send + Sync for the same reason.
unsafe impl Send for Subscription {}

impl Subscription {
    /// The events, in the order libvirt delivered them.
    pub fn events(&self) -> &Receiver<LifecycleEvent> {
        &self.events
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // SAFETY: `conn` holds the reference taken in `subscribe` (virConnectRef), so it is
        // valid here; the callback id came from a successful registration on it. After
        // deregistration libvirt calls `free_sender` on the boxed sender (exactly once).
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn, self.lifecycle);
            if self.close_registered {
                sys::virConnectUnregisterCloseCallback(self.conn, Some(on_close));
            }
            sys::virConnectClose(self.conn);
        }
    }
}

/// Subscribes to `conn`'s lifecycle events and to its closing.
pub(crate) fn subscribe(conn: &Connect) -> Result<Subscription, String> {
    let (tx, rx) = channel::<LifecycleEvent>();
    let ptr = conn.as_ptr();
    let lifecycle_sender = Box::into_raw(Box::new(tx.clone())) as *mut c_void;
    // SAFETY: libvirt's lifecycle callback has the signature of `on_lifecycle`; the generic
    // callback type is how the C API takes every event callback (VIR_DOMAIN_EVENT_CALLBACK
    // casts the same way). `lifecycle_sender` is a leaked Box<Sender> that libvirt hands back
    // to `on_lifecycle` and finally to `free_sender`, which drops it.
    let id = unsafe {
        let callback: unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int =
            on_lifecycle;
        sys::virConnectDomainEventRegisterAny(
            ptr,
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(std::mem::transmute::<
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(callback)),
            lifecycle_sender,
            Some(free_sender),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership of the sender.
        unsafe { drop(Box::from_raw(lifecycle_sender as *mut Sender<LifecycleEvent>)) };
        return Err(virt::error::Error::last_error().message().to_string());
    }
    let close_sender = Box::into_raw(Box::new(tx)) as *mut c_void;
    // SAFETY: as above for the close callback (signature virConnectCloseFunc); on failure the
    // box is reclaimed. The reference taken with virConnectRef is released in Drop.
    let close_registered = unsafe {
        let ok = sys::virConnectRegisterCloseCallback(ptr, Some(on_close), close_sender, Some(free_sender)) == 0;
        if !ok {
            drop(Box::from_raw(close_sender as *mut Sender<LifecycleEvent>));
        }
        sys::virConnectRef(ptr);
        ok
    };
    Ok(Subscription { conn: ptr, lifecycle: id, close_registered, events: rx })
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: libvirt passes a valid domain for the duration of the callback; its name is a
    // NUL-terminated string owned by the domain object. `opaque` is the Box<Sender> given at
    // registration, alive until `free_sender` runs (after the last callback).
    let (name, sender) = unsafe {
        let raw: *const c_char = sys::virDomainGetName(dom);
        if raw.is_null() || opaque.is_null() {
            return 0;
        }
        (CStr::from_ptr(raw).to_string_lossy().into_owned(), &*(opaque as *const Sender<LifecycleEvent>))
    };
    if let Some(e) = map_event(name, event as u32, detail as u32) {
        let _ = sender.send(e);
    }
    0
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: `opaque` is the Box<Sender> registered with the close callback, alive until
    // `free_sender`.
    let sender = unsafe { &*(opaque as *const Sender<LifecycleEvent>) };
    let _ = sender.send(LifecycleEvent::ConnectionClosed { reason });
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: every `opaque` registered with `free_sender` is a Box<Sender> leaked with
        // Box::into_raw, freed exactly once, here.
        unsafe { drop(Box::from_raw(opaque as *mut Sender<LifecycleEvent>)) };
    }
}

fn map_event(domain: String, event: u32, detail: u32) -> Option<LifecycleEvent> {
    Some(match event {
        // The destination of a live migration starts the domain paused, before its memory
        // has arrived: it runs there only once the migration completes and it resumes. Until
        // then the source runs it (a copy on two hosts is what `exclusivity` looks for).
        sys::VIR_DOMAIN_EVENT_STARTED if detail == sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED => return None,
        sys::VIR_DOMAIN_EVENT_STARTED => LifecycleEvent::Started { domain },
        sys::VIR_DOMAIN_EVENT_RESUMED if detail == sys::VIR_DOMAIN_EVENT_RESUMED_MIGRATED => {
            LifecycleEvent::Started { domain }
        }
        sys::VIR_DOMAIN_EVENT_STOPPED => {
            let how = match detail {
                sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => StopKind::Shutdown,
                sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => StopKind::Destroyed,
                sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => StopKind::Crashed,
                sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => StopKind::Migrated,
                sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => StopKind::Failed,
                _ => StopKind::Other,
            };
            LifecycleEvent::Stopped { domain, how }
        }
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => match detail {
            sys::VIR_DOMAIN_EVENT_SHUTDOWN_GUEST => LifecycleEvent::ShuttingDown { domain, by_guest: true },
            sys::VIR_DOMAIN_EVENT_SHUTDOWN_HOST => LifecycleEvent::ShuttingDown { domain, by_guest: false },
            _ => return None,
        },
        sys::VIR_DOMAIN_EVENT_CRASHED => LifecycleEvent::Crashed { domain },
        sys::VIR_DOMAIN_EVENT_SUSPENDED if detail == sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR => {
            LifecycleEvent::PausedOnIoError { domain }
        }
        sys::VIR_DOMAIN_EVENT_RESUMED => LifecycleEvent::Resumed { domain },
        _ => return None,
    })
}

/// Aborts the domain's current job (a migration); `virt` 0.4 has no wrapper for it. Kept here
/// so that every `unsafe` block of the driver is in this module.
pub(crate) fn abort_job(domain: &virt::domain::Domain) -> bool {
    // SAFETY: `domain.as_ptr()` is a valid domain pointer for the life of `domain`;
    // virDomainAbortJob only reads it and is safe to call while another thread runs a job on
    // the same domain (that is its purpose).
    unsafe { sys::virDomainAbortJob(domain.as_ptr()) == 0 }
}

/// `virDomainBlockCopy` (no `virt` 0.4 wrapper): starts a copy job of `disk` into the disk
/// described by `dest_xml`; libvirt's message on failure.
pub(crate) fn block_copy(
    domain: &virt::domain::Domain,
    disk: &str,
    dest_xml: &str,
    flags: u32,
) -> Result<(), virt::error::Error> {
    let (Ok(disk), Ok(dest)) = (std::ffi::CString::new(disk), std::ffi::CString::new(dest_xml)) else {
        return Err(virt::error::Error::last_error());
    };
    // SAFETY: valid domain pointer for the life of `domain`; both strings are NUL-terminated
    // and outlive the call; no typed parameters (null, 0).
    let rc = unsafe {
        sys::virDomainBlockCopy(domain.as_ptr(), disk.as_ptr(), dest.as_ptr(), std::ptr::null_mut(), 0, flags)
    };
    if rc == 0 { Ok(()) } else { Err(virt::error::Error::last_error()) }
}

/// `virDomainGetBlockJobInfo`: the job on `disk` as (copied, total), or none.
pub(crate) fn block_job(domain: &virt::domain::Domain, disk: &str) -> Result<Option<(u64, u64)>, virt::error::Error> {
    let Ok(disk) = std::ffi::CString::new(disk) else { return Err(virt::error::Error::last_error()) };
    let mut info = sys::virDomainBlockJobInfo { type_: 0, bandwidth: 0, cur: 0, end: 0 };
    // SAFETY: valid domain pointer; `disk` NUL-terminated; `info` is a live, writable struct
    // of the type libvirt fills.
    let rc = unsafe { sys::virDomainGetBlockJobInfo(domain.as_ptr(), disk.as_ptr(), &mut info, 0) };
    match rc {
        0 => Ok(None),
        1 => Ok(Some((info.cur, info.end))),
        _ => Err(virt::error::Error::last_error()),
    }
}

/// `virDomainBlockJobAbort`: ends the job on `disk` (with `VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT`,
/// switching the guest to the copy).
pub(crate) fn block_job_abort(domain: &virt::domain::Domain, disk: &str, flags: u32) -> Result<(), virt::error::Error> {
    let Ok(disk) = std::ffi::CString::new(disk) else { return Err(virt::error::Error::last_error()) };
    // SAFETY: valid domain pointer; `disk` NUL-terminated and outlives the call.
    let rc = unsafe { sys::virDomainBlockJobAbort(domain.as_ptr(), disk.as_ptr(), flags) };
    if rc == 0 { Ok(()) } else { Err(virt::error::Error::last_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_events_map_to_halo_events() {
        let d = || "vm".to_string();
        assert_eq!(map_event(d(), sys::VIR_DOMAIN_EVENT_STARTED, 0), Some(LifecycleEvent::Started { domain: d() }));
        // A migration's destination: running once it arrived, not when it began.
        assert_eq!(map_event(d(), sys::VIR_DOMAIN_EVENT_STARTED, sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED), None);
        assert_eq!(
            map_event(d(), sys::VIR_DOMAIN_EVENT_RESUMED, sys::VIR_DOMAIN_EVENT_RESUMED_MIGRATED),
            Some(LifecycleEvent::Started { domain: d() })
        );
        assert_eq!(
            map_event(d(), sys::VIR_DOMAIN_EVENT_RESUMED, 0),
            Some(LifecycleEvent::Resumed { domain: d() }),
            "an ordinary resume is no start"
        );
        assert_eq!(
            map_event(d(), sys::VIR_DOMAIN_EVENT_SUSPENDED, sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR),
            Some(LifecycleEvent::PausedOnIoError { domain: d() })
        );
        assert_eq!(map_event(d(), sys::VIR_DOMAIN_EVENT_SUSPENDED, sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED), None);
        assert_eq!(
            map_event(d(), sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_FAILED),
            Some(LifecycleEvent::Stopped { domain: d(), how: StopKind::Failed })
        );
        assert_eq!(
            map_event(d(), sys::VIR_DOMAIN_EVENT_SHUTDOWN, sys::VIR_DOMAIN_EVENT_SHUTDOWN_GUEST),
            Some(LifecycleEvent::ShuttingDown { domain: d(), by_guest: true })
        );
        assert_eq!(map_event(d(), sys::VIR_DOMAIN_EVENT_DEFINED, 0), None);
        assert_eq!(map_event(d(), sys::VIR_DOMAIN_EVENT_SUSPENDED, 0), None);
    }
}
