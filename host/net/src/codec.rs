//! The heartbeat on the wire: a versioned binary message authenticated with HMAC-SHA256
//! under the cluster key.
//!
//! ```text
//! "HALO" | version u8 (1) | kind u8 (1 = heartbeat) | body | HMAC-SHA256(all before) [32]
//! body: cluster str | membership digest [8] | from str | incarnation v | seq v
//!       | master (0 | 1 str v) | datastores-reachable v | ha-disabled u8
//!       | vms n (str v)* | operator-stopped n str* | acks n (host-index v, seq v)*
//!       | maintenance n str* | stopped n (str v)* | vanished n (str str v)*
//! v: unsigned LEB128 (at most 10 bytes); str: v length (≤ 255) + UTF-8; n: v count
//! ```
//!
//! Acks name hosts by their index in the cluster's host list, so a heartbeat of a 1,000-host
//! cluster still fits a datagram; the membership digest (SHA-256 of the host list) tells
//! whether sender and receiver index the same list. When they do not (a config rolled out to
//! some hosts only), the acks are dropped — less liveness evidence is the safe direction — and
//! the decoder says so.
//!
//! Decoding never trusts a length: every count and string is checked against what is left of
//! the packet and against fixed limits, and the MAC is checked (in constant time) before any
//! field is read. A packet that fails any check is dropped with its reason, never half-used.

use halo_core::{HealthState, Heartbeat, HostHealth, PendingClaim, VmReport};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Largest packet sent or accepted (fits one UDP datagram, fragmented on the wire).
pub const MAX_PACKET: usize = 60 * 1024;
/// Longest name (host, VM, datastore, cluster, network), bytes.
pub const MAX_NAME: usize = 255;
const MAGIC: &[u8; 4] = b"HALO";
const VERSION: u8 = 1;
const KIND_HEARTBEAT: u8 = 1;
const MAC_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The cluster key: at least 32 bytes, shared by every host.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

/// Why a cluster key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cluster key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read it.
    #[error("cluster key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// Too short to be a key.
    #[error(
        "cluster key {path} holds {len} bytes; it needs at least 32 (e.g. `head -c 32 /dev/urandom | xxd -p -c 64 > {path}`)"
    )]
    TooShort {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
}

impl ClusterKey {
    /// A key from bytes (at least 32).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= 32).then(|| Self(bytes.to_vec()))
    }

    /// Reads the key file: mode 0600 or stricter, at least 32 bytes (trailing whitespace is
    /// not part of the key).
    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: shown, mode });
        }
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        Self::new(&bytes[..end]).ok_or(KeyError::TooShort { path: shown, len: end })
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

/// The cluster's host list as both ends index it (acks carry indices).
#[derive(Debug, Clone)]
pub struct Membership {
    hosts: Vec<String>,
    digest: [u8; 8],
    /// Host → index: every packet's sender is looked up (a scan of 1,000 names cost the
    /// master more than the HMAC).
    by_name: rustc_hash::FxHashMap<String, usize>,
}

impl PartialEq for Membership {
    fn eq(&self, other: &Self) -> bool {
        self.hosts == other.hosts
    }
}

impl Eq for Membership {}

impl Membership {
    /// The membership of `hosts`, in config order.
    pub fn new(hosts: Vec<String>) -> Self {
        let mut sha = Sha256::new();
        for host in &hosts {
            sha.update((host.len() as u32).to_le_bytes());
            sha.update(host.as_bytes());
        }
        let full = sha.finalize();
        let mut digest = [0; 8];
        digest.copy_from_slice(&full[..8]);
        let mut by_name = rustc_hash::FxHashMap::default();
        for (i, host) in hosts.iter().enumerate() {
            by_name.entry(host.clone()).or_insert(i);
        }
        Self { hosts, digest, by_name }
    }

    fn index(&self, host: &str) -> Option<usize> {
        self.by_name.get(host).copied()
    }

    /// The host at `index`.
    pub fn host(&self, index: usize) -> Option<&str> {
        self.hosts.get(index).map(String::as_str)
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// No hosts.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Whether `host` is a member.
    pub fn contains(&self, host: &str) -> bool {
        self.index(host).is_some()
    }
}

/// Why a packet was dropped. Every variant is counted by the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    /// Larger than [`MAX_PACKET`].
    #[error("oversized")]
    Oversized,
    /// Shorter than a header and a MAC, or a field runs past the end.
    #[error("truncated")]
    Truncated,
    /// Not a halo packet (magic).
    #[error("not a halo packet")]
    NotHalo,
    /// A version or kind this agent does not speak.
    #[error("unknown version or kind")]
    UnknownVersion,
    /// The MAC does not match: forged, corrupted, or another cluster key.
    #[error("bad authentication code")]
    BadMac,
    /// Authenticated but malformed (bad UTF-8, a name too long, a count too large, bytes left over).
    #[error("malformed")]
    Malformed,
    /// Another cluster's heartbeat (same key!).
    #[error("another cluster")]
    OtherCluster,
    /// The sender is not a member of this cluster.
    #[error("unknown sender")]
    UnknownSender,
    /// The source address is not the sender's address on that network.
    #[error("unexpected source address")]
    WrongSource,
    /// An old sequence number or incarnation: a replay (or a reordered duplicate).
    #[error("replayed")]
    Replayed,
}

impl DropReason {
    /// Every reason, for counters.
    pub const ALL: [DropReason; 10] = [
        DropReason::Oversized,
        DropReason::Truncated,
        DropReason::NotHalo,
        DropReason::UnknownVersion,
        DropReason::BadMac,
        DropReason::Malformed,
        DropReason::OtherCluster,
        DropReason::UnknownSender,
        DropReason::WrongSource,
        DropReason::Replayed,
    ];

    /// A stable name for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Truncated => "truncated",
            DropReason::NotHalo => "not-halo",
            DropReason::UnknownVersion => "unknown-version",
            DropReason::BadMac => "bad-mac",
            DropReason::Malformed => "malformed",
            DropReason::OtherCluster => "other-cluster",
            DropReason::UnknownSender => "unknown-sender",
            DropReason::WrongSource => "wrong-source",
            DropReason::Replayed => "replayed",
        }
    }
}

/// A heartbeat could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A name is longer than [`MAX_NAME`] bytes.
    #[error("name `{0}…` is longer than {MAX_NAME} bytes")]
    NameTooLong(String),
    /// An ack names a host index beyond the membership.
    #[error("an ack names host number {0}, beyond the cluster's host list")]
    UnknownHostIndex(u32),
    /// The heartbeat does not fit [`MAX_PACKET`] (too many VMs on one host).
    #[error("the heartbeat takes {0} bytes, more than the {MAX_PACKET} a packet may carry")]
    TooLarge(usize),
}

/// A decoded heartbeat and what the decoder noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The heartbeat.
    pub heartbeat: Heartbeat,
    /// The sender indexes another host list: its acks were dropped.
    pub membership_mismatch: bool,
}

/// The last heartbeat decoded from each sender, by its authentication tag: every host sends
/// the same packet, byte for byte, on every network, and the copy on the second network is
/// recognised by its tag and length, not verified and parsed again (at 1,000 hosts that was
/// half of the master's decoding). Taking a copy for the heartbeat it repeats is sound: a
/// packet that bears an authenticated packet's tag but other bytes is a forgery, and all it
/// gets is that authenticated heartbeat — what replaying the real packet gets anyway, which
/// the replay guard and the core's sequence numbers already answer.
#[derive(Debug, Default)]
pub struct CopyCache(std::sync::Mutex<rustc_hash::FxHashMap<String, CachedHeartbeat>>);

#[derive(Debug)]
struct CachedHeartbeat {
    tag: [u8; MAC_LEN],
    len: usize,
    heartbeat: std::sync::Arc<Heartbeat>,
    membership_mismatch: bool,
}

/// A decoded heartbeat, shared with the cache.
#[derive(Debug, Clone)]
pub struct SharedDecoded {
    /// The heartbeat.
    pub heartbeat: std::sync::Arc<Heartbeat>,
    /// The sender indexes another host list: its acks were dropped.
    pub membership_mismatch: bool,
    /// A copy of the sender's last heartbeat (not parsed again).
    pub copy: bool,
}

impl CopyCache {
    /// Decodes `packet` as [`decode`] does, or returns the sender's last heartbeat when the
    /// packet is its copy.
    pub fn decode(
        &self,
        packet: &[u8],
        cluster: &str,
        membership: &Membership,
        key: &ClusterKey,
    ) -> Result<SharedDecoded, DropReason> {
        let sender = (packet.len() >= MAGIC.len() + 2 + MAC_LEN && packet.len() <= MAX_PACKET)
            .then(|| {
                let mut r = Reader { rest: &packet[6..packet.len() - MAC_LEN] };
                r.str().ok()?;
                r.bytes(8).ok()?;
                r.str().ok()
            })
            .flatten();
        let tag = &packet[packet.len().saturating_sub(MAC_LEN)..];
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = sender.as_deref().and_then(|s| cache.get(s))
            && last.len == packet.len()
            && last.tag == tag
        {
            return Ok(SharedDecoded {
                heartbeat: std::sync::Arc::clone(&last.heartbeat),
                membership_mismatch: last.membership_mismatch,
                copy: true,
            });
        }
        drop(cache);
        let decoded = decode(packet, cluster, membership, key)?;
        let heartbeat = std::sync::Arc::new(decoded.heartbeat);
        let mut tag_bytes = [0u8; MAC_LEN];
        tag_bytes.copy_from_slice(tag);
        let cached = CachedHeartbeat {
            tag: tag_bytes,
            len: packet.len(),
            heartbeat: std::sync::Arc::clone(&heartbeat),
            membership_mismatch: decoded.membership_mismatch,
        };
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get_mut(&heartbeat.from) {
            Some(entry) => *entry = cached,
            None => {
                cache.insert(heartbeat.from.clone(), cached);
            }
        }
        Ok(SharedDecoded { heartbeat, membership_mismatch: decoded.membership_mismatch, copy: false })
    }
}

/// Encodes and authenticates a heartbeat of `cluster`.
pub fn encode(
    heartbeat: &Heartbeat,
    cluster: &str,
    membership: &Membership,
    key: &ClusterKey,
) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer(Vec::with_capacity(256));
    w.0.extend_from_slice(MAGIC);
    w.0.push(VERSION);
    w.0.push(KIND_HEARTBEAT);
    w.str(cluster)?;
    w.0.extend_from_slice(&membership.digest);
    w.str(&heartbeat.from)?;
    w.varint(heartbeat.incarnation);
    w.varint(heartbeat.seq);
    match &heartbeat.master {
        None => w.0.push(0),
        Some((master, epoch)) => {
            w.0.push(1);
            w.str(master)?;
            w.varint(*epoch);
        }
    }
    w.varint(u64::from(heartbeat.datastores_reachable));
    // Bit 0: HA disabled on the sender; bit 1: HA off for the cluster in its configuration.
    w.0.push(u8::from(heartbeat.ha_disabled) | (u8::from(heartbeat.ha_off) << 1));
    w.reports(&heartbeat.vms)?;
    w.strs(&heartbeat.operator_stopped)?;
    w.varint(heartbeat.acks.len() as u64);
    for &(index, seq) in &heartbeat.acks {
        if index as usize >= membership.hosts.len() {
            return Err(EncodeError::UnknownHostIndex(index));
        }
        w.varint(u64::from(index));
        w.varint(seq);
    }
    w.strs(&heartbeat.maintenance)?;
    w.reports(&heartbeat.stopped)?;
    w.varint(heartbeat.vanished.len() as u64);
    for (host, report) in &heartbeat.vanished {
        w.str(host)?;
        w.str(&report.vm)?;
        w.varint(report.generation);
    }
    w.strs(&heartbeat.unarmed)?;
    // Trailing sections, written only when they (or a later one) say something, so a host
    // that reaches all its datastores, is healthy and knows of no pending claim sends what
    // agents before them decode too: the datastores the sender lost, then its health (state
    // byte 0/1/2, reason), then the claims not run yet (VM, host, generation).
    let unhealthy = heartbeat.health.state != HealthState::Healthy;
    let paused = !heartbeat.paused.is_empty();
    let claims = !heartbeat.claims.is_empty() || paused;
    if !heartbeat.datastores_lost.is_empty() || unhealthy || claims {
        w.strs(&heartbeat.datastores_lost)?;
    }
    if unhealthy || claims {
        w.0.push(match heartbeat.health.state {
            HealthState::Healthy => 0,
            HealthState::Degraded => 1,
            HealthState::Failing => 2,
        });
        let reason: String = heartbeat.health.reason.chars().take(200).collect();
        w.str(&reason)?;
    }
    if claims {
        w.varint(heartbeat.claims.len() as u64);
        for claim in &heartbeat.claims {
            w.str(&claim.vm)?;
            w.str(&claim.host)?;
            w.varint(claim.generation);
        }
    }
    if paused {
        w.strs(&heartbeat.paused)?;
    }
    let mut mac = key.mac();
    mac.update(&w.0);
    w.0.extend_from_slice(&mac.finalize().into_bytes());
    if w.0.len() > MAX_PACKET {
        return Err(EncodeError::TooLarge(w.0.len()));
    }
    Ok(w.0)
}

/// Checks and decodes a packet. Nothing is read before the MAC is verified.
pub fn decode(packet: &[u8], cluster: &str, membership: &Membership, key: &ClusterKey) -> Result<Decoded, DropReason> {
    if packet.len() > MAX_PACKET {
        return Err(DropReason::Oversized);
    }
    if packet.len() < MAGIC.len() + 2 + MAC_LEN {
        return Err(DropReason::Truncated);
    }
    if &packet[..4] != MAGIC {
        return Err(DropReason::NotHalo);
    }
    if packet[4] != VERSION || packet[5] != KIND_HEARTBEAT {
        return Err(DropReason::UnknownVersion);
    }
    let (signed, tag) = packet.split_at(packet.len() - MAC_LEN);
    let mut mac = key.mac();
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| DropReason::BadMac)?;

    let mut r = Reader { rest: &signed[6..] };
    if r.str()? != cluster {
        return Err(DropReason::OtherCluster);
    }
    let digest = r.bytes(8)?;
    let membership_mismatch = digest != membership.digest;
    let from = r.str()?;
    if !membership.contains(&from) {
        return Err(DropReason::UnknownSender);
    }
    let incarnation = r.varint()?;
    let seq = r.varint()?;
    let master = match r.byte()? {
        0 => None,
        1 => Some((r.str()?, r.varint()?)),
        _ => return Err(DropReason::Malformed),
    };
    let datastores_reachable = u32::try_from(r.varint()?).map_err(|_| DropReason::Malformed)?;
    let flags = r.byte()?;
    if flags > 3 {
        return Err(DropReason::Malformed);
    }
    let (ha_disabled, ha_off) = (flags & 1 != 0, flags & 2 != 0);
    let vms = r.reports()?;
    let operator_stopped = r.strs()?;
    let count = r.count(2)?;
    let mut acks = Vec::with_capacity(if membership_mismatch { 0 } else { count });
    let hosts = membership.hosts.len() as u64;
    for _ in 0..count {
        let index = r.varint()?;
        let seq = r.varint()?;
        if membership_mismatch {
            continue;
        }
        if index >= hosts {
            return Err(DropReason::Malformed);
        }
        acks.push((index as u32, seq));
    }
    let maintenance = r.strs()?;
    let stopped = r.reports()?;
    let count = r.count(4)?;
    let mut vanished = Vec::with_capacity(count);
    for _ in 0..count {
        let host = r.str()?;
        let vm = r.str()?;
        vanished.push((host, VmReport { vm, generation: r.varint()? }));
    }
    let unarmed = r.strs()?;
    let datastores_lost = if r.rest.is_empty() { Vec::new() } else { r.strs()? };
    let health = if r.rest.is_empty() {
        HostHealth::default()
    } else {
        let state = match r.byte()? {
            0 => HealthState::Healthy,
            1 => HealthState::Degraded,
            2 => HealthState::Failing,
            _ => return Err(DropReason::Malformed),
        };
        HostHealth { state, reason: r.str()? }
    };
    let mut claims = Vec::new();
    if !r.rest.is_empty() {
        let count = r.count(3)?;
        claims.reserve(count);
        for _ in 0..count {
            let vm = r.str()?;
            let host = r.str()?;
            claims.push(PendingClaim { vm, host, generation: r.varint()? });
        }
    }
    let paused = if r.rest.is_empty() { Vec::new() } else { r.strs()? };
    if !r.rest.is_empty() {
        return Err(DropReason::Malformed);
    }
    Ok(Decoded {
        heartbeat: Heartbeat {
            from,
            seq,
            incarnation,
            master,
            datastores_reachable,
            datastores_lost,
            health,
            vms,
            operator_stopped,
            acks,
            maintenance,
            ha_disabled,
            ha_off,
            unarmed,
            stopped,
            vanished,
            claims,
            paused,
        },
        membership_mismatch,
    })
}

/// Prefixes `body` with the heartbeat header and appends a valid MAC: authenticated garbage,
/// for fuzzing the field decoder that sits behind the MAC check. Never used to send.
#[doc(hidden)]
pub fn sign_for_fuzzing(body: &[u8], key: &ClusterKey) -> Vec<u8> {
    let mut packet = Vec::with_capacity(body.len() + 6 + MAC_LEN);
    packet.extend_from_slice(MAGIC);
    packet.push(VERSION);
    packet.push(KIND_HEARTBEAT);
    packet.extend_from_slice(body);
    let mut mac = key.mac();
    mac.update(&packet);
    packet.extend_from_slice(&mac.finalize().into_bytes());
    packet
}

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn str(&mut self, s: &str) -> Result<(), EncodeError> {
        if s.len() > MAX_NAME {
            let cut: String = s.chars().take(32).collect();
            return Err(EncodeError::NameTooLong(cut));
        }
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn strs(&mut self, list: &[String]) -> Result<(), EncodeError> {
        self.varint(list.len() as u64);
        list.iter().try_for_each(|s| self.str(s))
    }

    fn reports(&mut self, list: &[VmReport]) -> Result<(), EncodeError> {
        self.varint(list.len() as u64);
        for r in list {
            self.str(&r.vm)?;
            self.varint(r.generation);
        }
        Ok(())
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DropReason> {
        let (&b, rest) = self.rest.split_first().ok_or(DropReason::Truncated)?;
        self.rest = rest;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], DropReason> {
        if self.rest.len() < n {
            return Err(DropReason::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, DropReason> {
        // One byte (below 128) is the common case: counts, indices, flags.
        if let Some((&b, rest)) = self.rest.split_first()
            && b < 0x80
        {
            self.rest = rest;
            return Ok(u64::from(b));
        }
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(DropReason::Malformed); // more than 64 bits
            }
            value |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DropReason::Malformed)
    }

    /// A count of elements of at least `min_size` bytes each: never more than could fit.
    fn count(&mut self, min_size: usize) -> Result<usize, DropReason> {
        let n = usize::try_from(self.varint()?).map_err(|_| DropReason::Malformed)?;
        if n > self.rest.len() / min_size.max(1) {
            return Err(DropReason::Malformed);
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<String, DropReason> {
        let len = usize::try_from(self.varint()?).map_err(|_| DropReason::Malformed)?;
        if len > MAX_NAME {
            return Err(DropReason::Malformed);
        }
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DropReason::Malformed)
    }

    fn strs(&mut self) -> Result<Vec<String>, DropReason> {
        let n = self.count(1)?;
        (0..n).map(|_| self.str()).collect()
    }

    fn reports(&mut self) -> Result<Vec<VmReport>, DropReason> {
        let n = self.count(2)?;
        (0..n).map(|_| Ok(VmReport { vm: self.str()?, generation: self.varint()? })).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> ClusterKey {
        ClusterKey::new(&[7; 32]).expect("32 bytes")
    }

    fn members() -> Membership {
        Membership::new((1..=5).map(|i| format!("host-{i}")).collect())
    }

    #[test]
    fn a_copy_on_another_network_is_taken_from_the_cache_and_nothing_else_is() {
        let cache = CopyCache::default();
        let packet = encode(&heartbeat(), "prod", &members(), &key()).expect("encodes");
        let first = cache.decode(&packet, "prod", &members(), &key()).expect("decodes");
        assert!(!first.copy && *first.heartbeat == heartbeat());
        // The same packet (the other network's copy): the same heartbeat, not parsed again.
        let copy = cache.decode(&packet, "prod", &members(), &key()).expect("decodes");
        assert!(copy.copy && std::sync::Arc::ptr_eq(&copy.heartbeat, &first.heartbeat));
        // The next heartbeat is parsed.
        let next = Heartbeat { seq: 301, ..heartbeat() };
        let packet_2 = encode(&next, "prod", &members(), &key()).expect("encodes");
        let second = cache.decode(&packet_2, "prod", &members(), &key()).expect("decodes");
        assert!(!second.copy && second.heartbeat.seq == 301);
        // A body changed under the last tag, or cut short: verified, and refused.
        let mut forged = packet_2.clone();
        let at = forged.len() - MAC_LEN - 3;
        forged[at] ^= 1;
        assert_eq!(
            cache.decode(&forged, "prod", &members(), &key()).map(|d| d.heartbeat.seq),
            Ok(301),
            "at most a replay"
        );
        let mut longer = packet_2.clone();
        longer.insert(10, 0);
        assert_eq!(cache.decode(&longer, "prod", &members(), &key()).err(), Some(DropReason::BadMac));
        // Another cluster key's packet is verified, never taken from the cache.
        let other = ClusterKey::new(&[8; 32]).expect("32 bytes");
        let foreign = encode(&next, "prod", &members(), &other).expect("encodes");
        assert_eq!(cache.decode(&foreign, "prod", &members(), &key()).err(), Some(DropReason::BadMac));
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            from: "host-2".into(),
            seq: 300,
            incarnation: 1_790_000_000_123,
            master: Some(("host-1".into(), 4)),
            datastores_reachable: 2,
            datastores_lost: vec![],
            health: Default::default(),
            vms: vec![VmReport { vm: "db".into(), generation: 3 }, VmReport { vm: "web".into(), generation: 1 }],
            operator_stopped: vec!["scratch".into()],
            acks: vec![(0, 299), (4, 12)],
            maintenance: vec!["host-4".into()],
            ha_disabled: false,
            ha_off: false,
            unarmed: vec![],
            stopped: vec![VmReport { vm: "mail".into(), generation: 2 }],
            vanished: vec![("host-3".into(), VmReport { vm: "dns".into(), generation: 5 })],
            claims: vec![],
            paused: vec![],
        }
    }

    #[test]
    fn the_cluster_key_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("halo-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("cluster.key");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef0123456789abcdef\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = ClusterKey::from_file(&path).expect_err("readable by others");
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let key = ClusterKey::from_file(&path).expect("a good key");
        assert_eq!(
            format!("{key:?}"),
            "ClusterKey(48 bytes)",
            "the newline is not part of it, and the key is never printed"
        );
        std::fs::write(&path, "short\n").expect("write");
        let error = ClusterKey::from_file(&path).expect_err("too short");
        assert!(error.to_string().contains("holds 5 bytes; it needs at least 32"), "{error}");
        let error = ClusterKey::from_file(&dir.join("missing")).expect_err("missing");
        assert!(error.to_string().starts_with("cluster key"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_heartbeat_survives_the_round_trip() {
        let packet = encode(&heartbeat(), "prod", &members(), &key()).expect("encodes");
        let decoded = decode(&packet, "prod", &members(), &key()).expect("decodes");
        assert_eq!(decoded, Decoded { heartbeat: heartbeat(), membership_mismatch: false });
        // Lost datastores travel in a trailing section, only when there are some: without,
        // the packet is what an agent before the section sent (and decodes).
        let mut lost = heartbeat();
        lost.datastores_lost = vec!["ds1".into(), "ds2".into()];
        let with = encode(&lost, "prod", &members(), &key()).expect("encodes");
        assert_eq!(with.len(), packet.len() + 9, "count + two names");
        let decoded = decode(&with, "prod", &members(), &key()).expect("decodes");
        assert_eq!(decoded.heartbeat, lost);
        // Health too, with or without lost datastores.
        for datastores_lost in [vec![], vec!["ds1".to_string()]] {
            let mut ill = heartbeat();
            ill.datastores_lost = datastores_lost;
            ill.health = HostHealth { state: HealthState::Failing, reason: "DIMM B2".into() };
            let packet = encode(&ill, "prod", &members(), &key()).expect("encodes");
            assert_eq!(decode(&packet, "prod", &members(), &key()).expect("decodes").heartbeat, ill);
        }
        // Pending claims last, with or without the sections before them saying anything.
        for (datastores_lost, failing) in [(vec![], false), (vec!["ds1".to_string()], true)] {
            let mut claiming = heartbeat();
            claiming.datastores_lost = datastores_lost;
            if failing {
                claiming.health = HostHealth { state: HealthState::Failing, reason: "fan".into() };
            }
            claiming.claims = vec![
                PendingClaim { vm: "db".into(), host: "host-3".into(), generation: 4 },
                PendingClaim { vm: "web".into(), host: "host-1".into(), generation: 2 },
            ];
            let packet = encode(&claiming, "prod", &members(), &key()).expect("encodes");
            assert_eq!(decode(&packet, "prod", &members(), &key()).expect("decodes").heartbeat, claiming);
            // Paused VMs after them, with or without claims.
            claiming.paused = vec!["db".into()];
            let packet = encode(&claiming, "prod", &members(), &key()).expect("encodes");
            assert_eq!(decode(&packet, "prod", &members(), &key()).expect("decodes").heartbeat, claiming);
            claiming.claims.clear();
            let packet = encode(&claiming, "prod", &members(), &key()).expect("encodes");
            assert_eq!(decode(&packet, "prod", &members(), &key()).expect("decodes").heartbeat, claiming);
        }
    }

    #[test]
    fn forged_truncated_and_foreign_packets_are_dropped_with_their_reason() {
        let packet = encode(&heartbeat(), "prod", &members(), &key()).expect("encodes");
        let other_key = ClusterKey::new(&[8; 32]).expect("key");
        assert_eq!(decode(&packet, "prod", &members(), &other_key), Err(DropReason::BadMac));
        assert_eq!(decode(&packet, "test", &members(), &key()), Err(DropReason::OtherCluster));
        assert_eq!(decode(&packet[..packet.len() - 1], "prod", &members(), &key()), Err(DropReason::BadMac));
        assert_eq!(decode(&packet[..10], "prod", &members(), &key()), Err(DropReason::Truncated));
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n\r\n........................................", "prod", &members(), &key()),
            Err(DropReason::NotHalo)
        );
        let mut flipped = packet.clone();
        flipped[12] ^= 1;
        assert_eq!(decode(&flipped, "prod", &members(), &key()), Err(DropReason::BadMac));
        let mut v2 = packet.clone();
        v2[4] = 2;
        assert_eq!(decode(&v2, "prod", &members(), &key()), Err(DropReason::UnknownVersion));
        assert_eq!(decode(&vec![0; MAX_PACKET + 1], "prod", &members(), &key()), Err(DropReason::Oversized));
        let mut stranger = heartbeat();
        stranger.from = "host-9".into();
        stranger.acks.clear();
        let packet = encode(&stranger, "prod", &members(), &key()).expect("encodes");
        assert_eq!(decode(&packet, "prod", &members(), &key()), Err(DropReason::UnknownSender));
    }

    #[test]
    fn another_host_list_drops_the_acks_and_says_so() {
        let packet = encode(&heartbeat(), "prod", &members(), &key()).expect("encodes");
        let mut hosts: Vec<String> = (1..=5).map(|i| format!("host-{i}")).collect();
        hosts.push("host-6".into());
        let decoded = decode(&packet, "prod", &Membership::new(hosts), &key()).expect("decodes");
        assert!(decoded.membership_mismatch);
        assert!(decoded.heartbeat.acks.is_empty());
        assert_eq!(decoded.heartbeat.vms, heartbeat().vms);
    }

    #[test]
    fn what_cannot_be_sent_is_an_error() {
        let mut long = heartbeat();
        long.vms.push(VmReport { vm: "x".repeat(300), generation: 1 });
        assert!(matches!(encode(&long, "prod", &members(), &key()), Err(EncodeError::NameTooLong(_))));
        let mut stranger = heartbeat();
        stranger.acks.push((77, 1));
        assert_eq!(encode(&stranger, "prod", &members(), &key()), Err(EncodeError::UnknownHostIndex(77)));
        let mut huge = heartbeat();
        huge.vms = (0..5_000).map(|i| VmReport { vm: format!("vm-with-a-long-name-{i:05}"), generation: 1 }).collect();
        assert!(matches!(encode(&huge, "prod", &members(), &key()), Err(EncodeError::TooLarge(_))));
    }

    #[test]
    fn a_thousand_host_heartbeat_fits_a_packet() {
        let hosts: Vec<String> = (1..=1000).map(|i| format!("host-{i:04}")).collect();
        let membership = Membership::new(hosts.clone());
        let mut hb = heartbeat();
        hb.from = hosts[1].clone();
        hb.master = Some((hosts[0].clone(), 1));
        hb.maintenance.clear();
        hb.vanished.clear();
        hb.acks = (2..1000).map(|i| (i, 1_000_000)).collect();
        hb.vms = (0..50).map(|i| VmReport { vm: format!("vm-{i:03}"), generation: 1 }).collect();
        let packet = encode(&hb, "prod", &membership, &key()).expect("fits");
        assert!(packet.len() < 8_000, "{} bytes", packet.len());
        assert_eq!(decode(&packet, "prod", &membership, &key()).expect("decodes").heartbeat, hb);
    }

    proptest! {
        /// Any bytes: an answer, never a panic; and a bit flip in a valid packet is never accepted.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), flip in 0usize..2000) {
            let _ = decode(&bytes, "prod", &members(), &key());
            let mut packet = encode(&heartbeat(), "prod", &members(), &key()).expect("encodes");
            let i = flip % packet.len();
            packet[i] ^= 0x20;
            prop_assert!(decode(&packet, "prod", &members(), &key()).is_err());
        }

        /// Authenticated garbage (a valid MAC over a random body) is refused as malformed, never trusted.
        #[test]
        fn authenticated_garbage_is_refused(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut packet = b"HALO\x01\x01".to_vec();
            packet.extend_from_slice(&body);
            let mut mac = key().mac();
            mac.update(&packet);
            packet.extend_from_slice(&mac.finalize().into_bytes());
            // The MAC holds, so only the body can be refused: as malformed (or, when the random
            // body happens to parse, as another cluster's or a stranger's), never as a bad MAC,
            // and never accepted.
            match decode(&packet, "prod", &members(), &key()) {
                Err(reason) => prop_assert!(
                    matches!(reason, DropReason::Malformed | DropReason::Truncated | DropReason::OtherCluster | DropReason::UnknownSender),
                    "refused as {reason:?}"
                ),
                Ok(decoded) => prop_assert!(false, "random bytes accepted as a heartbeat: {:?}", decoded.heartbeat),
            }
        }
    }
}
