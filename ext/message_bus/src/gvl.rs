//! Running Rust with the GVL released, interruptibly and without letting a
//! panic cross into Ruby.

use std::ffi::c_void;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use magnus::Ruby;
use message_bus_core::backend::{Backend, DirectCall, DirectReply, DirectResult, DirectRun};
use message_bus_core::runtime::runtime;
use message_bus_core::subscription::Subscription;
use message_bus_core::{Error, Result};

/// Set by Ruby's unblocking function (Thread#kill, Thread#raise, signals).
#[derive(Default)]
pub struct Cancel {
    requested: AtomicBool,
    subscription: Option<Arc<Subscription>>,
}

impl Cancel {
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(sub) = &self.subscription {
            sub.interrupt();
        }
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Resolves once the flag is set, looking at it every `FLAG_CHECK`:
    /// for calls whose unblocking function only sets the flag.
    async fn flagged(&self) {
        while !self.is_requested() {
            tokio::time::sleep(FLAG_CHECK).await;
        }
    }
}

/// How often a call interrupted by the flag alone looks at it: the
/// longest an interrupt (Timeout, Thread#kill, a signal) waits to be seen.
const FLAG_CHECK: std::time::Duration = std::time::Duration::from_millis(10);

struct Call<F, T> {
    func: Option<F>,
    result: Option<Result<T>>,
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> Error {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    Error::Backend(format!("internal error in message_bus native code: {what}"))
}

unsafe extern "C" fn run_call<F, T>(data: *mut c_void) -> *mut c_void
where
    F: FnOnce() -> Result<T>,
{
    // SAFETY: `data` is the `Call` owned by `without_gvl`, alive for this call.
    let call = unsafe { &mut *(data as *mut Call<F, T>) };
    if let Some(func) = call.func.take() {
        let outcome = catch_unwind(AssertUnwindSafe(func)).unwrap_or_else(|p| Err(panicked(p)));
        call.result = Some(outcome);
    }
    std::ptr::null_mut()
}

unsafe extern "C" fn unblock(data: *mut c_void) {
    // SAFETY: `data` is the `Cancel` owned by `blocking`, alive while the call runs.
    let cancel = unsafe { &*(data as *const Cancel) };
    cancel.request();
}

/// The unblocking function of calls that watch only the flag (direct
/// calls, which look at it between short `poll` slices, and `block_on`,
/// between short sleeps): one atomic store,
/// async-signal-safe, so Ruby may call it from its signal handler. Passed
/// with `RB_NOGVL_UBF_ASYNC_SAFE`; without that flag Ruby starts and joins
/// a helper native thread around every blocking call of a lone main thread
/// (measured: a PostgreSQL `last_id` at a third of ruby-pg's rate).
unsafe extern "C" fn unblock_flag_only(data: *mut c_void) {
    // SAFETY: `data` is the `Cancel` owned by `blocking`, alive while the call runs.
    let cancel = unsafe { &*(data as *const Cancel) };
    cancel.requested.store(true, Ordering::SeqCst);
}

/// How Ruby may interrupt a call made without the GVL.
#[derive(Clone, Copy)]
enum Unblock {
    /// Sets the flag and wakes the subscription's wait.
    Full,
    /// Sets the flag only (see [`unblock_flag_only`]).
    FlagOnly,
}

fn without_gvl<F, T>(cancel: &Cancel, unblock_by: Unblock, func: F) -> Result<T>
where
    F: FnOnce() -> Result<T>,
{
    let mut call = Call {
        func: Some(func),
        result: None,
    };
    // `RB_NOGVL_INTR_FAIL` (as `rb_thread_call_without_gvl2`): Ruby's
    // pending interrupts are not handled after `func` returns. Handled
    // there, an exception (Timeout, Thread#kill) would unwind past our
    // frames without running their destructors: an abandoned call's
    // connection and place (and a publish's slot) were never given back.
    // Here the interrupts are handled by `blocking`, under protect. (If one
    // is pending before the call, `func` is not called: `result` stays
    // `None`, an interrupt.)
    let (ubf, flags): (unsafe extern "C" fn(*mut c_void), u32) = match unblock_by {
        Unblock::Full => (unblock, rb_sys::RB_NOGVL_INTR_FAIL),
        Unblock::FlagOnly => (
            unblock_flag_only,
            rb_sys::RB_NOGVL_INTR_FAIL | rb_sys::RB_NOGVL_UBF_ASYNC_SAFE,
        ),
    };
    // SAFETY: both pointers outlive the call; the callbacks only use them as above.
    unsafe {
        rb_sys::rb_nogvl(
            Some(run_call::<F, T>),
            &mut call as *mut Call<F, T> as *mut c_void,
            Some(ubf),
            cancel as *const Cancel as *mut c_void,
            flags as _,
        );
    }
    call.result.unwrap_or(Err(Error::Interrupted))
}

/// Runs `func` without the GVL. When Ruby interrupts the thread, pending
/// interrupts run (raising, or killing the thread) and, if they return,
/// `func` is called again.
pub fn blocking<T>(
    ruby: &Ruby,
    subscription: Option<Arc<Subscription>>,
    func: impl FnMut(&Cancel) -> Result<T>,
) -> std::result::Result<T, magnus::Error> {
    blocking_with(ruby, subscription, Unblock::Full, func)
}

fn blocking_with<T>(
    ruby: &Ruby,
    subscription: Option<Arc<Subscription>>,
    unblock_by: Unblock,
    mut func: impl FnMut(&Cancel) -> Result<T>,
) -> std::result::Result<T, magnus::Error> {
    loop {
        let cancel = Cancel {
            subscription: subscription.clone(),
            ..Cancel::default()
        };
        match without_gvl(&cancel, unblock_by, || func(&cancel)) {
            Err(Error::Interrupted) => ruby.thread_check_ints()?,
            other => return other.map_err(|e| crate::errors::to_ruby(ruby, e)),
        }
    }
}

/// Drives a future to completion on the process runtime. It is polled once
/// right here, GVL held (the memory backend, or anything answered without
/// waiting, finishes there); only a future that must wait releases the GVL.
pub fn block_on<T, Fut>(
    ruby: &Ruby,
    make: impl FnOnce() -> Fut,
) -> std::result::Result<T, magnus::Error>
where
    Fut: Future<Output = Result<T>>,
{
    let rt = runtime().map_err(|e| crate::errors::to_ruby(ruby, e))?;
    let mut fut = {
        let _guard = rt.enter();
        let mut fut = Box::pin(make());
        let mut cx = Context::from_waker(Waker::noop());
        let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)))
            .unwrap_or_else(|p| Poll::Ready(Err(panicked(p))));
        match polled {
            Poll::Ready(result) => return result.map_err(|e| crate::errors::to_ruby(ruby, e)),
            Poll::Pending => fut,
        }
    };
    // The same future across interrupts: a signal handled by Ruby without
    // an exception resumes it, never starts the operation again (a publish
    // sent twice would be stored twice). The unblocking function only sets
    // the flag (async-signal-safe: no helper thread for a lone main thread,
    // see `unblock_flag_only`); the wait looks at it between short sleeps.
    blocking_with(ruby, None, Unblock::FlagOnly, |cancel| {
        rt.block_on(async {
            tokio::select! {
                biased;
                result = fut.as_mut() => result,
                _ = cancel.flagged() => Err(Error::Interrupted),
            }
        })
    })
}

/// Drives a backend's direct call on this thread with the GVL released (no
/// runtime hop). After an interrupt that returns, the same call resumes:
/// a command already sent is awaited, never sent again. `None`: the backend
/// sent nothing and asks for the async path.
pub fn run_direct<T>(
    ruby: &Ruby,
    mut run: Box<dyn DirectRun + '_>,
) -> Option<std::result::Result<T, magnus::Error>>
where
    T: TryFrom<DirectReply>,
{
    let mut fallback = false;
    // A direct call watches only the flag.
    let result = blocking_with(ruby, None, Unblock::FlagOnly, |cancel| {
        match run.run(&|| cancel.is_requested()) {
            None => Err(Error::Interrupted),
            Some(DirectResult::Fallback) => {
                fallback = true;
                Err(Error::Backend(String::new()))
            }
            Some(DirectResult::Done(result)) => result.and_then(DirectReply::into_answer),
        }
    });
    (!fallback).then_some(result)
}

/// A backend's request/response call, the cheapest way it allows: answered
/// at once with the GVL held (no release, no reacquire), else on this thread
/// without the GVL, else by the async method on the runtime.
pub fn request<T, Fut>(
    ruby: &Ruby,
    backend: &dyn Backend,
    call: DirectCall<'_>,
    on_runtime: impl FnOnce() -> Fut,
) -> std::result::Result<T, magnus::Error>
where
    T: TryFrom<DirectReply>,
    Fut: Future<Output = Result<T>>,
{
    if let Some(done) = immediate(ruby, backend, call) {
        return done;
    }
    request_not_immediate(ruby, backend, call, on_runtime)
}

/// The call answered at once with the GVL held, when the backend can
/// (`None`: it cannot; nothing was done). No Ruby code runs in it, so the
/// call may borrow the bytes of Ruby strings.
pub fn immediate<T>(
    ruby: &Ruby,
    backend: &dyn Backend,
    call: DirectCall<'_>,
) -> Option<std::result::Result<T, magnus::Error>>
where
    T: TryFrom<DirectReply>,
{
    let now = catch_unwind(AssertUnwindSafe(|| backend.immediate(call)))
        .unwrap_or_else(|p| Some(Err(panicked(p))));
    now.map(|done| {
        done.and_then(DirectReply::into_answer)
            .map_err(|e| crate::errors::to_ruby(ruby, e))
    })
}

/// [`request`] for a call the backend did not answer at once: on this
/// thread without the GVL, else by the async method on the runtime.
pub fn request_not_immediate<T, Fut>(
    ruby: &Ruby,
    backend: &dyn Backend,
    call: DirectCall<'_>,
    on_runtime: impl FnOnce() -> Fut,
) -> std::result::Result<T, magnus::Error>
where
    T: TryFrom<DirectReply>,
    Fut: Future<Output = Result<T>>,
{
    if let Some(done) = backend.direct(call).and_then(|run| run_direct(ruby, run)) {
        return done;
    }
    block_on(ruby, on_runtime)
}
