//! The one wasmtime [`Engine`] of the process, and the epoch ticker that drives deadlines
//! and cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the CPU slice of a guest. Every tick, each running guest
/// yields to the other guests on its thread (so CPU-bound plugins take turns) and checks
/// its deadline and cancel flag: a cancelled or overdue job stops within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Memory (and table) bytes of a pool slot kept resident and reset in place when a job
/// ends. A Rust plugin's linear memory starts around 1 MiB; larger ones are reset with
/// madvise beyond this.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Core module instances one job's component may create. A Rust component has two to
/// four; a Python one (componentize-py: CPython, libc and their adapters, each its own
/// module) fourteen; a JavaScript one (ComponentizeJS) four. Every job gets this many
/// slots, so `max_instances` jobs of any language fit the pool at once.
pub const CORE_INSTANCES_PER_JOB: u32 = 32;

/// Linear memories and tables one job's component may define (Python: one memory, three
/// tables). A component needing more is refused at load, naming the figure.
pub const MEMORIES_PER_JOB: u32 = 4;
/// See [`MEMORIES_PER_JOB`].
pub const TABLES_PER_JOB: u32 = 4;

/// Builds the engine: component model on, epoch interruption on, and the pooling
/// allocator sized for `max_instances` concurrent jobs whose memories may reach
/// `max_memory_bytes`.
pub fn build_engine(max_instances: u32, max_memory_bytes: usize) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        // Language runtimes come as several core modules (see the constants above).
        .max_core_instances_per_component(CORE_INSTANCES_PER_JOB)
        .max_memories_per_component(MEMORIES_PER_JOB)
        .max_tables_per_component(TABLES_PER_JOB)
        .total_core_instances(max_instances.saturating_mul(CORE_INSTANCES_PER_JOB))
        .total_memories(max_instances.saturating_mul(MEMORIES_PER_JOB))
        .total_tables(max_instances.saturating_mul(TABLES_PER_JOB))
        .total_stacks(max_instances)
        .max_memory_size(max_memory_bytes)
        // Reset a finished job's memory with memset (only the pages it touched, found
        // with PAGEMAP_SCAN where the kernel has it) instead of madvise: every madvise
        // unmaps pages, and the TLB shootdown interrupts every core running Kiln. Profiled
        // at a fifth of the workers' time with no-op jobs; see BENCHMARKS.md.
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("configuring the wasmtime engine")
}

/// Advances the engine's epoch every [`EPOCH_TICK`] from its own OS thread, so the
/// ticks keep coming even when every guest thread is busy.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`.
    pub fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
