//! Failure classification: the master's verdict on one host from three signals, exactly the
//! matrix of the brief.
//!
//! | network heartbeat | datastore heartbeat | answers ping | verdict |
//! |---|---|---|---|
//! | yes | any | any | running |
//! | no | no | yes | agent down (never restarted: its VMs may still run) |
//! | no | no | no | failed (its protected VMs are restarted) |
//! | no | yes | — | isolated (it says so) or partitioned |
//!
//! "Heard" means the host's sequence number or datastore counter **advanced on the master's
//! own clock** within the dead-time; clocks of different hosts are never compared. Every
//! verdict carries its [`Signals`], so an operator sees why.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// What the master knows of one host's datastore heartbeat on one datastore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreSignal {
    /// Datastore.
    pub datastore: String,
    /// Last counter read, if any.
    pub counter: Option<u64>,
    /// When (master's clock) the counter last advanced, or was first seen.
    pub advanced_at: Option<Millis>,
}

/// The state of the master's ping of the host's management address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PingSignal {
    /// No ping since the host fell silent.
    #[default]
    NotAsked,
    /// Sent, no answer yet.
    Pending,
    /// It answered (after the host fell silent).
    Answered,
    /// No answer within the ping timeout.
    NoAnswer,
}

/// Everything a verdict is based on: the trace an operator reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// The host judged.
    pub host: String,
    /// When (master's clock).
    pub now: Millis,
    /// The dead-time applied.
    pub dead_time_ms: Millis,
    /// Per network: when a heartbeat from the host last arrived directly.
    pub networks: Vec<(String, Option<Millis>)>,
    /// When its sequence number last advanced, heard directly or through a peer's ack.
    pub seq_advanced_at: Option<Millis>,
    /// Per datastore: its heartbeat counter.
    pub datastores: Vec<DatastoreSignal>,
    /// Whether the master could read any datastore lately (else storage says nothing).
    pub datastores_readable: bool,
    /// The ping.
    pub ping: PingSignal,
    /// The host's datastore record says it is isolated.
    pub declared_isolated: bool,
    /// The ping timeout: the ping goes out this long before the dead-time ends, so its answer
    /// (or its silence) is in when the host's silence reaches the dead-time.
    #[serde(default)]
    pub ping_timeout_ms: Millis,
}

/// A master's verdict on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Heartbeats arrive.
    Running,
    /// Silent, but not yet past the dead-time or the ping is out.
    Suspect,
    /// No heartbeats anywhere, but it answers ping: the agent is down, VMs may still run.
    AgentDown,
    /// No network, no datastore heartbeat past the dead-time, no ping: dead.
    Failed,
    /// Network silent, datastore heartbeat alive, and it declared itself isolated.
    Isolated,
    /// Network silent, datastore heartbeat alive: in another partition.
    Partitioned,
    /// Network silent and the master reads no datastore: nothing can be concluded.
    Unknown,
}

impl Verdict {
    /// Short name for timelines.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Running => "running",
            Verdict::Suspect => "suspect",
            Verdict::AgentDown => "agent down",
            Verdict::Failed => "failed",
            Verdict::Isolated => "isolated",
            Verdict::Partitioned => "partitioned",
            Verdict::Unknown => "unknown",
        }
    }
}

/// The trace as one line.
pub type Trace = String;

impl Signals {
    fn age(&self, at: Option<Millis>) -> Option<Millis> {
        at.map(|t| self.now.saturating_sub(t))
    }

    /// The network heartbeat is alive: the sequence advanced within the dead-time.
    pub fn network_alive(&self) -> bool {
        self.age(self.seq_advanced_at).is_some_and(|age| age < self.dead_time_ms)
    }

    /// Age of the freshest datastore counter advance.
    fn datastore_age(&self) -> Option<Millis> {
        self.datastores.iter().filter_map(|d| self.age(d.advanced_at)).min()
    }

    /// Some datastore counter advanced within half the dead-time: the host is alive on
    /// storage (a crashed host's last write ages past this while its network is silent).
    pub fn datastore_alive(&self) -> bool {
        self.datastore_age().is_some_and(|age| age < self.dead_time_ms / 2)
    }

    /// Some datastore counter advanced within the dead-time (not yet proof of death).
    pub fn datastore_recent(&self) -> bool {
        self.datastore_age().is_some_and(|age| age < self.dead_time_ms)
    }

    /// Silent on every network for `ms` (the sequence has not advanced, directly or through an
    /// ack).
    pub fn silent_for(&self, ms: Millis) -> bool {
        self.age(self.seq_advanced_at).is_none_or(|age| age >= ms)
    }

    /// It fell silent on the networks and on the datastores at about the same time (within
    /// `margin`), as a host that died does; a host whose datastore counter went on for longer
    /// was alive in another partition when its network fell silent.
    pub fn silent_together(&self, margin: Millis) -> bool {
        let (Some(net), Some(ds)) = (self.age(self.seq_advanced_at), self.datastore_age()) else { return true };
        net.saturating_sub(ds) <= margin
    }

    /// No datastore counter of it advanced for `ms`.
    pub fn datastore_silent_for(&self, ms: Millis) -> bool {
        self.datastore_age().is_none_or(|age| age >= ms)
    }

    /// Silent on every network and every datastore for the dead-time less the ping timeout:
    /// time to ping, so the answer is in when the dead-time ends. Heard more recently than
    /// that, an earlier ping's result no longer counts.
    pub fn nearly_dead(&self) -> bool {
        let lead = self.dead_time_ms.saturating_sub(self.ping_timeout_ms);
        self.datastores_readable
            && self.age(self.seq_advanced_at).is_none_or(|age| age >= lead)
            && self.datastore_age().is_none_or(|age| age >= lead)
    }

    /// The verdict, and whether the host should be pinged now.
    pub fn classify(&self) -> (Verdict, bool) {
        let early_ping = self.ping == PingSignal::NotAsked && self.nearly_dead();
        if self.network_alive() {
            return (Verdict::Running, early_ping);
        }
        if self.datastore_alive() {
            let verdict = if self.declared_isolated { Verdict::Isolated } else { Verdict::Partitioned };
            return (verdict, false);
        }
        if !self.datastores_readable {
            return (Verdict::Unknown, false);
        }
        if self.datastore_recent() {
            return (Verdict::Suspect, early_ping);
        }
        match self.ping {
            PingSignal::NotAsked => (Verdict::Suspect, true),
            PingSignal::Pending => (Verdict::Suspect, false),
            PingSignal::Answered => (Verdict::AgentDown, false),
            PingSignal::NoAnswer => (Verdict::Failed, false),
        }
    }

    /// One line: every signal with its age.
    pub fn trace(&self) -> Trace {
        let age = |at: Option<Millis>| match self.age(at) {
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None => "never".to_string(),
        };
        let networks: Vec<String> = self.networks.iter().map(|(n, at)| format!("net {n}: {}", age(*at))).collect();
        let datastores: Vec<String> = self
            .datastores
            .iter()
            .map(|d| match d.counter {
                Some(c) => format!("ds {}: counter {c} advanced {}", d.datastore, age(d.advanced_at)),
                None => format!("ds {}: no record", d.datastore),
            })
            .collect();
        let ping = match self.ping {
            PingSignal::NotAsked => "not pinged",
            PingSignal::Pending => "ping pending",
            PingSignal::Answered => "answers ping",
            PingSignal::NoAnswer => "no ping answer",
        };
        format!(
            "{}: {}; seq advanced {}; {}{}; {}{}",
            self.host,
            networks.join(", "),
            age(self.seq_advanced_at),
            datastores.join(", "),
            if self.datastores_readable { "" } else { " (master reads no datastore)" },
            ping,
            if self.declared_isolated { "; declared isolated" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(net: Option<Millis>, ds: Option<Millis>, ping: PingSignal) -> Signals {
        Signals {
            host: "host-2".into(),
            now: 100_000,
            dead_time_ms: 12_000,
            networks: vec![("A".into(), net), ("B".into(), net)],
            seq_advanced_at: net,
            datastores: vec![DatastoreSignal { datastore: "ds1".into(), counter: ds.map(|_| 7), advanced_at: ds }],
            datastores_readable: true,
            ping,
            declared_isolated: false,
            ping_timeout_ms: 0,
        }
    }

    const FRESH: Option<Millis> = Some(99_500);
    const STALE: Option<Millis> = Some(80_000);

    /// The ping goes out a ping timeout before the dead-time ends, while the verdict is still
    /// "running" or "suspect": its result is in when the dead-time ends.
    #[test]
    fn the_ping_goes_out_a_ping_timeout_before_the_dead_time() {
        let at = |silent: Millis| {
            let mut s = signals(Some(100_000 - silent), Some(100_000 - silent), PingSignal::NotAsked);
            s.ping_timeout_ms = 1_000;
            s
        };
        assert_eq!(at(10_000).classify(), (Verdict::Running, false), "heard 10 s ago: not yet");
        assert_eq!(at(11_000).classify(), (Verdict::Running, true), "11 s of 12: ping now");
        assert_eq!(at(11_500).classify(), (Verdict::Running, true));
        let mut answered = at(11_500);
        answered.ping = PingSignal::NoAnswer;
        assert_eq!(answered.classify(), (Verdict::Running, false), "not failed before the dead-time");
        let mut dead = at(12_000);
        dead.ping = PingSignal::NoAnswer;
        assert_eq!(dead.classify(), (Verdict::Failed, false), "failed the moment the dead-time ends");
        let mut storage_fresh = at(11_500);
        storage_fresh.datastores[0].advanced_at = Some(99_000);
        assert!(!storage_fresh.nearly_dead(), "its datastore heartbeat is fresh: no ping");
    }

    /// The failure matrix of the brief, one row per case.
    #[test]
    fn the_failure_matrix() {
        use PingSignal::*;
        let rows = [
            (FRESH, FRESH, NotAsked, Verdict::Running, false),
            (FRESH, STALE, NoAnswer, Verdict::Running, false),
            (FRESH, None, NoAnswer, Verdict::Running, false),
            (STALE, STALE, Answered, Verdict::AgentDown, false),
            (STALE, STALE, NoAnswer, Verdict::Failed, false),
            (None, None, NoAnswer, Verdict::Failed, false),
            (STALE, STALE, NotAsked, Verdict::Suspect, true),
            (STALE, STALE, Pending, Verdict::Suspect, false),
            (STALE, FRESH, NoAnswer, Verdict::Partitioned, false),
            (STALE, FRESH, Answered, Verdict::Partitioned, false),
            (STALE, Some(92_000), NoAnswer, Verdict::Suspect, false),
        ];
        for (i, (net, ds, ping, verdict, ask)) in rows.into_iter().enumerate() {
            assert_eq!(signals(net, ds, ping).classify(), (verdict, ask), "row {i}");
        }
    }

    #[test]
    fn a_host_declaring_isolation_with_a_live_datastore_heartbeat_is_isolated() {
        let mut s = signals(STALE, FRESH, PingSignal::NoAnswer);
        s.declared_isolated = true;
        assert_eq!(s.classify().0, Verdict::Isolated);
    }

    #[test]
    fn without_a_readable_datastore_a_silent_host_is_never_failed() {
        let mut s = signals(STALE, STALE, PingSignal::NoAnswer);
        s.datastores_readable = false;
        assert_eq!(s.classify().0, Verdict::Unknown);
    }

    #[test]
    fn the_trace_names_every_signal() {
        let trace = signals(STALE, STALE, PingSignal::NoAnswer).trace();
        assert!(trace.contains("net A: 20.0s ago") && trace.contains("ds ds1: counter 7"), "{trace}");
        assert!(trace.contains("no ping answer"), "{trace}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn ping() -> impl Strategy<Value = PingSignal> {
            prop_oneof![
                Just(PingSignal::NotAsked),
                Just(PingSignal::Pending),
                Just(PingSignal::Answered),
                Just(PingSignal::NoAnswer)
            ]
        }

        fn signals() -> impl Strategy<Value = Signals> {
            let at = proptest::option::of(0u64..40_000);
            (
                (20_000u64..40_000, 1_000u64..15_000, 100u64..2_000),
                proptest::collection::vec(at.clone(), 1..3),
                at.clone(),
                proptest::collection::vec(at, 0..3),
                (any::<bool>(), ping(), any::<bool>()),
            )
                .prop_map(|((now, dead, ping_timeout), nets, seq, stores, (readable, ping, isolated))| {
                    Signals {
                        host: "h".into(),
                        now,
                        dead_time_ms: dead,
                        networks: nets.into_iter().enumerate().map(|(i, at)| (format!("N{i}"), at)).collect(),
                        seq_advanced_at: seq,
                        datastores: stores
                            .into_iter()
                            .enumerate()
                            .map(|(i, at)| DatastoreSignal {
                                datastore: format!("ds{i}"),
                                counter: at.map(|_| 1),
                                advanced_at: at,
                            })
                            .collect(),
                        datastores_readable: readable,
                        ping,
                        declared_isolated: isolated,
                        ping_timeout_ms: ping_timeout,
                    }
                })
        }

        proptest! {
            /// "Failed" — the only verdict that restarts VMs elsewhere — needs every proof of the
            /// brief at once: silent on the network for the dead-time, silent on every datastore
            /// for the dead-time, the master able to read a datastore, and no ping answer.
            #[test]
            fn failed_only_with_every_proof(s in signals()) {
                let (verdict, _) = s.classify();
                if verdict == Verdict::Failed {
                    let silent = |at: Option<Millis>| at.is_none_or(|t| s.now.saturating_sub(t) >= s.dead_time_ms);
                    prop_assert!(silent(s.seq_advanced_at), "network heard within the dead-time: {}", s.trace());
                    prop_assert!(s.datastores.iter().all(|d| silent(d.advanced_at)), "datastore heard: {}", s.trace());
                    prop_assert!(s.datastores_readable, "no datastore readable: {}", s.trace());
                    prop_assert_eq!(s.ping, PingSignal::NoAnswer);
                }
                // And a host heard on the network within the dead-time is running, whatever else.
                if s.seq_advanced_at.is_some_and(|t| s.now.saturating_sub(t) < s.dead_time_ms) {
                    prop_assert_eq!(verdict, Verdict::Running);
                }
                // A host that answers ping is never failed.
                if s.ping == PingSignal::Answered {
                    prop_assert_ne!(verdict, Verdict::Failed);
                }
            }
        }
    }
}
