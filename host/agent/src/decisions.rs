//! Every policy decision, recorded: world, input, answer, who answered, when — in a bounded
//! on-disk log that `halo plugin replay` reads — and judged by a shadow candidate when one is
//! configured (`[plugins] shadow-placement = FILE`, …).
//!
//! The agent loop only hands a decision over (a clone of input and answer, into a bounded
//! channel; a full channel drops the record and counts it). One worker thread of its own runs
//! the shadow candidate, serializes and writes: nothing here runs on the liveness path or
//! blocks the loop, and a shadow's answer is never acted on.
//!
//! On disk: `DIR/decisions-<host>-<run>-<seq>.jsonl`, one record a line (several agents may
//! share a directory); a segment that reaches
//! `segment_bytes` is compressed to `.jsonl.gz` and a new one begun; the oldest compressed
//! segments are removed while all of them together exceed `max_bytes`.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use halo_plugin_runtime::replay::{Differ, Verdict};
use halo_plugin_runtime::{DecidedBy, Decision, PluginPolicies, PluginSlot, PolicyWorld};
use halo_policy::balance::{BalanceInput, BalanceMove};
use halo_policy::{IsolationInput, Placement, PlacementInput, RestartError, RestartInput, VmIsolationDecision, Wave};
use serde::{Deserialize, Serialize};

/// Decisions waiting for the worker; more are dropped (and counted).
pub const QUEUE: usize = 1_024;

/// A decision point, by its wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionWorld {
    /// `isolation-policy`.
    Isolation,
    /// `placement-engine` (any of its three shapes).
    Placement,
    /// `restart-policy`.
    RestartOrder,
    /// `balancing-policy`.
    Balancing,
}

impl DecisionWorld {
    /// Every decision point.
    pub const ALL: [DecisionWorld; 4] =
        [DecisionWorld::Isolation, DecisionWorld::Placement, DecisionWorld::RestartOrder, DecisionWorld::Balancing];

    /// The wire name (`placement`, `restart-order`, …), as in `[plugins]` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DecisionWorld::Isolation => "isolation",
            DecisionWorld::Placement => "placement",
            DecisionWorld::RestartOrder => "restart-order",
            DecisionWorld::Balancing => "balancing",
        }
    }

    /// The WIT world of the decision point (as plugin events and `halo status` name it).
    pub fn wit_world(self) -> &'static str {
        match self {
            DecisionWorld::Isolation => "isolation-policy",
            DecisionWorld::Placement => "placement-engine",
            DecisionWorld::RestartOrder => "restart-policy",
            DecisionWorld::Balancing => "balancing-policy",
        }
    }

    /// The world named `text` (its wire name, or the WIT world's name; a placement plugin's
    /// compact and columnar worlds too).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| {
            w.name() == text
                || w.wit_world() == text
                || (*w == DecisionWorld::Placement
                    && matches!(text, "compact-placement-engine" | "columnar-placement-engine"))
        })
    }
}

/// A decision's input and the answer that was acted on, by world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "world")]
pub enum Recorded {
    /// The isolation response.
    Isolation {
        /// Input.
        input: IsolationInput,
        /// Answer acted on.
        answer: Vec<VmIsolationDecision>,
    },
    /// A placement.
    Placement {
        /// Input.
        input: PlacementInput,
        /// Answer acted on.
        answer: Placement,
    },
    /// A restart order.
    RestartOrder {
        /// Input.
        input: RestartInput,
        /// Answer acted on.
        answer: Result<Vec<Wave>, RestartError>,
    },
    /// A balancing proposal.
    Balancing {
        /// Input.
        input: BalanceInput,
        /// Answer acted on.
        answer: Vec<BalanceMove>,
    },
}

impl Recorded {
    /// The decision point.
    pub fn world(&self) -> DecisionWorld {
        match self {
            Recorded::Isolation { .. } => DecisionWorld::Isolation,
            Recorded::Placement { .. } => DecisionWorld::Placement,
            Recorded::RestartOrder { .. } => DecisionWorld::RestartOrder,
            Recorded::Balancing { .. } => DecisionWorld::Balancing,
        }
    }
}

/// What a shadow candidate made of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ShadowOutcome {
    /// The candidate's file name.
    pub plugin: String,
    /// Its verdict against the answer acted on.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DecisionRecord {
    /// Number within this agent's run (events name it in `decisions`).
    pub id: u64,
    /// This agent's run (its start, ms since the Unix epoch), as in events.
    pub run: u64,
    /// Host that decided.
    pub node: String,
    /// Wall clock, ms since the Unix epoch.
    pub unix_ms: u64,
    /// `built-in`, or the plugin's file name.
    pub decided_by: String,
    /// Why the built-in policy decided although a plugin was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Time the decision took, µs.
    pub elapsed_us: u64,
    /// World, input and answer.
    #[serde(flatten)]
    pub decision: Recorded,
    /// The shadow candidate's verdict, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowOutcome>,
}

/// A decision equal to an earlier one (same world, reason, input, answer and decider), written
/// as a line that names it instead of the whole input again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RepeatRecord {
    /// Its own number (events may name it).
    pub id: u64,
    /// This agent's run.
    pub run: u64,
    /// Host that decided.
    pub node: String,
    /// Wall clock, ms since the Unix epoch.
    pub unix_ms: u64,
    /// The earlier decision it repeats (same run).
    pub same_as: u64,
}

/// Where and how much to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSettings {
    /// The directory (created mode 0700).
    pub dir: PathBuf,
    /// A segment is compressed once it is this big.
    pub segment_bytes: u64,
    /// All compressed segments together stay under this.
    pub max_bytes: u64,
}

/// Counters for `/metrics` and `halo status`.
#[derive(Debug, Default)]
pub struct DecisionStats {
    /// Decisions recorded on disk.
    pub recorded: AtomicU64,
    /// Decisions dropped because the worker was behind.
    pub dropped: AtomicU64,
    /// Records that could not be written (disk full, directory gone).
    pub write_failures: AtomicU64,
    /// Decisions written as a repeat of the one before (same world, reason, input, answer
    /// and decider): the failover plan re-checks an unchanged cluster every few seconds.
    pub repeats: AtomicU64,
    /// Per world: shadow decisions, divergences (different, invalid or failed).
    shadow: Mutex<BTreeMap<DecisionWorld, ShadowCount>>,
}

/// A shadow candidate's tally for one world.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ShadowCount {
    /// Decisions it judged.
    pub decisions: u64,
    /// Answers equal to the policy in force.
    pub same: u64,
    /// Valid answers that differ.
    pub different: u64,
    /// Answers the runtime refused.
    pub invalid: u64,
    /// Traps, timeouts, memory, refusals.
    pub failed: u64,
}

impl ShadowCount {
    /// Decisions where the candidate would not have done what was done.
    pub fn divergences(&self) -> u64 {
        self.different + self.invalid + self.failed
    }
}

impl DecisionStats {
    /// The shadow tallies, by world.
    pub fn shadow(&self) -> BTreeMap<DecisionWorld, ShadowCount> {
        self.shadow.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, world: DecisionWorld, verdict: &Verdict) {
        let mut all = self.shadow.lock().unwrap_or_else(|p| p.into_inner());
        let count = all.entry(world).or_default();
        count.decisions += 1;
        match verdict {
            Verdict::Same => count.same += 1,
            Verdict::Different(_) => count.different += 1,
            Verdict::Invalid(_) => count.invalid += 1,
            Verdict::Failed(_) => count.failed += 1,
        }
    }
}

/// The recorder the agent's policies report to.
pub struct DecisionLog {
    node: String,
    run: u64,
    next_id: AtomicU64,
    /// Ids of the decisions since the agent last took them (to link its events).
    step: Mutex<Vec<u64>>,
    sender: Option<SyncSender<DecisionRecord>>,
    /// Counters.
    pub stats: Arc<DecisionStats>,
}

impl DecisionLog {
    /// A log that records to `settings` (none: not on disk) and runs the candidates of
    /// `shadows` (slots without a plugin: no shadow for that world) on its own thread.
    pub fn start(
        node: &str,
        run: u64,
        settings: Option<RecordSettings>,
        shadows: Arc<PluginPolicies>,
    ) -> std::io::Result<Arc<Self>> {
        let stats = Arc::new(DecisionStats::default());
        let mut writer = match settings {
            Some(settings) => Some(SegmentWriter::open(settings, node, run)?),
            None => None,
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
        let worker_stats = Arc::clone(&stats);
        std::thread::Builder::new().name("halo-decisions".into()).spawn(move || {
            work(&receiver, writer.as_mut(), &shadows, &worker_stats);
        })?;
        Ok(Arc::new(Self {
            node: node.to_string(),
            run,
            next_id: AtomicU64::new(0),
            step: Mutex::new(Vec::new()),
            sender: Some(sender),
            stats,
        }))
    }

    /// A log that keeps nothing (tests, tools).
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            node: String::new(),
            run: 0,
            next_id: AtomicU64::new(0),
            step: Mutex::new(Vec::new()),
            sender: None,
            stats: Arc::new(DecisionStats::default()),
        })
    }

    /// Hands one decision over; returns its id.
    pub fn record<A>(&self, decision: &Decision<A>, recorded: Recorded) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.step.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        let Some(sender) = &self.sender else { return id };
        let (decided_by, fallback_reason) = match &decision.decided_by {
            DecidedBy::Plugin(name) => (name.to_string(), None),
            DecidedBy::BuiltIn { failure } => ("built-in".to_string(), failure.as_ref().map(ToString::to_string)),
        };
        let record = DecisionRecord {
            id,
            run: self.run,
            node: self.node.clone(),
            unix_ms: crate::events::unix_ms(),
            decided_by,
            fallback_reason,
            elapsed_us: u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX),
            decision: recorded,
            shadow: None,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sender.try_send(record) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        id
    }

    /// Forgets the step's decisions (the loop calls it before each step) and returns them.
    pub fn take_step(&self) -> Vec<u64> {
        std::mem::take(&mut *self.step.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The ids of the decisions made so far in the step under way (the events it records are
    /// their consequences).
    pub fn step(&self) -> Vec<u64> {
        self.step.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn shadow<W: PolicyWorld>(slot: &PluginSlot<W>, input: &W::Input, answer: &W::Answer) -> Option<ShadowOutcome>
where
    W::Answer: Differ,
{
    let plugin = slot.info()?.name.to_string();
    let decision = slot.decide(input);
    Some(ShadowOutcome { plugin, verdict: Verdict::of(&decision, answer) })
}

/// What the worker last saw per decision point (and per placement reason): to write repeats
/// short and not run the shadow again on the same input.
struct Last {
    fingerprint: u64,
    id: u64,
    shadow: Option<ShadowOutcome>,
}

fn slot(decision: &Recorded) -> String {
    match decision {
        Recorded::Placement { input, .. } => format!("placement/{:?}", input.reason),
        other => other.world().name().to_string(),
    }
}

fn fingerprint(record: &DecisionRecord) -> u64 {
    use std::hash::{Hash, Hasher};
    let text =
        serde_json::to_string(&(&record.decided_by, &record.fallback_reason, &record.decision)).unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

fn work(
    receiver: &Receiver<DecisionRecord>,
    mut writer: Option<&mut SegmentWriter>,
    shadows: &PluginPolicies,
    stats: &DecisionStats,
) {
    use halo_plugin_runtime::{Balancing, Isolation, Placement as PlacementWorld, RestartOrder};
    let mut last: BTreeMap<String, Last> = BTreeMap::new();
    while let Ok(mut record) = receiver.recv() {
        let key = slot(&record.decision);
        let print = fingerprint(&record);
        // A repeat: the same verdict as before (a plugin is a pure function of its input), one
        // short line on disk.
        if let Some(previous) = last.get(&key).filter(|l| l.fingerprint == print) {
            if let Some(outcome) = &previous.shadow {
                stats.count(record.decision.world(), &outcome.verdict);
            }
            stats.repeats.fetch_add(1, Ordering::Relaxed);
            let repeat = RepeatRecord {
                id: record.id,
                run: record.run,
                node: record.node.clone(),
                unix_ms: record.unix_ms,
                same_as: previous.id,
            };
            write(writer.as_deref_mut(), record.id, &repeat, stats);
            continue;
        }
        record.shadow = match &record.decision {
            Recorded::Isolation { input, answer } => shadow::<Isolation>(&shadows.isolation, input, answer),
            Recorded::Placement { input, answer } => shadow::<PlacementWorld>(&shadows.placement, input, answer),
            Recorded::RestartOrder { input, answer } => shadow::<RestartOrder>(&shadows.restart_order, input, answer),
            Recorded::Balancing { input, answer } => shadow::<Balancing>(&shadows.balancing, input, answer),
        };
        if let Some(outcome) = &record.shadow {
            stats.count(record.decision.world(), &outcome.verdict);
            if outcome.verdict != Verdict::Same {
                tracing::info!(
                    decision = record.id,
                    "shadow {} {} on {} decision {}: {}",
                    outcome.plugin,
                    outcome.verdict.name(),
                    record.decision.world().name(),
                    record.id,
                    match &outcome.verdict {
                        Verdict::Same => "",
                        Verdict::Different(d) | Verdict::Invalid(d) | Verdict::Failed(d) => d,
                    }
                );
            }
        }
        last.insert(key, Last { fingerprint: print, id: record.id, shadow: record.shadow.clone() });
        write(writer.as_deref_mut(), record.id, &record, stats);
    }
}

fn write(writer: Option<&mut SegmentWriter>, id: u64, line: &impl Serialize, stats: &DecisionStats) {
    let Some(writer) = writer else { return };
    match writer.write(line) {
        Ok(()) => stats.recorded.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!("decision record {id}: {e}");
            stats.write_failures.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// The current segment and the rotation.
struct SegmentWriter {
    settings: RecordSettings,
    /// `<host>-<run>`, in every segment's name.
    prefix: String,
    seq: u64,
    file: Option<(PathBuf, std::io::BufWriter<std::fs::File>, u64)>,
}

impl SegmentWriter {
    fn open(settings: RecordSettings, node: &str, run: u64) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&settings.dir)?;
        // Segments an earlier run of this host left uncompressed (it crashed) are compressed now.
        let own = format!("decisions-{node}-");
        for path in segments(&settings.dir)? {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with(&own) && name.ends_with(".jsonl") {
                compress(&path)?;
            }
        }
        Ok(Self { settings, prefix: format!("{node}-{run}"), seq: 0, file: None })
    }

    fn write(&mut self, record: &impl Serialize) -> std::io::Result<()> {
        let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
        if self.file.is_none() {
            self.seq += 1;
            let path = self.settings.dir.join(format!("decisions-{}-{:06}.jsonl", self.prefix, self.seq));
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            self.file = Some((path, std::io::BufWriter::new(file), 0));
        }
        let Some((path, out, written)) = self.file.as_mut() else { return Ok(()) };
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
        *written += line.len() as u64 + 1;
        if *written >= self.settings.segment_bytes {
            let path = path.clone();
            self.file = None;
            compress(&path)?;
            self.trim()?;
        }
        Ok(())
    }

    /// Removes the oldest compressed segments while all of them exceed `max_bytes`.
    fn trim(&self) -> std::io::Result<()> {
        let mut compressed: Vec<(PathBuf, u64)> = segments(&self.settings.dir)?
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".jsonl.gz"))
            .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.len())))
            .collect();
        let mut total: u64 = compressed.iter().map(|(_, len)| len).sum();
        compressed.sort_by_key(|(p, _)| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        for (path, len) in compressed {
            if total <= self.settings.max_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

/// The segment files of `dir`, oldest name first.
fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("decisions-") && (name.ends_with(".jsonl") || name.ends_with(".jsonl.gz"))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

fn compress(path: &Path) -> std::io::Result<()> {
    let mut gz_name = path.as_os_str().to_owned();
    gz_name.push(".gz");
    let target = PathBuf::from(gz_name);
    let mut input = std::fs::File::open(path)?;
    let output = std::fs::File::create(&target)?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    std::fs::remove_file(path)
}

/// A line of a record file that is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// File and line.
    pub place: String,
    /// Why.
    pub error: String,
}

/// What a directory of decision records holds.
#[derive(Debug, Default)]
pub struct Records {
    /// Every decision written in full, oldest first (by run, then number).
    pub records: Vec<DecisionRecord>,
    /// Decisions written as repeats of an earlier one.
    pub repeats: Vec<RepeatRecord>,
    /// Lines that are not records (a torn last line after a crash, a foreign file).
    pub bad: Vec<BadRecord>,
}

/// Every record under `dir` (plain and compressed segments).
pub fn read_records(dir: &Path) -> std::io::Result<Records> {
    let mut records = Vec::new();
    let mut repeats = Vec::new();
    let mut bad = Vec::new();
    for path in segments(dir)? {
        let file = std::fs::File::open(&path)?;
        let reader: Box<dyn Read> = if path.to_string_lossy().ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        for (n, line) in std::io::BufReader::new(reader).lines().enumerate() {
            let place = format!("{}:{}", path.display(), n + 1);
            match line {
                Ok(line) if line.trim().is_empty() => {}
                Ok(line) => match serde_json::from_str::<DecisionRecord>(&line) {
                    Ok(record) => records.push(record),
                    Err(e) => match serde_json::from_str::<RepeatRecord>(&line) {
                        Ok(repeat) => repeats.push(repeat),
                        Err(_) => bad.push(BadRecord { place, error: e.to_string() }),
                    },
                },
                Err(e) => {
                    bad.push(BadRecord { place, error: e.to_string() });
                    break;
                }
            }
        }
    }
    records.sort_by_key(|r| (r.run, r.id));
    Ok(Records { records, repeats, bad })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use halo_plugin_runtime::{DecidedBy, Decision, PluginPolicies, Runtime, SandboxLimits};
    use halo_policy::{Assignment, Placement, PlacementInput, PlacementReason};

    use super::{DecisionLog, DecisionWorld, RecordSettings, Recorded, read_records};

    /// A decision whose input differs by its overcommit.
    fn decision_of(overcommit: u32) -> (Decision<Placement>, Recorded) {
        let answer =
            Placement { assignments: vec![Assignment { vm: "a".into(), host: "h1".into() }], unplaced: vec![] };
        let input = PlacementInput {
            reason: PlacementReason::Failover,
            vms: vec![],
            hosts: vec![],
            vcpu_overcommit_percent: overcommit,
            settings: vec![],
        };
        let decision = Decision {
            answer: answer.clone(),
            decided_by: DecidedBy::BuiltIn { failure: None },
            settings_problems: vec![],
            elapsed: std::time::Duration::from_micros(42),
        };
        (decision, Recorded::Placement { input, answer })
    }

    #[test]
    fn records_are_rotated_compressed_bounded_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let runtime = Arc::new(Runtime::new(SandboxLimits::default(), None).expect("runtime"));
        let shadows = Arc::new(PluginPolicies::builtin(&runtime));
        let settings = RecordSettings { dir: dir.path().join("d"), segment_bytes: 2_000, max_bytes: 3_000 };
        let log = DecisionLog::start("h1", 7, Some(settings.clone()), shadows).expect("start");
        let mut ids = Vec::new();
        for i in 0..200 {
            let (d, r) = decision_of(i);
            ids.push(log.record(&d, r));
        }
        assert_eq!(log.take_step(), ids, "the loop learns which decisions it just made");
        assert!(log.take_step().is_empty());
        // The worker writes on its own thread: wait for it (bounded).
        for _ in 0..200 {
            if log.stats.recorded.load(std::sync::atomic::Ordering::Relaxed) == 200 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(log.stats.recorded.load(std::sync::atomic::Ordering::Relaxed), 200);
        let names: Vec<String> = std::fs::read_dir(&settings.dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.ends_with(".jsonl.gz")), "full segments are compressed: {names:?}");
        let compressed: u64 = std::fs::read_dir(&settings.dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".gz"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(compressed <= settings.max_bytes, "{compressed} bytes compressed, cap {}", settings.max_bytes);
        let read = read_records(&settings.dir).expect("read");
        let (records, bad) = (read.records, read.bad);
        assert!(bad.is_empty(), "{bad:?}");
        assert!(!records.is_empty() && records.len() < 200, "the oldest were removed: {} left", records.len());
        let last = records.last().expect("a record");
        assert_eq!((last.id, last.run, last.node.as_str(), last.decided_by.as_str()), (200, 7, "h1", "built-in"));
        assert_eq!(last.decision.world(), DecisionWorld::Placement);
        assert_eq!(last.decision, decision_of(199).1);
        // A torn line (a crash mid-write) is reported, the rest still read.
        std::fs::write(settings.dir.join("decisions-h2-9-000001.jsonl"), b"{\"id\": 1, \"wor").expect("write");
        let again = read_records(&settings.dir).expect("read");
        assert_eq!((again.records.len(), again.bad.len()), (records.len(), 1));
    }

    #[test]
    fn an_unchanged_decision_is_written_as_a_repeat_of_the_first() {
        let dir = tempfile::tempdir().expect("dir");
        let runtime = Arc::new(Runtime::new(SandboxLimits::default(), None).expect("runtime"));
        let shadows = Arc::new(PluginPolicies::builtin(&runtime));
        let settings = RecordSettings { dir: dir.path().to_path_buf(), segment_bytes: 1 << 20, max_bytes: 1 << 22 };
        let log = DecisionLog::start("h1", 7, Some(settings), shadows).expect("start");
        for overcommit in [400, 400, 400, 300, 400] {
            let (d, r) = decision_of(overcommit);
            log.record(&d, r);
        }
        for _ in 0..200 {
            if log.stats.recorded.load(std::sync::atomic::Ordering::Relaxed) == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let read = read_records(dir.path()).expect("read");
        let full: Vec<u64> = read.records.iter().map(|r| r.id).collect();
        let repeats: Vec<(u64, u64)> = read.repeats.iter().map(|r| (r.id, r.same_as)).collect();
        // The fifth is 400 again after a 300: a change, written in full.
        assert_eq!(full, vec![1, 4, 5]);
        assert_eq!(repeats, vec![(2, 1), (3, 1)]);
        assert_eq!(log.stats.repeats.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
