//! The threads guest code runs on: a tokio runtime of the sandbox's own, apart from the
//! executor that serves HTTP, SSE and the host side of LLM calls.
//!
//! A guest in a CPU loop yields at every epoch tick, but between two ticks it holds its
//! thread. On the shared executor a few such guests delayed every other task: sockets and
//! timers are only polled between tasks, so streamed jobs, SSE and the API waited behind
//! 10 ms slices of somebody else's loop. Guests therefore run here, on at most one thread
//! per core. The executor's own threads are separate OS threads, which the kernel schedules
//! fairly against these ones (a thread waking up for I/O gets the CPU soon), and a guest's
//! LLM requests are carried out on its job's task on that executor (see `relay`), so a
//! CPU-bound guest never stands between a request and its socket. Among themselves guests
//! take turns: each yields at every tick and goes to the back of its thread's queue, and a
//! guest woken by the end of a host call goes first.

use std::future::Future;

use anyhow::Context as _;
use tokio_util::task::AbortOnDropHandle;

/// The guest runtime. Dropping it stops its threads without waiting for their guests.
pub struct GuestThreads {
    runtime: Option<tokio::runtime::Runtime>,
}

impl GuestThreads {
    /// Starts `threads` worker threads (at least one), named `kiln-guest`.
    pub fn start(threads: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("kiln-guest")
            // Look at the queue of woken tasks before every slice: a guest coming back
            // from a host call (its LLM answer, its streamed tokens) runs before the next
            // slice of a guest that yielded in a CPU loop, which waits behind it.
            .global_queue_interval(1)
            // Timers only: the deadline of a guest waiting in a host call. Guests do no
            // I/O of their own.
            .enable_time()
            .build()
            .context("starting the guest threads")?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` on the guest threads. Dropping the handle aborts it: a job whose
    /// caller went away does not keep a guest running.
    pub fn spawn<F>(&self, future: F) -> AbortOnDropHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("only taken on drop");
        AbortOnDropHandle::new(runtime.spawn(future))
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        // A runtime may not block while it is dropped inside another one (the server's,
        // a test's): let its threads wind down in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One guest thread per core: every core can compute, and none is taken from the kernel's
/// fair share of the executor's threads.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
