//! `info` and `system df`: what strata runs on and what its store holds.
//!
//! `info` reports, besides Docker's usual lines, the host features strata
//! depends on: whether `/dev/fuse` can be opened, whether FUSE passthrough
//! can be used (kernel >= 6.9 and CAP_SYS_ADMIN, i.e. not rootless),
//! `fusermount3`, user namespaces and subordinate id ranges, and the cgroup
//! version. `--format` sees Docker's field names (`{{.ServerVersion}}`,
//! `{{.DockerRootDir}}`, `{{json .RegistryConfig}}`, ...).

use super::image::{DfArgs, InfoArgs, SystemPruneArgs};
use super::images::list_images;
use super::support::open_store;
use crate::context::Context;
use crate::format::{self, Output};
use serde_json::{json, Value};
use std::path::Path;
use strata_layers::registry::RegistryConfig;
use strata_layers::store::is_image_in_use;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Host facts for `info`.
struct HostFeatures {
    fuse_device: bool,
    passthrough: bool,
    passthrough_note: String,
    fusermount3: Option<String>,
    userns: bool,
    subids: Option<String>,
    cgroup_version: String,
}

fn kernel_release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}

/// `(major, minor)` of a kernel release string like `6.9.0-1-amd64`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut it = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

fn find_in_path(prog: &str) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| p.is_file()).map(|p| p.display().to_string())
}

fn user_name() -> Option<String> {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
}

/// The caller's first /etc/subuid range (`START:COUNT`), if any.
fn subuid_range() -> Option<String> {
    let uid = rustix::process::getuid().as_raw().to_string();
    let name = user_name();
    let text = std::fs::read_to_string("/etc/subuid").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        (f.len() == 3 && (f[0] == uid || Some(f[0]) == name.as_deref())).then(|| format!("{}:{}", f[1], f[2]))
    })
}

fn cgroup_version() -> String {
    const CGROUP2_MAGIC: i64 = 0x6367_7270;
    // f_type's integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let is_cg2 = |p: &str| rustix::fs::statfs(p).map(|s| s.f_type as i64 == CGROUP2_MAGIC).unwrap_or(false);
    if is_cg2("/sys/fs/cgroup") {
        "2".to_string()
    } else if is_cg2("/sys/fs/cgroup/unified") {
        "1 (hybrid: cgroup2 at /sys/fs/cgroup/unified)".to_string()
    } else {
        "1".to_string()
    }
}

fn host_features(rootless: bool) -> HostFeatures {
    let fuse_device = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_ok();
    let (major, minor) = kernel_version(&kernel_release());
    let new_enough = (major, minor) >= (6, 9);
    let passthrough = new_enough && !rootless && fuse_device;
    let passthrough_note = if !new_enough {
        format!("kernel {major}.{minor} < 6.9")
    } else if rootless {
        "needs CAP_SYS_ADMIN in the initial user namespace (rootless)".to_string()
    } else if !fuse_device {
        "/dev/fuse not accessible".to_string()
    } else {
        String::new()
    };
    let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let unpriv_clone =
        std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone").map(|s| s.trim() != "0").unwrap_or(true);
    HostFeatures {
        fuse_device,
        passthrough,
        passthrough_note,
        fusermount3: find_in_path("fusermount3"),
        userns: max_userns > 0 && unpriv_clone,
        subids: subuid_range(),
        cgroup_version: cgroup_version(),
    }
}

fn os_pretty_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".to_string())
}

/// The host's memory in bytes (`MemTotal`), 0 when unknown.
pub fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .map(|kb| kb * 1024)
            })
        })
        .unwrap_or(0)
}

/// Everything `info` reports, under Docker's field names.
fn info_value(ctx: &Context) -> anyhow::Result<Value> {
    let store = open_store(ctx)?;
    let images = store.images()?.len();
    let all = crate::containers::record::list_fresh(&ctx.layout)?;
    let containers = all.len();
    let paused = all.iter().filter(|c| super::container::is_paused(c)).count();
    let running = all.iter().filter(|c| c.running()).count() - paused;
    let reg = RegistryConfig::load()?;
    let mut mirrors: Vec<String> = reg.mirrors.get("docker.io").cloned().unwrap_or_default();
    let mut other_mirrors: Vec<(&String, &Vec<String>)> =
        reg.mirrors.iter().filter(|(k, _)| *k != "docker.io").collect();
    other_mirrors.sort();
    for (registry, list) in other_mirrors {
        mirrors.extend(list.iter().map(|m| format!("{m} (for {registry})")));
    }
    let mut insecure = vec!["127.0.0.0/8".to_string(), "::1/128".to_string(), "localhost".to_string()];
    insecure.extend(reg.insecure.iter().cloned());
    let h = host_features(ctx.rootless);
    // (No seccomp entry: strata installs no seccomp filter yet.)
    let mut security: Vec<String> = Vec::new();
    if ctx.rootless {
        security.push("name=rootless".to_string());
    }
    let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
    Ok(json!({
        "ID": "",
        "Containers": containers,
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": containers - running - paused,
        "Images": images,
        "Driver": "strata",
        "DriverStatus": [
            ["Backing Filesystem", "FUSE union of layer indexes"],
            ["FUSE Device", if h.fuse_device { "/dev/fuse (accessible)" } else { "/dev/fuse (not accessible)" }],
            ["FUSE Passthrough", if h.passthrough { "available".to_string() } else { format!("unavailable ({})", h.passthrough_note) }],
            ["fusermount3", h.fusermount3.clone().unwrap_or_else(|| "not found".to_string())],
        ],
        "ServerVersion": VERSION,
        "DockerRootDir": ctx.layout.root().display().to_string(),
        "Rootless": ctx.rootless,
        "UserNamespaces": h.userns,
        "SubordinateIDs": h.subids.clone().unwrap_or_default(),
        "CgroupVersion": h.cgroup_version,
        "KernelVersion": kernel_release(),
        "OperatingSystem": os_pretty_name(),
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": mem_total(),
        "Name": hostname,
        "SecurityOptions": security,
        "RegistryConfig": {
            "InsecureRegistryCIDRs": insecure,
            "Mirrors": mirrors,
        },
        "FusePassthrough": h.passthrough,
        "FuseDevice": h.fuse_device,
        "Fusermount3": h.fusermount3.unwrap_or_default(),
    }))
}

/// `version`: Docker's Client and Server sections (one program is both;
/// the "API version" is the Docker API whose behaviour strata follows).
pub fn version(ctx: &Context, a: InfoArgs) -> anyhow::Result<i32> {
    let _ = ctx;
    let (os, arch) = ("linux", go_arch());
    let part = |kind: &str| {
        json!({
            "Platform": { "Name": "strata" },
            "Version": VERSION,
            "ApiVersion": DOCKER_API_VERSION,
            "GoVersion": "",
            "GitCommit": "",
            "Os": os,
            "Arch": arch,
            "KernelVersion": if kind == "server" { kernel_release() } else { String::new() },
        })
    };
    let v = json!({ "Client": part("client"), "Server": part("server") });
    match a.format.as_deref() {
        Some("json") => println!("{}", serde_json::to_string(&v)?),
        Some(f) => println!("{}", format::render_loose(f, &v)?),
        None => {
            println!("Client:\n Version:           {VERSION}\n API version:       {DOCKER_API_VERSION}");
            println!(" OS/Arch:           {os}/{arch}\n");
            println!("Server: strata\n Engine:\n  Version:          {VERSION}");
            println!("  API version:      {DOCKER_API_VERSION}\n  OS/Arch:          {os}/{arch}");
            println!("  Kernel Version:   {}", kernel_release());
        }
    }
    Ok(0)
}

/// The Docker Engine API version whose commands and output strata follows.
const DOCKER_API_VERSION: &str = "1.44";

/// GOARCH names, as Docker prints them.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

pub fn info(ctx: &Context, a: InfoArgs) -> anyhow::Result<i32> {
    let v = info_value(ctx)?;
    match a.format.as_deref() {
        Some("json") => {
            println!("{}", serde_json::to_string(&v)?);
            return Ok(0);
        }
        Some(f) => {
            println!("{}", format::render_loose(f, &v)?);
            return Ok(0);
        }
        None => {}
    }
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut o = String::new();
    o.push_str("Client:\n");
    o.push_str(&format!(" Version:    {VERSION}\n"));
    o.push_str(" Context:    default\n");
    o.push_str(" Debug Mode: false\n\n");
    o.push_str("Server:\n");
    o.push_str(&format!(" Containers: {}\n", s("Containers")));
    o.push_str(&format!("  Running: {}\n", s("ContainersRunning")));
    o.push_str(&format!("  Paused: {}\n", s("ContainersPaused")));
    o.push_str(&format!("  Stopped: {}\n", s("ContainersStopped")));
    o.push_str(&format!(" Images: {}\n", s("Images")));
    o.push_str(&format!(" Server Version: {VERSION}\n"));
    o.push_str(" Storage Driver: strata\n");
    if let Some(rows) = v["DriverStatus"].as_array() {
        for r in rows {
            o.push_str(&format!("  {}: {}\n", r[0].as_str().unwrap_or(""), r[1].as_str().unwrap_or("")));
        }
    }
    o.push_str(&format!(" Rootless: {}\n", s("Rootless")));
    o.push_str(&format!(
        " User Namespaces: {}\n",
        if v["UserNamespaces"] == true { "available" } else { "unavailable" }
    ));
    let sub = s("SubordinateIDs");
    o.push_str(&format!("  Subordinate IDs: {}\n", if sub.is_empty() { "none (single id mapping)" } else { &sub }));
    o.push_str(" Security Options:\n");
    for opt in v["SecurityOptions"].as_array().into_iter().flatten() {
        o.push_str(&format!("  {}\n", opt.as_str().unwrap_or("")));
    }
    o.push_str(&format!(" Cgroup Version: {}\n", s("CgroupVersion")));
    o.push_str(&format!(" Kernel Version: {}\n", s("KernelVersion")));
    o.push_str(&format!(" Operating System: {}\n", s("OperatingSystem")));
    o.push_str(" OSType: linux\n");
    o.push_str(&format!(" Architecture: {}\n", s("Architecture")));
    o.push_str(&format!(" CPUs: {}\n", s("NCPU")));
    o.push_str(&format!(" Total Memory: {}\n", format::bytes_size(v["MemTotal"].as_u64().unwrap_or(0))));
    o.push_str(&format!(" Name: {}\n", s("Name")));
    o.push_str(&format!(" Docker Root Dir: {}\n", s("DockerRootDir")));
    o.push_str(" Debug Mode: false\n");
    o.push_str(" Experimental: false\n");
    o.push_str(" Insecure Registries:\n");
    for r in v["RegistryConfig"]["InsecureRegistryCIDRs"].as_array().into_iter().flatten() {
        o.push_str(&format!("  {}\n", r.as_str().unwrap_or("")));
    }
    let mirrors = v["RegistryConfig"]["Mirrors"].as_array().cloned().unwrap_or_default();
    if !mirrors.is_empty() {
        o.push_str(" Registry Mirrors:\n");
        for m in mirrors {
            o.push_str(&format!("  {}\n", m.as_str().unwrap_or("")));
        }
    }
    o.push_str(" Live Restore Enabled: false\n");
    print!("{o}");
    Ok(0)
}

const DF_TABLE: &str = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}";
const DF_HEADERS: &[(&str, &str)] = &[
    ("Type", "TYPE"),
    ("TotalCount", "TOTAL"),
    ("Active", "ACTIVE"),
    ("Size", "SIZE"),
    ("Reclaimable", "RECLAIMABLE"),
];

fn df_row(kind: &str, total: u64, active: u64, size: u64, reclaimable: u64, percent: bool) -> Value {
    let rec = if percent && size > 0 {
        format!("{} ({}%)", format::human_size(reclaimable), reclaimable * 100 / size)
    } else {
        format::human_size(reclaimable)
    };
    format::row([
        ("Active", active.to_string()),
        ("Reclaimable", rec),
        ("Size", format::human_size(size)),
        ("TotalCount", total.to_string()),
        ("Type", kind.to_string()),
    ])
}

/// Apparent size of the regular files under `path`, symlinks not followed.
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path).map(|rd| rd.filter_map(Result::ok).map(|e| tree_size(&e.path())).sum()).unwrap_or(0)
}

pub fn df(ctx: &Context, a: DfArgs) -> anyhow::Result<i32> {
    let store = open_store(ctx)?;
    let du = store.disk_usage()?;
    let listed = list_images(&store)?;
    let active: Vec<_> = listed.iter().filter(|i| is_image_in_use(&store, &i.record.id).is_some()).collect();
    // Docker's image size: distinct layers' unpacked sizes, shared ones once.
    let size = du.layers_unpacked;
    let mut active_layers = std::collections::HashSet::new();
    let mut active_size = 0;
    for img in &active {
        for l in &img.record.layers {
            if active_layers.insert(l.diff_id) {
                active_size += l.unpacked_size;
            }
        }
    }
    // The build cache: layers only its records keep (those of images count as the images').
    let image_layers: std::collections::HashSet<_> =
        listed.iter().flat_map(|i| i.record.layers.iter().map(|l| l.diff_id)).collect();
    let cached = strata_builder::cache::layers(&store);
    let cache_records: usize = cached.iter().map(|(_, n)| n).sum();
    let cache_size: u64 =
        cached.iter().filter(|(l, _)| !image_layers.contains(&l.diff_id)).map(|(l, _)| l.unpacked_size).sum();
    // Containers: the writable layers; those of stopped ones can be reclaimed.
    let containers = crate::containers::record::list_fresh(&ctx.layout)?;
    let uppers: Vec<u64> = containers.iter().map(super::container::upper_size).collect();
    let running = containers.iter().filter(|c| c.running()).count() as u64;
    let containers_size: u64 = uppers.iter().sum();
    let stopped_size: u64 = containers.iter().zip(&uppers).filter(|(c, _)| !c.running()).map(|(_, n)| n).sum();
    // Volumes: those no container mounts can be reclaimed.
    let volumes = crate::containers::volumes::list(ctx)?;
    let mut volume_rows = Vec::new();
    let (mut volumes_size, mut unused_size, mut in_use) = (0, 0, 0);
    for v in &volumes {
        let links = containers
            .iter()
            .filter(|c| c.config.mounts.iter().any(|m| m.kind == "volume" && m.name == v.name))
            .count();
        let size = tree_size(Path::new(&v.mountpoint));
        volumes_size += size;
        if links == 0 {
            unused_size += size;
        } else {
            in_use += 1;
        }
        volume_rows.push(format::row([
            ("Name", v.name.clone()),
            ("Links", links.to_string()),
            ("Size", format::human_size(size)),
        ]));
    }
    if a.verbose && a.format.is_none() {
        let mut per_image: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for c in &containers {
            *per_image.entry(c.config.image_id.clone()).or_default() += 1;
        }
        let container_rows: Vec<Value> = containers
            .iter()
            .zip(&uppers)
            .map(|(c, size)| {
                let mut row = super::container::ps_row(ctx, c, false, false);
                row["Size"] = Value::String(format::human_size(*size));
                row
            })
            .collect();
        let cache_rows: Vec<Value> = cached
            .iter()
            .map(|(l, records)| {
                format::row([
                    ("ID", l.diff_id.short()),
                    ("CacheType", "regular".to_string()),
                    ("Size", format::human_size(l.unpacked_size)),
                    ("UsageCount", records.to_string()),
                    ("Shared", image_layers.contains(&l.diff_id).to_string()),
                ])
            })
            .collect();
        return df_verbose(&listed, &per_image, &container_rows, &volume_rows, &cache_rows, cache_size);
    }
    let rows = vec![
        df_row("Images", listed.len() as u64, active.len() as u64, size, size.saturating_sub(active_size), true),
        df_row("Containers", containers.len() as u64, running, containers_size, stopped_size, true),
        df_row("Local Volumes", volumes.len() as u64, in_use, volumes_size, unused_size, true),
        df_row("Build Cache", cache_records as u64, 0, cache_size, cache_size, false),
    ];
    let output = Output::new(a.format.as_deref(), DF_TABLE)?;
    print!("{}", output.render(&rows, DF_HEADERS)?);
    Ok(0)
}

/// `system df -v`: Docker's four tables.
fn df_verbose(
    listed: &[super::images::Listed],
    containers_per_image: &std::collections::HashMap<String, usize>,
    containers: &[Value],
    volumes: &[Value],
    cache: &[Value],
    cache_size: u64,
) -> anyhow::Result<i32> {
    const IMG_TABLE: &str =
        "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}\t{{.SharedSize}}\t{{.UniqueSize}}\t{{.Containers}}";
    let mut count = std::collections::HashMap::new();
    for img in listed {
        for l in &img.record.layers {
            *count.entry(l.diff_id).or_insert(0u32) += 1;
        }
    }
    let rows: Vec<Value> = listed
        .iter()
        .map(|img| {
            let shared: u64 = img
                .record
                .layers
                .iter()
                .filter(|l| count.get(&l.diff_id).copied().unwrap_or(0) > 1)
                .map(|l| l.unpacked_size)
                .sum();
            let (repo, tag) = match img.tags.first() {
                Some(r) => (r.familiar_name(), r.tag_or_default().to_string()),
                None => ("<none>".to_string(), "<none>".to_string()),
            };
            let users = containers_per_image.get(&img.record.id.to_string()).copied().unwrap_or(0);
            format::row([
                ("Containers", users.to_string()),
                ("CreatedSince", if img.created > 0 { format::human_since(img.created) } else { "N/A".into() }),
                ("ID", img.record.id.short()),
                ("Repository", repo),
                ("SharedSize", format::human_size(shared)),
                ("Size", format::human_size(img.record.size)),
                ("Tag", tag),
                ("UniqueSize", format::human_size(img.record.size - shared.min(img.record.size))),
            ])
        })
        .collect();
    let headers = [
        ("Repository", "REPOSITORY"),
        ("Tag", "TAG"),
        ("ID", "IMAGE ID"),
        ("CreatedSince", "CREATED"),
        ("Size", "SIZE"),
        ("SharedSize", "SHARED SIZE"),
        ("UniqueSize", "UNIQUE SIZE"),
        ("Containers", "CONTAINERS"),
    ];
    print!("Images space usage:\n\n{}", Output::new(None, IMG_TABLE)?.render(&rows, &headers)?);
    const CONTAINER_TABLE: &str =
        "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.LocalVolumes}}\t{{.Size}}\t{{.RunningFor}}\t{{.Status}}\t{{.Names}}";
    print!(
        "\nContainers space usage:\n\n{}",
        Output::new(None, CONTAINER_TABLE)?.render(containers, super::container::PS_HEADERS)?
    );
    let headers = [("Name", "VOLUME NAME"), ("Links", "LINKS"), ("Size", "SIZE")];
    print!(
        "\nLocal Volumes space usage:\n\n{}",
        Output::new(None, "table {{.Name}}\t{{.Links}}\t{{.Size}}")?.render(volumes, &headers)?
    );
    let headers = [
        ("ID", "CACHE ID"),
        ("CacheType", "CACHE TYPE"),
        ("Size", "SIZE"),
        ("UsageCount", "USAGE"),
        ("Shared", "SHARED"),
    ];
    print!(
        "\nBuild cache usage: {}\n\n{}",
        format::human_size(cache_size),
        Output::new(None, "table {{.ID}}\t{{.CacheType}}\t{{.Size}}\t{{.UsageCount}}\t{{.Shared}}")?
            .render(cache, &headers)?
    );
    Ok(0)
}

/// `system prune`: stopped containers, (anonymous volumes,) dangling or
/// unused images and the build cache, in Docker's order and words.
pub fn system_prune(ctx: &Context, a: SystemPruneArgs) -> anyhow::Result<i32> {
    let mut labels = Vec::new();
    for f in &a.filter {
        match f.split_once('=') {
            Some(("label", v)) => labels.push(v.to_string()),
            _ => anyhow::bail!("invalid filter '{f}': strata's system prune supports only label="),
        }
    }
    if !a.force {
        let mut warning = String::from(
            "WARNING! This will remove:\n  - all stopped containers\n  - all networks not used by at least one container\n",
        );
        if a.volumes {
            warning.push_str("  - all anonymous volumes not used by at least one container\n");
        }
        warning.push_str(if a.all {
            "  - all images without at least one container associated to them\n"
        } else {
            "  - all dangling images\n"
        });
        warning.push_str("  - unused build cache\n");
        if !super::support::confirm(&warning)? {
            return Ok(0);
        }
    }
    let mut total = 0;
    let containers = super::container::prune_containers(ctx, &labels)?;
    containers.print_items();
    total += containers.bytes;
    super::network::prune_networks(ctx)?.print_items();
    if a.volumes {
        let volumes = super::volume::prune_volumes(ctx, false)?;
        volumes.print_items();
        total += volumes.bytes;
    }
    let images = super::images::prune_images(ctx, a.all)?;
    images.print_items();
    total += images.bytes;
    total += super::build::prune_build_cache(ctx)?;
    super::support::print_reclaimed(total);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), (6, 18));
        assert_eq!(kernel_version("6.9.0"), (6, 9));
        assert_eq!(kernel_version("5.10.0-28-cloud-amd64"), (5, 10));
        assert!(kernel_version("6.8.12") < (6, 9));
    }

    #[test]
    fn bytes_sizes() {
        assert_eq!(format::bytes_size(4_114_878_464), "3.832GiB");
        assert_eq!(format::bytes_size(1024), "1KiB");
        assert_eq!(format::bytes_size(500), "500B");
    }
}
