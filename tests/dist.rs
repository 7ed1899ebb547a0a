//! Data-parallel training on c10d's Gloo backend over loopback, end to end through the CLI:
//! two ranks reproduce one process's weights (same global batch and data order), with and
//! without synchronised BatchNorm, and a killed rank stops the job with an error naming it.
mod common;
use simsiam::data::CifarKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simsiam"));
    c.env("OMP_NUM_THREADS", "1").env_remove("WORLD_SIZE").env_remove("RANK");
    c
}

fn data(dir: &Path) -> PathBuf {
    let train = dir.join("train.bin");
    common::write_cifar(&train, CifarKind::Cifar10, 256, 10);
    train
}

/// A small model trained for 4 steps of a global batch of 64 (no test data: no kNN).
fn args(train: &Path, out: &Path, epochs: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["train", "--preset", "tiny", "--device", "cpu", "--batch-size", "64"].iter().map(|s| s.to_string()).collect();
    a.extend(["--epochs".into(), epochs.to_string(), "--data".into(), train.display().to_string()]);
    a.extend(["--out".into(), out.display().to_string()]);
    for s in common::SMALL_MODEL.iter().chain(&["monitor.log_every=2", "monitor.knn_at_init=false"]).chain(extra) {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

fn weights(run: &Path) -> HashMap<String, Tensor> {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let file = run.join("checkpoints").join(name.trim()).join("model.safetensors");
    Tensor::read_safetensors(file).unwrap().into_iter().collect()
}

/// Largest |a - b| over the tensors whose names pass `keep`, relative to the largest |a|.
fn max_rel_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, keep: impl Fn(&str) -> bool) -> f64 {
    let (mut diff, mut scale, mut n) = (0f64, 0f64, 0);
    for (name, ta) in a.iter().filter(|(n, _)| keep(n)) {
        let tb = b.get(name).unwrap_or_else(|| panic!("{name} missing"));
        diff = diff.max((ta - tb).abs().max().double_value(&[]));
        scale = scale.max(ta.abs().max().double_value(&[]));
        n += 1;
    }
    assert!(n > 10, "only {n} tensors compared");
    diff / scale
}

fn is_param(name: &str) -> bool {
    !name.contains("running_")
}

/// The logged loss of every step (`metrics.jsonl`).
fn losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
    lines.filter(|v| v.get("event").is_none()).map(|v| v["loss"].as_f64().unwrap()).collect()
}

/// One run's final weights and logged per-step losses.
type Trained = (HashMap<String, Tensor>, Vec<f64>);

/// Trains one process with `single` and two ranks with `double`; returns both runs.
fn one_vs_two(tag: &str, single: &[&str], double: &[&str]) -> (Trained, Trained) {
    let tmp = tempfile::tempdir().unwrap();
    let train = data(tmp.path());
    let (one, two) = (tmp.path().join(format!("{tag}-1")), tmp.path().join(format!("{tag}-2")));
    ok(bin().args(args(&train, &one, 1, single)).output().unwrap());
    let text = ok(bin().args(args(&train, &two, 1, double)).args(["--nproc", "2"]).output().unwrap());
    assert!(text.contains("distributed: 2 ranks, gloo, 32 images per rank per step"), "{text}");
    ((weights(&one), losses(&one)), (weights(&two), losses(&two)))
}

/// Largest |a - b| of two loss curves of the same length.
fn curve_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn two_ranks_match_one_process_with_the_same_global_batch() {
    // Without sync BN each rank normalises its own 32 images: one process does the same with
    // BatchNorm over the two halves of its batch (model.bn_splits = 2).
    let ((one, one_loss), (two, two_loss)) = one_vs_two("local-bn", &["model.bn_splits=2"], &[]);
    let d = max_rel_diff(&one, &two, is_param);
    assert!(d < 1e-4, "parameters differ by {d:e} (relative)");
    // The logged loss is the global batch's (the mean over the ranks), step by step, not rank
    // 0's half (without the mean the two curves here are up to 3.0e-2 apart).
    assert_eq!(one_loss.len(), 4);
    let d = curve_diff(&one_loss, &two_loss);
    assert!(d < 1e-5, "loss curves differ by {d:e}: {one_loss:?} vs {two_loss:?}");
    // And the comparison can fail: per-rank BN is not whole-batch BN.
    let ((plain, _), _) = one_vs_two("plain", &[], &[]);
    let d = max_rel_diff(&plain, &two, is_param);
    assert!(d > 1e-3, "whole-batch BN should differ from per-rank BN, got {d:e}");
}

/// fp16 with loss scaling on two ranks: each rank's backward sees the scaled loss, DDP averages
/// the scaled gradients, every rank unscales the same average (so all skip the same steps)
/// and the job keeps one process's weights, up to fp16's rounding of per-rank sums. Measured
/// (relative to the largest weight): the 4 steps move the weights by 3.5e-2, fp16 lands
/// 7.4e-3 from fp32, and two fp16 ranks 1.8e-3 from one fp16 process (fp32: 1.3e-7). Gradients
/// left scaled, or averaged twice, would be off by at least half the update.
#[test]
fn two_ranks_in_fp16_match_one_process() {
    let fp16 = "run.precision=\"fp16\"";
    let ((one, one_loss), (two, two_loss)) = one_vs_two("fp16", &["model.bn_splits=2", fp16], &[fp16]);
    let d = max_rel_diff(&one, &two, is_param);
    assert!(d < 5e-3, "parameters differ by {d:e} (relative)");
    let d = curve_diff(&one_loss, &two_loss);
    assert!(d < 5e-3, "loss curves differ by {d:e}: {one_loss:?} vs {two_loss:?}");
}

#[test]
fn two_ranks_with_sync_bn_match_one_process() {
    // Synchronised BN normalises with the global batch's statistics: exactly one process's BN,
    // running statistics included.
    let ((one, one_loss), (two, two_loss)) = one_vs_two("sync-bn", &[], &["dist.sync_bn=true"]);
    let d = max_rel_diff(&one, &two, |_| true);
    assert!(d < 1e-4, "weights differ by {d:e} (relative)");
    let d = curve_diff(&one_loss, &two_loss);
    assert!(d < 1e-5, "loss curves differ by {d:e}: {one_loss:?} vs {two_loss:?}");
}

#[test]
fn resume_with_a_different_number_of_ranks() {
    // Two epochs in one process, against one epoch in one process continued for the second
    // epoch on two ranks (sync BN, so the BN statistics are those of one process). The lr of
    // epoch 0 is the initial lr whatever the epoch count, so `epochs = 1` then `2` is the same
    // schedule.
    let tmp = tempfile::tempdir().unwrap();
    let train = data(tmp.path());
    let (full, split) = (tmp.path().join("full"), tmp.path().join("split"));
    ok(bin().args(args(&train, &full, 2, &["dist.sync_bn=true"])).output().unwrap());
    ok(bin().args(args(&train, &split, 1, &["dist.sync_bn=true"])).output().unwrap());
    let cfg_path = split.join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(cfg.contains("epochs = 1\n"));
    std::fs::write(&cfg_path, cfg.replace("epochs = 1\n", "epochs = 2\n")).unwrap();
    let text = ok(bin().args(["train", "--resume"]).arg(&split).args(["--nproc", "2"]).output().unwrap());
    assert!(text.contains("resuming from") && text.contains("distributed: 2 ranks"), "{text}");
    let d = max_rel_diff(&weights(&full), &weights(&split), |_| true);
    assert!(d < 1e-4, "weights differ by {d:e} (relative)");
}

#[test]
fn a_killed_rank_stops_the_job_with_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let train = data(tmp.path());
    let out = tmp.path().join("run");
    // Many epochs: the job is still training when rank 1 is killed.
    let mut child = bin()
        .args(args(&train, &out, 1000, &["dist.timeout_s=20"]))
        .args(["--nproc", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (pid1, rx) = rank1_pid_once_training(&mut child);
    unsafe { libc::kill(pid1, libc::SIGKILL) };
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "the job did not stop within 60s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
    let text = log.join("\n");
    assert!(!status.success(), "{text}");
    assert!(text.contains(&format!("rank 1 (pid {pid1}) was killed by signal 9")), "{text}");
    // The surviving rank saw it fail at a collective and said so, naming itself.
    assert!(text.contains("error: rank 0: "), "{text}");
    assert!(killed.elapsed() < Duration::from_secs(30), "took {:?}", killed.elapsed());
}

#[test]
fn a_hung_rank_makes_the_job_stop_after_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let train = data(tmp.path());
    let mut child = bin()
        .args(args(&train, &tmp.path().join("run"), 1000, &["dist.timeout_s=5"]))
        .args(["--nproc", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (pid1, rx) = rank1_pid_once_training(&mut child);
    // Stop rank 1 without killing it: its peer waits in a collective until the timeout.
    unsafe { libc::kill(pid1, libc::SIGSTOP) };
    let stopped = Instant::now();
    let status = child.wait().unwrap();
    let text: Vec<String> = rx.try_iter().collect();
    let text = text.join("\n");
    assert!(!status.success(), "{text}");
    // Whichever collective rank 0 is in when the timeout passes (the gradient all-reduce or
    // the stop vote at a flush point) reports it.
    assert!(text.contains("error: rank 0: ") && text.to_lowercase().contains("timed out"), "{text}");
    assert!(text.contains(simsiam::dist::PEER_FAILURE), "{text}");
    // 5 s for rank 0's collective, then up to 15 s of grace before the launcher kills rank 1.
    assert!(stopped.elapsed() < Duration::from_secs(40), "took {:?}: {text}", stopped.elapsed());
    assert!(text.contains("killing rank 1"), "{text}");
}

/// Reads the launcher's stderr until rank 1's pid is known and training has started; the
/// receiver keeps the remaining lines.
fn rank1_pid_once_training(child: &mut std::process::Child) -> (i32, std::sync::mpsc::Receiver<String>) {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut pid1, mut started, mut log) = (None, false, Vec::new());
    while !(started && pid1.is_some()) {
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no start: {log:?}"));
        if let Some(rest) = line.strip_prefix("launched rank 1 (pid ") {
            pid1 = rest.trim_end_matches(')').parse::<i32>().ok();
        }
        started |= line.starts_with("data:");
        log.push(line);
    }
    // A few steps in.
    std::thread::sleep(Duration::from_secs(2));
    (pid1.unwrap(), rx)
}

#[test]
fn an_unreachable_rendezvous_is_a_clear_error_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let train = data(tmp.path());
    // Rank 1 of 2, with no rank 0 serving the store.
    let port = simsiam::dist::free_port().unwrap();
    let t0 = Instant::now();
    let out = bin()
        .args(args(&train, &tmp.path().join("run"), 1, &["dist.timeout_s=3"]))
        .env("WORLD_SIZE", "2")
        .env("RANK", "1")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("rank 1: joining the gloo process group at 127.0.0.1:"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
}

#[test]
fn launch_environment_errors_name_the_variable() {
    let get = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    use simsiam::dist::Launch;
    assert_eq!(Launch::from_vars(get(&[])).unwrap(), None);
    let l = Launch::from_vars(get(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1"), ("MASTER_PORT", "1234")]))
        .unwrap()
        .unwrap();
    assert_eq!((l.rank, l.world, l.local_rank, l.master_port), (3, 4, 1, 1234));
    assert_eq!((l.master_addr.as_str(), l.agent_store), ("127.0.0.1", false));
    // torchrun: its agent serves the store, every rank is a client.
    let l = Launch::from_vars(get(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("TORCHELASTIC_USE_AGENT_STORE", "True")]))
        .unwrap()
        .unwrap();
    assert!(l.agent_store);
    let e = Launch::from_vars(get(&[("WORLD_SIZE", "2")])).unwrap_err().to_string();
    assert!(e.contains("RANK is not"), "{e}");
    let e = Launch::from_vars(get(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err().to_string();
    assert!(e.contains("RANK=2 must be below WORLD_SIZE=2"), "{e}");
    let e =
        Launch::from_vars(get(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "x")])).unwrap_err().to_string();
    assert!(e.contains("MASTER_PORT"), "{e}");
}

#[test]
fn ctrl_c_stops_every_rank_at_the_same_step_and_resume_finishes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let train = data(tmp.path());
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let a = |out: &Path| args(&train, out, 3, &["monitor.log_every=1", "dist.sync_bn=true"]);
    ok(bin().args(a(&full)).args(["--nproc", "2"]).output().unwrap());
    let child = bin().args(a(&part)).args(["--nproc", "2"]).stderr(Stdio::piped()).spawn().unwrap();
    // Ctrl-C reaches the launcher, which passes it on to the ranks.
    let (code, err) = common::interrupt_after(child, &part, 3);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("--resume") && err.contains("--nproc 2"), "{err}");
    assert!(err.contains("checkpoint written to"), "{err}");
    ok(bin().args(["train", "--resume"]).arg(&part).args(["--nproc", "2"]).output().unwrap());
    let d = max_rel_diff(&weights(&full), &weights(&part), |_| true);
    assert!(d < 1e-4, "weights differ by {d:e} (relative)");
}
