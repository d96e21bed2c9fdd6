//! Ready-made clusters for the simulator, the demo and the tests.

use halo_core::config::{HaSettings, PolicySettings, Timeouts};
use halo_core::{ClusterConfig, HostSpec, VmSpec};
use halo_policy::RestartPriority;

use crate::{Millis, Rng, Schedule};

/// `hosts` hosts of 32 GiB / 32 vCPUs and `vms` VMs of 1–4 GiB (every 4th best-effort, every
/// 10th unprotected), two networks, one datastore, two isolation addresses.
pub fn cluster(hosts: usize, vms: usize) -> ClusterConfig {
    ClusterConfig {
        hosts: (1..=hosts)
            .map(|i| HostSpec {
                name: format!("host-{i}"),
                memory_mib: 32_768,
                vcpus: 32,
                labels: vec![],
                fenceable: false,
                reserved: false,
            })
            .collect(),
        networks: vec!["A".into(), "B".into()],
        datastores: vec!["ds1".into()],
        isolation_addresses: vec!["gw-A".into(), "gw-B".into()],
        vms: (1..=vms)
            .map(|i| VmSpec {
                name: format!("vm-{i:03}"),
                memory_mib: 1024 << (i % 3),
                vcpus: 1 + (i % 4) as u32,
                priority: if i % 10 == 0 {
                    RestartPriority::Unprotected
                } else if i % 4 == 0 {
                    RestartPriority::BestEffort
                } else {
                    RestartPriority::Restart
                },
                order: (i % 3) as u32,
                group: None,
                depends_on: vec![],
                required_host_labels: vec![],
                anti_affinity_group: None,
                datastores: vec![],
            })
            .collect(),
        timeouts: Timeouts::default(),
        ha: HaSettings::default(),
        policy: PolicySettings::default(),
        rules: Vec::new(),
        balance: Default::default(),
        claim_store: None,
        names: Default::default(),
    }
}

/// The run a seed stands for in the random schedules (what CI runs and `halo sim --seeds`
/// replays): 3–16 hosts (or `hosts`), 2–5 VMs per host (or `vms`), 1–4 faults of `families`
/// in the first 60 % of `duration`.
pub fn random_case(
    seed: u64,
    hosts: Option<usize>,
    vms: Option<usize>,
    families: &[&str],
    duration: Millis,
) -> (ClusterConfig, Schedule) {
    random_case_on(Backend::Datastore, seed, hosts, vms, families, duration)
}

/// The coordination backend of a simulated cluster (decision 0017).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// Heartbeat records and claims on the datastore `ds1`.
    #[default]
    Datastore,
    /// Heartbeat records on `ds1` and on `etcd`, claims on `etcd` only; the simulated etcd
    /// drops a host's record [`ETCD_LEASE_MS`] after its last write (its lease). The
    /// `datastore`, `dscut` and `isolate` faults draw among both stores: `etcd` down is the
    /// etcd quorum lost, `etcd` cut is a host cut from etcd but not from its peers.
    Etcd,
}

/// The name of the etcd store among the simulated cluster's stores.
pub const ETCD_STORE: &str = "etcd";
/// The lease of a host's record on the simulated etcd (the agent's default time to live).
pub const ETCD_LEASE_MS: Millis = 10_000;

impl Backend {
    /// The wire name (`datastore`, `etcd`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Datastore => "datastore",
            Backend::Etcd => "etcd",
        }
    }

    /// Turns `config` into a cluster on this backend.
    pub fn apply(self, config: &mut ClusterConfig) {
        if self == Backend::Etcd && !config.datastores.iter().any(|d| d == ETCD_STORE) {
            config.datastores.push(ETCD_STORE.into());
            config.claim_store = Some(ETCD_STORE.into());
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "datastore" => Ok(Backend::Datastore),
            "etcd" => Ok(Backend::Etcd),
            other => Err(format!("no backend `{other}` (datastore or etcd)")),
        }
    }
}

/// [`random_case`] on `backend`. The backend's stores are in place before the schedule is
/// drawn, so its faults hit them; with the datastore backend a seed gives what it always gave.
pub fn random_case_on(
    backend: Backend,
    seed: u64,
    hosts: Option<usize>,
    vms: Option<usize>,
    families: &[&str],
    duration: Millis,
) -> (ClusterConfig, Schedule) {
    let mut rng = Rng::new(seed ^ 0xABCD);
    let h = rng.between(3, 16) as usize;
    let per_host = rng.between(2, 5) as usize;
    let hosts = hosts.unwrap_or(h);
    let mut config = cluster(hosts, vms.unwrap_or(hosts * per_host));
    backend.apply(&mut config);
    let mut rng = Rng::new(seed);
    let names: Vec<String> = config.hosts.iter().map(|h| h.name.clone()).collect();
    let vm_names: Vec<String> = config.vms.iter().map(|v| v.name.clone()).collect();
    let mut schedule =
        Schedule::random(&mut rng, &names, &vm_names, &config.networks, &config.datastores, families, duration);
    let mut config = config;
    if families.contains(&"fence") {
        schedule.draw_fence_devices(seed, &names);
        for host in &mut config.hosts {
            host.fenceable = schedule.fence_devices.contains_key(&host.name);
        }
    }
    if families.contains(&"balance") {
        draw_balancing(seed, &mut config);
    }
    draw_storage(seed, &mut config);
    (config, schedule)
}

/// Storage protection, for one seed in two: every other VM has its disks on `ds1` (a host
/// that loses it applies the storage response to them), with a grace time of 10 to 60 s, so
/// the `datastore` and `dscut` faults exercise restarts of VMs whose storage was lost.
pub fn draw_storage(seed: u64, config: &mut ClusterConfig) {
    let mut rng = Rng::new(seed ^ 0x0057_0BA6_E000);
    if rng.below(2) == 0 {
        return;
    }
    let Some(datastore) = config.datastores.first().cloned() else { return };
    for vm in config.vms.iter_mut().step_by(2) {
        vm.datastores = vec![datastore.clone()];
    }
    let grace = rng.between(10, 60);
    config.policy.isolation.push(halo_policy::Setting::new("storage-grace-seconds", grace.to_string()));
}

/// The `balance` family, for one seed in two: the master balances by itself (`auto`, looking
/// every 5 s) while the faults happen, under two rules — two VMs that must stay apart, one that
/// should run on one of two hosts — and, with five hosts or more, one reserved failover host.
/// The VMs start where the simulator puts them (VM i on host i mod n: uneven memory, so
/// balancing has work), which may already break a rule: halo must not make it worse.
pub fn draw_balancing(seed: u64, config: &mut ClusterConfig) {
    use halo_core::balance::{BalanceMode, BalanceSettings};
    use halo_core::rules::{Rule, RuleKind, Strength};
    let mut rng = Rng::new(seed ^ 0x00BA_1A4C_E000);
    if rng.below(2) == 0 || config.vms.len() < 3 {
        return;
    }
    config.balance = BalanceSettings {
        mode: BalanceMode::Auto,
        threshold_percent: 5,
        interval_ms: 5_000,
        window_ms: 20_000,
        ..BalanceSettings::default()
    };
    let vm = |rng: &mut Rng| config.vms[rng.below(config.vms.len() as u64) as usize].name.clone();
    let (a, mut b) = (vm(&mut rng), vm(&mut rng));
    while b == a {
        b = vm(&mut rng);
    }
    let mut c = vm(&mut rng);
    while c == a || c == b {
        c = vm(&mut rng);
    }
    let host = |rng: &mut Rng| config.hosts[rng.below(config.hosts.len() as u64) as usize].name.clone();
    let (h1, mut h2) = (host(&mut rng), host(&mut rng));
    while h2 == h1 {
        h2 = host(&mut rng);
    }
    config.rules = vec![
        Rule { name: "apart".into(), kind: RuleKind::Apart, strength: Strength::Must, vms: vec![a, b], hosts: vec![] },
        Rule {
            name: "home".into(),
            kind: RuleKind::VmHost,
            strength: Strength::Should,
            vms: vec![c],
            hosts: vec![h1.clone(), h2.clone()],
        },
    ];
    if config.hosts.len() >= 5 {
        let reserved = host(&mut rng);
        if let Some(spec) = config.hosts.iter_mut().find(|h| h.name == reserved) {
            spec.reserved = true;
        }
    }
}

/// The demo's cluster: 4 hosts of 16 GiB, 12 VMs of a small site — infrastructure first
/// (DHCP, DNS), databases, then the applications that depend on them, a best-effort batch
/// VM and an unprotected scratch VM. Placed so every host runs three.
pub fn demo_cluster() -> ClusterConfig {
    use RestartPriority::{BestEffort, Restart, Unprotected};
    let vm = |name: &str, memory_mib: u64, priority, order, depends_on: &[&str], anti: Option<&str>| VmSpec {
        name: name.into(),
        memory_mib,
        vcpus: 2,
        priority,
        order,
        group: None,
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        required_host_labels: vec![],
        anti_affinity_group: anti.map(Into::into),
        datastores: vec![],
    };
    ClusterConfig {
        hosts: (1..=4)
            .map(|i| HostSpec {
                name: format!("host-{i}"),
                memory_mib: 16_384,
                vcpus: 16,
                labels: vec![],
                fenceable: false,
                reserved: false,
            })
            .collect(),
        networks: vec!["A".into(), "B".into()],
        datastores: vec!["ds1".into()],
        isolation_addresses: vec!["gw-A".into(), "gw-B".into()],
        // In host order: VM i runs on host (i mod 4) + 1.
        vms: vec![
            vm("dhcp", 1024, Restart, 0, &[], Some("infra")),
            vm("dns-1", 1024, Restart, 0, &[], Some("dns")),
            vm("dns-2", 1024, Restart, 0, &[], Some("dns")),
            vm("ldap", 2048, Restart, 0, &[], None),
            vm("db-main", 4096, Restart, 1, &["dhcp", "dns-1"], Some("db")),
            vm("web-1", 2048, Restart, 2, &["db-main"], Some("web")),
            vm("db-replica", 4096, Restart, 1, &["db-main"], Some("db")),
            vm("web-2", 2048, Restart, 2, &["db-replica"], Some("web")),
            vm("mail", 2048, Restart, 1, &["dns-2", "ldap"], None),
            vm("batch", 4096, BestEffort, 3, &[], None),
            vm("ci-runner", 2048, BestEffort, 3, &[], None),
            vm("scratch", 2048, Unprotected, 0, &[], None),
        ],
        timeouts: Timeouts::default(),
        ha: HaSettings::default(),
        policy: PolicySettings::default(),
        rules: Vec::new(),
        // The master looks every minute and says when the cluster is out of balance (the demo
        // shows the balancing plugin's proposal; nothing moves by itself).
        balance: halo_core::balance::BalanceSettings {
            mode: halo_core::balance::BalanceMode::Propose,
            ..Default::default()
        },
        claim_store: None,
        names: Default::default(),
    }
}
