//! VM leases on shared storage through sanlock (`[leases] kind = "sanlock"`), oVirt's model:
//! every protected VM halo starts carries a `<lease>` in its domain XML, and libvirt's sanlock
//! lock manager takes that lease (a Disk Paxos lease in a file on a directory every host
//! mounts) before QEMU runs. A second start anywhere is refused by libvirt itself, whoever asks
//! (`virsh create` of the running domain's XML, a script, another tool); a host that cannot
//! renew its lease loses its VMs (sanlock kills them).
//!
//! halo's part: the cluster's lockspace and each VM's lease file are made (once, atomically:
//! written under a temporary name, then linked into place), each host joins the lockspace with
//! its sanlock host id, and the lease is put into a VM's XML before halo starts it. The files
//! are written with the `sanlock` command of the Debian package (`sanlock direct init`,
//! `sanlock client add_lockspace`); libvirt takes and releases the leases.
//!
//! The cost: a lease held by a host that died is free only when that host's lockspace lease has
//! expired — 8 × io-timeout + 60 s after its last renewal (68 s with an io timeout of 1 s, 140
//! s with sanlock's default 10 s). A restart waits that long (`StartError::LeaseHeld`).

use std::path::{Path, PathBuf};
use std::process::Command;

use halo_core::StartError;

/// The largest sanlock host id (512-byte sectors, 1 MiB align: 2,000 hosts).
pub const MAX_HOST_ID: u16 = 2000;

/// Size of a lockspace or a lease file (sanlock's align size for 512-byte sectors).
const AREA: u64 = 1 << 20;

/// sanlock's longest lockspace and resource names.
const NAME_MAX: usize = 48;

/// How this host takes VM leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanlockLeases {
    /// A directory every host mounts at this same path (NFS, a cluster file system): the
    /// lockspace and one lease file per VM.
    pub dir: PathBuf,
    /// The lockspace's name (one per cluster).
    pub lockspace: String,
    /// This host's sanlock host id, 1..=2000, different on every host of the lockspace.
    pub host_id: u16,
    /// sanlock's io timeout for the lockspace, in seconds: renewals every 2×, a host's leases
    /// expire 8× + 60 s after its last renewal.
    pub io_timeout_s: u32,
    /// The sanlock daemon's run directory (`SANLOCK_RUN_DIR`; `None`: sanlock's own,
    /// `/run/sanlock`).
    pub run_dir: Option<PathBuf>,
}

/// What went wrong with leases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// A file could not be made or read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The `sanlock` command failed or is missing.
    #[error("sanlock {what}: {message}")]
    Sanlock {
        /// What was asked.
        what: String,
        /// Its output or why it could not run.
        message: String,
    },
}

/// Whether joining found the lockspace joined already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// Joined now.
    Now,
    /// This host's daemon had joined it before (an agent restart).
    Already,
}

impl SanlockLeases {
    /// Checks the settings a site wrote (the config loader names the keys).
    pub fn check(&self) -> Result<(), String> {
        if !self.dir.is_absolute() {
            return Err(format!("dir `{}` must be an absolute path", self.dir.display()));
        }
        if self.host_id == 0 || self.host_id > MAX_HOST_ID {
            return Err(format!("host-id {} must be 1..={MAX_HOST_ID}, different on every host", self.host_id));
        }
        if !(1..=60).contains(&self.io_timeout_s) {
            return Err(format!("io-timeout-s {} must be 1..=60", self.io_timeout_s));
        }
        if !sanlock_name(&self.lockspace) {
            return Err(format!("lockspace `{}`: 1 to {NAME_MAX} letters, digits, `-`, `_` or `.`", self.lockspace));
        }
        Ok(())
    }

    /// How long after a host's last renewal its leases are free for another host (sanlock's
    /// `host_dead_seconds`, with its fixed 60 s watchdog fire time).
    pub fn expiry_s(&self) -> u32 {
        8 * self.io_timeout_s + 60
    }

    /// The lockspace file.
    pub fn lockspace_path(&self) -> PathBuf {
        self.dir.join(format!("{}.lockspace", self.lockspace))
    }

    /// The lease file of `vm`.
    pub fn lease_path(&self, vm: &str) -> PathBuf {
        self.dir.join(format!("{}.lease", lease_key(vm)))
    }

    /// `xml` with the lease of `vm` among its devices (a `<lease>` of this lockspace already
    /// there is replaced; other leases are kept).
    pub fn with_lease(&self, xml: &str, vm: &str) -> String {
        let element = format!(
            "<lease><lockspace>{}</lockspace><key>{}</key><target path='{}' offset='0'/></lease>",
            self.lockspace,
            lease_key(vm),
            xml_escape(&self.lease_path(vm).display().to_string())
        );
        let mut xml = without_lease(xml, &self.lockspace);
        if let Some(at) = xml.rfind("</devices>") {
            xml.insert_str(at, &element);
        } else if let Some(at) = xml.rfind("</domain>") {
            xml.insert_str(at, &format!("<devices>{element}</devices>"));
        }
        xml
    }

    /// Makes the lockspace file if there is none (`sanlock direct init -s`), then joins it as
    /// this host (`sanlock client add_lockspace`; ≈ 2–3 io timeouts when the host id is free,
    /// up to the expiry when this host id was held by a host that died). Blocks.
    pub fn join(&self) -> Result<Joined, LeaseError> {
        let path = self.lockspace_path();
        self.make_once(&path, |tmp| {
            vec![
                "direct".into(),
                "init".into(),
                "-o".into(),
                self.io_timeout_s.to_string(),
                "-s".into(),
                format!("{}:0:{}:0", self.lockspace, tmp.display()),
            ]
        })?;
        let spec = format!("{}:{}:{}:0", self.lockspace, self.host_id, path.display());
        let out = self.sanlock(
            "add_lockspace",
            &["client", "add_lockspace", "-o", &self.io_timeout_s.to_string(), "-s", &spec],
        )?;
        match done_code(&out, "add_lockspace_timeout done") {
            Some(0) => Ok(Joined::Now),
            Some(-17) => Ok(Joined::Already),
            Some(code) => Err(LeaseError::Sanlock {
                what: format!("add_lockspace {spec}"),
                message: format!("error {code}{}", explain(code)),
            }),
            None => Err(LeaseError::Sanlock { what: format!("add_lockspace {spec}"), message: one_line(&out) }),
        }
    }

    /// Makes the lease file of `vm` if there is none (`sanlock direct init -r`).
    pub fn ensure_lease(&self, vm: &str) -> Result<PathBuf, LeaseError> {
        let path = self.lease_path(vm);
        self.make_once(&path, |tmp| {
            vec![
                "direct".into(),
                "init".into(),
                "-r".into(),
                format!("{}:{}:{}:0", self.lockspace, lease_key(vm), tmp.display()),
            ]
        })?;
        Ok(path)
    }

    /// Whether the daemon holds the lockspace now (`sanlock client status`).
    pub fn joined(&self) -> Result<bool, LeaseError> {
        let out = self.sanlock("status", &["client", "status"])?;
        let prefix = format!("s {}:{}:", self.lockspace, self.host_id);
        Ok(out.lines().any(|l| l.starts_with(&prefix) && !l.contains("ADD") && !l.contains("REM")))
    }

    /// `path` made once by `init` on a temporary file beside it, then linked into place: a
    /// reader never meets a half-written file, and of two hosts making it at once one wins and
    /// the other's copy is dropped (an existing file is never written again: it may be in use).
    fn make_once(&self, path: &Path, init: impl Fn(&Path) -> Vec<String>) -> Result<(), LeaseError> {
        if path.exists() {
            return Ok(());
        }
        let file_err =
            |p: &Path, e: std::io::Error| LeaseError::File { path: p.display().to_string(), message: e.to_string() };
        let tmp = path.with_extension(format!("tmp-{}-{}", self.host_id, std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| file_err(&tmp, e))?;
        let made = file.set_len(AREA).map_err(|e| file_err(&tmp, e)).and_then(|()| {
            let args = init(&tmp);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = self.sanlock("direct init", &args)?;
            match done_code(&out, "init done") {
                Some(0) => Ok(()),
                code => Err(LeaseError::Sanlock {
                    what: format!("direct init of {}", path.display()),
                    message: code.map_or_else(|| one_line(&out), |c| format!("error {c}{}", explain(c))),
                }),
            }
        });
        let linked = made.and_then(|()| match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(file_err(path, e)),
        });
        let _ = std::fs::remove_file(&tmp);
        linked
    }

    /// Runs `sanlock ARGS` (with this host's run directory) and returns what it printed.
    fn sanlock(&self, what: &str, args: &[&str]) -> Result<String, LeaseError> {
        let mut command = Command::new("sanlock");
        command.args(args);
        if let Some(dir) = &self.run_dir {
            command.env("SANLOCK_RUN_DIR", dir);
        }
        let out = command.output().map_err(|e| LeaseError::Sanlock {
            what: what.to_string(),
            message: format!("cannot run `sanlock` ({e}; apt-get install sanlock libvirt-sanlock)"),
        })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    }
}

/// A VM's lease name in the lockspace: its name when sanlock can take it as it is, otherwise
/// `h-` and a digest of it (the same on every host).
pub fn lease_key(vm: &str) -> String {
    if sanlock_name(vm) && !vm.starts_with("h-") {
        return vm.to_string();
    }
    // FNV-1a, 128 bits as two 64-bit halves with different offsets: stable across hosts and
    // releases (std's hasher is not), collision-free in practice for VM names.
    let fnv = |offset: u64| vm.bytes().fold(offset, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("h-{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
}

/// Whether libvirt's start failed because the VM's sanlock lease is held by another host
/// (libvirt: "Failed to acquire lock: error -243/-244/-245/-247", or in later releases "Lease
/// is held by another host"), as opposed to any other failure.
pub fn lease_held(message: &str) -> bool {
    message.contains("held by another host")
        || ["-243", "-244", "-245", "-247"]
            .iter()
            .any(|code| message.contains(&format!("Failed to acquire lock: error {code}")))
}

/// A start's failure, typed for the core.
pub fn start_error(message: String) -> StartError {
    if lease_held(&message) { StartError::LeaseHeld(message) } else { StartError::Failed(message) }
}

fn sanlock_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `xml` without its `<lease>` elements of `lockspace`.
fn without_lease(xml: &str, lockspace: &str) -> String {
    let mut xml = xml.to_string();
    let mut from = 0;
    while let Some(start) = xml[from..].find("<lease>").map(|i| i + from) {
        let Some(end) = xml[start..].find("</lease>").map(|i| start + i + "</lease>".len()) else { break };
        if xml[start..end].contains(&format!("<lockspace>{lockspace}</lockspace>")) {
            xml.replace_range(start..end, "");
            from = start;
        } else {
            from = end;
        }
    }
    xml
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// The code of sanlock's `<marker> N` line.
fn done_code(out: &str, marker: &str) -> Option<i32> {
    out.lines().find_map(|l| l.trim().strip_prefix(marker)).and_then(|rest| rest.trim().parse().ok())
}

fn explain(code: i32) -> &'static str {
    match code {
        -2 => " (no such file: is the lease directory mounted on this host?)",
        -13 => " (permission denied)",
        -19 | -111 => " (the sanlock daemon does not answer: is it running? `sanlock daemon -w 0` without wdmd)",
        -22 => " (invalid: the lockspace file is damaged or not sanlock's)",
        -28 => " (no lockspace joined for this lease)",
        -223 | -243 | -244 | -245 | -247 => " (held by another host)",
        _ => "",
    }
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() { "no output".into() } else { line.chars().take(400).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases() -> SanlockLeases {
        SanlockLeases {
            dir: "/srv/leases".into(),
            lockspace: "halo".into(),
            host_id: 3,
            io_timeout_s: 10,
            run_dir: None,
        }
    }

    #[test]
    fn the_lease_goes_among_the_devices_once() {
        let xml = "<domain type='kvm'><name>vm-1</name><devices><emulator>/usr/bin/qemu</emulator></devices></domain>";
        let once = leases().with_lease(xml, "vm-1");
        assert!(once.contains(
            "<lease><lockspace>halo</lockspace><key>vm-1</key><target path='/srv/leases/vm-1.lease' offset='0'/></lease></devices>"
        ));
        assert_eq!(leases().with_lease(&once, "vm-1"), once, "a second pass changes nothing");
        let other = once.replace(
            "</devices>",
            "<lease><lockspace>site</lockspace><key>k</key><target path='/x'/></lease></devices>",
        );
        let again = leases().with_lease(&other, "vm-1");
        assert_eq!(again.matches("<lease>").count(), 2, "another lockspace's lease is kept: {again}");
        let bare = leases().with_lease("<domain><name>v</name></domain>", "v");
        assert!(bare.contains("<devices><lease>"), "{bare}");
        assert!(roxmltree::Document::parse(&once).is_ok());
    }

    #[test]
    fn keys_fit_sanlock_and_are_stable() {
        assert_eq!(lease_key("vm-2"), "vm-2");
        let long = "a".repeat(49);
        let key = lease_key(&long);
        assert!(key.starts_with("h-") && key.len() == 34, "{key}");
        assert_eq!(key, lease_key(&long));
        assert_ne!(lease_key("web 1"), lease_key("web 2"));
        assert_ne!(lease_key("h-x"), "h-x", "a name that looks like a digest is digested too");
    }

    #[test]
    fn a_held_lease_is_told_apart_from_other_failures() {
        assert!(lease_held(
            "libvirt qemu+tcp://10.0.0.3/system: start of vm-2: internal error: Failed to acquire lock: error -243"
        ));
        assert!(lease_held("Failed to acquire lock: Lease is held by another host"));
        assert!(!lease_held("Failed to acquire lock: No space left on device"));
        assert!(!lease_held("Failed to acquire lock: error -2"));
        assert!(matches!(start_error("domain not found".into()), StartError::Failed(_)));
    }

    #[test]
    fn settings_are_checked() {
        assert!(leases().check().is_ok());
        assert!(SanlockLeases { host_id: 0, ..leases() }.check().expect_err("host id 0").contains("host-id 0"));
        assert!(SanlockLeases { host_id: 2001, ..leases() }.check().is_err());
        assert!(SanlockLeases { dir: "leases".into(), ..leases() }.check().expect_err("relative").contains("absolute"));
        assert!(SanlockLeases { io_timeout_s: 0, ..leases() }.check().is_err());
        assert!(SanlockLeases { lockspace: "a b".into(), ..leases() }.check().is_err());
        assert_eq!(SanlockLeases { io_timeout_s: 1, ..leases() }.expiry_s(), 68);
        assert_eq!(done_code("x\ninit done 0\n", "init done"), Some(0));
        assert_eq!(done_code("add_lockspace_timeout done -17", "add_lockspace_timeout done"), Some(-17));
    }
}
