//! Regenerates the gRPC code the workspace checks in, so that no crate of it needs `protoc`
//! (or any build script) to build:
//!
//! - `registry-etcd/src/rpc/*.rs` from etcd's API protos in `registry-etcd/proto/` (client
//!   only: the KV, Watch, Lease, Maintenance and Auth services and their messages);
//! - `examples/helloworld/src/pb/helloworld.rs` from `examples/helloworld/proto/` (client and
//!   server).
//!
//! The protos are compiled by [protox], a protobuf compiler in Rust, and the code is written
//! by tonic-prost-build, as a build script would. `scripts/protogen` runs this; with `--check`
//! it writes to a temporary folder and fails when the checked-in code differs.
//!
//! [protox]: https://docs.rs/protox

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One set of protos and where its code goes.
struct Job {
    /// What it is, for messages.
    name: &'static str,
    /// The include root, relative to the repository.
    root: &'static str,
    /// The files to compile, relative to `root`.
    files: &'static [&'static str],
    /// The proto packages whose code is kept (others only describe options).
    packages: &'static [&'static str],
    /// The folder the code goes to, relative to the repository.
    out: &'static str,
    /// Whether to write servers too.
    server: bool,
}

const JOBS: &[Job] = &[
    Job {
        name: "etcd API",
        root: "registry-etcd/proto",
        files: &["etcd/api/etcdserverpb/rpc.proto"],
        packages: &["etcdserverpb", "mvccpb", "authpb"],
        out: "registry-etcd/src/rpc",
        server: false,
    },
    Job {
        name: "helloworld",
        root: "examples/helloworld/proto",
        files: &["helloworld.proto"],
        packages: &["helloworld.v1"],
        out: "examples/helloworld/src/pb",
        server: true,
    },
];

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let repo = match std::env::args().skip(1).find(|a| !a.starts_with("--")) {
        Some(repo) => PathBuf::from(repo),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    let mut stale = false;
    for job in JOBS {
        match run(job, &repo, check) {
            Ok(true) => {}
            Ok(false) => {
                eprintln!(
                    "protogen: {} code in {} is not what its protos generate; run scripts/protogen",
                    job.name, job.out
                );
                stale = true;
            }
            Err(e) => {
                eprintln!("protogen: {}: {e}", job.name);
                return ExitCode::FAILURE;
            }
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Generates one job's code; with `check`, into a temporary folder, comparing. True when the
/// checked-in code is (now) what the protos generate.
fn run(job: &Job, repo: &Path, check: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let root = repo.join(job.root);
    let mut fds = protox::compile(job.files, [&root])?;
    fds.file
        .retain(|f| job.packages.contains(&f.package.as_deref().unwrap_or_default()));
    let out = repo.join(job.out);
    let generate = |target: &Path| -> std::io::Result<()> {
        std::fs::create_dir_all(target)?;
        tonic_prost_build::configure()
            .build_server(job.server)
            .build_client(true)
            .out_dir(target)
            .compile_fds(fds)
    };
    if !check {
        generate(&out)?;
        eprintln!("protogen: {} -> {}", job.name, job.out);
        return Ok(true);
    }
    let temp = tempfile::tempdir()?;
    generate(temp.path())?;
    for package in job.packages {
        let file = format!("{package}.rs");
        let fresh = std::fs::read_to_string(temp.path().join(&file))?;
        let kept = std::fs::read_to_string(out.join(&file)).unwrap_or_default();
        if fresh != kept {
            return Ok(false);
        }
    }
    Ok(true)
}
