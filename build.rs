//! Compiles the C API over what tch does not bind, against the same libtorch torch-sys links:
//! `csrc/c10d.cpp` (TCPStore, ProcessGroupGloo, DDP's Reducer), `csrc/precision.cpp`
//! (autocast with a dtype, channels-last), `csrc/optim.cpp` (fused SGD) and `csrc/profiler.cpp`
//! (Kineto). libtorch is found as torch-sys finds it: `LIBTORCH`, or `LIBTORCH_USE_PYTORCH=1`
//! with `python3`.
use std::path::PathBuf;
use std::process::Command;

fn libtorch() -> PathBuf {
    if let Ok(p) = std::env::var("LIBTORCH") {
        return PathBuf::from(p);
    }
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", "import torch, os; print(os.path.dirname(torch.__file__))"])
        .output()
        .expect("build.rs: set LIBTORCH (or LIBTORCH_USE_PYTORCH=1 with torch importable by python3)");
    assert!(out.status.success(), "build.rs: python3 cannot import torch; set LIBTORCH");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

/// The commit the source is at, for `--version` and each run's summary ("unknown" outside a git
/// checkout). The script reruns when HEAD moves (a commit, a checkout), which also recompiles
/// `csrc/` (a minute); edits not yet committed are not seen, so such a build names the commit
/// they were made on.
fn commit() -> String {
    for p in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-changed=csrc");
    let torch = libtorch();
    // The libtorch this binary is built against, for `--version` and each run's summary.
    let version = std::fs::read_to_string(torch.join("version.py"))
        .ok()
        .and_then(|v| {
            v.lines().find_map(|l| Some(l.strip_prefix("__version__ = ")?.trim_matches(['\'', '"']).to_string()))
        })
        .or_else(|| std::fs::read_to_string(torch.join("build-version")).ok().map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SIMSIAM_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=SIMSIAM_COMMIT={}", commit());
    let inc = torch.join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/c10d.cpp")
        .file("csrc/precision.cpp")
        .file("csrc/optim.cpp")
        .file("csrc/profiler.cpp")
        .include(&inc)
        .include(inc.join("torch/csrc/api/include"))
        .include("csrc/gloo_decl")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .compile("simsiam_c10d");
    println!("cargo:rustc-link-search=native={}", torch.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // The binary finds the libtorch it was built against without LD_LIBRARY_PATH (which, when
    // set, still comes first: a GPU machine points it at its own libtorch). The CUDA runtime
    // folder is there because libtorch_cpu.so links libcudart even on CPU-only machines.
    for dir in [torch.join("lib"), torch.join("../nvidia/cu13/lib")] {
        if let Ok(dir) = dir.canonicalize() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        }
    }
    cuda_helper(&torch);
}

/// `csrc/cuda.cpp` (ProcessGroupNCCL, CUDA allocator statistics) as a shared library linked
/// against libtorch_cuda.so, embedded in the binary and loaded at run time on GPU machines (the
/// binary itself must not need libtorch_cuda.so). It needs NCCL's and the CUDA runtime's
/// headers: the `nvidia-nccl-cu13`, `nvidia-cuda-crt` and `nvidia-cuda-cccl` wheels that
/// `scripts/env.sh` installs beside torch. Without them the binary is built without it and
/// says so when NCCL is asked for.
fn cuda_helper(torch: &std::path::Path) {
    println!("cargo::rustc-check-cfg=cfg(simsiam_cuda_helper)");
    println!("cargo:rerun-if-env-changed=SIMSIAM_NO_NCCL");
    let nvidia = torch.join("../nvidia");
    let incs = [nvidia.join("cu13/include"), nvidia.join("nccl/include")];
    let needed = [incs[1].join("nccl.h"), incs[0].join("crt/host_config.h"), incs[0].join("nv/target")];
    if std::env::var_os("SIMSIAM_NO_NCCL").is_some() || !needed.iter().all(|p| p.exists()) {
        println!("cargo:warning=building without the CUDA helper (NCCL headers not found under {})", nvidia.display());
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("libsimsiam_cuda.so");
    let inc = torch.join("include");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-std=c++17", "-shared", "-fPIC", "-O2", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DGLOG_USE_GLOG_EXPORT", "-w"])
        .arg("-I")
        .arg(&inc)
        .arg("-I")
        .arg(inc.join("torch/csrc/api/include"))
        .args(["-I", "csrc/cuda_decl"])
        .arg("-I")
        .arg(&incs[0])
        .arg("-I")
        .arg(&incs[1])
        .arg("csrc/cuda.cpp")
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(torch.join("lib"))
        .args(["-ltorch_cuda", "-ltorch_cpu", "-lc10_cuda", "-lc10"]);
    let status = cmd.status().expect("build.rs: running the C++ compiler for csrc/cuda.cpp");
    assert!(status.success(), "build.rs: compiling csrc/cuda.cpp failed");
    println!("cargo:rustc-cfg=simsiam_cuda_helper");
    println!("cargo:rustc-env=SIMSIAM_CUDA_SO={}", out.display());
}
