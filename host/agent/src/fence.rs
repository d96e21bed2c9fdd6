//! Fence devices through the standard ClusterLabs fence agents (Debian `fence-agents`:
//! `fence_redfish`, `fence_ipmilan`, `fence_virsh`, …), called as Pacemaker's fencer calls
//! them: options as `key=value` lines on standard input (`action=off|on|status|monitor`, the
//! device's own options, `password=` read from a 0600 file), the answer in the exit code
//! (`status`: 0 on, 2 off, 1 error). Every call has a deadline; an agent that overruns is
//! killed. Devices are tried in order (levels); `off` is confirmed by a `status` that says
//! off. The password is never logged, and is scrubbed from whatever the agent printed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// One fence device of a host (`[[hosts.fence]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FenceDevice {
    /// The fence agent: a name found in `/usr/sbin` (`fence_redfish`) or an absolute path.
    pub agent: String,
    /// Its options as the agent reads them on standard input (`ip`, `ipport`, `username`,
    /// `ssl_insecure`, `systems_uri`, `lanplus`, …); not `action` or `password`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// A file holding the password (mode 0600, one line); passed as `password=`, never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Each call to the agent is killed after this many seconds (default 10).
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Call `status` after a successful `off` and require "off". The standard agents' `off`
    /// already polls the device's status until it says off before it succeeds (the fencing
    /// library's contract), so this costs a second call (≈ 0.2 s for a Python agent) for no
    /// gain with them; set it for an agent whose `off` does not wait.
    #[serde(default)]
    pub verify_status: bool,
}

fn default_timeout_s() -> u64 {
    10
}

/// What a device answered to `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// On.
    On,
    /// Off.
    Off,
}

impl FenceDevice {
    /// Checks the settings (the config loader names the key).
    pub fn check(&self) -> Result<(), String> {
        let program = self.program();
        if !program.is_file() {
            return Err(format!(
                "agent `{}`: {} does not exist (apt-get install fence-agents)",
                self.agent,
                program.display()
            ));
        }
        for (key, value) in &self.options {
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(format!("options: `{key}` is not an option name"));
            }
            if matches!(key.as_str(), "action" | "password" | "passwd") {
                return Err(format!("options: `{key}` is set by halo (the password comes from password-file)"));
            }
            if value.contains(['\n', '\r']) {
                return Err(format!("options.{key}: one line only"));
            }
        }
        if let Some(file) = &self.password_file {
            check_secret(file)?;
        }
        if !(1..=300).contains(&self.timeout_s) {
            return Err(format!("timeout-s: {} must be between 1 and 300", self.timeout_s));
        }
        Ok(())
    }

    /// Its name in events: the agent and its address (never a secret).
    pub fn name(&self) -> String {
        let address = self.options.get("ip").or_else(|| self.options.get("ipaddr"));
        match (address, self.options.get("ipport")) {
            (Some(ip), Some(port)) => format!("{} {ip}:{port}", self.agent),
            (Some(ip), None) => format!("{} {ip}", self.agent),
            _ => self.agent.clone(),
        }
    }

    fn program(&self) -> PathBuf {
        if self.agent.starts_with('/') { PathBuf::from(&self.agent) } else { Path::new("/usr/sbin").join(&self.agent) }
    }

    /// Runs the agent with `action`; its exit code and what it printed (password scrubbed).
    pub fn call(&self, action: &str) -> Result<(i32, String), String> {
        self.call_unless(action, &AtomicBool::new(false))
    }

    /// [`FenceDevice::call`], the agent killed as soon as `cancelled` is set.
    pub fn call_unless(&self, action: &str, cancelled: &AtomicBool) -> Result<(i32, String), String> {
        let password = match &self.password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| format!("password file {}: {e}", file.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => None,
        };
        let mut input = format!("action={action}\n");
        for (key, value) in &self.options {
            input.push_str(&format!("{key}={value}\n"));
        }
        if let Some(password) = &password {
            input.push_str(&format!("password={password}\n"));
        }
        let mut child = Command::new(self.program())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program().display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(self.timeout_s);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if cancelled.load(Ordering::Relaxed) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{action}: called off (the host was heard again)"));
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{action}: no answer within {} s (killed)", self.timeout_s));
                }
                Err(e) => return Err(format!("{action}: {e}")),
            }
        };
        let mut out = String::new();
        for mut pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut text = String::new();
            let _ = pipe.by_ref().take(16 * 1024).read_to_string(&mut text);
            out.push_str(&text);
        }
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            out = out.replace(&password, "***");
        }
        Ok((status.code().unwrap_or(-1), out))
    }

    /// `status`: on or off.
    pub fn status(&self) -> Result<Power, String> {
        match self.call("status")? {
            (0, _) => Ok(Power::On),
            (2, _) => Ok(Power::Off),
            (code, out) => Err(format!("status: exit {code}: {}", last_line(&out))),
        }
    }

    /// `off` (the agent waits until the device's status says off), then, with
    /// `verify-status`, a `status` that must say off; given up when `cancelled` is set.
    pub fn off(&self, cancelled: &AtomicBool) -> Result<(), String> {
        match self.call_unless("off", cancelled)? {
            (0, _) => {}
            (code, out) => return Err(format!("off: exit {code}: {}", last_line(&out))),
        }
        if !self.verify_status {
            return Ok(());
        }
        match self.status()? {
            Power::Off => Ok(()),
            Power::On => Err("off: the device still says on".into()),
        }
    }
}

/// Powers a host off through `devices` in order: the first that confirms names itself;
/// otherwise every device's failure. Stops (no further device) once `cancelled` is set.
pub fn fence(devices: &[FenceDevice], cancelled: &AtomicBool) -> Result<String, String> {
    if devices.is_empty() {
        return Err("no fence device".into());
    }
    let mut failures = Vec::new();
    for device in devices {
        if cancelled.load(Ordering::Relaxed) {
            failures.push("called off".to_string());
            break;
        }
        match device.off(cancelled) {
            Ok(()) => return Ok(device.name()),
            Err(why) => failures.push(format!("{}: {why}", device.name())),
        }
    }
    Err(failures.join("; "))
}

fn last_line(out: &str) -> String {
    let line = out.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("no output");
    line.chars().take(300).collect()
}

/// A secret file: a regular file, not readable by group or others.
fn check_secret(file: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(file).map_err(|e| format!("password-file {}: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!("password-file {}: not a regular file", file.display()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "password-file {}: mode {:o}; make it 0600 (chmod 600)",
            file.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fence agent written as a shell script: `status` answers from a state file, `off`
    /// writes it; `sleep` makes it hang.
    fn agent(dir: &Path, body: &str) -> FenceDevice {
        let path = dir.join("fence_test");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("agent");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("mode");
        let password = dir.join("password");
        std::fs::write(&password, "s3cret-pass\n").expect("password");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).expect("mode");
        FenceDevice {
            agent: path.display().to_string(),
            options: [("ip".to_string(), "10.0.0.9".to_string())].into_iter().collect(),
            password_file: Some(password),
            timeout_s: 1,
            verify_status: true,
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("halo-fence-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn off_is_confirmed_by_status_through_the_stdin_interface() {
        let d = dir("a");
        let state = d.join("state");
        let device = agent(
            &d,
            &format!(
                "input=$(cat); echo \"$input\" > {d}/input; case \"$input\" in *action=off*) echo off > {s}; echo 'Success: Powered OFF';; *action=status*) [ \"$(cat {s} 2>/dev/null)\" = off ] && {{ echo 'Status: OFF'; exit 2; }}; echo 'Status: ON'; exit 0;; esac",
                d = d.display(),
                s = state.display()
            ),
        );
        assert!(device.check().is_ok(), "{:?}", device.check());
        assert_eq!(device.status(), Ok(Power::On));
        assert_eq!(
            fence(std::slice::from_ref(&device), &AtomicBool::new(false)),
            Ok(format!("{} 10.0.0.9", device.agent))
        );
        let input = std::fs::read_to_string(d.join("input")).expect("input");
        assert!(
            input.contains("action=status") && input.contains("ip=10.0.0.9") && input.contains("password=s3cret-pass"),
            "{input}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_hung_or_failing_device_is_cut_off_and_the_next_level_tried() {
        let d = dir("b");
        let hung = agent(&d, "cat >/dev/null; sleep 30");
        let started = Instant::now();
        let err = hung.status().expect_err("killed");
        assert!(err.contains("no answer within 1 s (killed)"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let d2 = dir("c");
        let liar = agent(&d2, "cat >/dev/null; echo 'failed: password s3cret-pass rejected' >&2; exit 1");
        let err = fence(&[hung, liar], &AtomicBool::new(false)).expect_err("none confirms");
        assert!(err.contains("no answer within 1 s") && err.contains("exit 1"), "{err}");
        assert!(!err.contains("s3cret-pass") && err.contains("***"), "the password is scrubbed: {err}");
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&d2);
    }

    #[test]
    fn a_fence_called_off_kills_its_agent_at_once() {
        let d = dir("e");
        let mut hung = agent(&d, "cat >/dev/null; sleep 30");
        hung.timeout_s = 60;
        let cancelled = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&cancelled);
        let started = Instant::now();
        let caller = std::thread::spawn(move || fence(&[hung.clone(), hung], &flag));
        std::thread::sleep(Duration::from_millis(200));
        cancelled.store(true, Ordering::Relaxed);
        let err = caller.join().expect("thread").expect_err("called off");
        assert!(err.contains("called off (the host was heard again)") && err.ends_with("called off"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn settings_are_checked() {
        let d = dir("d");
        let mut device = agent(&d, "exit 0");
        device.options.insert("password".into(), "x".into());
        assert!(device.check().expect_err("reserved").contains("set by halo"));
        device.options.remove("password");
        use std::os::unix::fs::PermissionsExt as _;
        let password = device.password_file.clone().expect("file");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("mode");
        assert!(device.check().expect_err("mode").contains("chmod 600"));
        let missing = FenceDevice { agent: "fence_nonexistent".into(), ..device };
        assert!(missing.check().expect_err("missing").contains("apt-get install fence-agents"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
