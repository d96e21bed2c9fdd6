//! A BMC per lab host: a Redfish service (HTTPS, basic auth) on the lab's power network P,
//! in a namespace of its own (`halo-NAME-bmc`, address `.193` of the lab's /24, `.253` in the shared layout), one port per
//! host (`BMC_PORT_BASE + N`). `ComputerSystem.Reset` `ForceOff` cuts the host's power as
//! [`Lab::kill_host`] does, `On` boots it ([`Lab::boot_host`]); `PowerState` is the host's real
//! state (on while a process runs in its namespace), so a host that lost power says `Off`.
//! Debian's `fence_redfish` is the client in the tests — a real fence agent against the lab
//! device. Faults: [`BmcMode::Lying`] (says Off, does nothing), [`BmcMode::Slow`] (every answer
//! after 5 s), [`Lab::bmc_reachable`] (its port dropped: the agent's request times out).
//!
//! The service is Python's standard library (`bmc.py`, written into the lab's directory), run by
//! Debian's `python3` — the fence agents need it anyway.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Lab, LabError, delete_rules, ip, nft, which};

/// Port of host N's BMC is this + N.
pub const BMC_PORT_BASE: u16 = 8440;

/// The BMC service.
const SCRIPT: &str = include_str!("bmc.py");

/// How a lab BMC behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmcMode {
    /// As a BMC should.
    Normal,
    /// Says the host is off and does nothing when told to power it off.
    Lying,
    /// Answers every request after 5 s.
    Slow,
}

impl Lab {
    /// The BMCs' address (on network P).
    pub fn bmc_address(&self) -> std::net::Ipv4Addr {
        let [a, b, c] = self.subnet();
        std::net::Ipv4Addr::new(a, b, c, self.service_octet(193))
    }

    /// Host `host`'s address on the power network P (what its agent reaches the BMCs from).
    pub fn power_address(&self, host: usize) -> std::net::Ipv4Addr {
        self.address_at(host, 3)
    }

    /// Host `host`'s BMC port.
    pub fn bmc_port(&self, host: usize) -> u16 {
        BMC_PORT_BASE + host as u16
    }

    /// The BMCs' directory: certificate, password (`<dir>/password`, mode 0600), modes, log.
    pub fn bmc_dir(&self) -> PathBuf {
        self.dir().join("bmc")
    }

    /// Starts the BMCs of every host (a self-signed certificate made once with `openssl`),
    /// `halo` being the executable the service calls for power (`halo lab fault kill N` /
    /// `heal boot N`). Returns when they answer.
    pub fn start_bmcs(&self, halo: &std::path::Path) -> Result<(), LabError> {
        for program in ["python3", "openssl"] {
            if which(program).is_none() {
                return Err(LabError::Unavailable(format!("{program} is missing (apt-get install python3 openssl)")));
            }
        }
        let dir = self.bmc_dir();
        let io = |e: std::io::Error| LabError::Invalid(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let _ = std::fs::remove_file(dir.join("ready"));
        if !dir.join("cert.pem").exists() {
            let made = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=halo-lab-bmc"])
                .arg("-keyout")
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .output()
                .map_err(|source| LabError::Spawn { command: "openssl".into(), source })?;
            if !made.status.success() {
                return Err(LabError::Invalid(format!("openssl: {}", String::from_utf8_lossy(&made.stderr))));
            }
        }
        let password = dir.join("password");
        std::fs::write(&password, format!("lab-bmc-{}\n", std::process::id())).map_err(io)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        std::fs::write(dir.join("bmc.py"), SCRIPT).map_err(io)?;
        let ports: Vec<String> = (1..=self.hosts()).map(|h| self.bmc_port(h).to_string()).collect();
        let python = if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3".into()
        } else {
            which("python3").unwrap_or_default()
        };
        let log = std::fs::File::create(dir.join("bmc.out")).map_err(io)?;
        Command::new("ip")
            .args(["netns", "exec", &self.bmc_netns()])
            .arg(python)
            .arg(dir.join("bmc.py"))
            .arg(&dir)
            .arg(halo)
            .arg(self.name())
            .arg(format!("halo-{}-host-", self.name()))
            .arg(self.bmc_address().to_string())
            .arg(ports.join(","))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|source| LabError::Spawn { command: "the lab BMC".into(), source })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join("ready").exists() {
            if Instant::now() > deadline {
                let out = std::fs::read_to_string(dir.join("bmc.out")).unwrap_or_default();
                return Err(LabError::Invalid(format!("the lab BMC did not start: {out}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The BMC password (what a fence device's password file holds).
    pub fn bmc_password_file(&self) -> PathBuf {
        self.bmc_dir().join("password")
    }

    /// Makes host `host`'s BMC behave as `mode` from its next request on.
    pub fn set_bmc_mode(&self, host: usize, mode: BmcMode) -> Result<(), LabError> {
        self.check_host(host)?;
        let text = match mode {
            BmcMode::Normal => "normal",
            BmcMode::Lying => "lying",
            BmcMode::Slow => "slow",
        };
        let path = self.bmc_dir().join(format!("host-{host}.mode"));
        std::fs::write(&path, text).map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Drops (`false`) or lets through (`true`) every packet to host `host`'s BMC: an
    /// unreachable BMC, as when it lost its own power with the host.
    pub fn bmc_reachable(&self, host: usize, reachable: bool) -> Result<(), LabError> {
        self.check_host(host)?;
        let ns = self.bmc_netns();
        if reachable {
            delete_rules(&ns, "inet halo_lab input", &format!("bmc-{host}"))?;
        } else {
            nft(&ns, "add table inet halo_lab")?;
            nft(&ns, "add chain inet halo_lab input { type filter hook input priority 0 ; policy accept ; }")?;
            nft(
                &ns,
                &format!("add rule inet halo_lab input tcp dport {} drop comment \"bmc-{host}\"", self.bmc_port(host)),
            )?;
        }
        Ok(())
    }

    /// What the BMCs were asked (one line per reset: time, host, type, mode).
    pub fn bmc_log(&self) -> String {
        std::fs::read_to_string(self.bmc_dir().join("bmc.log")).unwrap_or_default()
    }

    pub(crate) fn bmc_netns(&self) -> String {
        format!("halo-{}-bmc", self.name())
    }

    /// The power network: a bridge without an address, the BMC namespace on it, an interface
    /// `eth-p` per host (made by `build`).
    pub(crate) fn build_power_network(&self) -> Result<(), LabError> {
        let sw = self.switch();
        ip(&["-n", &sw, "link", "add", "br-p", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br-p", "up"])?;
        let bmc = self.bmc_netns();
        ip(&["netns", "add", &bmc])?;
        ip(&["-n", &bmc, "link", "set", "lo", "up"])?;
        ip(&["link", "add", "eth-p", "netns", &bmc, "type", "veth", "peer", "name", "bmc-p", "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", "bmc-p", "master", "br-p"])?;
        ip(&["-n", &sw, "link", "set", "bmc-p", "up"])?;
        let shared = self.layout() == crate::Layout::Shared;
        let prefix = self.prefix();
        ip(&["-n", &bmc, "addr", "add", &format!("{}/{prefix}", self.bmc_address()), "dev", "eth-p"])?;
        ip(&["-n", &bmc, "link", "set", "eth-p", "up"])?;
        for host in 1..=self.hosts() {
            let ns = self.netns(host);
            let port = format!("h{host}-p");
            ip(&["link", "add", "eth-p", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br-p"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let address = format!("{}/{prefix}", self.power_address(host));
            // Shared: the host's address is on every network; only the BMCs are reached over P.
            let bmc_route = format!("{}/32", self.bmc_address());
            let route = [bmc_route.as_str(), "dev", "eth-p"];
            crate::address_up(&ns, "eth-p", &address, shared.then_some(&route[..]))?;
        }
        Ok(())
    }
}
