//! The CPU profiler against programs with known CPU shares: a C program
//! built `-O2 -fomit-frame-pointer` and a Rust release binary without frame
//! pointers, both compiled at test time, each spending 60/30/10 % of its
//! time in three functions reached through four calls from main.

use std::{
    collections::HashMap,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
    profiles_service_server::{ProfilesService, ProfilesServiceServer},
};
use prost::Message as _;
use selfops_proto::pprof;
use selfops_tests::{Agent, one_agent_at_a_time, privileged, scratch_dir, workspace_root};

const SHARES: [(&str, f64); 3] = [
    ("burn_sixty", 0.60),
    ("burn_thirty", 0.30),
    ("burn_ten", 0.10),
];
const RUN_SECONDS: u64 = 12;

fn asset(name: &str) -> PathBuf {
    workspace_root().join("tests/assets/profile").join(name)
}

fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let c = dir.join("shares_c");
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-o"])
        .arg(&c)
        .arg(asset("shares.c"))
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed");
    let rust = dir.join("shares_rs");
    let status = Command::new("rustc")
        .args(["-C", "opt-level=2", "-C", "force-frame-pointers=no", "-o"])
        .arg(&rust)
        .arg(asset("shares.rs"))
        .status()
        .expect("rustc");
    assert!(status.success(), "rustc failed");
    (c, rust)
}

/// Every sample of `pid` as its stack of function names, leaf first.
fn stacks_of(profiles: &[pprof::Profile], pid: u32) -> Vec<(Vec<String>, i64)> {
    let mut out = Vec::new();
    for p in profiles {
        let s = |i: i64| p.string_table.get(i as usize).cloned().unwrap_or_default();
        let functions: HashMap<u64, String> =
            p.function.iter().map(|f| (f.id, s(f.name))).collect();
        let locations: HashMap<u64, Vec<String>> = p
            .location
            .iter()
            .map(|l| {
                let names = l
                    .line
                    .iter()
                    .map(|line| {
                        functions
                            .get(&line.function_id)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect();
                (l.id, names)
            })
            .collect();
        for sample in &p.sample {
            let of_pid = sample
                .label
                .iter()
                .any(|l| s(l.key) == "process.pid" && l.num == i64::from(pid));
            if !of_pid {
                continue;
            }
            let names = sample
                .location_id
                .iter()
                .flat_map(|id| locations.get(id).cloned().unwrap_or_default())
                .collect();
            out.push((names, sample.value.first().copied().unwrap_or(0)));
        }
    }
    out
}

fn read_profiles(dir: &Path) -> (Vec<PathBuf>, Vec<pprof::Profile>) {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("profiles directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    paths.sort();
    let profiles = paths
        .iter()
        .map(|path| {
            let mut bytes = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open profile"))
                .read_to_end(&mut bytes)
                .expect("gzip");
            pprof::Profile::decode(bytes.as_slice()).expect("a pprof Profile")
        })
        .collect();
    (paths, profiles)
}

/// A downstream collector's profiles service: keeps what it is sent.
#[derive(Clone, Default)]
struct Downstream(std::sync::Arc<std::sync::Mutex<Vec<ExportProfilesServiceRequest>>>);

#[tonic::async_trait]
impl ProfilesService for Downstream {
    async fn export(
        &self,
        request: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        self.0
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .push(request.into_inner());
        Ok(tonic::Response::new(
            ExportProfilesServiceResponse::default(),
        ))
    }
}

/// Serves `downstream` on a loopback port on a runtime of its own.
fn serve(downstream: &Downstream) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let router = tonic::transport::Server::builder().add_service(
        ProfilesServiceServer::new(downstream.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
    );
    runtime
        .spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    (runtime, addr)
}

/// The string resource attributes of `pid`'s profiles in `requests`.
fn otlp_resource_of(
    requests: &[ExportProfilesServiceRequest],
    pid: u32,
) -> Option<Vec<(String, String)>> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    requests
        .iter()
        .flat_map(|r| &r.resource_profiles)
        .filter_map(|rp| rp.resource.as_ref())
        .find(|res| {
            res.attributes.iter().any(|kv| {
                kv.key == "process.pid"
                    && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                        Some(Value::IntValue(p)) if *p == i64::from(pid))
            })
        })
        .map(|res| {
            res.attributes
                .iter()
                .filter_map(
                    |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(text)) => Some((kv.key.clone(), text.clone())),
                        _ => None,
                    },
                )
                .collect()
        })
}

fn is_main(name: &str) -> bool {
    name == "main" || name.ends_with("::main")
}

fn check_shares(what: &str, stacks: &[(Vec<String>, i64)]) {
    let total: i64 = stacks.iter().map(|(_, n)| n).sum();
    let share_of = |keep: &dyn Fn(&[String]) -> bool| {
        let n: i64 = stacks
            .iter()
            .filter(|(names, _)| keep(names))
            .map(|(_, n)| n)
            .sum();
        n as f64 / total.max(1) as f64
    };
    let measured: Vec<f64> = SHARES
        .iter()
        .map(|(function, _)| share_of(&|names| names.iter().any(|f| f.ends_with(function))))
        .collect();
    let unwound = share_of(&|names| names.iter().any(|f| is_main(f)));
    let mut report = format!("{what}: {total} samples");
    for ((function, _), m) in SHARES.iter().zip(&measured) {
        report += &format!(", {function} {:.1} %", m * 100.0);
    }
    report += &format!(", {:.1} % unwound to main", unwound * 100.0);
    eprintln!("{report}");
    // Fewer samples mean the host starved the program: the shares would
    // be noise (at 200 samples one standard deviation of 60 % is 3.5 points).
    assert!(total >= 200, "too few samples to judge: {report}");
    for ((function, share), m) in SHARES.iter().zip(&measured) {
        assert!(
            (m - share).abs() <= 0.05,
            "{function}: expected {:.0} ± 5 %: {report}",
            share * 100.0
        );
    }
    assert!(unwound >= 0.90, "{report}");
}

#[test]
fn cpu_shares_of_programs_without_frame_pointers() {
    if !privileged("cpu_shares_of_programs_without_frame_pointers") {
        return;
    }
    let _one = one_agent_at_a_time();
    let build_dir = scratch_dir("profiling-build");
    let (c, rust) = build(&build_dir);
    // Profiles also leave over OTLP, through the exporters every signal uses.
    let downstream = Downstream::default();
    let (_runtime, collector) = serve(&downstream);
    let agent = Agent::start(
        "profiling",
        &format!(
            "trace: {{ enabled: false }}\nprofile: {{ enabled: true, frequency_hz: 99, interval: 4s }}\n\
             export: {{ otlp: {{ endpoint: 'http://{collector}' }} }}\n"
        ),
    );
    let seconds = RUN_SECONDS.to_string();
    let mut c_run = Command::new(&c)
        .arg(&seconds)
        .spawn()
        .expect("run C program");
    let mut rust_run = Command::new(&rust)
        .arg(&seconds)
        .spawn()
        .expect("run Rust program");
    // Bad input alongside: an executable deleted after it started, and
    // processes that exit while being sampled.
    let doomed = build_dir.join("shares_deleted");
    // A build of its own (with -g: another build-id), so its deletion is
    // judged on its own and not through the program it would share one with.
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-g", "-o"])
        .arg(&doomed)
        .arg(asset("shares.c"))
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed");
    let mut deleted_run = Command::new(&doomed)
        .arg("6")
        .spawn()
        .expect("run the copy");
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(&doomed).expect("delete the running executable");
    for _ in 0..100 {
        let _ = Command::new(&c).arg("0.02").status();
    }
    let (c_pid, rust_pid) = (c_run.id(), rust_run.id());
    let deleted_pid = deleted_run.id();
    assert!(deleted_run.wait().expect("deleted copy").success());
    assert!(c_run.wait().expect("C program").success());
    assert!(rust_run.wait().expect("Rust program").success());
    // The last interval is written when the agent stops.
    std::thread::sleep(Duration::from_millis(500));
    let metrics = agent.get("/metrics");
    let agent_dir = agent.dir.clone();
    let (status, _) = agent.stop(libc::SIGINT);
    let log = std::fs::read_to_string(agent_dir.join("agent.log")).unwrap_or_default();
    assert!(status.success(), "agent exit {status}:\n{log}");
    for name in [
        "selfops_profile_unwind_tables",
        "selfops_profile_unwind_table_bytes",
        "selfops_profile_kernel_samples_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    let dir = agent_dir.join("data/profiles");
    let (paths, profiles) = read_profiles(&dir);
    assert!(!profiles.is_empty(), "no pprof files in {}", dir.display());

    // Every interval with samples reached the collector, the last one (cut
    // short by the stop) included, each process with its full resource.
    let requests = downstream.0.lock().expect("requests").clone();
    let sampled = profiles.iter().filter(|p| !p.sample.is_empty()).count();
    assert_eq!(
        requests.len(),
        sampled,
        "OTLP requests vs pprof files with samples\n{log}"
    );
    let resource = otlp_resource_of(&requests, c_pid).expect("the C program's OTLP profile");
    for key in [
        "service.name",
        "process.executable.name",
        "host.name",
        "host.arch",
    ] {
        assert!(
            resource.iter().any(|(k, _)| k == key),
            "{key} missing from {resource:?}"
        );
    }
    assert!(
        metrics.contains(r#"selfops_export_signals_total{signal="profiles",sink="otlp"}"#),
        "profiles not counted as exported:\n{metrics}"
    );
    assert!(
        !metrics.contains(r#"selfops_export_dropped_total{signal="profiles""#),
        "profiles dropped:\n{metrics}"
    );
    check_shares("C -O2 -fomit-frame-pointer", &stacks_of(&profiles, c_pid));
    check_shares("Rust release", &stacks_of(&profiles, rust_pid));
    // The deleted executable is still read (through /proc/<pid>/map_files).
    let deleted = stacks_of(&profiles, deleted_pid);
    assert!(
        deleted
            .iter()
            .any(|(names, _)| names.iter().any(|f| f == "burn_sixty")
                && names.iter().any(|f| is_main(f))),
        "the deleted executable's samples are not symbolized and unwound: {:?}",
        deleted.iter().take(5).collect::<Vec<_>>()
    );

    // go tool pprof reads every file, and names the functions.
    for path in &paths {
        let out = Command::new("go")
            .args(["tool", "pprof", "-top"])
            .arg(path)
            .output()
            .expect("go tool pprof (golang-go)");
        assert!(
            out.status.success(),
            "go tool pprof -top {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for executable in ["shares_c", "shares_rs"] {
        let out = Command::new("go")
            .args(["tool", "pprof", "-top"])
            .arg(format!("-tagfocus=process.executable.name={executable}"))
            .args(&paths)
            .output()
            .expect("go tool pprof");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (function, _) in SHARES {
            assert!(
                text.contains(function),
                "{executable}: {function} not in:\n{text}"
            );
        }
    }
    // The flame graphs name them too.
    let svgs: String = std::fs::read_dir(&dir)
        .expect("profiles directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    for (function, _) in SHARES {
        assert!(svgs.contains(function), "{function} in no flame graph");
    }
}
