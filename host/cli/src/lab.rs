//! `halo lab`: several hosts on this machine (root), for trying halo and for its tests —
//! network namespaces on management bridges A and B and a migration/storage network M, a
//! libvirtd per host running real KVM guests, an NFS server, and fault verbs.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use halo_lab::{Lab, LabSpec, NETWORKS};

/// `halo lab`.
#[derive(Args)]
pub struct LabArgs {
    /// The lab's name (several labs can run side by side).
    #[arg(long, default_value = "lab", global = true)]
    name: String,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Bring the lab up: hosts, networks, a libvirtd per host, the NFS server.
    Up {
        /// How many hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// NFS exports to serve (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "ds1")]
        exports: Vec<String>,
        /// Without libvirtd on the hosts.
        #[arg(long)]
        no_libvirt: bool,
        /// Without the NFS server.
        #[arg(long)]
        no_nfs: bool,
        /// Also start `halo agent` on every host (short lab timeouts), with `--vms` protected
        /// tiny VMs spread over the hosts.
        #[arg(long, conflicts_with_all = ["no_libvirt", "no_nfs"])]
        agents: bool,
        /// How many protected VMs to start with `--agents`.
        #[arg(long, default_value_t = 3, requires = "agents")]
        vms: usize,
        /// With `--agents`: no lab watchdog. By default each host gets one, outside the host
        /// like hardware, as the agent's `[watchdog] device`: a host whose agent stops feeding
        /// it for the fence timeout is reset (its processes killed, its links down).
        #[arg(long, requires = "agents")]
        no_watchdog: bool,
        /// VM leases on shared storage: each host's libvirtd takes a sanlock lease per VM
        /// (a sanlock daemon per host, the leases in `<lab>/leases`), and agents say
        /// `[leases] kind = "sanlock"` (io timeout 1 s: a dead host's leases free after 68 s).
        #[arg(long, conflicts_with = "no_libvirt")]
        sanlock: bool,
        /// A BMC per host: a Redfish service on the lab's power network P (`.193`, port
        /// 8440+N, user `admin`, password in `<lab>/bmc/password`); with `--agents` each host's
        /// config names its BMC as a `fence_redfish` fence device.
        #[arg(long)]
        bmc: bool,
        /// An etcd cluster of three members (on M, `.189`–`.187`, in the shared layout `.249`–`.247`, port 2379); with `--agents`
        /// every agent coordinates on it (`[coordination] backend = "etcd"`, decision 0017).
        #[arg(long)]
        etcd: bool,
    },
    /// Run one host's lab watchdog until the lab goes down (started by `up --agents`).
    #[command(hide = true)]
    WatchdogRun {
        /// The host.
        #[arg(long)]
        host: usize,
        /// Its timeout in milliseconds.
        #[arg(long)]
        timeout_ms: u64,
        /// The lab's directory (recorded in the command line, so `down` knows it is ours).
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Remove everything the lab made (also after a crash).
    Down,
    /// Hosts, addresses, libvirt URIs, running VMs, the NFS server.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a host (in its network namespace).
    Exec {
        /// The host (`2` or `host-2`).
        host: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Inject a fault.
    #[command(subcommand)]
    Fault(Fault),
    /// Heal a fault.
    #[command(subcommand)]
    Heal(Heal),
}

#[derive(Subcommand)]
enum Fault {
    /// A host crash: kill every process of a host (libvirtd, QEMU, its agent) and take its links down.
    Kill {
        /// The host.
        host: String,
    },
    /// Cut one network link of a host (A, B or M), or `all`.
    Link {
        /// The host.
        host: String,
        /// The network: A, B, M or all.
        network: String,
    },
    /// Split the hosts into groups on A and B (storage on M stays reachable): `1,2/3`.
    Partition {
        /// Groups of hosts separated by `/`, hosts by `,`.
        groups: String,
    },
    /// Drop a share of the frames on a network.
    Loss {
        /// The network.
        network: String,
        /// Percent, 1 to 100.
        percent: u32,
    },
    /// Stop the NFS server.
    NfsStop,
    /// Drop one host's traffic to the NFS server.
    BlockStorage {
        /// The host.
        host: String,
    },
}

#[derive(Subcommand)]
enum Heal {
    /// Restore a host's link (A, B, M or all).
    Link {
        /// The host.
        host: String,
        /// The network.
        network: String,
    },
    /// End the partition.
    Partition,
    /// End the loss on a network.
    Loss {
        /// The network.
        network: String,
    },
    /// Start the NFS server again (the files stay).
    NfsStart,
    /// Let a host reach the NFS server again.
    BlockStorage {
        /// The host.
        host: String,
    },
    /// Boot a killed host: links up, its libvirtd started (its VMs are gone, as after a power loss).
    Boot {
        /// The host.
        host: String,
    },
}

fn host_number(lab: &Lab, text: &str) -> anyhow::Result<usize> {
    let n: usize = text
        .strip_prefix("host-")
        .unwrap_or(text)
        .parse()
        .with_context(|| format!("`{text}` is not a host: write 2 or host-2"))?;
    if n == 0 || n > lab.hosts() {
        bail!("no host {n} in lab `{}` (hosts 1..={})", lab.name(), lab.hosts());
    }
    Ok(n)
}

fn networks(text: &str) -> anyhow::Result<Vec<&'static str>> {
    if text.eq_ignore_ascii_case("all") {
        return Ok(NETWORKS.to_vec());
    }
    NETWORKS
        .iter()
        .find(|n| n.eq_ignore_ascii_case(text))
        .map(|n| vec![*n])
        .with_context(|| format!("no network `{text}`: A, B, M or all"))
}

/// Runs `halo lab`.
pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    if let Err(reason) = halo_lab::available() {
        bail!("{reason}");
    }
    let name = args.name.as_str();
    match args.command {
        LabCommand::WatchdogRun { host, timeout_ms, dir } => {
            let lab = Lab::attach(name)?;
            if lab.dir() != dir {
                bail!("lab `{name}` lives in {}, not {}", lab.dir().display(), dir.display());
            }
            let target = lab.reset_target(host)?;
            let mut fifo = halo_lab::watchdog::open_fifo(&lab.watchdog_device(host))?;
            let never = std::sync::atomic::AtomicBool::new(false);
            // Until the lab goes down: after a reset it watches on, for the host's next agent.
            while halo_lab::watchdog::watch(&mut fifo, Duration::from_millis(timeout_ms), &never) {
                eprintln!("lab watchdog: {} not fed for {timeout_ms} ms: resetting it", target.host);
                target.reset();
            }
        }
        LabCommand::Up { hosts, exports, no_libvirt, no_nfs, agents, vms, no_watchdog, sanlock, bmc, etcd } => {
            let lab = Lab::up(LabSpec::new(name, hosts))?.keep();
            eprintln!("lab `{name}`: {hosts} host(s) up");
            if sanlock {
                lab.use_sanlock()?;
                eprintln!("sanlock VM leases in {}", lab.leases_dir().display());
            }
            if !no_nfs {
                let exports: Vec<&str> = exports.iter().map(String::as_str).collect();
                lab.nfs_start(&exports)?;
                eprintln!("NFS server up at {} exporting {}", lab.storage_address(), exports.join(", "));
            }
            if !no_libvirt {
                for host in 1..=hosts {
                    lab.libvirt_start(host)?;
                }
                eprintln!("libvirtd up on every host");
            }
            if bmc {
                lab.start_bmcs(&std::env::current_exe().context("cannot find the halo binary")?)?;
                eprintln!(
                    "a BMC per host at {} (Redfish, ports {}+N)",
                    lab.bmc_address(),
                    halo_lab::bmc::BMC_PORT_BASE
                );
            }
            if etcd {
                lab.etcd_start()?;
                eprintln!("etcd up: {}", lab.etcd_endpoints().join(", "));
            }
            if agents {
                start_agents(&lab, hosts, vms, !no_watchdog)?;
            }
            print_status(&lab, false)?;
        }
        LabCommand::Down => {
            // Recorded or not (a crashed `up`), everything carrying the lab's name goes.
            Lab::remove(name)?;
            eprintln!("lab `{name}` removed");
        }
        LabCommand::Status { json } => print_status(&Lab::attach(name)?, json)?,
        LabCommand::Exec { host, command } => {
            let lab = Lab::attach(name)?;
            let n = host_number(&lab, &host)?;
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &lab.netns(n)])
                .args(&command)
                .status()
                .context("cannot run ip netns exec")?;
            return Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8));
        }
        LabCommand::Fault(fault) => {
            let lab = Lab::attach(name)?;
            match fault {
                Fault::Kill { host } => lab.kill_host(host_number(&lab, &host)?)?,
                Fault::Link { host, network } => {
                    let n = host_number(&lab, &host)?;
                    for net in networks(&network)? {
                        lab.set_link(n, net, false)?;
                    }
                }
                Fault::Partition { groups } => {
                    let mut parsed = Vec::new();
                    for group in groups.split('/') {
                        let hosts: anyhow::Result<Vec<usize>> =
                            group.split(',').map(|h| host_number(&lab, h.trim())).collect();
                        parsed.push(hosts?);
                    }
                    if parsed.len() < 2 {
                        bail!("a partition needs at least two groups: `1,2/3`");
                    }
                    lab.partition(&parsed)?;
                }
                Fault::Loss { network, percent } => lab.loss(&network, percent)?,
                Fault::NfsStop => lab.nfs_stop()?,
                Fault::BlockStorage { host } => lab.block_storage(host_number(&lab, &host)?, true)?,
            }
            eprintln!("fault injected");
        }
        LabCommand::Heal(heal) => {
            let lab = Lab::attach(name)?;
            match heal {
                Heal::Link { host, network } => {
                    let n = host_number(&lab, &host)?;
                    for net in networks(&network)? {
                        lab.set_link(n, net, true)?;
                    }
                }
                Heal::Partition => lab.heal_partition()?,
                Heal::Loss { network } => lab.heal_loss(&network)?,
                Heal::NfsStart => {
                    let exports = lab.nfs_exports();
                    let exports: Vec<&str> = exports.iter().map(String::as_str).collect();
                    lab.nfs_start(&exports)?;
                }
                Heal::BlockStorage { host } => lab.block_storage(host_number(&lab, &host)?, false)?,
                Heal::Boot { host } => lab.boot_host(host_number(&lab, &host)?)?,
            }
            eprintln!("healed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tiny protected VMs spread over the hosts, and an agent on every host (with a lab watchdog
/// each, unless `watchdog` is false).
/// Host `host`'s sanlock leases as its agent's config says them ([`Lab::agent_config`]: the
/// cluster `lab`, host id N, io timeout 1 s).
pub fn lab_leases(lab: &Lab, host: usize) -> halo_libvirt::SanlockLeases {
    halo_libvirt::SanlockLeases {
        dir: lab.leases_dir(),
        lockspace: "lab".into(),
        host_id: u16::try_from(host).unwrap_or(u16::MAX),
        io_timeout_s: 1,
        run_dir: Some(lab.sanlock_run_dir(host)),
    }
}

fn start_agents(lab: &Lab, hosts: usize, vms: usize, watchdog: bool) -> anyhow::Result<()> {
    if vms > 50 {
        bail!("--vms: at most 50 in the lab");
    }
    let names: Vec<String> = (1..=vms).map(|i| format!("vm-{i}")).collect();
    // With leases, every host joins the lockspace first (as its agent would, ≈ 3 s, all at
    // once) and each VM starts with its lease, as halo starts them.
    let leases = if lab.uses_sanlock() {
        let leases: Vec<_> = (1..=hosts).map(|h| lab_leases(lab, h)).collect();
        std::thread::scope(|scope| {
            let joins: Vec<_> = leases.iter().map(|l| scope.spawn(move || l.join())).collect();
            joins.into_iter().try_for_each(|j| {
                j.join().map_err(|_| anyhow::anyhow!("join panicked"))?.map(drop).map_err(anyhow::Error::from)
            })
        })?;
        eprintln!("every host joined the sanlock lockspace");
        leases
    } else {
        Vec::new()
    };
    for (i, name) in names.iter().enumerate() {
        let host = 1 + i % hosts;
        let xml = lab.tiny_guest_xml(name, 64)?;
        lab.protect(name, &xml)?;
        let hv = halo_libvirt::Hypervisor::connect_with_timeout(&lab.libvirt_uri(host), Duration::from_secs(10))?;
        let mut xml = halo_libvirt::with_generation(&xml, 1);
        if let Some(leases) = leases.get(host - 1) {
            leases.ensure_lease(name)?;
            xml = leases.with_lease(&xml, name);
        }
        hv.define(&xml)?;
        hv.start(name)?;
    }
    let halo = std::env::current_exe().context("cannot find the halo binary")?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // A locked agent holds ≈ 175 MB resident (`mlockall` populates every mapping); 128 of them
    // would not fit this kind of machine. Large labs run their agents unlocked.
    let unlocked = lab.layout() == halo_lab::Layout::Shared;
    let liveness = lab.agent_liveness(unlocked);
    if unlocked {
        eprintln!(
            "{hosts} hosts: the agents run with `[liveness] lock-memory = false` (locked, they would not fit in memory)"
        );
    }
    if !lab.agent_timeouts().is_empty() {
        eprintln!(
            "{hosts} hosts: the agents heartbeat every second ({}) and their liveness threads run without real-time priority; at the default 250 ms this many agents on one machine need more than two cores, and this many real-time threads starve the kernel's packet processing",
            lab.agent_timeouts().join(", ")
        );
    }
    for host in 1..=hosts {
        let mut config = lab.agent_config(host, &names, lab.agent_timeouts())?;
        config.push_str(&liveness);
        if watchdog {
            // Outside the host, like hardware; it outlives this command (`halo lab down` ends it).
            let timeout = lab.agent_fence_timeout_ms().unwrap_or(halo_core::Timeouts::default().fence_timeout_ms);
            let child = std::process::Command::new(&halo)
                .args(["lab", "--name", lab.name(), "watchdog-run", "--host", &host.to_string()])
                .args(["--timeout-ms", &timeout.to_string(), "--dir"])
                .arg(lab.dir())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                // Not this command's stderr: whoever waits for its output would wait for the lab.
                .stderr(std::fs::File::create(lab.dir().join(format!("watchdog-{host}.log")))?)
                .spawn()
                .context("cannot start the lab watchdog")?;
            halo_lab::watchdog::record_process(&lab.dir(), host, child.id())?;
            let device = lab.watchdog_device(host);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !device.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            config.push_str(&format!("\n[watchdog]\ndevice = \"{}\"\n", device.display()));
        }
        // The agent outlives this command: `halo lab down` (or `fault kill`) ends it.
        lab.start_agent(host, &halo, &config)?;
    }
    // The follow-up commands name this lab unless it is the default one.
    let lab_cmd = if lab.name() == "lab" { "lab".to_string() } else { format!("lab --name {}", lab.name()) };
    eprintln!(
        "{vms} protected VM(s) and an agent on every host ({} timeouts{}); logs in {dir}/agent-N.log.\n\
         Ask the cluster:  {halo} {lab_cmd} exec 1 -- {halo} status --config {dir}/halo-1.toml\n\
         Status page:      http://{api}/#token=$(cat {dir}/api.token)  (inside the lab's namespaces)\n\
         Crash a host:     {halo} {lab_cmd} fault kill 2   (then ask again)",
        if lab.agent_timeouts().is_empty() { "default" } else { "large-lab" },
        if watchdog { ", a lab watchdog each" } else { ", no watchdog" },
        dir = lab.dir().display(),
        api = lab.api_address(1)?,
        halo = halo.display(),
    );
    Ok(())
}

#[derive(serde::Serialize)]
struct HostStatus {
    host: String,
    netns: String,
    addresses: Vec<(String, String)>,
    libvirt_uri: String,
    libvirt_tcp_uri: String,
    /// The domains and their states, when this host's libvirt answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    vms: Option<Vec<(String, String)>>,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    libvirt_error: Option<String>,
}

fn print_status(lab: &Lab, json: bool) -> anyhow::Result<()> {
    let mut hosts = Vec::new();
    for n in 1..=lab.hosts() {
        let addresses = NETWORKS
            .iter()
            .map(|net| Ok((net.to_string(), lab.address(n, net)?.to_string())))
            .collect::<anyhow::Result<_>>()?;
        let uri = lab.libvirt_uri(n);
        let vms = halo_libvirt::Hypervisor::connect_with_timeout(&uri, Duration::from_secs(3))
            .and_then(|hv| hv.domains())
            .map(|ds| ds.into_iter().map(|d| (d.name, format!("{:?}", d.state).to_lowercase())).collect())
            .map_err(|e| e.to_string());
        let (vms, libvirt_error) = match vms {
            Ok(vms) => (Some(vms), None),
            Err(e) => (None, Some(e)),
        };
        hosts.push(HostStatus {
            host: Lab::host_name(n),
            netns: lab.netns(n),
            addresses,
            libvirt_uri: uri,
            libvirt_tcp_uri: lab.libvirt_tcp_uri(n)?,
            vms,
            libvirt_error,
        });
    }
    if json {
        let nfs = serde_json::json!({ "address": lab.storage_address().to_string(), "running": lab.nfs_running(), "exports": lab.nfs_exports() });
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "lab": lab.name(), "hosts": hosts, "nfs": nfs }))?
        );
        return Ok(());
    }
    outln!(
        "lab `{}` — gateways (isolation addresses): A {}, B {}, M {}",
        lab.name(),
        lab.gateway("A")?,
        lab.gateway("B")?,
        lab.gateway("M")?
    );
    outln!("{:<8} {:<15} {:<15} {:<15} VMs", "host", "A", "B", "M");
    for h in &hosts {
        let vms = match (&h.vms, &h.libvirt_error) {
            (Some(vms), _) if vms.is_empty() => "-".to_string(),
            (Some(vms), _) => vms.iter().map(|(n, s)| format!("{n} ({s})")).collect::<Vec<_>>().join(", "),
            (None, e) => format!("libvirt not answering: {}", e.as_deref().unwrap_or("?")),
        };
        outln!("{:<8} {:<15} {:<15} {:<15} {vms}", h.host, h.addresses[0].1, h.addresses[1].1, h.addresses[2].1);
    }
    outln!(
        "libvirt: {} (from this machine), {} (from the hosts)",
        hosts.first().map_or("", |h| h.libvirt_uri.as_str()),
        hosts.first().map_or("", |h| h.libvirt_tcp_uri.as_str())
    );
    outln!(
        "NFS: {} at {} ({}), MOUNT port {}, NFS port {}",
        if lab.nfs_running() { "running" } else { "stopped" },
        lab.storage_address(),
        lab.nfs_exports().iter().map(|e| format!("/{e}")).collect::<Vec<_>>().join(", "),
        halo_lab::MOUNT_PORT,
        halo_lab::NFS_PORT
    );
    if lab.uses_etcd() {
        let members: Vec<String> = (1..=halo_lab::etcd::ETCD_MEMBERS)
            .map(|m| {
                let state = if lab.etcd_running(m) { "running" } else { "stopped" };
                format!("{} ({state})", lab.etcd_endpoints()[m - 1])
            })
            .collect();
        outln!("etcd: {}", members.join(", "));
    }
    Ok(())
}
