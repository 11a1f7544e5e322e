//! Network namespace mechanics: running commands (with deadlines), building a [`Topology`]
//! out of namespaces, veths and bridges with `ip`, and tearing it down by prefix.
//!
//! Veths are created directly inside their namespaces (`ip link add A netns X type veth peer
//! name B netns Y`), so nothing ever appears in the root namespace. Does not start daemons
//! (that is `cluster` and `lab`).

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::topology::{PODS_BRIDGE, Topology, UPLINK, WAN_BRIDGE};
use crate::wait::{self, Deadline};

/// How long a plain `ip`/`sysctl` command may take before it counts as hung.
const SETUP_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A command that could not run, failed or hung.
#[derive(Debug)]
pub enum CommandError {
    Spawn {
        command: String,
        source: std::io::Error,
    },
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    TimedOut {
        command: String,
        after: Duration,
    },
    Interrupted {
        command: String,
    },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn { command, .. } => write!(f, "could not run `{command}`"),
            Self::Failed {
                command,
                status,
                stderr,
            } => {
                write!(f, "`{command}` failed ({status}): {}", stderr.trim())
            }
            Self::TimedOut { command, after } => {
                write!(
                    f,
                    "`{command}` did not finish within {:.1}s",
                    after.as_secs_f64()
                )
            }
            Self::Interrupted { command } => write!(f, "interrupted while running `{command}`"),
        }
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shows a command as a shell user would type it, for error messages.
pub fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `command` to completion, capturing its output, killing it after `timeout` or as
/// soon as SIGINT/SIGTERM arrived (see `wait`). Returns the output whatever the exit status
/// (see [`run_ok`] for "must succeed").
pub fn run(command: &mut Command, timeout: Duration) -> Result<Output, CommandError> {
    run_inner(command, timeout, Interruptible::Yes)
}

/// Like [`run`], but an interrupt does not stop it: for teardown, which runs *because* of
/// an interrupt.
pub fn run_to_end(command: &mut Command, timeout: Duration) -> Result<Output, CommandError> {
    run_inner(command, timeout, Interruptible::No)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruptible {
    Yes,
    No,
}

fn run_inner(
    command: &mut Command,
    timeout: Duration,
    interruptible: Interruptible,
) -> Result<Output, CommandError> {
    let shown = describe(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: shown.clone(),
            source,
        })?;
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Deadline::after(timeout);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        let stop = if interruptible == Interruptible::Yes && wait::interrupted() {
            Some(CommandError::Interrupted {
                command: shown.clone(),
            })
        } else if deadline.passed() {
            Some(CommandError::TimedOut {
                command: shown.clone(),
                after: timeout,
            })
        } else {
            None
        };
        if let Some(error) = stop {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Runs `command` like [`run`] and requires exit status 0.
pub fn run_ok(command: &mut Command, timeout: Duration) -> Result<Output, CommandError> {
    let output = run(command, timeout)?;
    require_success(command, output)
}

/// Runs `command` like [`run_to_end`] and requires exit status 0.
pub fn run_ok_to_end(command: &mut Command, timeout: Duration) -> Result<Output, CommandError> {
    let output = run_to_end(command, timeout)?;
    require_success(command, output)
}

fn require_success(command: &Command, output: Output) -> Result<Output, CommandError> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(CommandError::Failed {
            command: describe(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// `ip netns exec NS ARGS...`, not yet run.
pub fn exec_in<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).args(args);
    command
}

fn ip(args: &[&str]) -> Result<(), CommandError> {
    run_ok(Command::new("ip").args(args), SETUP_COMMAND_TIMEOUT).map(drop)
}

/// `ip -n NS ARGS...`
fn ip_in(ns: &str, args: &[&str]) -> Result<(), CommandError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

fn sysctl_in(ns: &str, setting: &str) -> Result<(), CommandError> {
    run_ok(
        &mut exec_in(ns, &["sysctl", "-q", "-w", setting]),
        SETUP_COMMAND_TIMEOUT,
    )
    .map(drop)
}

/// Names of all named network namespaces (`ip netns list`), in no particular order.
pub fn list_namespaces() -> Result<Vec<String>, CommandError> {
    let output = run_ok_to_end(
        Command::new("ip").args(["netns", "list"]),
        SETUP_COMMAND_TIMEOUT,
    )?;
    // Lines look like "cw-c1-gw (id: 3)" or just "cw-c1-gw".
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// The directory whose files `ip netns exec NS` bind-mounts over `/etc` (resolv.conf).
pub fn etc_dir(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Builds the whole topology: namespaces, the wan bridge, every veth, addresses, routes,
/// forwarding sysctls and the pods' resolv.conf. Expects no leftovers (see [`destroy`]).
pub fn create(topology: &Topology) -> Result<(), CommandError> {
    for ns in topology.namespaces() {
        ip(&["netns", "add", &ns])?;
        ip_in(&ns, &["link", "set", "lo", "up"])?;
    }
    let wan = topology.wan_ns();
    ip_in(&wan, &["link", "add", WAN_BRIDGE, "type", "bridge"])?;
    ip_in(&wan, &["link", "set", WAN_BRIDGE, "up"])?;

    let broker = topology.broker_ns();
    uplink(&broker, &wan, topology.wan_port_of_broker(), WAN_BRIDGE)?;
    ip_in(
        &broker,
        &[
            "addr",
            "add",
            &format!("{}/24", topology.broker_addr()),
            "dev",
            UPLINK,
        ],
    )?;

    for c in topology.clusters() {
        let gw = topology.gw_ns(c);
        uplink(&gw, &wan, &topology.wan_port_of_gw(c), WAN_BRIDGE)?;
        ip_in(
            &gw,
            &[
                "addr",
                "add",
                &format!("{}/24", topology.gw_wan_addr(c)),
                "dev",
                UPLINK,
            ],
        )?;
        ip_in(&gw, &["link", "add", PODS_BRIDGE, "type", "bridge"])?;
        ip_in(
            &gw,
            &[
                "addr",
                "add",
                &format!("{}/24", topology.gw_pod_addr(c)),
                "dev",
                PODS_BRIDGE,
            ],
        )?;
        ip_in(&gw, &["link", "set", PODS_BRIDGE, "up"])?;
        // The gateway forwards between pods0 and its TUN; traffic from the tunnel arrives on
        // cw0 for addresses whose reverse route may point elsewhere, so strict rp_filter would
        // drop it.
        sysctl_in(&gw, "net.ipv4.ip_forward=1")?;
        sysctl_in(&gw, "net.ipv4.conf.all.rp_filter=0")?;
        sysctl_in(&gw, "net.ipv4.conf.default.rp_filter=0")?;
        for p in topology.pods() {
            let pod = topology.pod_ns(c, p);
            uplink(&pod, &gw, &topology.gw_port_of_pod(p), PODS_BRIDGE)?;
            ip_in(
                &pod,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", topology.pod_addr(c, p)),
                    "dev",
                    UPLINK,
                ],
            )?;
            ip_in(
                &pod,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &topology.gw_pod_addr(c).to_string(),
                ],
            )?;
            let etc = etc_dir(&pod);
            let write = std::fs::create_dir_all(&etc).and_then(|()| {
                std::fs::write(etc.join("resolv.conf"), topology.pod_resolv_conf(c))
            });
            write.map_err(|source| CommandError::Spawn {
                command: format!("write {}/resolv.conf", etc.display()),
                source,
            })?;
        }
    }
    Ok(())
}

/// A veth whose `eth0` end is in `inner` and whose `port` end is in `outer`, enslaved to
/// `bridge` there; both ends up.
fn uplink(inner: &str, outer: &str, port: &str, bridge: &str) -> Result<(), CommandError> {
    ip(&[
        "link", "add", UPLINK, "netns", inner, "type", "veth", "peer", "name", port, "netns", outer,
    ])?;
    ip_in(outer, &["link", "set", port, "master", bridge])?;
    ip_in(outer, &["link", "set", port, "up"])?;
    ip_in(inner, &["link", "set", UPLINK, "up"])
}

/// Process ids inside a namespace (`ip netns pids`).
pub fn pids_in(ns: &str) -> Result<Vec<i32>, CommandError> {
    let output = run_ok_to_end(
        Command::new("ip").args(["netns", "pids", ns]),
        SETUP_COMMAND_TIMEOUT,
    )?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect())
}

/// Removes every namespace of a lab with this topology's prefix (whatever its cluster count):
/// kills the processes still inside them (all started by netlab: SIGTERM, then SIGKILL after
/// `grace`), deletes the namespaces and their `/etc/netns` dirs. Best effort: carries on past
/// failures and returns the first one.
pub fn destroy(topology: &Topology, grace: Duration) -> Result<(), CommandError> {
    let mut first_error = None;
    let mut note = |result: Result<(), CommandError>| {
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    };
    let ours: Vec<String> = match list_namespaces() {
        Ok(all) => all
            .into_iter()
            .filter(|ns| topology.owns_namespace(ns))
            .collect(),
        Err(e) => {
            note(Err(e));
            Vec::new()
        }
    };
    let pids_of = |namespaces: &[String]| -> Vec<i32> {
        namespaces
            .iter()
            .flat_map(|ns| pids_in(ns).unwrap_or_default())
            .collect()
    };
    let running = pids_of(&ours);
    if !running.is_empty() {
        signal_all(&running, libc::SIGTERM);
        let deadline = Deadline::after(grace);
        while !deadline.passed() && !pids_of(&ours).is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_all(&pids_of(&ours), libc::SIGKILL);
    }
    for ns in &ours {
        let mut delete = Command::new("ip");
        delete.args(["netns", "del", ns]);
        note(run_ok_to_end(&mut delete, SETUP_COMMAND_TIMEOUT).map(drop));
    }
    // /etc/netns dirs can outlive their namespace (a crash between the two); match by name.
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if topology.owns_namespace(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn signal_all(pids: &[i32], signal: libc::c_int) {
    for &pid in pids {
        // SAFETY: kill(2) has no memory-safety preconditions; the pids were just listed as
        // members of this lab's namespaces, which only netlab starts processes in.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Runs `f` on a fresh thread that first joins network namespace `ns`, and returns its result.
/// Sockets created in `f` stay in `ns` after the thread ends, so this is how the host process
/// opens a socket inside a pod (a DNS probe, an in-process HTTP server).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let path = PathBuf::from("/run/netns").join(ns);
    let handle = std::fs::File::open(&path)?;
    let thread = std::thread::spawn(move || -> std::io::Result<T> {
        // SAFETY: setns on a valid, open namespace fd; it changes only this thread's network
        // namespace, and the thread ends right after `f`.
        let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    });
    thread
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
}
