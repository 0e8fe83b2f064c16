//! Staying awake between requests.
//!
//! A program that works through a mount one call at a time (`stat` after `stat`, `unlink`
//! after `unlink`) sends its next request a few microseconds after our reply. Were the
//! FUSE thread asleep in `read(2)` by then, the kernel would have to wake it, and waking a
//! thread whose CPU has gone idle costs tens of microseconds (an inter-processor
//! interrupt; on a virtual machine without guest halt-polling, an exit to the host and
//! back): on the 2-core VM of the benchmarks, two such wake-ups per call were most of a
//! `stat`'s time. So after a reply the thread watches `/dev/fuse` for a short while
//! before it goes back to sleep, as Go's runtime does for gocryptfs's threads and as the
//! kernel's `haltpoll` idle governor does for a whole CPU.
//!
//! How long it watches adapts like `haltpoll`: the window doubles (up to
//! [`MAX_WINDOW`]) while requests keep coming within it and halves when one came after
//! it, down to none at all once requests are sparse, so that an idle mount costs nothing.
//!
//! The requester's CPU matters as much. While the program waits for our reply its CPU has
//! nothing to run and halts, and our reply must then wake it from the halt: on that VM,
//! with the guest's halt polling off (`guest_halt_poll_ns` = 0), a `stat` whose reply woke
//! another CPU took 45 µs from one request to the next against 15 µs when the reply came
//! from the requester's own CPU (kernel FUSE tracepoints; gocryptfs's Go threads, which
//! spin between requests, got the same CPU for 77 % of its requests, we for 10 %). So
//! while the window is open a [`Keepers`] thread spins on the CPU the requester last ran
//! on, at the lowest scheduling class (`SCHED_IDLE`): the CPU does not halt, and the
//! requester, woken, takes it back at once. The requester's CPU is read from
//! `/proc/<pid>/stat` at most every [`REQUESTER_RECHECK`] (or when another thread sends
//! requests), by a [`CpuFinder`] thread: never by the FUSE thread, which that read could
//! deadlock.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest a FUSE thread watches for the next request after a reply.
pub const MAX_WINDOW: Duration = Duration::from_micros(100);

/// The first window after a quiet spell; windows shorter than this are none.
pub const MIN_WINDOW: Duration = Duration::from_micros(25);

/// How long after the window closes a keeper goes on spinning: a reply can take longer
/// than the window to make (a write, a directory read).
pub const KEEP_SLACK: Duration = Duration::from_micros(300);

/// How often the CPU of a program that keeps sending requests is read again.
pub const REQUESTER_RECHECK: Duration = Duration::from_millis(20);

/// The watch window, when the last reply went out, and the last requester's CPU.
#[derive(Debug, Default)]
pub struct Window {
    window: Duration,
    last_reply: Option<Instant>,
    /// The last requester's process id, and when its CPU was last asked for.
    requester: Option<(u32, Instant)>,
}

impl Window {
    /// The window now.
    pub fn current(&self) -> Duration {
        self.window
    }

    /// A request arrived at `now`: the window grows if it came soon enough after the
    /// last reply to be caught by a full window, and shrinks otherwise.
    pub fn arrived(&mut self, now: Instant) {
        let Some(last) = self.last_reply.take() else {
            return;
        };
        if now.saturating_duration_since(last) <= MAX_WINDOW {
            self.window = (self.window * 2).clamp(MIN_WINDOW, MAX_WINDOW);
        } else {
            self.window /= 2;
            if self.window < MIN_WINDOW {
                self.window = Duration::ZERO;
            }
        }
    }

    /// A reply went out at `now`: how long to watch for the next request.
    pub fn replied(&mut self, now: Instant) -> Duration {
        self.last_reply = Some(now);
        self.window
    }

    /// Whether to ask again which CPU requester `pid` runs on (see [`CpuFinder`]): when
    /// the window is open and the requester changed or was last asked for
    /// [`REQUESTER_RECHECK`] ago or more.
    pub fn look_again(&mut self, pid: u32, now: Instant) -> bool {
        if self.window.is_zero() || pid == 0 {
            return false;
        }
        match self.requester {
            Some((p, at)) if p == pid && now.saturating_duration_since(at) < REQUESTER_RECHECK => {
                false
            }
            _ => {
                self.requester = Some((pid, now));
                true
            }
        }
    }
}

/// Finds which CPU a requester runs on, from `/proc/<pid>/stat`, on a thread of its own.
///
/// Never on the FUSE thread: reading a process's `stat` waits while the process is in
/// `execve`, and a process in `execve` may itself be waiting for us. It closes its
/// close-on-exec descriptors there, and closing one on a mount sends a `FLUSH` that only
/// our reply ends. (A mount test hung that way, the daemon's FUSE thread in the kernel's
/// `do_task_stat`.) The FUSE thread only hands the pid over, without waiting, and uses the
/// last answer.
#[derive(Debug)]
pub struct CpuFinder {
    ask: std::sync::mpsc::SyncSender<u32>,
    /// The last answer: a process id and its CPU.
    found: Arc<Mutex<Option<(u32, usize)>>>,
}

impl CpuFinder {
    /// The process's finder, shared by its mounts.
    pub fn global() -> &'static CpuFinder {
        static FINDER: OnceLock<CpuFinder> = OnceLock::new();
        FINDER.get_or_init(|| CpuFinder::new(cpu_of))
    }

    /// A finder that asks `read(pid)` (which may block) on a thread of its own.
    pub fn new(read: fn(u32) -> Option<usize>) -> CpuFinder {
        // One question waits at most: while the thread reads, later ones are dropped.
        let (ask, questions) = std::sync::mpsc::sync_channel::<u32>(1);
        let found = Arc::new(Mutex::new(None));
        let answers = found.clone();
        let spawned = std::thread::Builder::new()
            .name("fuse-cpu-finder".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                for pid in questions {
                    let cpu = read(pid);
                    if let Ok(mut found) = answers.lock() {
                        *found = cpu.map(|cpu| (pid, cpu));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to find requesters' CPUs");
        }
        CpuFinder { ask, found }
    }

    /// Asks for `pid`'s CPU to be read, without waiting.
    pub fn look(&self, pid: u32) {
        let _ = self.ask.try_send(pid);
    }

    /// The last CPU found for `pid`, if the last answer was about it.
    pub fn cpu(&self, pid: u32) -> Option<usize> {
        let found = *self.found.lock().ok()?;
        found.filter(|&(p, _)| p == pid).map(|(_, cpu)| cpu)
    }
}

/// The CPU that thread `pid` last ran on (`/proc/<pid>/stat`, field 39).
pub fn cpu_of(pid: u32) -> Option<usize> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces, parentheses and
    // bytes that are not UTF-8 (cut at 15 bytes): count after its last `)`.
    let rest = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    let field = rest
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
        .nth(36)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Watches `device` until it has a request to read (or reports an error or hang-up, which
/// the session's next read will meet) or `window` has passed; false if it stayed quiet
/// for the whole window, or cannot be polled.
pub fn watch(device: &OwnedFd, window: Duration) -> bool {
    if window.is_zero() {
        return false;
    }
    let start = Instant::now();
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        let mut fds = [rustix::event::PollFd::new(
            device,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(0) => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
        if start.elapsed() >= window {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// Threads that keep CPUs from halting while a requester on them waits for a reply (see
/// the module docs): at most one per CPU, started when first needed, pinned to it, at the
/// lowest scheduling class (`SCHED_IDLE`: a CPU when no ordinary thread wants it, or a
/// small share, and it gives way to a woken thread at once), parked whenever no window
/// asks for them.
#[derive(Debug)]
pub struct Keepers {
    start: Instant,
    cpus: Box<[OnceLock<Option<Arc<Keeper>>>]>,
}

#[derive(Debug)]
struct Keeper {
    /// Nanoseconds after [`Keepers::start`] until which it spins.
    until: AtomicU64,
    asleep: AtomicBool,
    /// Whether it spins now (for tests).
    spinning: AtomicBool,
    stop: AtomicBool,
    /// Its thread, to unpark: `unpark` never blocks (a lock shared with a `SCHED_IDLE`
    /// thread could keep the FUSE thread waiting while the keeper waits for a CPU), and a
    /// wake-up given before the keeper parks is kept for it.
    thread: OnceLock<std::thread::Thread>,
}

impl Keepers {
    /// The process's keepers, shared by its mounts.
    pub fn global() -> &'static Keepers {
        static KEEPERS: OnceLock<Keepers> = OnceLock::new();
        KEEPERS.get_or_init(Keepers::new)
    }

    /// Keepers for the CPUs this process may run on, none started yet.
    pub fn new() -> Keepers {
        let allowed = allowed_cpus();
        let slots = allowed.iter().max().map_or(0, |&c| c + 1);
        Keepers {
            start: Instant::now(),
            cpus: (0..slots)
                .map(|cpu| {
                    let slot = OnceLock::new();
                    if allowed.len() < 2 || !allowed.contains(&cpu) {
                        // Never started: one CPU has nothing to keep awake (the
                        // requester's CPU is then ours), and a CPU this process may not
                        // run on cannot hold a keeper.
                        let _ = slot.set(None);
                    }
                    slot
                })
                .collect(),
        }
    }

    /// Keeps `cpu` from halting until `window` from now (and [`KEEP_SLACK`] more).
    /// Nothing where there is one CPU only: the requester's CPU is then ours.
    pub fn keep(&self, cpu: usize, window: Duration) {
        if window.is_zero() {
            return;
        }
        let Some(slot) = self.cpus.get(cpu) else {
            return;
        };
        let Some(keeper) = slot.get_or_init(|| start_keeper(cpu, self.start)) else {
            return;
        };
        let until = (self.start.elapsed() + window + KEEP_SLACK).as_nanos();
        // Sequentially consistent with the keeper's going to sleep: either it sees the
        // new deadline, or this sees it asleep and wakes it.
        keeper
            .until
            .fetch_max(u64::try_from(until).unwrap_or(u64::MAX), Ordering::SeqCst);
        if keeper.asleep.load(Ordering::SeqCst)
            && let Some(thread) = keeper.thread.get()
        {
            thread.unpark();
        }
    }

    /// Whether the keeper of `cpu` spins now.
    pub fn spinning(&self, cpu: usize) -> bool {
        self.cpus
            .get(cpu)
            .and_then(|slot| slot.get())
            .and_then(|k| k.as_ref())
            .is_some_and(|k| k.spinning.load(Ordering::Relaxed))
    }
}

impl Default for Keepers {
    fn default() -> Self {
        Keepers::new()
    }
}

impl Drop for Keepers {
    fn drop(&mut self) {
        for keeper in self.cpus.iter().filter_map(|s| s.get()).flatten() {
            keeper.stop.store(true, Ordering::SeqCst);
            if let Some(thread) = keeper.thread.get() {
                thread.unpark();
            }
        }
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Starts the keeper of `cpu`, its deadlines counted from `start`; `None` if no thread
/// could be started.
fn start_keeper(cpu: usize, start: Instant) -> Option<Arc<Keeper>> {
    let keeper = Arc::new(Keeper {
        until: AtomicU64::new(0),
        asleep: AtomicBool::new(false),
        spinning: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        thread: OnceLock::new(),
    });
    let theirs = keeper.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("fuse-keep-{cpu}"))
        .stack_size(64 * 1024)
        .spawn(move || run_keeper(&theirs, cpu, start));
    match spawned {
        Ok(handle) => {
            let _ = keeper.thread.set(handle.thread().clone());
            Some(keeper)
        }
        Err(e) => {
            tracing::debug!(cpu, error = %e, "no keeper thread");
            None
        }
    }
}

/// A keeper's loop: pinned to `cpu` at `SCHED_IDLE` (or gone, if either is refused: a
/// keeper at an ordinary priority would take the CPU from the very requester it keeps
/// awake), it spins while its deadline lies ahead and sleeps otherwise.
fn run_keeper(k: &Keeper, cpu: usize, start: Instant) {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let pinned = rustix::thread::sched_setaffinity(None, &set);
    let idle = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if let Err(e) = pinned {
        tracing::debug!(cpu, error = %e, "a keeper cannot be pinned; none on this CPU");
        return;
    }
    if let Err(e) = idle {
        tracing::debug!(cpu, error = ?e, "a keeper cannot run at SCHED_IDLE; none on this CPU");
        return;
    }
    while !k.stop.load(Ordering::Relaxed) {
        let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if now < k.until.load(Ordering::Relaxed) {
            k.spinning.store(true, Ordering::Relaxed);
            std::hint::spin_loop();
            continue;
        }
        k.spinning.store(false, Ordering::Relaxed);
        k.asleep.store(true, Ordering::SeqCst);
        // Looked at again once marked asleep: a `keep` that saw it awake did not unpark.
        let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if now >= k.until.load(Ordering::SeqCst) && !k.stop.load(Ordering::SeqCst) {
            std::thread::park();
        }
        k.asleep.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_window_opens_while_requests_come_close_together_and_closes_when_they_stop() {
        let mut w = Window::default();
        let t0 = Instant::now();
        // The first request has nothing to go by.
        w.arrived(t0);
        assert_eq!(w.replied(t0 + us(10)), Duration::ZERO);
        // Requests 30 us after each reply: the window opens and doubles up to the bound.
        let mut t = t0 + us(10);
        let mut seen = Vec::new();
        for _ in 0..6 {
            t += us(30);
            w.arrived(t);
            t += us(10);
            seen.push(w.replied(t));
        }
        assert_eq!(
            seen,
            [us(25), us(50), us(100), us(100), us(100), us(100)],
            "grows from the minimum to the bound"
        );
        // A request long after the reply (the program paused): the window halves each
        // time, and is gone once it would fall under the minimum.
        let mut seen = Vec::new();
        for _ in 0..5 {
            t += Duration::from_millis(5);
            w.arrived(t);
            t += us(10);
            seen.push(w.replied(t));
        }
        assert_eq!(
            seen,
            [
                us(50),
                us(25),
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO
            ]
        );
        // A request just past the bound does not count as caught.
        t += MAX_WINDOW + us(1);
        w.arrived(t);
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn the_requesters_cpu_is_asked_for_while_the_window_is_open_and_again_after_a_while() {
        let mut w = Window::default();
        let t0 = Instant::now();
        // Closed window: no CPU is kept awake, and nothing is asked.
        assert!(!w.look_again(42, t0));
        // Open the window.
        w.arrived(t0);
        w.replied(t0);
        w.arrived(t0 + us(5));
        assert!(!w.current().is_zero());
        assert!(w.look_again(42, t0), "a new requester");
        assert!(!w.look_again(42, t0 + us(100)), "asked for lately");
        assert!(
            w.look_again(42, t0 + REQUESTER_RECHECK),
            "asked for long ago"
        );
        assert!(w.look_again(7, t0 + REQUESTER_RECHECK), "another program");
        assert!(
            !w.look_again(0, t0 + REQUESTER_RECHECK),
            "no pid (the kernel's own)"
        );
    }

    #[test]
    fn a_finder_answers_later_and_never_makes_the_asker_wait() {
        // A reader that blocks until told to go on, as reading the `stat` of a process in
        // `execve` does.
        static GATE: Mutex<bool> = Mutex::new(false);
        static OPEN: std::sync::Condvar = std::sync::Condvar::new();
        fn blocked(pid: u32) -> Option<usize> {
            let mut open = GATE.lock().expect("gate");
            while !*open {
                open = OPEN.wait(open).expect("gate");
            }
            Some(pid as usize % 7)
        }
        let finder = CpuFinder::new(blocked);
        let start = Instant::now();
        for pid in 1..100 {
            finder.look(pid);
            assert_eq!(finder.cpu(pid), None, "no answer yet");
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the asker waited for a blocked reader"
        );
        *GATE.lock().expect("gate") = true;
        OPEN.notify_all();
        // The first question and the one that waited behind it are answered; the rest
        // were dropped.
        finder.look(12);
        let start = Instant::now();
        while finder.cpu(12).is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "never answered");
            finder.look(12);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(finder.cpu(12), Some(5));
        assert_eq!(finder.cpu(13), None, "an answer is about one pid");
    }

    #[test]
    fn a_threads_cpu_is_read_from_proc() {
        let pid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let cpu = cpu_of(pid).expect("this thread's CPU");
        let allowed = allowed_cpus();
        assert!(
            allowed.is_empty() || allowed.contains(&cpu),
            "cpu {cpu}, not one of {allowed:?}"
        );
        assert_eq!(cpu_of(u32::MAX), None, "no such thread");
    }

    #[test]
    fn a_keeper_spins_on_its_cpu_until_the_window_ends_and_then_sleeps() {
        let keepers = Keepers::new();
        let allowed = allowed_cpus();
        let window = Duration::from_millis(200);
        if allowed.len() < 2 {
            // One CPU: nothing to keep awake (the requester's CPU is ours).
            let Some(&only) = allowed.first() else {
                return;
            };
            keepers.keep(only, window);
            std::thread::sleep(Duration::from_millis(20));
            assert!(!keepers.spinning(only));
            return;
        }
        let (one, other) = (allowed[1], allowed[0]);
        // Asked again until it spins: a loaded machine may give a SCHED_IDLE thread no
        // CPU for a whole window.
        let spin = |what: &str| -> Instant {
            let start = Instant::now();
            loop {
                let asked = Instant::now();
                keepers.keep(one, window);
                std::thread::sleep(Duration::from_millis(1));
                if keepers.spinning(one) {
                    return asked;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "{what}");
            }
        };
        let asked = spin("the keeper never spun");
        assert!(!keepers.spinning(other), "only the CPU asked for");
        while keepers.spinning(one) {
            assert!(
                asked.elapsed() < Duration::from_secs(30),
                "the keeper never stopped"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            asked.elapsed() >= window,
            "spun for the window: {:?}",
            asked.elapsed()
        );
        // Asleep, it is woken by the next window.
        spin("not woken again");
        // Out of range: nothing.
        keepers.keep(usize::MAX, window);
    }

    #[test]
    fn a_watch_ends_at_once_when_a_request_is_waiting_and_after_the_window_otherwise() {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        let reader = OwnedFd::from(reader);
        assert!(!watch(&reader, Duration::ZERO), "no window, no watch");
        let start = Instant::now();
        assert!(!watch(&reader, us(300)), "nothing to read");
        assert!(start.elapsed() >= us(300), "watched the whole window");
        std::io::Write::write_all(&mut &writer, b"x").expect("written");
        // A watch that ran out would say false: this one ended on the byte.
        assert!(
            watch(&reader, Duration::from_secs(600)),
            "something to read"
        );
    }
}
