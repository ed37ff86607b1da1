//! Test harness for the local AWS stand-in.
//!
//! This crate owns the emulator's process lifecycle for tests: it makes sure ministack is
//! installed (through `scripts/local-stack.sh install`, which pins the version and serialises
//! parallel installs), starts one instance bound to 127.0.0.1 on a free port, waits on its health
//! URL, hands out SDK clients configured for it, and stops it by PID when the [`LocalStack`] is
//! dropped — also when a test panics (unwinding drops it) and when the test process dies without
//! unwinding (the child gets SIGKILL from the kernel through `PR_SET_PDEATHSIG`).
//!
//! One emulator per test: it starts in ~0.3 s, and a private instance means tests never see each
//! other's buckets, queues or notifications, whether run by nextest (a process per test) or by
//! `cargo test` (threads).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

/// Region the emulator is addressed in.
pub const REGION: &str = "us-east-1";
/// Account id the emulator uses for every resource.
pub const ACCOUNT_ID: &str = "000000000000";

const START_ATTEMPTS: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the emulator could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// `scripts/local-stack.sh install` failed.
    #[error(
        "installing the emulator failed ({status}); run `scripts/local-stack.sh install` to see why:\n{stderr}"
    )]
    Install {
        /// Exit status of the script.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The process could not be spawned, or its log directory created.
    #[error("could not start the emulator: {0}")]
    Io(#[from] std::io::Error),
    /// The process exited before it answered on its health URL.
    #[error(
        "the emulator on 127.0.0.1:{port} exited during start-up ({status}); last log lines:\n{log}"
    )]
    Exited {
        /// Port it was given.
        port: u16,
        /// Its exit status.
        status: String,
        /// The tail of its log.
        log: String,
    },
    /// The process never answered on its health URL.
    #[error(
        "the emulator on 127.0.0.1:{port} did not become healthy within {waited:?}; last log lines:\n{log}"
    )]
    NotReady {
        /// Port it was given.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// The tail of its log.
        log: String,
    },
    /// An HTTP call to the emulator's own control API failed.
    #[error("emulator control call {what} failed: {detail}")]
    Control {
        /// Which call.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// A running emulator, stopped when dropped.
#[derive(Debug)]
pub struct LocalStack {
    child: Child,
    port: u16,
    dir: PathBuf,
    keep_dir: bool,
}

impl LocalStack {
    /// Installs the emulator if needed and starts a private instance on 127.0.0.1.
    ///
    /// Blocking (it waits well under a second once installed); call it before or outside the
    /// async runtime, or from `#[tokio::test]` directly, which is fine for a one-off start.
    pub fn start() -> Result<Self, StackError> {
        let python = ensure_installed()?;
        let mut last_error = None;
        // A free port found by binding port 0 can be taken by another process before the
        // emulator binds it; the emulator then exits at once and we try another port.
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&python) {
                Ok(stack) => return Ok(stack),
                Err(error @ StackError::Exited { .. }) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(StackError::Control {
            what: "start",
            detail: "no attempt was made".into(),
        }))
    }

    fn start_once(python: &Path) -> Result<Self, StackError> {
        static INSTANCE: AtomicU32 = AtomicU32::new(0);
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "annotable-stack-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("ministack.log"))?;
        let mut command = Command::new(python);
        command
            .args(["-m", "ministack"])
            .env("BIND_HOST", "127.0.0.1")
            .env("GATEWAY_PORT", port.to_string())
            .env("LOG_LEVEL", "WARNING")
            .env("TMPDIR", &dir)
            .env("STATE_DIR", dir.join("state"))
            .env("S3_DATA_DIR", dir.join("s3"))
            .env_remove("PERSIST_STATE")
            .env_remove("S3_PERSIST")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        kill_with_parent(&mut command);
        let child = command.spawn()?;
        let mut stack = LocalStack {
            child,
            port,
            dir,
            keep_dir: std::env::var_os("ANNOTABLE_KEEP_STACK_LOGS").is_some(),
        };
        stack.wait_ready()?;
        Ok(stack)
    }

    fn wait_ready(&mut self) -> Result<(), StackError> {
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                return Err(StackError::Exited {
                    port: self.port,
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if matches!(self.http("GET", "/_ministack/health"), Ok((200, _))) {
                // Another test's emulator may hold the port we were given (the free port was
                // taken between our probe and our bind): its health answer would let this
                // test talk to that emulator. Only our own child's socket counts.
                if listens_on(self.child.id(), self.port) == Some(false) {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(StackError::Exited {
                        port: self.port,
                        status: "the port belongs to another process".into(),
                        log: self.log_tail(),
                    });
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(StackError::NotReady {
            port: self.port,
            waited: READY_TIMEOUT,
            log: self.log_tail(),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The emulator's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The emulator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Shared SDK configuration for the emulator: its endpoint, a fixed region and static
    /// credentials; nothing is read from the environment or profiles.
    pub fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.endpoint())
    }

    /// An S3 client for the emulator (path-style addressing).
    pub fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.sdk_config())
    }

    /// An SQS client for the emulator.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config())
    }

    /// Drops every resource in the emulator (`POST /_ministack/reset`).
    pub fn reset(&self) -> Result<(), StackError> {
        match self.http("POST", "/_ministack/reset") {
            Ok((200..=299, _)) => Ok(()),
            Ok((status, body)) => Err(StackError::Control {
                what: "reset",
                detail: format!("HTTP {status}: {body}"),
            }),
            Err(error) => Err(StackError::Control {
                what: "reset",
                detail: error.to_string(),
            }),
        }
    }

    /// The tail of the emulator's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("ministack.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A minimal HTTP/1.1 request to the emulator's control API (no client crate needed for two
    /// fixed URLs). Returns the status code and body.
    fn http(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                std::io::Error::other(format!("not an HTTP response: {response:.80}"))
            })?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        // SIGKILL: the emulator keeps no state worth flushing, and a prompt stop keeps test
        // runs fast. Waiting reaps it so no zombie outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SDK configuration for an emulator (or any S3/SQS-compatible endpoint) at `endpoint`.
pub fn sdk_config_for(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "local-stack",
        )))
        .build()
}

/// An S3 client with path-style addressing, as emulators need.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Root of the workspace (this crate lives in `crates/local-stack`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `scripts/local-stack.sh python`, which installs the pinned emulator if needed, and
/// returns the venv's python.
pub fn ensure_installed() -> Result<PathBuf, StackError> {
    let script = workspace_root().join("scripts/local-stack.sh");
    let output = Command::new("bash").arg(&script).arg("python").output()?;
    if !output.status.success() {
        return Err(StackError::Install {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let python = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(PathBuf::from(python))
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux `/proc`);
/// `None` where that cannot be read.
fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9).map(|i| format!("socket:[{i}]")))
                .flatten()
        })
        .collect();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .is_some_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    }))
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Asks the kernel to SIGKILL the emulator if the thread that started it dies (a test process
/// killed by a timeout, or aborting), so no emulator outlives its test.
#[allow(unsafe_code)]
fn kill_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, _exit), touching no memory shared with the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_listening_socket_is_recognised() -> std::io::Result<()> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        assert_eq!(listens_on(std::process::id(), port), Some(true));
        // Another process does not hold it.
        let mut other = Command::new("sleep").arg("5").spawn()?;
        assert_eq!(listens_on(other.id(), port), Some(false));
        let _ = other.kill();
        let _ = other.wait();
        drop(listener);
        assert_eq!(listens_on(std::process::id(), port), Some(false));
        Ok(())
    }
}
