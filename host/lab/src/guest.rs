//! A small Linux guest with the QEMU guest agent, for the tests that need a guest that answers
//! (guest-agent ping, a shutdown started inside the guest): Debian's kernel, busybox and
//! qemu-guest-agent, fetched with `apt-get download` (Debian's registry), unpacked and packed
//! into an initramfs once per machine under `/var/cache/halo-lab/guest`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LabError;

const CACHE: &str = "/var/cache/halo-lab/guest";
/// In load order (virtio needs virtio_ring's symbols).
const MODULES: [&str; 7] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
];

/// What the guest does with a disk (`/dev/vda`), when it has one: a counter in its first
/// sector, read at boot and written back one higher every 200 ms with `fsync` (each value is
/// on the disk before it is printed), each value printed on the serial console as
/// `halo-counter N`. A stall of the disk stalls the counter; a restart elsewhere continues
/// from the last value written: a test reads the console to see that nothing was lost.
const COUNTER: &str = "if [ -b /dev/vda ]; then\n  n=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -dc 0-9)\n  n=${n:-0}\n  echo \"halo-counter-boot $n\" > /dev/ttyS0\n  while :; do\n    n=$((n+1))\n    printf '%-511s\\n' \"$n\" | dd of=/dev/vda bs=512 count=1 conv=notrunc,fsync 2>/dev/null && echo \"halo-counter $n\" > /dev/ttyS0\n    sleep 0.2\n  done &\nfi\n";

fn fail(what: &str, e: impl std::fmt::Display) -> LabError {
    LabError::Unavailable(format!("the Linux test guest: {what}: {e}"))
}

fn sh(script: &str, dir: &Path) -> Result<String, LabError> {
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().map_err(|e| fail(script, e))?;
    if !out.status.success() {
        return Err(fail(script, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The guest's kernel and initramfs (built on first use; later calls reuse them).
pub fn linux_guest() -> Result<(PathBuf, PathBuf), LabError> {
    let cache = PathBuf::from(CACHE);
    // The file names carry the recipe's version: a changed recipe builds anew.
    let (kernel, initrd) = (cache.join("vmlinuz"), cache.join("initrd-v3.gz"));
    if kernel.is_file() && initrd.is_file() {
        return Ok((kernel, initrd));
    }
    std::fs::create_dir_all(&cache).map_err(|e| fail("cache directory", e))?;
    let image = sh(
        // Package lists may be missing on a fresh machine: fetch them once if so.
        "apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq >/dev/null 2>&1; \
         apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \\(linux-image-[^ ]*\\)/\\1/p' | head -1",
        &cache,
    )?;
    let image = image.trim();
    if image.is_empty() {
        return Err(fail("no linux-image package found", "run apt-get update"));
    }
    sh(
        &format!(
            "rm -rf debs root init && mkdir -p debs && cd debs && apt-get download -q {image} busybox-static qemu-guest-agent 2>/dev/null && for d in *.deb; do dpkg-deb -x \"$d\" ../root; done"
        ),
        &cache,
    )?;
    let root = cache.join("root");
    let version = image.trim_start_matches("linux-image-");
    sh(&format!("cp root/boot/vmlinuz-{version} vmlinuz"), &cache)?;
    // The initramfs: busybox, qemu-ga with its libraries, the virtio console modules, /init.
    let init = cache.join("init");
    sh(
        "mkdir -p init/bin init/sbin init/usr/sbin init/lib/modules init/lib64 init/lib/x86_64-linux-gnu init/proc init/sys init/dev init/tmp init/run init/var/run",
        &cache,
    )?;
    sh("cp root/bin/busybox init/bin/busybox && cp root/usr/sbin/qemu-ga init/usr/sbin/qemu-ga", &cache)?;
    sh(
        "for lib in $(ldd root/usr/sbin/qemu-ga | sed -n 's/.*=> \\(\\/[^ ]*\\).*/\\1/p'); do cp -L \"$lib\" init/lib/x86_64-linux-gnu/; done && cp -L /lib64/ld-linux-x86-64.so.2 init/lib64/",
        &cache,
    )?;
    for module in MODULES {
        let found = sh(&format!("find root/lib/modules -name '{module}.ko*' | head -1"), &cache)?;
        let found = found.trim();
        if found.is_empty() {
            return Err(fail("kernel module missing", module));
        }
        // Compressed modules are unpacked (busybox insmod takes plain .ko).
        match found.rsplit('.').next() {
            Some("xz") => sh(&format!("xz -dc {found} > init/lib/modules/{module}.ko"), &cache)?,
            Some("zst") => sh(&format!("zstd -dcq {found} > init/lib/modules/{module}.ko"), &cache)?,
            _ => sh(&format!("cp {found} init/lib/modules/{module}.ko"), &cache)?,
        };
    }
    let script = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\nfor m in {}; do insmod /lib/modules/$m.ko; done\nport=\nfor i in 1 2 3 4 5 6 7 8 9 10; do for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name 2>/dev/null)\" = org.qemu.guest_agent.0 ] && port=/dev/$(basename $p); done; [ -n \"$port\" ] && break; sleep 0.2; done\n/usr/sbin/qemu-ga -m virtio-serial -p $port &\n{COUNTER}while :; do sleep 3600; done\n",
        MODULES.join(" ")
    );
    std::fs::write(init.join("init"), script).map_err(|e| fail("init", e))?;
    // qemu-ga's guest-shutdown runs /sbin/shutdown: busybox powers off.
    std::fs::write(
        init.join("sbin/shutdown"),
        "#!/bin/sh\nsync\n/bin/busybox poweroff -f\necho o > /proc/sysrq-trigger\n",
    )
    .map_err(|e| fail("shutdown", e))?;
    sh(
        "chmod 755 init/init init/sbin/shutdown && cd init && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd-v3.gz",
        &cache,
    )?;
    let _ = std::fs::remove_dir_all(root);
    let _ = std::fs::remove_dir_all(cache.join("debs"));
    let _ = std::fs::remove_dir_all(init);
    Ok((kernel, initrd))
}
