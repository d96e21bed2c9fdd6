//! An etcd cluster for the etcd coordination backend (decision 0017): three members of Debian's
//! `etcd-server`, each in a namespace of its own (`halo-NAME-etcd-K`) on the migration/storage
//! network M, at the top three host addresses of M (`.189`, `.188`, `.187`; so a lab with etcd
//! has at most 57 hosts). Clients on 2379, peers on 2380; data under the lab's directory.
//!
//! Faults are real: [`Lab::etcd_stop`] kills a member's process (one lost: the quorum holds;
//! two: it is lost), [`Lab::block_etcd`] drops one host's packets at every member (the host
//! keeps its networks and the NFS server).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Lab, LabError, delete_rules, ip, kill_all_in, nft, which};

/// Members of the lab's etcd cluster.
pub const ETCD_MEMBERS: usize = 3;
/// Their client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// The largest split-layout lab that has room for the members' addresses on M (the shared
/// layout has room at any size).
pub const ETCD_MAX_HOSTS: usize = 57;

impl Lab {
    /// Member `member`'s namespace (members count from 1).
    pub fn etcd_netns(&self, member: usize) -> String {
        format!("halo-{}-etcd-{member}", self.name())
    }

    /// Member `member`'s address on M.
    pub fn etcd_address(&self, member: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet();
        Ipv4Addr::new(a, b, c, self.service_octet((190 - member) as u8))
    }

    /// The members' client URLs, as `[coordination] endpoints` takes them.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        (1..=ETCD_MEMBERS).map(|m| format!("http://{}:{ETCD_CLIENT_PORT}", self.etcd_address(m))).collect()
    }

    fn check_member(member: usize) -> Result<(), LabError> {
        if member == 0 || member > ETCD_MEMBERS {
            return Err(LabError::Invalid(format!("no etcd member {member} (members 1..={ETCD_MEMBERS})")));
        }
        Ok(())
    }

    /// Starts the etcd cluster (every member not running) and returns when it takes a write.
    /// Restarting a member keeps its data.
    pub fn etcd_start(&self) -> Result<(), LabError> {
        if which("etcd").is_none() || which("etcdctl").is_none() {
            return Err(LabError::Unavailable(
                "the etcd backend's lab needs etcd and etcdctl (apt-get install etcd-server etcd-client)".into(),
            ));
        }
        if self.layout() == crate::Layout::Split && self.hosts() > ETCD_MAX_HOSTS {
            return Err(LabError::Invalid(format!(
                "a lab with etcd has at most {ETCD_MAX_HOSTS} hosts (its members take M's top addresses), not {}",
                self.hosts()
            )));
        }
        for member in 1..=ETCD_MEMBERS {
            if !self.etcd_running(member) {
                self.etcd_member_start(member)?;
            }
        }
        self.etcd_wait(Duration::from_secs(60))?;
        // Agents started from now on use the etcd backend (`agent_config`).
        let ready = self.dir().join("etcd").join("ready");
        std::fs::write(&ready, b"").map_err(|e| LabError::Invalid(format!("{}: {e}", ready.display())))
    }

    /// Whether [`Lab::etcd_start`] ran: the lab's agent configs then use the etcd backend.
    pub fn uses_etcd(&self) -> bool {
        self.dir().join("etcd").join("ready").exists()
    }

    /// Runs `etcdctl` (API v3) against the members, from the switch namespace; its output.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, LabError> {
        let (endpoints, switch) = (self.etcd_endpoints().join(","), self.switch());
        let mut all = vec!["netns", "exec", &switch, "env", "ETCDCTL_API=3", "etcdctl", "--endpoints", &endpoints];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Starts member `member` alone (after [`Lab::etcd_stop`]); the others must run for it to
    /// serve.
    pub fn etcd_member_start(&self, member: usize) -> Result<(), LabError> {
        Self::check_member(member)?;
        let ns = self.etcd_netns(member);
        if !std::path::Path::new("/run/netns").join(&ns).exists() {
            let sw = self.switch();
            let port = format!("e{member}-m");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["link", "add", "eth-m", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br-m"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/{}", self.etcd_address(member), self.prefix()),
                "dev",
                "eth-m",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth-m", "up"])?;
        }
        let dir = self.dir().join("etcd");
        std::fs::create_dir_all(&dir).map_err(|e| LabError::Invalid(format!("{}: {e}", dir.display())))?;
        let log_path = dir.join(format!("member-{member}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| LabError::Invalid(format!("{}: {e}", log_path.display())))?;
        let err = log.try_clone().map_err(|e| LabError::Invalid(e.to_string()))?;
        let address = self.etcd_address(member);
        let cluster: Vec<String> =
            (1..=ETCD_MEMBERS).map(|m| format!("m{m}=http://{}:{ETCD_PEER_PORT}", self.etcd_address(m))).collect();
        let data = dir.join(format!("member-{member}"));
        Command::new("ip")
            .args(["netns", "exec", &ns, "etcd"])
            .arg(format!("--name=m{member}"))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls=http://{address}:{ETCD_CLIENT_PORT}"))
            .arg(format!("--advertise-client-urls=http://{address}:{ETCD_CLIENT_PORT}"))
            .arg(format!("--listen-peer-urls=http://{address}:{ETCD_PEER_PORT}"))
            .arg(format!("--initial-advertise-peer-urls=http://{address}:{ETCD_PEER_PORT}"))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token=halo-{}", self.name()))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|source| LabError::Spawn { command: "etcd".into(), source })
            .map(|mut child| std::thread::spawn(move || child.wait()))?;
        Ok(())
    }

    /// Waits until the cluster takes a write (a quorum runs), at most `limit`.
    pub fn etcd_wait(&self, limit: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + limit;
        let endpoints = self.etcd_endpoints().join(",");
        let mut last = String::new();
        while Instant::now() < deadline {
            let put = Command::new("ip")
                .args(["netns", "exec", &self.switch(), "etcdctl", "--endpoints", &endpoints])
                .args(["--command-timeout=2s", "put", "/halo-lab/probe", "up"])
                .env("ETCDCTL_API", "3")
                .output();
            match put {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(LabError::Unavailable(format!(
            "the lab's etcd did not take a write within {} s: {last} (logs in {})",
            limit.as_secs(),
            self.dir().join("etcd").display()
        )))
    }

    /// Whether member `member` runs.
    pub fn etcd_running(&self, member: usize) -> bool {
        ip(&["netns", "pids", &self.etcd_netns(member)]).is_ok_and(|p| p.split_whitespace().next().is_some())
    }

    /// Kills member `member` (its process, which the lab started).
    pub fn etcd_stop(&self, member: usize) -> Result<(), LabError> {
        Self::check_member(member)?;
        kill_all_in(&self.etcd_netns(member))
    }

    /// Drops (`blocked = true`) or lets through host `host`'s packets at every member: the
    /// host is cut from etcd and keeps its peers and the NFS server.
    pub fn block_etcd(&self, host: usize, blocked: bool) -> Result<(), LabError> {
        let source = self.address(host, "M")?.to_string();
        for member in 1..=ETCD_MEMBERS {
            let ns = self.etcd_netns(member);
            if blocked {
                nft(&ns, "add table inet halo_lab")?;
                nft(&ns, "add chain inet halo_lab input { type filter hook input priority 0 ; policy accept ; }")?;
                nft(&ns, &format!("add rule inet halo_lab input ip saddr {source} drop comment \"host-{host}\""))?;
            } else {
                delete_rules(&ns, "inet halo_lab input", &format!("host-{host}"))?;
            }
        }
        Ok(())
    }
}
