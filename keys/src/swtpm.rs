//! A software TPM 2.0 ([swtpm]) run as a child process, for tests, benchmarks and testnets.
//!
//! [`Swtpm::start`] runs `swtpm socket --tpm2` on two free loopback ports and waits until it
//! answers; [`Swtpm::tcti`] gives the TCTI string to pass to
//! [`TpmStore::open`](crate::keystore::TpmStore::open). The TPM's state (its seeds, hence
//! which blobs it can unseal) lives in the state directory, so [`Swtpm::restart`] on the
//! same directory behaves like a reboot of the same machine, and another directory is
//! another TPM. Dropping a [`Swtpm`] stops the process.
//!
//! This is not a production TPM: anyone who can read the state directory has the TPM's
//! secrets. It only listens on 127.0.0.1.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use keys::keystore::{KeyStore, TpmStore};
//! use keys::swtpm::Swtpm;
//!
//! let dir = std::env::temp_dir().join("my-swtpm");
//! let tpm = Swtpm::start(&dir)?;
//! let mut store = TpmStore::open(&tpm.tcti())?;
//! let blob = store.seal("node-key", b"secret")?;
//! assert_eq!(&store.unseal("node-key", &blob)?[..], b"secret");
//! # Ok(())
//! # }
//! ```
//!
//! [swtpm]: https://github.com/stefanberger/swtpm

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// How long to wait for a new swtpm to answer on its control port.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for swtpm to exit after a shutdown command before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How many port pairs to try when another process takes a port first.
const START_ATTEMPTS: usize = 8;
/// How much of swtpm's stderr is kept for error messages.
const STDERR_KEEP: usize = 8 * 1024;

/// Control channel commands (swtpm's `tpm_ioctl.h`), sent as big-endian `u32`.
const CMD_GET_CAPABILITY: u32 = 1;
const CMD_SHUTDOWN: u32 = 3;

/// A running `swtpm` process with its state in a directory. Killed and reaped on drop.
#[derive(Debug)]
pub struct Swtpm {
    state_dir: PathBuf,
    /// The TPM command port; the control port is `port + 1`.
    port: u16,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    /// Drains swtpm's stderr so that it never blocks; returns the last [`STDERR_KEEP`] bytes.
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// Why one attempt to start swtpm failed.
enum StartError {
    /// Another process took one of the ports: try others.
    PortTaken(String),
    Fatal(io::Error),
}

impl Swtpm {
    /// Starts `swtpm` with its state in `state_dir` (created if missing) on two free
    /// consecutive ports of 127.0.0.1, and waits until it answers.
    ///
    /// Fails with [`io::ErrorKind::NotFound`] if the `swtpm` binary is not installed, and
    /// with an error quoting swtpm's stderr if it exits or does not answer in time.
    pub fn start(state_dir: &Path) -> io::Result<Swtpm> {
        std::fs::create_dir_all(state_dir)?;
        let mut swtpm = Swtpm {
            state_dir: state_dir.to_path_buf(),
            port: 0,
            running: None,
        };
        swtpm.spawn()?;
        Ok(swtpm)
    }

    /// The TCTI string for this swtpm, such as `swtpm:host=127.0.0.1,port=2321`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM command port (the control port is the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory that holds the TPM's state.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Whether the process is running (it was started and not stopped, and has not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Some(running) => matches!(running.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the process and starts it again on the same state directory, like a reboot.
    /// The ports may change: read [`Swtpm::tcti`] again.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Stops the process: asks swtpm to shut down, kills it if it does not exit promptly,
    /// and reaps it. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        let pid = running.child.id();
        if let Err(e) = control(self.port.wrapping_add(1), CMD_SHUTDOWN) {
            debug!(pid, error = %e, "swtpm shutdown command failed; killing it");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match running.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Ok(None) | Err(_) => {
                    warn!(pid, "swtpm did not exit after shutdown; killing it");
                    // Fails only if it has exited meanwhile; wait() below reaps it either way.
                    let _ = running.child.kill();
                    break;
                }
            }
        }
        if let Err(e) = running.child.wait() {
            warn!(pid, error = %e, "could not reap swtpm");
        }
        if let Some(stderr) = running.stderr.take() {
            let _ = stderr.join();
        }
        debug!(pid, port = self.port, "swtpm stopped");
    }

    /// Starts the process on fresh ports, retrying when another process takes them first.
    fn spawn(&mut self) -> io::Result<()> {
        let mut last_race = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port_pair()?;
            match self.spawn_on(port) {
                Ok(running) => {
                    debug!(
                        pid = running.child.id(),
                        port,
                        state_dir = %self.state_dir.display(),
                        "swtpm started"
                    );
                    self.port = port;
                    self.running = Some(running);
                    return Ok(());
                }
                Err(StartError::PortTaken(stderr)) => {
                    debug!(attempt, port, "swtpm lost a port race; retrying");
                    last_race = stderr;
                }
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "swtpm could not bind its ports in {START_ATTEMPTS} attempts; \
                 last stderr: {last_race}"
            ),
        ))
    }

    fn spawn_on(&self, port: u16) -> Result<Running, StartError> {
        let ctrl_port = port + 1;
        let mut tpmstate = std::ffi::OsString::from("dir=");
        tpmstate.push(&self.state_dir);
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl_port},bindaddr=127.0.0.1"))
            .arg("--tpmstate")
            .arg(tpmstate)
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            // Error messages come from strerror(3): keep them in English for `exited`.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StartError::Fatal(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the `swtpm` binary was not found on PATH: install the `swtpm` package \
                     (Debian and Ubuntu: `apt install swtpm`)",
                )));
            }
            Err(e) => {
                return Err(StartError::Fatal(io::Error::new(
                    e.kind(),
                    format!("could not run swtpm: {e}"),
                )));
            }
        };
        let stderr = child.stderr.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut kept = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > STDERR_KEEP {
                        kept.drain(..kept.len() - STDERR_KEEP);
                    }
                }
                kept
            })
        });
        let mut running = Running { child, stderr };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match running.child.try_wait() {
                Ok(Some(status)) => return Err(exited(&mut running, status)),
                Ok(None) => {}
                Err(e) => return Err(StartError::Fatal(e)),
            }
            if control(ctrl_port, CMD_GET_CAPABILITY).is_ok() {
                return Ok(running);
            }
            if Instant::now() >= deadline {
                let _ = running.child.kill();
                let status = running.child.wait();
                let stderr = running.take_stderr();
                return Err(StartError::Fatal(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "swtpm did not answer on 127.0.0.1:{ctrl_port} within {READY_TIMEOUT:?} \
                         (killed, {status:?}); stderr: {stderr}"
                    ),
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Running {
    /// Waits for the stderr reader (the process must have exited) and returns its output.
    fn take_stderr(&mut self) -> String {
        let bytes = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        if text.is_empty() {
            "(empty)".to_owned()
        } else {
            text.to_owned()
        }
    }
}

/// Classifies an early exit of swtpm.
fn exited(running: &mut Running, status: ExitStatus) -> StartError {
    let stderr = running.take_stderr();
    if stderr.contains("Address already in use") {
        StartError::PortTaken(stderr)
    } else {
        StartError::Fatal(io::Error::other(format!(
            "swtpm exited before it was ready ({status}); stderr: {stderr}"
        )))
    }
}

/// Finds a port P such that P and P + 1 are both free on 127.0.0.1 (at the moment).
fn free_port_pair() -> io::Result<u16> {
    let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..64 {
        let first = TcpListener::bind(loopback(0))?;
        let port = first.local_addr()?.port();
        let Some(next) = port.checked_add(1) else {
            continue;
        };
        if TcpListener::bind(loopback(next)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "found no two consecutive free TCP ports on 127.0.0.1",
    ))
}

/// Sends one command without payload to swtpm's control channel and checks its result.
fn control(ctrl_port: u16, command: u32) -> io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ctrl_port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(&command.to_be_bytes())?;
    let mut result = [0u8; 4];
    stream.read_exact(&mut result)?;
    match u32::from_be_bytes(result) {
        0 => Ok(()),
        rc => Err(io::Error::other(format!(
            "swtpm control command {command} failed with {rc:#x}"
        ))),
    }
}
