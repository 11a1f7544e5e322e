//! Supervision of the real causeway daemons the lab runs, and the files they read.
//!
//! A [`Daemon`] is one child process started as `ip netns exec NS <causeway> ...` (ip execs
//! the binary, so the child pid is the daemon's), with stdout and stderr appended to a log file
//! and its pid written to `<work>/pids/<name>.pid`. It can be stopped (SIGTERM, then SIGKILL
//! after a grace period) and started again with the same arguments. Also owns the certificate
//! setup (by running `causeway certs`) and the services directories of the file source.
//! Which daemons exist and with which flags is `lab`'s business.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::ns;
use crate::wait::Deadline;

/// How long a daemon gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// `causeway certs` generates a few keys; a generous bound for a loaded 2-core machine.
const CERTS_TIMEOUT: Duration = Duration::from_secs(60);

/// One supervised child process inside a namespace.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    ns: String,
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    pid_file: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Describes a daemon named `name` (used for `<work>/logs/<name>.log` and
    /// `<work>/pids/<name>.pid`); does not start it.
    pub fn new(name: &str, ns: &str, program: &Path, args: Vec<OsString>, work_dir: &Path) -> Self {
        Self {
            name: name.to_owned(),
            ns: ns.to_owned(),
            program: program.to_owned(),
            args,
            log: work_dir.join("logs").join(format!("{name}.log")),
            pid_file: work_dir.join("pids").join(format!("{name}.pid")),
            child: None,
        }
    }

    /// Describes a daemon that runs in the host's namespaces (not under `ip netns exec`): the
    /// kube lab's node agents, which add namespaces of their own and open sockets in others.
    pub fn on_host(name: &str, program: &Path, args: Vec<OsString>, work_dir: &Path) -> Self {
        Self::new(name, "", program, args, work_dir)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The running child's pid, if started and not yet reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the daemon (in its own process group, so a terminal's Ctrl-C reaches only the
    /// lab driver, which then stops daemons in order). Appends to the log. Errors if running.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        for dir in [self.log.parent(), self.pid_file.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening log {}", self.log.display()))?;
        let err_log = log.try_clone().context("duplicating the log file handle")?;
        let mut command = if self.ns.is_empty() {
            Command::new(&self.program)
        } else {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &self.ns]).arg(&self.program);
            command
        };
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}: {}", self.name, ns::describe(&command)))?;
        std::fs::write(&self.pid_file, format!("{}\n", child.id()))
            .with_context(|| format!("writing {}", self.pid_file.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the child is still alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// If the child exited on its own: its exit status, described.
    pub fn exit_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// Kills the daemon with SIGKILL at once, as a crash would (no graceful shutdown), and
    /// reaps it. A no-op if it is not running.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// Stops the daemon: SIGTERM, then SIGKILL if it is still alive after `grace`. Waits for
    /// it to be reaped. A no-op if it is not running.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill(2) on our own unreaped child's pid: it cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Deadline::after(grace);
            while !deadline.passed() && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(25));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// Stops (if running) and starts again with the same arguments.
    pub fn restart(&mut self, grace: Duration) -> anyhow::Result<()> {
        self.stop(grace);
        self.start()
    }

    /// The log so far (lossy UTF-8); empty if none was written yet.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Forgets the child without stopping it (for a lab left running by `lab up`).
    pub fn detach(&mut self) {
        self.child = None;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// Runs `causeway certs init --out <dir>`: the clusterset CA.
pub fn certs_init(bin: &Path, ca_dir: &Path) -> anyhow::Result<()> {
    let mut command = Command::new(bin);
    command.args(["certs", "init", "--out"]).arg(ca_dir);
    ns::run_ok(&mut command, CERTS_TIMEOUT).context("creating the lab's CA")?;
    Ok(())
}

/// Who a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFor<'a> {
    Broker,
    /// A cluster, and the (region, zone) its certificate vouches for: the broker accepts its
    /// gateway's `--region`/`--zone` only if they are exactly these.
    Cluster(&'a str, Option<(&'a str, &'a str)>),
}

/// Runs `causeway certs issue (--broker | --cluster ID [--region R --zone Z]) --ca-dir CA
/// --out DIR`.
pub fn certs_issue(
    bin: &Path,
    ca_dir: &Path,
    subject: CertFor<'_>,
    out: &Path,
) -> anyhow::Result<()> {
    let mut command = Command::new(bin);
    command.args(["certs", "issue"]);
    match subject {
        CertFor::Broker => command.arg("--broker"),
        CertFor::Cluster(id, None) => command.args(["--cluster", id]),
        CertFor::Cluster(id, Some((region, zone))) => {
            command.args(["--cluster", id, "--region", region, "--zone", zone])
        }
    };
    command.arg("--ca-dir").arg(ca_dir).arg("--out").arg(out);
    ns::run_ok(&mut command, CERTS_TIMEOUT)
        .with_context(|| format!("issuing the certificate for {subject:?}"))?;
    Ok(())
}

/// Writes one file of a file-source directory atomically (temp file + rename in the same
/// directory), so a watching gateway never reads half a file. `file_name` must be a plain name.
pub fn write_service(dir: &Path, file_name: &str, yaml: &str) -> anyhow::Result<()> {
    check_file_name(file_name)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A dot-prefixed temp name without the .yaml suffix: a source that filters by suffix or
    // skips hidden files ignores it.
    let temp = dir.join(format!(".{file_name}.tmp"));
    let target = dir.join(file_name);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = File::create(&temp)?;
        file.write_all(yaml.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)
    };
    write().with_context(|| format!("writing {}", target.display()))
}

/// Removes one file of a file-source directory; removing a missing file is not an error.
pub fn remove_service(dir: &Path, file_name: &str) -> anyhow::Result<()> {
    check_file_name(file_name)?;
    let path = dir.join(file_name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn check_file_name(file_name: &str) -> anyhow::Result<()> {
    if file_name.is_empty() || file_name.contains('/') || file_name.starts_with('.') {
        bail!("service file name {file_name:?} must be a plain, non-hidden file name");
    }
    Ok(())
}

/// The YAML of an exported service with one TCP port and ready endpoints, in the file
/// source's format.
pub fn service_yaml(
    namespace: &str,
    name: &str,
    port: u16,
    endpoints: &[std::net::IpAddr],
) -> String {
    let mut yaml = format!(
        "name: {name}\nnamespace: {namespace}\nexport: true\nports:\n  - name: http\n    port: {port}\n    protocol: TCP\nendpoints:\n"
    );
    for address in endpoints {
        yaml.push_str(&format!("  - address: {address}\n    ready: true\n"));
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_yaml_matches_the_file_source_format() {
        let yaml = service_yaml("shop", "web", 80, &["10.101.0.10".parse().unwrap()]);
        assert_eq!(
            yaml,
            "name: web\nnamespace: shop\nexport: true\nports:\n  - name: http\n    port: 80\n    protocol: TCP\nendpoints:\n  - address: 10.101.0.10\n    ready: true\n"
        );
    }

    #[test]
    fn write_service_replaces_atomically_and_remove_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("netlab-services-{}", std::process::id()));
        write_service(&dir, "web.yaml", "a").unwrap();
        write_service(&dir, "web.yaml", "b").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("web.yaml")).unwrap(), "b");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["web.yaml"]);
        remove_service(&dir, "web.yaml").unwrap();
        remove_service(&dir, "web.yaml").unwrap();
        assert!(write_service(&dir, "../x.yaml", "c").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
