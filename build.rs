//! Compiles `csrc/c10d.cpp`, the C API over libtorch's c10d (TCPStore, ProcessGroupGloo, DDP's
//! Reducer) that tch does not bind, against the same libtorch torch-sys links. libtorch is
//! found as torch-sys finds it: `LIBTORCH`, or `LIBTORCH_USE_PYTORCH=1` with `python3`.
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

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-changed=csrc");
    let torch = libtorch();
    let inc = torch.join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/c10d.cpp")
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
}
