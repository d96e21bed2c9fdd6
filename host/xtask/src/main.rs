//! `cargo xtask <task>`: the project's tasks, so a newcomer needs exactly two commands
//! (`cargo xtask demo`, `cargo xtask test`) on a fresh Debian machine with rustup.
//!
//! Each task installs what it needs first (the `wasm32-wasip2` target) and builds the
//! plugins it uses; it stops at the first failing step with that step's name.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  demo     build the plugins and halo, then run `halo demo` (a simulated cluster on the default plugins)
  test     build the plugins, then run every test of the workspace
  bench    build the plugins, then run the benchmarks (figures for docs/performance.md)
  plugins  build the default, example and hostile plugins (wasm32-wasip2; Python and JavaScript
           ones with componentize-py and componentize-js, installed into target/tools)
  setup    install what the build and the lab tests need (apt packages as root, the wasm target)";

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "demo" => setup().and_then(|()| plugins()).and_then(|()| demo()),
        "test" => setup().and_then(|()| plugins()).and_then(|()| test()),
        "setup" => setup(),
        "bench" => plugins().and_then(|()| bench()),
        "plugins" => plugins(),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("unknown task `{other}`\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        eprintln!("xtask {task}: {error:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(what: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let status = command.status().with_context(|| format!("cannot start: {what}"))?;
    if !status.success() {
        bail!("failed: {what} ({status})");
    }
    Ok(())
}

/// Adds the wasm target with rustup when it is missing.
fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 target (install Rust with rustup)")?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == WASM_TARGET) {
        run("rustup target add wasm32-wasip2", Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    Ok(())
}

/// Debian packages: the libvirt driver builds against libvirt-dev; the lab tests run real
/// libvirtd + QEMU, nftables, nfs-ganesha with rpcbind, tini as each lab host's reaper, and
/// Chromium to test the status page headless, sanlock with libvirt's sanlock lock manager for
/// the VM-lease lab test, the fence agents (`fence_redfish` against the lab BMC, which needs
/// `openssl` for its certificate and Debian's `python3`, a dependency of the fence agents),
/// QEMU's NFS block driver (`qemu-block-extra`) for VM disks on the lab's NFS server.
/// (command or file that shows the package is there, package)
const PACKAGES: [(&str, &str); 24] = [
    ("/usr/bin/pkg-config", "pkg-config"),
    ("/usr/include/libvirt/libvirt.h", "libvirt-dev"),
    ("/usr/sbin/libvirtd", "libvirt-daemon-system"),
    ("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so", "libvirt-daemon-driver-qemu"),
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/bin/virsh", "libvirt-clients"),
    ("/usr/bin/qemu-img", "qemu-utils"),
    ("/usr/bin/cpio", "cpio"),
    ("/usr/bin/tini", "tini"),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/sbin/sysctl", "procps"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/bin/ganesha.nfsd", "nfs-ganesha"),
    ("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so", "nfs-ganesha-vfs"),
    ("/usr/sbin/rpcbind", "rpcbind"),
    ("/usr/bin/chromium", "chromium"),
    ("/usr/sbin/sanlock", "sanlock"),
    ("/usr/lib/libvirt/libvirt_sanlock_helper", "libvirt-sanlock"),
    ("/usr/sbin/fence_redfish", "fence-agents"),
    ("/usr/bin/openssl", "openssl"),
    ("/usr/bin/etcd", "etcd-server"),
    ("/usr/bin/etcdctl", "etcd-client"),
    ("/usr/bin/protoc", "protobuf-compiler"),
    ("/usr/lib/x86_64-linux-gnu/qemu/block-nfs.so", "qemu-block-extra"),
];

/// Installs the missing Debian packages (as root; otherwise says what to install) and the
/// wasm target.
fn setup() -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let missing: Vec<&str> =
        PACKAGES.iter().filter(|(path, _)| !Path::new(path).exists()).map(|(_, package)| *package).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        bail!(
            "missing Debian packages: {}; install them as root (apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    run("apt-get update", Command::new("apt-get").args(["update", "-qq"]))?;
    run(
        &format!("apt-get install {}", missing.join(" ")),
        Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // Installing one package can remove another (Debian's qemu-system-x86 replaces a newer
    // qemu-utils from backports): look again.
    let still: Vec<&str> =
        PACKAGES.iter().filter(|(path, _)| !Path::new(path).exists()).map(|(_, package)| *package).collect();
    if still.is_empty() {
        return Ok(());
    }
    run(
        &format!("apt-get install {}", still.join(" ")),
        Command::new("apt-get").args(["install", "-y", "-qq"]).args(&still).env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn plugins() -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let wasm = ["build", "--profile", "plugin", "--target", WASM_TARGET];
    run(
        "build the default plugins and the example plugin",
        cargo().args(wasm).args([
            "-p",
            "halo-plugin-balancing",
            "-p",
            "halo-plugin-isolation",
            "-p",
            "halo-plugin-placement",
            "-p",
            "halo-plugin-restart-order",
            "-p",
            "first-fit-placement",
            "-p",
            "memory-leveler-balancing",
        ]),
    )?;
    run("build the hostile test plugins", cargo().args(wasm).args(["-p", "halo-hostile-plugins", "--examples"]))?;
    language_plugins()
}

/// The Python and JavaScript toolchains, pinned, installed from PyPI and npm into
/// `target/tools` (nothing global): componentize-py in a virtual environment, componentize-js
/// with its engine (StarlingMonkey) under `node_modules`.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

/// WASI features componentize-js leaves out, so the component imports nothing of WASI (halo
/// grants none): no stdio, randomness, clocks or HTTP. `Date.now()` then reads the time the
/// component was built, `Math.random()` a fixed sequence.
const JS_WITHOUT: [&str; 5] = ["stdio", "random", "clocks", "http", "fetch-event"];

/// Python and JavaScript plugins: (language, source directory, module or file, output name).
const LANGUAGE_PLUGINS: [(&str, &str, &str, &str); 4] = [
    ("python", "examples/plugins/first-fit-py", "app", "first_fit_py"),
    ("javascript", "examples/plugins/first-fit-js", "first-fit.js", "first_fit_js"),
    ("python", "tests/hostile-plugins/py", "hostile", "examples/hostile_py"),
    ("javascript", "tests/hostile-plugins/js", "hostile.js", "examples/hostile_js"),
];

/// Installs the Python and JavaScript toolchains when missing and builds the plugins written
/// in those languages whose sources changed since their last build. Each is a
/// `placement-engine` component built against `wit/0.1.3`.
fn language_plugins() -> anyhow::Result<()> {
    let root = root();
    let tools = root.join("target/tools");
    let py = tools.join("py");
    let componentize_py = py.join("bin/componentize-py");
    if !componentize_py.exists() {
        run(
            "python3 -m venv target/tools/py (Python 3 with venv is needed for Python plugins)",
            Command::new("python3").arg("-m").arg("venv").arg(&py),
        )?;
        run(
            &format!("pip install {COMPONENTIZE_PY}"),
            Command::new(py.join("bin/pip")).args(["install", "--quiet", COMPONENTIZE_PY]),
        )?;
    }
    let js = tools.join("js");
    let componentize_js = js.join("node_modules/.bin/componentize-js");
    if !componentize_js.exists() {
        run(
            &format!("npm install {COMPONENTIZE_JS} (Node.js 20 and npm are needed for JavaScript plugins)"),
            Command::new("npm")
                .args(["install", "--no-save", "--no-fund", "--no-audit", "--loglevel=error", "--prefix"])
                .arg(&js)
                .arg(COMPONENTIZE_JS),
        )?;
    }
    let wit = root.join("wit/0.1.3");
    let out_dir = root.join("target").join(WASM_TARGET).join("plugin");
    for (language, dir, entry, name) in LANGUAGE_PLUGINS {
        let source = root.join(dir);
        let output = out_dir.join(format!("{name}.wasm"));
        if is_newer_than_sources(&output, &[&source, &wit]) {
            continue;
        }
        if let Some(parent) = output.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let what = format!("build the {language} plugin {dir}");
        match language {
            "python" => run(
                &what,
                Command::new(&componentize_py)
                    .arg("-d")
                    .arg(&wit)
                    .args(["-w", "placement-engine", "componentize", entry, "--stub-wasi", "-p"])
                    .arg(&source)
                    .arg("-o")
                    .arg(&output)
                    .current_dir(&root),
            )?,
            _ => run(
                &what,
                Command::new(&componentize_js)
                    .arg(source.join(entry))
                    .arg("--wit")
                    .arg(&wit)
                    .args(["--world-name", "placement-engine", "-d"])
                    .args(JS_WITHOUT)
                    .arg("-o")
                    .arg(&output)
                    .current_dir(&root),
            )?,
        }
    }
    Ok(())
}

/// Whether `output` exists and is newer than every file under `sources`.
fn is_newer_than_sources(output: &Path, sources: &[&Path]) -> bool {
    fn newest(path: &Path) -> Option<std::time::SystemTime> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        std::fs::read_dir(path).ok()?.flatten().filter_map(|entry| newest(&entry.path())).max()
    }
    let Some(built) = std::fs::metadata(output).and_then(|m| m.modified()).ok() else {
        return false;
    };
    sources.iter().all(|source| newest(source).is_none_or(|changed| changed < built))
}

/// Crates built only for wasm32-wasip2: their cdylibs do not link natively (export names
/// such as `halo:policy/placement@0.1.0#place`), so native test runs leave them out. Clippy
/// still checks them (it does not link).
const WASM_ONLY: [&str; 7] = [
    "halo-plugin-balancing",
    "halo-plugin-isolation",
    "halo-plugin-placement",
    "halo-plugin-restart-order",
    "halo-hostile-plugins",
    "first-fit-placement",
    "memory-leveler-balancing",
];

fn test() -> anyhow::Result<()> {
    let mut command = cargo();
    command.args(["test", "--release", "--workspace"]);
    for krate in WASM_ONLY {
        command.args(["--exclude", krate]);
    }
    run("cargo test (workspace without the wasm-only crates, release)", &mut command)
}

fn bench() -> anyhow::Result<()> {
    run("plugin runtime benchmark", cargo().args(["bench", "-p", "halo-plugin-runtime", "--bench", "plugins"]))?;
    run("core and simulator benchmark", cargo().args(["bench", "-p", "halo-sim", "--bench", "core"]))?;
    run(
        "liveness benchmark: heartbeat intervals while plugin decisions use their whole budget and 20 MB components are hot-swapped",
        cargo().args(["bench", "-p", "halo-agent", "--bench", "liveness"]),
    )?;
    run(
        "lab benchmark: failover with the default timeouts, live migration vs virsh (root, KVM)",
        cargo().args([
            "test",
            "--release",
            "-p",
            "halo-cli",
            "--test",
            "agents",
            "bench_",
            "--",
            "--ignored",
            "--nocapture",
        ]),
    )
}

fn demo() -> anyhow::Result<()> {
    run("build halo", cargo().args(["build", "--release", "-p", "halo-cli"]))?;
    let root = root();
    let halo = root.join("target/release/halo");
    let plugins = root.join("target").join(WASM_TARGET).join("plugin");
    run("halo demo", Command::new(&halo).arg("demo").arg("--plugins").arg(&plugins))?;
    println!(
        "\nNext: `{} sim --seed 42` replays a random fault schedule; `{} plugin run {} --input examples/inputs/placement.json` runs one plugin decision; docs/plugins.md shows how to write your own.",
        rel(&halo, &root),
        rel(&halo, &root),
        rel(&plugins.join("halo_plugin_placement.wasm"), &root)
    );
    Ok(())
}

fn rel(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}
