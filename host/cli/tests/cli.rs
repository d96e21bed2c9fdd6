//! The `halo` binary end to end: `demo` with the default plugins (built by
//! `cargo xtask plugins`, which `cargo xtask test` runs first), `sim`, and clear errors.

#![allow(missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn halo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halo")).args(args).output().expect("halo runs")
}

fn plugin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2/plugin");
    assert!(
        dir.join("halo_plugin_placement.wasm").is_file(),
        "{} has no default plugins: build them first with `cargo xtask plugins`",
        dir.display()
    );
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_demo_runs_the_scripted_cluster_on_the_default_plugins() {
    let dir = plugin_dir();
    let out = halo(&["demo", "--json", "--plugins", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let outcome = &report["outcome"];
    assert_eq!(outcome["violations"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        outcome["liveness-violations"].as_array().or(outcome["liveness_violations"].as_array()).map(Vec::len),
        Some(0)
    );
    let timeline = outcome["timeline"].as_array().expect("timeline");
    let count = |kind: &str| timeline.iter().filter(|e| e["kind"] == kind).count();
    // Act 1: host-2's dns-1, web-1 and batch; act 2: host-3's dns-2 and db-replica; act 3: none.
    assert_eq!(count("vm-restarted"), 5, "{timeline:#?}");
    assert!(count("isolated") >= 1 && count("host-failed") >= 1 && count("host-partitioned") >= 2);
    // `propose` mode: after act 1 host-1 carries host-2's VMs, and the balancing plugin says so.
    assert!(count("balance-proposed") >= 1, "{timeline:#?}");
    let calls = report["plugin_calls"].as_array().expect("plugin calls");
    assert_eq!(calls.len(), 4, "isolation, placement, restart order, balancing: {calls:?}");
    for call in calls {
        assert!(call[1]["calls"].as_u64() > Some(0), "{call}");
        assert_eq!(call[1]["fallbacks"].as_u64(), Some(0), "{call}");
    }
    let plans = outcome["plans"].as_array().expect("plans");
    assert_eq!(plans.len(), 3);
    assert!(plans.iter().all(|p| p["plan"]["tolerates"].as_u64().is_some()), "{plans:#?}");
}

#[test]
fn the_demo_prints_a_timeline_people_read() {
    let out = halo(&["demo", "--builtin"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in ["== act 1: host-2 crashes", "restart wave: dns-1", "== act 3: partition", "every invariant held"] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
}

#[test]
fn sim_runs_one_schedule_and_many() {
    let out = halo(&["sim", "--seed", "3", "--hosts", "4", "--fault", "crash:host-2@10s/60s", "--duration", "60s"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("host-2: failed") && stdout.contains("vm-restarted"), "{stdout}");
    let out = halo(&["sim", "--seeds", "0..5", "--json"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(summary["schedules"], 5);
}

#[test]
fn bad_arguments_get_a_clear_error() {
    for (args, says) in [
        (vec!["sim", "--fault", "crash:host-9@10s"], "no host `host-9`"),
        (vec!["sim", "--fault", "flood:A@1s"], "unknown kind `flood`"),
        (vec!["sim", "--seeds", "5..2"], "the range is empty"),
        (vec!["sim", "--faults", "crash,meteor"], "unknown family `meteor`"),
        (vec!["sim", "--duration", "soon"], "not a positive time"),
        (vec!["demo", "--plugins", "/nonexistent"], "is missing"),
    ] {
        let out = halo(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: expected `{says}` in: {stderr}");
    }
}

/// The operator commands without a reachable agent say so, and bad arguments are refused.
#[test]
fn operator_commands_say_what_is_missing() {
    let dir = std::env::temp_dir().join(format!("halo-cli-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").expect("token");
    let token = token.display().to_string();
    for (args, says) in [
        (vec!["status", "--config", "/nonexistent/halo.toml"], "give --api and --token-file"),
        // Port 9 on loopback: nothing listens (discard is not served here).
        (vec!["status", "--api", "127.0.0.1:9", "--token-file", &token], "cannot reach 127.0.0.1:9"),
        (vec!["vm", "list", "--api", "127.0.0.1:9", "--token-file", "/nonexistent"], "token file /nonexistent"),
        (vec!["host", "maintenance", "sideways", "host-1"], "invalid value 'sideways'"),
        (vec!["ha", "maybe"], "invalid value 'maybe'"),
    ] {
        let out = halo(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: expected `{says}` in: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// examples/halo-agent.service is a unit systemd accepts (with the binary where it says).
#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("SKIP the_systemd_unit_verifies: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let unit =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/halo-agent.service"))
            .expect("examples/halo-agent.service");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="), "notify and watchdog");
    let dir = std::env::temp_dir().join(format!("halo-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("halo-agent.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/halo ", &format!("{} ", env!("CARGO_BIN_EXE_halo"))))
        .expect("unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn halo_lab_comes_up_reports_takes_faults_and_goes_down() {
    if !halo_lab::for_test("halo_lab_comes_up_reports_takes_faults_and_goes_down") {
        return;
    }
    let name = format!("c{}", std::process::id() % 100_000);
    let out = halo(&["lab", "up", "--name", &name, "--hosts", "2", "--no-nfs", "--no-libvirt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = halo(&["lab", "status", "--name", &name, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["hosts"].as_array().map(Vec::len), Some(2));
    assert_eq!(status["hosts"][1]["addresses"][0][1], "10.213.37.3");
    for (args, ok) in [
        (vec!["lab", "fault", "--name", &name, "link", "host-2", "A"], true),
        (vec!["lab", "heal", "--name", &name, "link", "2", "all"], true),
        (vec!["lab", "fault", "--name", &name, "partition", "1/2"], true),
        (vec!["lab", "heal", "--name", &name, "partition"], true),
        (vec!["lab", "fault", "--name", &name, "link", "host-9", "A"], false),
        (vec!["lab", "fault", "--name", &name, "link", "1", "Z"], false),
        (vec!["lab", "fault", "--name", &name, "partition", "1,2"], false),
        (vec!["lab", "fault", "--name", &name, "loss", "A", "0"], false),
    ] {
        let out = halo(&args);
        assert_eq!(out.status.success(), ok, "{args:?}: {}", text(&out.stderr));
    }
    let out = halo(&["lab", "exec", "--name", &name, "2", "--", "ip", "-br", "addr"]);
    assert!(text(&out.stdout).contains("10.213.37.67"), "{}", text(&out.stdout));
    let out = halo(&["lab", "down", "--name", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = halo(&["lab", "status", "--name", &name]);
    assert!(!out.status.success() && text(&out.stderr).contains("no lab named"), "{}", text(&out.stderr));
}

#[test]
fn halo_lab_up_with_agents_protects_vms_and_runs_an_agent_per_host() {
    if !halo_lab::for_test("halo_lab_up_with_agents_protects_vms_and_runs_an_agent_per_host") {
        return;
    }
    let name = format!("w{}", std::process::id() % 100_000);
    let out = halo(&["lab", "up", "--name", &name, "--hosts", "2", "--agents", "--vms", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let log = |h: usize| {
        std::fs::read_to_string(std::env::temp_dir().join(format!("halo-lab-{name}/agent-{h}.log"))).unwrap_or_default()
    };
    while !(log(1).contains("halo agent running")
        && log(2).contains("halo agent running")
        && (log(1) + &log(2)).contains("is master"))
    {
        assert!(std::time::Instant::now() < deadline, "agents did not come up:\n{}\n---\n{}", log(1), log(2));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = halo(&["lab", "status", "--name", &name, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let vms: Vec<String> = status["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .flat_map(|h| h["vms"].as_array().cloned().unwrap_or_default())
        .map(|v| format!("{}:{}", v[0].as_str().unwrap_or(""), v[1].as_str().unwrap_or("")))
        .collect();
    assert_eq!(vms, vec!["vm-1:running".to_string(), "vm-2:running".to_string()], "{status}");
    assert!(!status.to_string().contains("\"Ok\""), "no Rust Result in the JSON: {status}");
    // Each host has its lab watchdog, fed by its agent: it has not fired.
    assert!(text(&out.stderr).is_empty() || !text(&out.stderr).contains("resetting"), "{}", text(&out.stderr));
    for h in 1..=2 {
        let device = std::env::temp_dir().join(format!("halo-lab-{name}/watchdog-{h}"));
        assert!(device.exists(), "lab watchdog {h}");
        let log = std::fs::read_to_string(std::env::temp_dir().join(format!("halo-lab-{name}/watchdog-{h}.log")))
            .unwrap_or_default();
        assert!(!log.contains("resetting"), "host-{h} was reset: {log}");
    }
    assert!(log(1).contains("halo agent running"), "{}", log(1));
    let out = halo(&["lab", "down", "--name", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead as _;
    // 3,000 VMs: an answer far larger than a pipe's buffer; the reader stops after one line,
    // as `halo … | head -1` does.
    let vms: Vec<serde_json::Value> = (0..3000)
        .map(|i| serde_json::json!({ "name": format!("vm-{i:05}"), "memory-mib": 512, "vcpus": 1, "priority": "restart" }))
        .collect();
    let hosts: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({ "name": format!("host-{i}"), "total-memory-mib": 1_048_576, "free-memory-mib": 1_048_576, "total-vcpus": 512 }))
        .collect();
    let input = serde_json::json!({ "reason": "failover", "vcpu-overcommit-percent": 400, "vms": vms, "hosts": hosts });
    let path = std::env::temp_dir().join(format!("halo-cli-pipe-{}.json", std::process::id()));
    std::fs::write(&path, input.to_string()).expect("write the input");
    let plugin = plugin_dir().join("halo_plugin_placement.wasm");
    let mut child = Command::new(env!("CARGO_BIN_EXE_halo"))
        .args(["plugin", "run", plugin.to_str().expect("utf-8 path"), "--builtin", "--input"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("halo runs");
    let mut first = String::new();
    {
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout).read_line(&mut first).expect("first line");
    }
    let out = child.wait_with_output().expect("halo ends");
    let _ = std::fs::remove_file(&path);
    let stderr = text(&out.stderr);
    assert!(!first.is_empty(), "no output at all; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "halo panicked on the closed pipe: {stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

/// `examples/inputs/NAME.json`.
fn example_input(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/inputs").join(format!("{name}.json"))
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn plugin_check_run_and_bench_on_the_default_plugins() {
    let dir = plugin_dir();
    for (file, world, input) in [
        ("halo_plugin_placement.wasm", "columnar-placement-engine", "placement"),
        ("halo_plugin_isolation.wasm", "isolation-policy", "isolation"),
        ("halo_plugin_restart_order.wasm", "restart-policy", "restart"),
        ("halo_plugin_balancing.wasm", "balancing-policy", "balancing"),
    ] {
        let plugin = dir.join(file);
        let input = example_input(input);
        // check: what it is, loaded as the agent loads it.
        let out = halo(&["plugin", "check", path(&plugin)]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "check {file}: {}", text(&out.stderr));
        for line in [format!("world:      halo:policy/{world}"), "size:".into(), "load time:".into(), "sha256:".into()]
        {
            assert!(stdout.contains(&line), "check {file}: no `{line}` in:\n{stdout}");
        }
        assert!(stdout.contains("(this agent speaks 0.1.4)"), "{stdout}");
        // run: the validated answer as JSON, the same as the built-in policy's.
        let answer = halo(&["plugin", "run", path(&plugin), "--input", path(&input)]);
        assert!(answer.status.success(), "run {file}: {}", text(&answer.stderr));
        let builtin = halo(&["plugin", "run", path(&plugin), "--builtin", "--input", path(&input)]);
        assert!(builtin.status.success(), "run --builtin {file}: {}", text(&builtin.stderr));
        let parse = |o: &Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("the answer is JSON");
        assert_eq!(parse(&answer), parse(&builtin), "{file}: the plugin and the built-in policy agree");
        // bench: calls, calls per second and latency percentiles.
        let out = halo(&["plugin", "bench", path(&plugin), "--input", path(&input), "--iterations", "200"]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "bench {file}: {}", text(&out.stderr));
        assert!(stdout.contains(&format!("({world})")), "{stdout}");
        assert!(stdout.contains("calls:         200 in"), "{stdout}");
        let per_second = stdout
            .lines()
            .find_map(|l| l.strip_prefix("calls/s:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no calls/s figure in:\n{stdout}"));
        assert!(per_second > 0.0, "{stdout}");
        assert!(stdout.contains("p50") && stdout.contains("p99"), "{stdout}");
    }
    // A plugin that logs at every step: its host calls, their time and their charge are shown,
    // and the charge is part of the budget used.
    let flood = plugin_dir().join("examples/log_flood.wasm");
    let placement = example_input("placement");
    let out = halo(&["plugin", "bench", path(&flood), "--input", path(&placement), "--iterations", "5"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "bench log_flood: {}", text(&out.stderr));
    let line = |prefix: &str| {
        stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in:\n{stdout}"))
    };
    assert!(line("host calls:").contains("20000 per call (log; 19936 over the line allowance), host time"), "{stdout}");
    let charged: u64 = line("host calls:")
        .split("charged ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no charge in:\n{stdout}"));
    let used: u64 = line("budget used:")
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fuel used in:\n{stdout}"));
    assert!(charged > 0 && used > charged, "the host calls' charge is counted in the budget: {stdout}");
    // The placement example: web-2 cannot join web-1's group on the one host left for it, and
    // no host carries the GPU job's label; each says why.
    let answer = halo(&[
        "plugin",
        "run",
        path(&dir.join("halo_plugin_placement.wasm")),
        "--input",
        path(&example_input("placement")),
    ]);
    let answer: serde_json::Value = serde_json::from_slice(&answer.stdout).expect("JSON");
    assert_eq!(answer["assignments"].as_array().map(Vec::len), Some(2), "{answer}");
    assert_eq!((&answer["unplaced"][0]["vm"], &answer["unplaced"][1]["vm"]), (&"web-2".into(), &"gpu-job".into()));
    let reason = answer["unplaced"][1]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("1 host in maintenance, 2 hosts missing labels [gpu]"), "{reason}");
}

#[test]
fn plugin_commands_fail_with_one_clear_line_and_a_non_zero_exit() {
    let hostile = |name: &str| plugin_dir().join("examples").join(format!("{name}.wasm"));
    let placement = example_input("placement");
    let bad_input = std::env::temp_dir().join(format!("halo-cli-bad-input-{}.json", std::process::id()));
    std::fs::write(&bad_input, r#"{ "reason": "failover", "vms": 5, "hosts": [] }"#).expect("write");
    let cases: Vec<(Vec<String>, Option<i32>, &[&str])> = vec![
        // Not a component at all.
        (vec!["check".into(), path(&placement).into()], Some(1), &["not a valid WebAssembly component"]),
        // Built against a contract this agent does not speak.
        (vec!["check".into(), path(&hostile("contract_v0_2")).into()], Some(1), &["this agent speaks 0.1.4"]),
        // An answer that names a host not in the input: exit 3, the reason and the fallback.
        (
            vec!["run".into(), path(&hostile("unknown_host")).into(), "--input".into(), path(&placement).into()],
            Some(3),
            &["invalid-answer — puts VM `sql-1` on unknown host `no-such-host`"],
        ),
        // A plugin that never returns is stopped by its CPU budget.
        (
            vec!["run".into(), path(&hostile("infinite_loop")).into(), "--input".into(), path(&placement).into()],
            Some(3),
            // Which limit stops it first depends on how busy the machine is: the fuel budget, or
            // the wall-clock ceiling a preempted call reaches first. Both name the budget.
            &["timeout — ", "50 ms of fuel"],
        ),
        // Input that is not the world's JSON.
        (
            vec![
                "run".into(),
                path(&plugin_dir().join("halo_plugin_placement.wasm")).into(),
                "--input".into(),
                path(&bad_input).into(),
            ],
            Some(1),
            &["is not a valid placement-engine input"],
        ),
        // A failing plugin is reported, not benchmarked.
        (
            vec!["bench".into(), path(&hostile("unknown_host")).into(), "--input".into(), path(&placement).into()],
            Some(1),
            &["unknown host `no-such-host`"],
        ),
    ];
    for (args, code, says) in cases {
        let mut full = vec!["plugin"];
        full.extend(args.iter().map(String::as_str));
        let out = halo(&full);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), code, "{args:?}: {stderr}");
        for says in says {
            assert!(stderr.contains(says), "{args:?}: expected `{says}` in: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_file(&bad_input);
}

/// Issue 15: code that is pathological for the compiler is refused, each time with one line
/// naming the figure and the limit, and never costs the process that asked more than the
/// limits: past a structural limit before any compile; slow or memory-hungry code in the
/// compile worker (a child process), stopped at its deadline or its memory.
#[test]
fn compile_bombs_are_refused_within_their_limits() {
    let dir = std::env::temp_dir().join(format!("halo-cli-bombs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let salt = std::process::id() as i32;
    let cases: Vec<(&str, Vec<u8>, Vec<&str>, &str)> = vec![
        (
            "nested-50000.wasm",
            halo_lab::compile_bomb::nested_blocks(50_000),
            vec![],
            "refused: its deepest nesting of blocks is 50000, more than the 1000 allowed (refused before compiling)",
        ),
        (
            "slow.wasm",
            // 200 functions of loops 900 deep: within every structural limit, ≈ 30 s to compile.
            halo_lab::compile_bomb::nested_loops(200, 900, salt),
            vec!["--compile-timeout-s", "2"],
            "compile refused: took longer than its compile deadline of 2 s; it was stopped",
        ),
        (
            "calls.wasm",
            // 95,000 call sites: within the limits, ≈ 300 MB to compile.
            halo_lab::compile_bomb::many_calls(95_000),
            vec!["--compile-memory-mib", "256"],
            "compile memory of 256 MiB",
        ),
    ];
    for (name, bytes, options, says) in cases {
        let file = dir.join(name);
        std::fs::write(&file, bytes).expect("write");
        let mut args = vec!["plugin", "check", path(&file)];
        args.extend(options);
        let started = std::time::Instant::now();
        let out = halo(&args);
        let took = started.elapsed();
        let stderr = text(&out.stderr);
        println!("figure: {name} refused after {took:?}: {}", stderr.trim());
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: expected `{says}` in: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: one line: {stderr}");
        assert!(took < std::time::Duration::from_secs(20), "{name}: {took:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: a placement plugin that calls `log` for ever used to keep `halo demo --plugins`
/// from ever finishing. Every host call is charged to the budget now: each decision ends at its
/// budget, the built-in policy places, the demo finishes and says so.
#[test]
fn the_demo_finishes_with_a_placement_plugin_that_logs_for_ever() {
    let dir = std::env::temp_dir().join(format!("halo-cli-demo-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for file in ["halo_plugin_isolation.wasm", "halo_plugin_restart_order.wasm", "halo_plugin_balancing.wasm"] {
        std::fs::copy(plugin_dir().join(file), dir.join(file)).expect("copy");
    }
    std::fs::copy(plugin_dir().join("examples/log_tiny_forever.wasm"), dir.join("halo_plugin_placement.wasm"))
        .expect("copy");
    let started = std::time::Instant::now();
    let out = halo(&["demo", "--plugins", path(&dir)]);
    let took = started.elapsed();
    let stdout = text(&out.stdout);
    println!("figure: the demo with an endless logging placement plugin took {took:?}");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let decisions = stdout.lines().find(|l| l.starts_with("plugin decisions:")).expect("the decisions line");
    let placement = decisions.split("placement ").nth(1).and_then(|rest| rest.split(';').next()).unwrap_or_default();
    assert!(placement.contains(" 0 answered by the plugin"), "the built-in policy placed every time: {decisions}");
    assert!(stdout.contains("every invariant held"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
