//! The `simsiam` binary end to end on CPU: a short run, Ctrl-C and resume reproducing the
//! uninterrupted loss curve, a NaN stopping the run with the last good checkpoint kept, and
//! bad flags giving clear errors.
mod common;
use simsiam::data::CifarKind;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simsiam"));
    c.env("OMP_NUM_THREADS", "1");
    c
}

/// Small CIFAR-10 binaries (train 640, test 128 images) in a temp folder.
fn data() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.bin");
    let test = tmp.path().join("test.bin");
    common::write_cifar(&train, CifarKind::Cifar10, 640, 10);
    common::write_cifar(&test, CifarKind::Cifar10, 128, 10);
    (tmp, train, test)
}

/// A very small model: the run's shape (steps, epochs, checkpoints) is what is under test.
fn train_args(train: &Path, test: &Path, out: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--preset", "tiny", "--device", "cpu", "--epochs", "3", "--batch-size", "32"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend([
        "--data".into(),
        train.display().to_string(),
        "--test-data".into(),
        test.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        // Not the default seed, so that a run repeated from its saved config shows the seed saved.
        "--seed".into(),
        "7".into(),
    ]);
    for s in common::SMALL_MODEL.iter().chain(&[
        "data.test_limit=0",
        "monitor.log_every=1",
        "monitor.knn_every=1",
        "monitor.knn_k=20",
        "run.checkpoint_every=1",
    ]) {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a
}

/// A run's `metrics.jsonl`, one JSON value per line.
fn metric_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect()
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    metric_lines(run)
        .iter()
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// A run's `"weights"` lines, in file order.
fn weights_lines(run: &Path) -> Vec<serde_json::Value> {
    metric_lines(run).into_iter().filter(|v| v["event"] == "weights").collect()
}

/// The steps of a run's `"weights"` lines, in file order.
fn weights_steps(run: &Path) -> Vec<u64> {
    weights_lines(run).iter().map(|v| v["step"].as_u64().unwrap()).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// A user error: exit code 1 and an `error:` line, not a panic. Returns stderr.
fn user_error(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!((err.starts_with("error: ") || err.contains("\nerror: ")) && !err.contains("panicked"), "{err}");
    err
}

/// Edits a finished run's saved config (each `(from, to)` replaced), e.g. for more epochs on
/// `--resume`.
fn edit_config(run: &Path, edits: &[(&str, &str)]) {
    let path = run.join("config.toml");
    let text = edits.iter().fold(std::fs::read_to_string(&path).unwrap(), |t, (a, b)| t.replace(a, b));
    std::fs::write(&path, text).unwrap();
}

/// [`train_args`] for a 1-epoch run.
fn one_epoch_args(train: &Path, test: &Path, out: &Path) -> Vec<String> {
    let mut a = train_args(train, test, out);
    a[6] = "1".into(); // --epochs 1
    a
}

#[test]
fn interrupted_run_resumes_to_the_same_loss_curve() {
    let (tmp, train, test) = data();
    let full = tmp.path().join("full");
    let text = ok(bin().args(train_args(&train, &test, &full)).output().unwrap());
    assert!(text.contains("kNN top-1"), "{text}");
    let want = losses(&full);
    assert_eq!(want.len(), 60, "3 epochs x 20 steps");
    for f in ["config.toml", "summary.json", "checkpoints/latest", "report.html", "report/loss.svg", "report/knn.png"] {
        assert!(full.join(f).is_file(), "{f}");
    }
    let html = std::fs::read_to_string(full.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("kNN top-1") && html.contains("[optim]"), "self-contained report");
    // What it reached, readably: the monitors at the start and at the end, kNN, the verdict.
    for want in [
        "<b>Finished</b>: 3 epochs, 60 steps",
        "on cpu (1 threads), fp32;",
        "<th>last 10% of steps</th>",
        "collapse verdict: <b>",
        "(epoch 0)",
    ] {
        assert!(html.contains(want), "{want:?} in the report");
    }
    // The build that wrote it, as `--version` says it: the commit of this checkout, where it is
    // one, and the libtorch it was built against.
    let summary: serde_json::Value = serde_json::from_str(&read(&full.join("summary.json"))).unwrap();
    let version = ok(bin().arg("--version").output().unwrap());
    let libtorch = version.split(", libtorch ").nth(1).unwrap().trim().trim_end_matches(')').to_string();
    assert!(libtorch.starts_with("2.") && libtorch != "unknown", "{version}");
    let commit = version.split("(commit ").nth(1).unwrap().split(',').next().unwrap().to_string();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success());
    if let Some(head) = head {
        assert_eq!(commit, String::from_utf8(head.stdout).unwrap().trim(), "{version}");
    }
    assert_eq!(summary["build"], format!("simsiam {} ({commit}), libtorch {libtorch}", env!("CARGO_PKG_VERSION")));
    assert_eq!(&std::fs::read(full.join("report/knn.png")).unwrap()[..4], b"\x89PNG");
    // Geometry monitor lines at initialisation and each epoch.
    let metrics = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches("\"event\":\"geometry\"").count(), 4);
    // `monitor.weights`: after every flush (here every step) each stage's |w| and relative
    // update, plotted in the report.
    assert_eq!(weights_steps(&full), (0..60).collect::<Vec<u64>>());
    let last = weights_lines(&full).pop().unwrap();
    for stage in ["stem", "layer1", "layer4", "backbone", "projector", "predictor"] {
        let (n, u) = (last["norm"][stage].as_f64().unwrap(), last["update"][stage].as_f64().unwrap());
        assert!(n > 0.0 && u > 0.0 && u < 1.0, "{stage}: |w| {n}, |Δw|/|w| {u}");
    }
    // The residual branches' gains: grown from 0 (zero_init_residual) in every stage.
    for stage in ["layer1", "layer2", "layer3", "layer4"] {
        let g = last["branch_gain"][stage].as_f64().unwrap();
        assert!(g > 0.0 && g < 1.0, "{stage}: branch gain {g}");
    }
    for f in ["weights_update.png", "weights_norm.svg", "branch_gain.png"] {
        assert!(full.join("report").join(f).is_file(), "{f}");
    }

    // The saved config alone (with its seed) repeats the run step for step.
    let again = tmp.path().join("again");
    let cfg = full.join("config.toml");
    ok(bin().args(["train", "--config", cfg.to_str().unwrap(), "--out", again.to_str().unwrap()]).output().unwrap());
    assert_eq!(losses(&again), want, "a run from its saved config.toml");

    // Same run, Ctrl-C (SIGINT) once a few steps are logged, then --resume.
    let part = tmp.path().join("part");
    let child = bin().args(train_args(&train, &test, &part)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (code, err) = common::interrupt_after(child, &part, 8);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let done = losses(&part).len();
    assert!(done < 60, "interrupted before the end ({done} steps)");
    ok(bin().args(["train", "--resume", part.to_str().unwrap()]).output().unwrap());
    // Every invocation that trained the run, in order.
    let commands = std::fs::read_to_string(part.join("commands.txt")).unwrap();
    let lines: Vec<&str> = commands.lines().collect();
    assert!(lines.len() == 2 && lines[0].starts_with("simsiam train --preset tiny"), "{commands}");
    assert_eq!(lines[1], format!("simsiam train --resume {}", part.display()), "{commands}");
    let same_curve = |run: &Path, what: &str| {
        let got = losses(run);
        assert_eq!(got.len(), want.len(), "{what}");
        for ((s1, a), (s2, b)) in want.iter().zip(&got) {
            assert_eq!(s1, s2);
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "step {s1}: {a} vs {b} ({what})");
        }
    };
    same_curve(&part, &format!("interrupted after {done}"));
    assert_eq!(weights_steps(&part), (0..60).collect::<Vec<u64>>(), "one weights line per step across the resume");
    // Its summary is the whole run's, not the resumed part's: the kNN at initialisation
    // (measured before the interruption), the last step's loss, images/s over all 60 steps.
    let summary = |run: &Path| serde_json::from_str::<serde_json::Value>(&read(&run.join("summary.json"))).unwrap();
    let (a, b) = (summary(&full), summary(&part));
    assert!(b["knn_init"].is_f64() && b["knn_init"] == a["knn_init"], "{b}");
    let (la, lb) = (a["final_loss"].as_f64().unwrap(), b["final_loss"].as_f64().unwrap());
    assert!((la - lb).abs() <= 1e-5 * la.abs(), "final loss {la} vs {lb}");
    assert!((a["knn_final"].as_f64().unwrap() - b["knn_final"].as_f64().unwrap()).abs() <= 1.0, "{a} / {b}");
    let images = b["images_per_s"].as_f64().unwrap() * b["train_seconds"].as_f64().unwrap();
    assert!((images - 60.0 * 32.0).abs() < 1.0, "{images} images in the whole run's time at its rate");

    // Resuming a finished run trains nothing and leaves what it reported as it was.
    let before = read(&full.join("summary.json"));
    let text = ok(bin().args(["train", "--resume", full.to_str().unwrap()]).output().unwrap());
    assert!(text.contains("already finished its 3 epochs") && text.contains("model.init_checkpoint="), "{text}");
    assert_eq!(read(&full.join("summary.json")), before);
    assert_eq!(losses(&full), want);

    // `--until-epoch`: a clean stop with a checkpoint of its own (none falls there with
    // checkpoint_every 5), exit 0; a resume past it continues the same schedule.
    let short = tmp.path().join("short");
    let mut args = train_args(&train, &test, &short);
    args.extend(["--set".into(), "run.checkpoint_every=5".into(), "--until-epoch".into(), "1".into()]);
    let text = ok(bin().args(&args).output().unwrap());
    assert!(text.contains("stopped after epoch 1 of 3") && text.contains("--resume"), "{text}");
    assert_eq!(losses(&short).len(), 20);
    assert!(!short.join("summary.json").exists(), "a paused run is not finished");
    let resume = |until: Option<&str>| {
        let mut c = bin();
        c.args(["train", "--resume", short.to_str().unwrap()]);
        c.args(until.map(|u| vec!["--until-epoch", u]).unwrap_or_default());
        ok(c.output().unwrap())
    };
    for _ in 0..2 {
        // The second time it is already there: it stops at once, with nothing trained.
        assert!(resume(Some("2")).contains("stopped after epoch 2 of 3"));
        assert_eq!(losses(&short).len(), 40);
    }
    resume(None);
    same_curve(&short, "paused after epochs 1 and 2");
    assert!(short.join("summary.json").is_file());
}

/// `run.checkpoint_minutes`: checkpoints within an epoch, so that a job killed outright
/// (SIGKILL: no Ctrl-C checkpoint) resumes from its last one and repeats the run's loss curve.
/// Ctrl-C while the data load: the run stops before its first step, with the initial weights
/// saved (exit 130), and `--resume` then trains the uninterrupted run's loss curve. The data
/// are a tar archive behind a named pipe, so that the load waits, deterministically, until the
/// interrupt has been taken.
#[test]
fn ctrl_c_while_the_data_load_stops_before_the_first_step() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    for i in 0..64u64 {
        let class = images.join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&class).unwrap();
        common::save_rgb(&class.join(format!("{i:02}.png")), 32, 32, i);
    }
    let archive = tmp.path().join("train.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &images).unwrap();
    b.finish().unwrap();
    drop(b);
    let fifo = tmp.path().join("piped.tar");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let args = |data: &Path, out: &Path| -> Vec<String> {
        let mut a: Vec<String> =
            ["train", "--preset", "tiny", "--device", "cpu", "--epochs", "2", "--batch-size", "16", "--seed", "3"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(["--data".into(), data.display().to_string(), "--out".into(), out.display().to_string()]);
        for s in common::SMALL_MODEL.iter().chain(&["data.format=\"tar\"", "monitor.log_every=1"]) {
            a.extend(["--set".into(), s.to_string()]);
        }
        a
    };
    let full = tmp.path().join("full");
    ok(bin().args(args(&archive, &full)).output().unwrap());
    let want = losses(&full);
    assert_eq!(want.len(), 8, "2 epochs x 4 steps");

    let run = tmp.path().join("r");
    let mut child = bin().args(args(&fifo, &run)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let mut wait_for = |text: &str, said: &mut String| loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no {text:?} in:\n{said}");
        said.push_str(&line);
        if line.contains(text) {
            break;
        }
    };
    // The handler is installed before the run folder is named, and the load then waits on the pipe.
    wait_for("run folder:", &mut said);
    // SAFETY: signalling a child process of this test.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    wait_for("interrupt (Ctrl-C or SIGTERM)", &mut said);
    std::fs::write(&fifo, std::fs::read(&archive).unwrap()).unwrap();
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{said}");
    assert!(said.contains("interrupted at epoch 0, step 0; checkpoint saved"), "{said}");
    assert!(run.join("checkpoints/step-000000000").is_dir(), "the initial weights are saved: {said}");
    assert!(losses(&run).is_empty(), "no step was trained");
    // The resume reads the same images from the archive itself, and trains the whole curve.
    ok(bin().args(["train", "--resume"]).arg(&run).arg("--data").arg(&archive).output().unwrap());
    assert_eq!(losses(&run), want, "the resumed run's losses are the uninterrupted run's");
}

#[test]
fn a_killed_run_resumes_from_its_last_timed_checkpoint() {
    let (tmp, train, test) = data();
    // No epoch checkpoint before the end; a timed one after every flush (every step).
    let timed = ["--set", "run.checkpoint_every=5", "--set", "run.checkpoint_minutes=1e-9"];
    let full = tmp.path().join("full");
    // In a log (stderr not a terminal): a line per epoch, and within one at least every
    // `monitor.progress_minutes` (here: at every flush).
    let lines = ["--set", "monitor.progress_minutes=1e-9"];
    let text = ok(bin().args(train_args(&train, &test, &full)).args(timed).args(lines).output().unwrap());
    for want in
        ["epoch    1/3 step 1/20  loss", "epoch    1/3 step 19/20  loss", "epoch    1/3  loss", "epoch    3/3  loss"]
    {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert_eq!(text.matches(" img/s  ETA ").count(), 3 * 19 + 2, "no time left on the last line: {text}");
    let want = losses(&full);
    let killed = tmp.path().join("killed");
    let child = bin()
        .args(train_args(&train, &test, &killed))
        .args(timed)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = common::signal_after(child, &killed, 30, libc::SIGKILL);
    assert_eq!(code, None, "killed by the signal: {err}");
    let latest = read(&killed.join("checkpoints/latest"));
    let at: usize = latest.trim().trim_start_matches("step-").parse().unwrap();
    assert!(at > 0 && at < 60, "a checkpoint within the run: {latest}");
    ok(bin().args(["train", "--resume", killed.to_str().unwrap()]).output().unwrap());
    let got = losses(&killed);
    assert_eq!(got.len(), want.len(), "one line per step across the kill (resumed from step {at})");
    for ((s1, a), (s2, b)) in want.iter().zip(&got) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "step {s1}: {a} vs {b} (resumed from step {at})");
    }
}

/// SIGTERM (a scheduler's notice before it kills a job) is Ctrl-C: a checkpoint at the step
/// reached, and the way to resume.
#[test]
fn sigterm_checkpoints_like_ctrl_c() {
    let (tmp, train, test) = data();
    let run = tmp.path().join("run");
    let child = bin().args(train_args(&train, &test, &run)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (code, err) = common::signal_after(child, &run, 8, libc::SIGTERM);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("checkpoint written") && err.contains("--resume"), "{err}");
    let at: usize = read(&run.join("checkpoints/latest")).trim().trim_start_matches("step-").parse().unwrap();
    assert_eq!(at, losses(&run).len(), "the checkpoint is at the last logged step");
    // Its report says how far it got.
    ok(bin().args(["report", run.to_str().unwrap()]).output().unwrap());
    let html = read(&run.join("report.html"));
    assert!(html.contains(&format!("<b>Not finished</b> (no summary.json yet): {at} steps logged so far")), "{html}");
}

/// One training process per run folder: a second `--resume` while the first trains is an
/// error naming the holder; once that process is gone (even by SIGKILL) the resume goes on.
#[test]
fn a_run_folder_is_trained_by_one_process_at_a_time() {
    let (tmp, train, test) = data();
    let run = tmp.path().join("run");
    let mut args = train_args(&train, &test, &run);
    args[6] = "50".into(); // --epochs 50: long enough to be caught training
    args.extend(["--set".into(), "run.checkpoint_every=1".into()]);
    let child = bin().args(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    while !run.join("checkpoints/latest").exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let err = user_error(bin().args(["train", "--resume", run.to_str().unwrap()]).output().unwrap());
    assert!(err.contains(&format!("in use: another simsiam process (pid {pid})")), "{err}");
    // Starting a new run there is refused the same way, before anything is written.
    let err = user_error(bin().args(train_args(&train, &test, &run)).output().unwrap());
    assert!(err.contains("in use"), "{err}");
    let (code, _) = common::signal_after(child, &run, 0, libc::SIGKILL);
    assert_eq!(code, None, "killed");
    let latest = run.join("checkpoints").join(read(&run.join("checkpoints/latest")).trim());
    let position: serde_json::Value = serde_json::from_str(&read(&latest.join("position.json"))).unwrap();
    let next = (position["epoch"].as_u64().unwrap() + 1).to_string();
    ok(bin().args(["train", "--resume", run.to_str().unwrap(), "--until-epoch", &next]).output().unwrap());
}

/// `run.prefetch` makes each step's views one step early (on a GPU, on a second stream): the
/// per-step seeds must give the very same views, so the very same loss curve, across epochs.
#[test]
fn prefetched_views_give_the_same_loss_curve() {
    let (tmp, train, test) = data();
    let curve = |name: &str, sets: &[&str]| {
        let run = tmp.path().join(name);
        let mut args = train_args(&train, &test, &run);
        args[6] = "2".into(); // --epochs 2: the views of an epoch's first step are not made ahead
        for s in sets {
            args.extend(["--set".to_string(), s.to_string()]);
        }
        ok(bin().args(&args).output().unwrap());
        losses(&run)
    };
    let want = curve("plain", &[]);
    assert_eq!(want.len(), 40, "2 epochs x 20 steps");
    // Bit-identical: making step s + 1's views from step s's seed fails this (checked).
    assert_eq!(curve("prefetch", &["run.prefetch=true"]), want);
}

/// Pre-training on unlabelled images (a folder of loose images): the run trains and says the
/// kNN monitor is off; evaluation, which needs classes, is a clear error.
#[test]
fn trains_on_a_folder_of_unlabelled_images() {
    let (tmp, _, test) = data();
    let loose = tmp.path().join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    for i in 0..64 {
        common::save_rgb(&loose.join(format!("{i:03}.jpg")), 40, 36, i);
    }
    let run = tmp.path().join("u");
    let args = one_epoch_args(&loose, &test, &run);
    let text = ok(bin().args(&args).output().unwrap());
    assert!(text.contains("unlabelled") && text.contains("kNN monitor off"), "{text}");
    assert_eq!(losses(&run).len(), 2, "64 images, batch 32");
    let err = user_error(bin().args(["eval", "knn"]).arg(&run).output().unwrap());
    assert!(err.contains("--data") && err.contains("no class folders"), "{err}");
}

/// Views smaller than the stored images (`augment.view_size`, the ImageNet preset's 256 / 224):
/// training, the kNN monitor, the linear probe and embeddings all see 24-px inputs of a 40-px
/// store, and the saved config repeats it.
#[test]
fn views_smaller_than_the_stored_images_train_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    for (c, class) in ["a", "b"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..32 {
            common::save_rgb(&root.join(class).join(format!("{i:02}.png")), 48, 40, (c * 100 + i) as u64);
        }
    }
    let run = tmp.path().join("r");
    let mut args = one_epoch_args(&root, &root, &run);
    args.extend(["--set", "data.image_size=40", "--set", "augment.view_size=24"].map(String::from));
    ok(bin().args(&args).output().unwrap());
    assert!(read(&run.join("config.toml")).contains("view_size = 24"));
    assert!(metric_lines(&run).iter().any(|l| l["event"] == "knn"), "the kNN monitor ran");
    let probe = ok(bin().args(["eval", "linear"]).arg(&run).args(["--epochs", "1"]).output().unwrap());
    assert!(probe.contains("\"top1\""), "{probe}");
    let emb = tmp.path().join("emb");
    ok(bin().args(["embed"]).arg(&run).arg("--data").arg(&root).arg("--out").arg(&emb).output().unwrap());
    // A view larger than the store is refused, naming the field.
    let mut bad = one_epoch_args(&root, &root, &tmp.path().join("bad"));
    bad.extend(["--set", "data.image_size=40", "--set", "augment.view_size=64"].map(String::from));
    let err = user_error(bin().args(&bad).output().unwrap());
    assert!(err.contains("augment.view_size") && err.contains("got 64"), "{err}");
}

/// `simsiam data`: what a dataset holds, as a run would load it (one JSON line); with
/// `data.cache_dir` it fills the cache, and the next load reads it; a bad path is a clear error.
#[test]
fn data_describes_a_dataset_and_fills_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    for (class, n) in [("cats", 3), ("dogs", 2)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..n {
            common::save_rgb(&root.join(format!("{class}/{i}.png")), 20, 16, i);
        }
    }
    let cache = tmp.path().join("cache");
    let command = |extra: &[&str]| {
        let mut c = bin();
        c.args(["data", "--data", root.to_str().unwrap(), "--set", "data.image_size=16"]).args(extra);
        c
    };
    let run = |extra: &[&str]| -> (serde_json::Value, String) {
        let text = ok(command(extra).output().unwrap());
        let line = text.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line: {text}"));
        (serde_json::from_str(line).unwrap(), text)
    };
    let (v, _) = run(&[]);
    assert_eq!((v["images"].as_u64(), v["classes"].as_u64(), v["image_size"].as_u64()), (Some(5), Some(2), Some(16)));
    assert_eq!(v["per_class"], serde_json::json!({"cats": 3, "dogs": 2}));
    assert_eq!(v["store_mib"].as_f64(), Some(5.0 * 16.0 * 16.0 * 3.0 / 1048576.0));
    assert_eq!(v["source_short_side"], serde_json::json!({"min": 16, "median": 16, "max": 16}));
    // A store far smaller than the images says so.
    let (_, text) = run(&["--set", "data.image_size=8"]);
    assert!(text.contains("shorter sides are 16-16 px (median 16); the store shrinks them to 8 px"), "{text}");
    let set = format!("data.cache_dir={:?}", cache.display().to_string());
    let (first, text) = run(&["--set", &set]);
    assert!(text.contains("decoded into the cache"), "{text}");
    let (again, text) = run(&["--set", &set]);
    assert!(text.contains("read from the cache"), "{text}");
    assert_eq!((&first["per_class"], &again["images"]), (&v["per_class"], &v["images"]));
    // The digest a resume compares: the same from the cache, and from an archive of the
    // folder whose members are in another order; another size of the images differs.
    assert_eq!(v["digest"].as_str().map(str::len), Some(16));
    assert_eq!((&first["digest"], &again["digest"]), (&v["digest"], &v["digest"]));
    let archive = tmp.path().join("images.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for name in ["dogs/1.png", "cats/2.png", "dogs/0.png", "cats/0.png", "cats/1.png"] {
        b.append_path_with_name(root.join(name), name).unwrap();
    }
    b.into_inner().unwrap();
    let text =
        ok(bin().args(["data", "--data", archive.to_str().unwrap(), "--set", "data.image_size=16"]).output().unwrap());
    let tarred: serde_json::Value = serde_json::from_str(text.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(tarred["digest"], v["digest"], "{text}");
    let (smaller, _) = run(&["--set", "data.image_size=8"]);
    assert_ne!(smaller["digest"], v["digest"]);
    // Processes filling one cache at once (an experiment's parallel workers) all succeed and
    // leave one complete entry, no temporary files.
    let shared = tmp.path().join("shared-cache");
    let set = format!("data.cache_dir={:?}", shared.display().to_string());
    let children: Vec<_> = (0..4)
        .map(|_| {
            command(&["--set", &set])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let text = ok(c.wait_with_output().unwrap());
        assert!(text.contains("\"images\":5"), "{text}");
    }
    let mut left: Vec<String> =
        std::fs::read_dir(&shared).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left[0].ends_with(".json") && left[1].ends_with(".u8"), "{left:?}");
    let err = user_error(bin().args(["data", "--data", "/nonexistent/images"]).output().unwrap());
    assert!(err.contains("/nonexistent/images") && err.contains("no such"), "{err}");
    // `--views N --out DIR`: the views of N images (all 5 here) as the training run draws them.
    let views = tmp.path().join("views");
    ok(command(&["--views", "8", "--out", views.to_str().unwrap()]).output().unwrap());
    let png = image::open(views.join("views.png")).unwrap();
    assert_eq!((png.width(), png.height()), (3 * 16 * 6, 5 * 16 * 6), "5 rows of 3 images, 16 px drawn 6 times");
    let out = command(&["--views", "8"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("required") && err.contains("--out"), "{err}");
}

/// `--resume RUN --data NEW`: the same data, moved, is found there and the saved config follows
/// it; other training data (another number of images, or as many but other pixels) is
/// refused, naming the field.
#[test]
fn resume_finds_moved_data_and_refuses_other_data() {
    let (tmp, train, test) = data();
    let run = tmp.path().join("r");
    let args = one_epoch_args(&train, &test, &run);
    ok(bin().args(&args).output().unwrap());
    // One more epoch, with the data somewhere else now.
    let cfg_path = run.join("config.toml");
    edit_config(&run, &[("epochs = 1", "epochs = 2")]);
    let moved = tmp.path().join("moved.bin");
    std::fs::rename(&train, &moved).unwrap();
    user_error(bin().args(["train", "--resume"]).arg(&run).output().unwrap()); // the old path is gone
                                                                               // Given relative to the current folder, saved absolute.
    ok(bin()
        .current_dir(tmp.path())
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--data", "moved.bin"])
        .output()
        .unwrap());
    assert_eq!(losses(&run).len(), 40, "2 epochs x 20 steps");
    let saved = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(
        saved.contains(&format!("\"{}\"", moved.canonicalize().unwrap().display())),
        "the saved config follows the data"
    );
    // Other data: 320 images instead of 640.
    edit_config(&run, &[("epochs = 2", "epochs = 3")]);
    let other = tmp.path().join("other.bin");
    common::write_cifar(&other, CifarKind::Cifar10, 320, 10);
    let err = user_error(bin().args(["train", "--resume"]).arg(&run).arg("--data").arg(&other).output().unwrap());
    assert!(err.contains("data.train") && err.contains("320") && err.contains("640"), "{err}");
    // Other data of the same size: the moved file with the first image's pixels changed.
    let mut bytes = std::fs::read(&moved).unwrap();
    bytes[1..3073].iter_mut().for_each(|b| *b = 255 - *b);
    let same_size = tmp.path().join("same-size.bin");
    std::fs::write(&same_size, bytes).unwrap();
    let err = user_error(bin().args(["train", "--resume"]).arg(&run).arg("--data").arg(&same_size).output().unwrap());
    assert!(err.contains("data.train: not the images the run started on (as many, 640"), "{err}");
    assert!(std::fs::read_to_string(&cfg_path).unwrap().contains("moved.bin"), "a refused resume changes nothing");
}

/// A run started with relative paths (`--data train.bin` in the data's folder) is used from
/// another folder: its saved config holds the data's absolute paths, so `eval`, `analyse` and
/// `--resume` find them. Data that are missing are named with the folder a relative path was
/// read from.
#[test]
fn a_run_started_with_relative_paths_is_used_from_any_folder() {
    let (tmp, train, test) = data();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let mut args = one_epoch_args(Path::new("train.bin"), Path::new("test.bin"), Path::new("r"));
    args.extend(["--set".into(), "data.cache_dir=\"cache\"".into()]);
    ok(bin().current_dir(tmp.path()).args(&args).output().unwrap());
    let saved = read(&tmp.path().join("r/config.toml"));
    let abs = |p: &Path| p.canonicalize().unwrap().display().to_string();
    for (path, what) in [(&train, "data.train"), (&test, "data.test")] {
        assert!(saved.contains(&format!("= \"{}\"", abs(path))), "{what} saved as an absolute path:\n{saved}");
    }
    assert!(saved.contains(&format!("cache_dir = \"{}\"", abs(tmp.path()) + "/cache")), "{saved}");
    let run = Path::new("../r");
    let knn = ok(bin().current_dir(&elsewhere).args(["eval", "knn"]).arg(run).args(["--k", "20"]).output().unwrap());
    assert!(knn.contains("knn_top1"), "{knn}");
    let analysed = ok(bin()
        .current_dir(&elsewhere)
        .args(["analyse", "dimension"])
        .arg(run)
        .args(["--n", "64", "--k", "2"])
        .output()
        .unwrap());
    assert!(tmp.path().join("r/analysis/dimension.json").is_file(), "{analysed}");
    edit_config(&tmp.path().join("r"), &[("epochs = 1", "epochs = 2")]);
    ok(bin().current_dir(&elsewhere).args(["train", "--resume"]).arg(run).output().unwrap());
    assert_eq!(losses(&tmp.path().join("r")).len(), 40, "2 epochs x 20 steps");
    // Missing data, given relative: the error names the field and the folder it was read from.
    let err = user_error(
        bin().current_dir(&elsewhere).args(["eval", "knn"]).arg(run).args(["--data", "train.bin"]).output().unwrap(),
    );
    assert!(
        err.contains("train.bin: data.train (--data): no such file or folder")
            && err.contains(&format!("read from the current folder, {}", elsewhere.display())),
        "{err}"
    );
}

#[test]
fn non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let (tmp, train, test) = data();
    let run = tmp.path().join("nan");
    let args = one_epoch_args(&train, &test, &run);
    ok(bin().args(&args).output().unwrap());
    let good = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    // Continue for two more epochs with an lr that makes the weights overflow.
    edit_config(&run, &[("epochs = 1", "epochs = 3"), ("base_lr = 0.3", "base_lr = 1e38")]);
    let err = user_error(bin().args(["train", "--resume", run.to_str().unwrap()]).output().unwrap());
    assert!(err.contains("non-finite loss") && err.contains(good.trim()), "{err}");
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest")).unwrap(),
        good,
        "no checkpoint written after the NaN"
    );
}

#[test]
fn bench_times_and_profiles_a_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("prof");
    let mut c = bin();
    c.args(["bench", "--preset", "tiny", "--device", "cpu", "--batch-size", "8", "--warmup", "1", "--steps", "2"]);
    c.args(["--mode", "step,end-to-end,train", "--profile-steps", "2", "--profile"]).arg(&dir);
    for s in common::SMALL_MODEL {
        c.args(["--set", s]);
    }
    let stdout = ok(c.output().unwrap());
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (l, mode) in lines.iter().zip(["step", "end_to_end", "train"]) {
        assert_eq!(l["mode"], mode);
        assert_eq!((l["image_size"].as_u64(), l["view_size"].as_u64()), (Some(32), Some(32)));
        assert!(l["images_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(l["profile"].as_str().unwrap(), dir.join(format!("{mode}-profile.md")).display().to_string());
        let md = std::fs::read_to_string(dir.join(format!("{mode}-profile.md"))).unwrap();
        assert!(md.contains("| convolution |") && md.contains("aten::convolution_backward"), "{md}");
        assert!(dir.join(format!("{mode}-trace.json")).exists() && dir.join(format!("{mode}-profile.json")).exists());
    }
    // The end-to-end profile holds the named phases of a step, the augmentation's among them.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("end_to_end-profile.json")).unwrap()).unwrap();
    assert_eq!(json["steps"], 2);
    let trace = std::fs::read_to_string(dir.join("end_to_end-trace.json")).unwrap();
    assert!(trace.contains("\"augment\""), "end_to_end: no augment range in the trace");
    // A step computes the per-step monitors as part of it (so a CUDA graph captures them too).
    for mode in ["step", "end_to_end", "train"] {
        let trace = std::fs::read_to_string(dir.join(format!("{mode}-trace.json"))).unwrap();
        assert!(trace.contains("\"monitors\""), "{mode}: no monitors range in the trace");
    }
}

/// Every method's step is benchmarked as training takes it (BYOL's and MoCo's target network,
/// the queues), the forward pass too; targets only the training loop can make are refused.
#[test]
fn bench_times_every_method_and_refuses_loop_targets() {
    let bench = |extra: &[&str]| {
        let mut c = bin();
        c.args(["bench", "--preset", "tiny", "--device", "cpu", "--batch-size", "8", "--warmup", "1", "--steps", "1"]);
        for s in common::SMALL_MODEL {
            c.args(["--set", s]);
        }
        c.args(extra);
        c.output().unwrap()
    };
    for method in ["simclr", "moco", "byol", "swav"] {
        let extra = ["--method", method, "--mode", "step,forward", "--set", "objective.infonce_queue=16"];
        let stdout = ok(bench(&extra));
        assert_eq!(stdout.lines().count(), 2, "{method}: {stdout}");
    }
    for (set, what) in [
        ("objective.target=\"memory\"", "objective.target = \"memory\""),
        ("objective.target=\"eoa\"", "objective.target = \"eoa\""),
        ("objective.alternation_k=2", "objective.alternation_k > 1"),
    ] {
        let err = user_error(bench(&["--set", set]));
        assert!(err.contains(what) && err.contains("simsiam train"), "{err}");
    }
}

#[test]
fn bad_flags_are_clear_errors_not_panics() {
    let (tmp, train, test) = data();
    let run = tmp.path().join("r");
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "optim.lr=0.1"], "optim.lr"),
        (&["--set", "monitor.knn_k=641"], "monitor.knn_k: 641 neighbours, but the kNN bank"),
        (&["--set", "augment.grayscale_p=2"], "augment.grayscale_p"),
        (&["--set", "run.device=tpu"], "run.device"),
        (&["--set", "data.train=\"/no/such/dir\""], "/no/such/dir"),
    ];
    for (extra, want) in cases {
        let mut args = train_args(&train, &test, &run);
        args.extend(extra.iter().map(|s| s.to_string()));
        let err = user_error(bin().args(&args).output().unwrap());
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    // Commands on a run folder: the file at fault, its OS error said once; bad `--k`, `--t`.
    let err = user_error(bin().args(["eval", "knn"]).arg(tmp.path().join("none")).output().unwrap());
    assert!(err.contains("not a run folder") && err.contains("config.toml"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    let err = user_error(bin().arg("report").arg(tmp.path().join("none")).output().unwrap());
    assert!(err.contains("not a run folder: no metrics.jsonl"), "{err}");
    let args = one_epoch_args(&train, &test, &run);
    ok(bin().args(&args).output().unwrap());
    let bank_too_small = "--k: 641 neighbours, but the bank (the training data) holds only 640 images";
    for (flags, want) in
        [(&["--k", "0"][..], "--k"), (&["--k", "20,641"], bank_too_small), (&["--t", "0"], "--t"), (&["--t=-1"], "--t")]
    {
        let err = user_error(bin().args(["eval", "knn"]).arg(&run).args(flags).output().unwrap());
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}

/// `simsiam experiment FILE` for one epoch of a very small model at batch 32 on the test data.
fn experiment_file_args(file: &Path, out: &Path, train: &Path, test: &Path) -> Vec<String> {
    let mut args: Vec<String> =
        ["experiment", "--device", "cpu", "--epochs", "1", "--batch-size", "32"].map(String::from).to_vec();
    for (flag, path) in [("", file), ("--out", out), ("--data", train), ("--test-data", test)] {
        args.extend((!flag.is_empty()).then(|| flag.to_string()));
        args.push(path.display().to_string());
    }
    for s in common::SMALL_MODEL.iter().chain(&["monitor.knn_k=20"]) {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args
}

/// `--seeds`: every arm once per seed, in `ARM/seed-S`; the report gives each run, then the
/// means with their spread, and judges the ordering on the means.
#[test]
fn experiment_with_seeds_trains_every_arm_per_seed_and_orders_the_means() {
    let (tmp, train, test) = data();
    let file = tmp.path().join("sym.toml");
    std::fs::write(
        &file,
        "name = \"sym\"\nclaim = \"c\"\nsource = \"s\"\npaper = \"p\"\npreset = \"tiny\"\norder = [\"sym >= asym\"]\n\
         [[arm]]\nname = \"sym\"\nexpect = \"any\"\n\
         [[arm]]\nname = \"asym\"\nset = [\"objective.symmetry=\\\"asymmetric\\\"\"]\nexpect = \"any\"\n",
    )
    .unwrap();
    let out = tmp.path().join("exp");
    let mut args = experiment_file_args(&file, &out, &train, &test);
    args.extend(["--seeds", "3,4"].map(String::from));
    let text = ok(bin().args(&args).output().unwrap());
    assert_eq!(text.matches("): training").count(), 4, "{text}");
    let knn = |arm: &str, seed: u64| {
        let run = out.join(arm).join(format!("seed-{seed}"));
        assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().contains(&format!("seed = {seed}\n")));
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
        s["knn_final"].as_f64().unwrap()
    };
    let (a, b) = ((knn("sym", 3) + knn("sym", 4)) / 2.0, (knn("asym", 3) + knn("asym", 4)) / 2.0);
    // The sample sd of two values is their distance over sqrt(2).
    let sd_sym = (knn("sym", 3) - knn("sym", 4)).abs() / 2f64.sqrt();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| sym (seed 3) | Any |") && md.contains("| asym (seed 4) | Any |"), "{md}");
    assert!(md.contains("**Over seeds**") && md.lines().any(|l| l.starts_with("| sym | 3, 4 | ")), "{md}");
    let order = md.lines().find(|l| l.starts_with("| sym >= asym |")).unwrap_or_default();
    let held = if a >= b - 0.5 { "yes" } else { "**no**" };
    assert!(order.starts_with(&format!("| sym >= asym | {held} | {:+.2} (", a - b)), "means {a} {b}: {md}");
    // The summary over experiment folders gives each arm once: its verdicts and kNN mean ± sd.
    let table = ok(bin().args(["experiment", "--summary", tmp.path().to_str().unwrap()]).output().unwrap());
    let row = table.lines().find(|l| l.starts_with("| [sym](exp/report.md) |")).unwrap_or_default();
    assert!(!row.contains("seed 3") && row.contains(&format!(", {a:.2} ± {sd_sym:.2} (2); asym: ")), "{table}");
    let held = held.trim_matches('*');
    assert!(row.contains(&format!("kNN sym >= asym: {held}, {:+.2} (", a - b)), "{table}");
    // Again: all four runs are finished; a seed given twice is an error.
    let again = ok(bin().args(&args).output().unwrap());
    assert_eq!(again.matches("finished earlier, skipped").count(), 4, "{again}");
    let twice: Vec<String> = args.iter().map(|a| if a == "3,4" { "3,3".into() } else { a.clone() }).collect();
    let err = user_error(bin().args(&twice).output().unwrap());
    assert!(err.contains("--seeds: seed 3 is listed twice"), "{err}");
}

#[test]
fn experiment_runs_every_arm_reports_and_skips_finished_arms() {
    let (tmp, train, test) = data();
    let out = tmp.path().join("exp");
    let args = |out: &Path| {
        let mut a: Vec<String> =
            ["experiment", "stop-gradient", "--device", "cpu", "--epochs", "2", "--batch-size", "32"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend([
            "--out".into(),
            out.display().to_string(),
            "--data".into(),
            train.display().to_string(),
            "--test-data".into(),
            test.display().to_string(),
        ]);
        for s in [
            "model.width=4",
            "model.dim=32",
            "model.proj_hidden=32",
            "model.pred_hidden=8",
            "monitor.knn_k=20",
            "monitor.knn_every=1",
            "run.threads=1",
        ] {
            a.push("--set".into());
            a.push(s.into());
        }
        a
    };
    // One arm first (`--arms`): reported, the claim not judged until the other has run.
    let first = ok(bin().args(args(&out)).args(["--arms", "simsiam"]).output().unwrap());
    assert!(first.contains("not judged yet (1 arm(s) to train: no-stop-grad)"), "{first}");
    assert!(!out.join("no-stop-grad/summary.json").exists());
    let table = ok(bin().args(["experiment", "--summary", tmp.path().to_str().unwrap()]).output().unwrap());
    assert!(table.contains("| pending |"), "{table}");
    let err = user_error(bin().args(args(&out)).args(["--arms", "nope"]).output().unwrap());
    assert!(err.contains("--arms") && err.contains("\"nope\"") && err.contains("no-stop-grad"), "{err}");
    // The rest, stopped by SIGTERM within its arm: the hint is to run the same command again
    // (the arm's own `train --resume` would not finish the experiment).
    let child = bin().args(args(&out)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (code, err) = common::signal_after(child, &out.join("no-stop-grad"), 1, libc::SIGTERM);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("experiment stop-gradient: run the same command again"), "{err}");
    assert!(!out.join("no-stop-grad/summary.json").exists(), "stopped before the arm's end");
    // Then again, with a linear probe of every arm: the finished arm is skipped (its probe
    // made now), the stopped one resumes, the claim is judged.
    let linear = ["--linear-epochs", "1"];
    let text = ok(bin().args(args(&out)).args(linear).output().unwrap());
    assert_eq!(text.matches("finished earlier, skipped").count(), 1, "{text}");
    assert!(text.contains("[stop-gradient] 2/2 no-stop-grad: resuming"), "{text}");
    assert_eq!(text.matches("linear probe (1 epochs)").count(), 2, "{text}");
    let probe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("simsiam/linear_probe.json")).unwrap()).unwrap();
    let top1 = probe["top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1) && probe["config"]["epochs"] == 1, "{probe}");
    assert!(text.contains("stop-gradient: the claim ") && !text.contains("not judged"), "{text}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| simsiam | Healthy |") || md.contains("| simsiam | Healthy | "), "{md}");
    assert!(md.contains("| no-stop-grad | Collapsed |"), "{md}");
    // Each arm's spread at step 0, which its verdict compares with: near 1 with the heads' output BN.
    assert!(md.contains("| sqrt(d)·collapse_std | at step 0 |"), "{md}");
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("outcome.json")).unwrap()).unwrap();
    for arm in outcome["arms"].as_array().unwrap() {
        let start = arm["start_spread"].as_f64().unwrap_or_default();
        assert!(start > 0.9, "{}: {start}", arm["name"]);
    }
    for f in [
        "report.html",
        "outcome.json",
        "plots/loss.png",
        "plots/collapse_std.svg",
        "simsiam/summary.json",
        "no-stop-grad/config.toml",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The arm's saved config carries the experiment's override.
    assert!(std::fs::read_to_string(out.join("no-stop-grad/config.toml")).unwrap().contains("stop_grad = false"));
    assert!(md.contains("| kNN top-1 | linear top-1 |") && md.contains(&format!(" {top1:.2} |")), "{md}");
    // The report says which command wrote it, quoted as a shell needs it.
    assert!(md.contains("simsiam experiment stop-gradient --device cpu") && md.contains("--linear-epochs 1"), "{md}");
    // Running again skips both finished arms and their probes; another recipe probes again.
    let again = ok(bin().args(args(&out)).args(linear).output().unwrap());
    assert_eq!(again.matches("finished earlier, skipped").count(), 2, "{again}");
    assert_eq!(again.matches("linear probe finished earlier").count(), 2, "{again}");
    let other = ok(bin().args(args(&out)).args(["--linear-epochs", "2", "--arms", "simsiam"]).output().unwrap());
    assert_eq!(other.matches("linear probe (2 epochs)").count(), 2, "{other}");
    // The summary table over experiment folders.
    let table = ok(bin().args(["experiment", "--summary", tmp.path().to_str().unwrap()]).output().unwrap());
    assert!(
        table.contains("| [stop-gradient](exp/report.md) |") && table.contains("SimSiam (Chen & He 2021), §4.1"),
        "{table}"
    );
    // The two arms compared with each other and with a bare metrics file (the PyTorch reference
    // script's format: step lines and kNN events): what each reached, where the configs differ.
    let reference = tmp.path().join("ref.jsonl");
    std::fs::write(
        &reference,
        "{\"step\": 0, \"loss\": -0.1, \"collapse_std\": 0.02}\n{\"step\": 1, \"loss\": -0.3, \"collapse_std\": 0.02}\n\
         {\"event\": \"knn\", \"step\": 2, \"epoch\": 1, \"knn_top1\": 31.0}\n",
    )
    .unwrap();
    let cmp = tmp.path().join("cmp");
    let arm = |a: &str| out.join(a).display().to_string();
    ok(bin()
        .args(["report", &format!("sg={}", arm("simsiam")), &arm("no-stop-grad"), reference.to_str().unwrap()])
        .args(["--out", cmp.to_str().unwrap()])
        .output()
        .unwrap());
    let md = std::fs::read_to_string(cmp.join("report.md")).unwrap();
    let row = |label: &str| md.lines().find(|l| l.starts_with(&format!("| {label} |"))).unwrap_or_default().to_string();
    // The same verdicts as the experiment's (both arms are NotConverged after these 40 steps).
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("outcome.json")).unwrap()).unwrap();
    let verdict_of = |a: &str| {
        let arm = outcome["arms"].as_array().unwrap().iter().find(|x| x["name"] == a).unwrap();
        let v: simsiam::monitor::CollapseVerdict = serde_json::from_value(arm["verdict"].clone()).unwrap();
        format!("| {v:?} |")
    };
    assert!(row("sg").contains(&verdict_of("simsiam")), "{md}");
    assert!(row("no-stop-grad").contains(&verdict_of("no-stop-grad")), "{md}");
    assert!(row("ref").contains("| 2 |") && row("ref").contains("| 31.00 (1) |"), "steps and kNN of the file: {md}");
    assert!(md.contains("| `objective.stop_grad` | `true` | `false` | `–` |"), "the differing field: {md}");
    assert!(!md.contains("run.out_dir") && !md.contains("`model.dim`"), "only the fields that differ: {md}");
    // The weights monitor's curves too (the reference file has none: two runs' lines).
    for f in ["report.html", "plots/loss.png", "plots/knn.svg", "plots/update_backbone.png", "plots/branch_gain.svg"] {
        assert!(cmp.join(f).is_file(), "{f}");
    }
    // `LABEL=A,B`: repeats, each run listed and the group summarised.
    let reps = tmp.path().join("reps");
    ok(bin()
        .args(["report", &format!("g={},{}", arm("simsiam"), arm("no-stop-grad")), reference.to_str().unwrap()])
        .args(["--out", reps.to_str().unwrap()])
        .output()
        .unwrap());
    let md = std::fs::read_to_string(reps.join("report.md")).unwrap();
    assert!(md.contains("| g#1 | `") && md.contains("| g#2 | `") && md.contains("## Repeats"), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| g | 2 | ") && l.contains(" ± ")), "{md}");
    let err = user_error(bin().args(["report", &arm("simsiam"), &arm("no-stop-grad")]).output().unwrap());
    assert!(err.contains("--out"), "{err}");
    let err = user_error(
        bin()
            .args(["report", &arm("simsiam"), &format!("simsiam={}", arm("no-stop-grad")), "--out"])
            .arg(&cmp)
            .output()
            .unwrap(),
    );
    assert!(err.contains("both labelled \"simsiam\"") && err.contains("LABEL=PATH"), "{err}");
    let err = user_error(
        bin().args(["report", &arm("simsiam"), tmp.path().to_str().unwrap(), "--out"]).arg(&cmp).output().unwrap(),
    );
    assert!(err.contains("not a run") && err.contains("metrics.jsonl"), "{err}");
    // --list names every shipped experiment.
    let list = ok(bin().args(["experiment", "--list"]).output().unwrap());
    for name in [
        "stop-gradient",
        "predictor",
        "bn-placement",
        "siamese-architectures",
        "triplet-extra-gradient",
        "simsiam-extra-gradient",
    ] {
        assert!(list.contains(name), "{name}");
    }
}

/// SwAV with 50 prototypes, as `--method swav` sets it.
const SWAV: [&str; 4] = [
    "model.predictor=\"identity\"",
    "objective.main_weight=0.0",
    "objective.swav.weight=1.0",
    "objective.swav.prototypes=50",
];

/// MoCo v2 with a queue of 64 keys, as `--method moco` sets it.
const MOCO: [&str; 8] = [
    "model.predictor=\"identity\"",
    "model.ema_target=true",
    "model.ema_schedule=\"constant\"",
    "objective.main_weight=0.0",
    "objective.infonce=1.0",
    "objective.infonce_temperature=0.2",
    "objective.infonce_queue=64",
    "model.ema_momentum=0.99",
];

/// The queues are part of the state a resume restores, SwAV's (with its frozen prototypes)
/// and MoCo's keys: a run paused after epoch 2 (SwAV's queue full since epoch 1) and resumed
/// repeats the uninterrupted run.
#[test]
fn runs_with_queues_resume_to_the_same_loss_curve() {
    let (tmp, train, test) = data();
    let swav = [&SWAV[..], &["objective.swav.queue=64", "objective.swav.queue_start_epoch=1"]].concat();
    for (name, sets) in [("swav", &swav[..]), ("infonce", &MOCO[..])] {
        let args = |out: &Path| {
            let mut a = train_args(&train, &test, out);
            for s in sets {
                a.extend(["--set".into(), s.to_string()]);
            }
            a
        };
        let full = tmp.path().join(format!("{name}-full"));
        ok(bin().args(args(&full)).output().unwrap());
        let want = losses(&full);
        assert_eq!(want.len(), 60);
        let part = tmp.path().join(format!("{name}-part"));
        let mut paused = args(&part);
        paused.extend(["--until-epoch".into(), "2".into()]);
        ok(bin().args(&paused).output().unwrap());
        ok(bin().args(["train", "--resume", part.to_str().unwrap()]).output().unwrap());
        let got = losses(&part);
        assert_eq!(got.len(), 60);
        for ((s, a), (_, b)) in want.iter().zip(&got) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "{name} step {s}: {a} vs {b}");
        }
        // The pause fell where the queue was in use (full), so the resumed steps needed it.
        let state = part.join("checkpoints/step-000000040/state.safetensors");
        let saved = tch::Tensor::read_safetensors(&state).unwrap();
        let filled = saved.iter().find(|(n, _)| *n == format!("{name}.queue_filled")).map(|(_, t)| t.int64_value(&[]));
        assert_eq!(filled, Some(64), "{name}: full at the pause");
    }
    // MoCo's queue must be shorter than the data, or it holds each image's own keys.
    let mut args = train_args(&train, &test, &tmp.path().join("too-long"));
    for s in MOCO.iter().chain(&["objective.infonce_queue=640"]) {
        args.extend(["--set".into(), s.to_string()]);
    }
    let err = user_error(bin().args(&args).output().unwrap());
    assert!(err.contains("objective.infonce_queue: 640 keys") && err.contains("640 images"), "{err}");
}

/// `run.precision = "fp16"` (what `auto` picks on a V100 or a T4) on the CPU's autocast: the
/// run follows the fp32 run step by step (within 1e-2: fp16 keeps about 3 digits, and over
/// longer runs the two drift apart as any two precisions do), says how it computed, and keeps
/// its loss scaler's state in each checkpoint, so that a paused run resumes to the same curve.
/// 64 images, 2 steps an epoch: the CPU's fp16 kernels are some 20 times slower than fp32's.
#[test]
fn fp16_run_follows_fp32_and_resumes_with_its_loss_scale() {
    let (tmp, train, test) = data();
    let args = |out: &Path, precision: &str| {
        let mut a = train_args(&train, &test, out);
        for s in [
            &format!("run.precision=\"{precision}\""),
            "data.train_limit=64",
            "monitor.knn_every=0",
            "monitor.knn_at_init=false",
        ] {
            a.extend(["--set".into(), s.to_string()]);
        }
        a
    };
    let fp32 = tmp.path().join("fp32");
    ok(bin().args(args(&fp32, "fp32")).output().unwrap());
    let full = tmp.path().join("fp16");
    let said = ok(bin().args(args(&full, "fp16")).output().unwrap());
    assert!(said.contains("fp16 loss scaling: 0 of 6 steps skipped"), "{said}");
    let (want, got) = (losses(&fp32), losses(&full));
    assert_eq!((want.len(), got.len()), (6, 6));
    for ((s, a), (_, b)) in want.iter().zip(&got) {
        assert!((a - b).abs() < 1e-2, "step {s}: loss {a} fp32, {b} fp16");
    }
    assert_ne!(want, got, "fp16 autocast did not run");
    let summary = std::fs::read_to_string(full.join("summary.json")).unwrap();
    assert!(summary.contains("\"precision\": \"fp16 autocast with loss scaling\""), "{summary}");
    assert!(summary.contains("\"loss_scale\": 65536.0") && summary.contains("\"skipped_steps\": 0"), "{summary}");
    let html = std::fs::read_to_string(full.join("report.html")).unwrap();
    assert!(html.contains("fp16 autocast with loss scaling, 0 steps skipped for overflowed gradients"), "{html}");
    let part = tmp.path().join("fp16-part");
    let mut paused = args(&part, "fp16");
    paused.extend(["--until-epoch".into(), "2".into()]);
    ok(bin().args(&paused).output().unwrap());
    let saved = tch::Tensor::read_safetensors(part.join("checkpoints/step-000000004/optim.safetensors")).unwrap();
    let value = |name: &str| saved.iter().find(|(n, _)| n == name).map(|(_, t)| t.double_value(&[0]));
    // 4 steps without an overflow: the scale as it started, 4 clean steps counted, none skipped.
    let state = ["loss_scaler.scale", "loss_scaler.growth_tracker", "loss_scaler.skipped_steps"].map(value);
    assert_eq!(state, [Some(65536.0), Some(4.0), Some(0.0)]);
    ok(bin().args(["train", "--resume", part.to_str().unwrap()]).output().unwrap());
    let resumed = losses(&part);
    assert_eq!(resumed.len(), 6);
    for ((s, a), (_, b)) in got.iter().zip(&resumed) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {s}: {a} uninterrupted, {b} resumed");
    }
}

#[test]
fn step_computed_targets_train_end_to_end() {
    let (tmp, train, test) = data();
    for (name, sets) in [
        ("memory", &["objective.target=\"memory\"", "model.predictor=\"identity\""][..]),
        (
            "memory-random-raw",
            &[
                "objective.target=\"memory\"",
                "model.predictor=\"identity\"",
                "objective.memory_init=\"random\"",
                "objective.memory_normalize=false",
            ][..],
        ),
        ("eoa", &["objective.target=\"eoa\"", "objective.eoa_k=2"][..]),
        ("inverse", &["objective.target=\"inverse\""][..]),
        ("mirror", &["objective.online=\"z\"", "objective.target=\"pb\"", "objective.predictor_loss=1.0"][..]),
        ("asym2x", &["objective.symmetry=\"asymmetric_twice\""][..]),
        ("alternation", &["objective.alternation_k=4"][..]),
        ("online-probe", &["monitor.online_probe_lr=0.3"][..]),
        ("oracle", &["objective.online=\"oracle\"", "model.predictor=\"identity\""][..]),
        ("instances-monitor", &["monitor.instances=true", "monitor.instances_n=64", "monitor.instances_k=2"][..]),
        ("byol", &["model.ema_target=true"][..]),
        ("swav", &SWAV[..]),
        ("swav-queue", &[&SWAV[..], &["objective.swav.queue=64", "objective.swav.queue_start_epoch=0"]].concat()[..]),
        ("moco", &MOCO[..]),
        (
            "simclr",
            &[
                "model.predictor=\"identity\"",
                "objective.main_weight=0.0",
                "objective.infonce=1.0",
                "objective.infonce_temperature=0.5",
            ][..],
        ),
    ] {
        let out = tmp.path().join(name);
        let mut args = one_epoch_args(&train, &test, &out);
        for s in sets {
            args.push("--set".into());
            args.push(s.to_string());
        }
        let text = ok(bin().args(&args).output().unwrap());
        assert!(text.contains("final loss"), "{name}: {text}");
        let l = losses(&out);
        assert_eq!(l.len(), 20, "{name}");
        assert!(l.iter().all(|(_, v)| v.is_finite()), "{name}");
        if name == "instances-monitor" {
            let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
            let n = text.lines().filter(|l| l.contains("\"event\":\"instances\"")).count();
            assert_eq!(n, 2, "at initialisation and after the epoch");
            assert!(out.join("report/instances.png").is_file());
        }
        if name == "online-probe" {
            let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
            let accs: Vec<f64> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["online_probe_acc"].as_f64())
                .collect();
            assert_eq!(accs.len(), 20);
            assert!(accs.iter().any(|a| *a > 0.0) && accs.iter().all(|a| (0.0..=1.0).contains(a)), "{accs:?}");
        }
        if name == "memory" {
            let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
            assert!(
                out.join("checkpoints").join(latest.trim()).join("state.safetensors").is_file(),
                "bank checkpointed"
            );
        }
        if name == "moco" {
            let latest = read(&out.join("checkpoints/latest"));
            let state = out.join("checkpoints").join(latest.trim()).join("state.safetensors");
            let saved = tch::Tensor::read_safetensors(state).unwrap();
            let queue = saved.iter().find(|(n, _)| n == "infonce.queue").map(|(_, t)| t.size());
            assert_eq!(queue, Some(vec![2, 64, 32]), "MoCo's keys checkpointed");
            assert!(saved.iter().any(|(n, _)| n.starts_with("ema.")), "with the momentum encoder");
        }
        if name.starts_with("swav") {
            let latest = read(&out.join("checkpoints/latest"));
            let ckpt = out.join("checkpoints").join(latest.trim());
            let model = tch::Tensor::read_safetensors(ckpt.join("model.safetensors")).unwrap();
            assert!(model.iter().any(|(n, t)| n == "prototypes.weight" && t.size()[0] == 50), "{name}: prototypes");
            let state = tch::Tensor::read_safetensors(ckpt.join("state.safetensors")).unwrap_or_default();
            let queue = state.iter().find(|(n, _)| n == "swav.queue").map(|(_, t)| t.size());
            assert_eq!(queue, (name == "swav-queue").then(|| vec![2, 64, 32]), "{name}: the queue checkpointed");
        }
        // The heads' own losses are logged where the head is trained, null elsewhere.
        let steps: Vec<_> = metric_lines(&out).into_iter().filter(|v| v.get("loss").is_some()).collect();
        for (key, head) in [("inverse_loss", "inverse"), ("predictor_loss", "mirror")] {
            let values: Vec<Option<f64>> = steps.iter().map(|v| v[key].as_f64()).collect();
            assert_eq!(values.len(), 20, "{name}: {key}");
            if name == head {
                assert!(values.iter().all(|v| v.is_some_and(|v| (-1.0..=1.0).contains(&v))), "{name}: {values:?}");
            } else {
                assert!(values.iter().all(Option::is_none), "{name}: {key} {values:?}");
            }
        }
        if name == "inverse" {
            let saved: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(
                out.join("checkpoints")
                    .join(std::fs::read_to_string(out.join("checkpoints/latest")).unwrap().trim())
                    .join("model.safetensors"),
            )
            .unwrap();
            assert!(saved.iter().any(|(n, _)| n.starts_with("predictor_inverse.")), "h_inv is part of the model");
        }
    }
}

#[test]
fn analyse_measures_a_checkpoint() {
    let (tmp, train, test) = data();
    let run = tmp.path().join("a");
    let args = one_epoch_args(&train, &test, &run);
    ok(bin().args(&args).output().unwrap());
    let o = bin()
        .args(["analyse", "all", run.to_str().unwrap(), "--n", "40", "--k", "3", "--sizes", "10,40,80"])
        .output()
        .unwrap();
    // A count above the images analysed is left out, and said so.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("note: --sizes [80]: above the 40 images analysed, left out"), "{err}");
    let text = ok(o);
    let v: serde_json::Value = serde_json::from_str(&text[..text.rfind('}').unwrap() + 1]).unwrap();
    for k in ["dimension", "instances", "predictor", "shards", "invariance"] {
        assert!(run.join("analysis").join(format!("{k}.json")).is_file(), "{k}");
        assert!(v.get(k).is_some(), "{k}");
    }
    let id = &v["instances"]["by_size"][1]["id"];
    assert_eq!(id["instances"], 40);
    let top1 = id["top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1) && id["top5"].as_f64().unwrap() >= top1);
    let r = v["invariance"]["mean_resultant"].as_f64().unwrap();
    assert!(r > 0.0 && r <= 1.0 + 1e-6);
    // The analyses share one estimate of the centres (drawn once, not once per analysis).
    assert_eq!(v["predictor"]["floor_similarity_mean_resultant"].as_f64(), Some(r));
    let cos = v["predictor"]["cos_h_hstar"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&cos));
    // B4's cumulative explained variance rises to 1; B4 and B2 are plotted.
    let cum: Vec<f64> =
        v["dimension"]["z"]["cumulative_variance"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(cum.windows(2).all(|w| w[1] >= w[0] - 1e-12) && (cum.last().unwrap() - 1.0).abs() < 1e-9);
    for f in ["dimension.png", "dimension.svg", "instances.png", "instances.svg"] {
        assert!(run.join("analysis").join(f).is_file(), "{f}");
    }
}

/// Every kept checkpoint and the initialisation analysed; the hypotheses report written from
/// the analyses; bad choices named in the error.
#[test]
fn analyse_every_checkpoint_and_the_initialisation_then_judge_the_hypotheses() {
    let (tmp, train, test) = data();
    let run = tmp.path().join("a");
    let mut args = train_args(&train, &test, &run);
    args[6] = "3".into(); // --epochs 3, a checkpoint after each, all kept (the default keeps 2)
    args.extend(["--set".into(), "run.keep_checkpoints=0".into()]);
    ok(bin().args(&args).output().unwrap());
    let kept = simsiam::checkpoint::all(&run).unwrap();
    assert_eq!(kept.len(), 3, "{kept:?}");
    let r = run.to_str().unwrap();
    let small = ["--n", "40", "--k", "3", "--sizes", "10,40"];
    ok(bin().args(["analyse", "predictor", r, "--checkpoint", "all"]).args(small).output().unwrap());
    let epochs: Vec<u64> = kept
        .iter()
        .map(|c| {
            let f = run.join("analysis").join(c.file_name().unwrap()).join("predictor.json");
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            v["checkpoint"]["epoch"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(epochs, [1, 2, 3]);
    // At initialisation in train-mode BN the projector's output BN makes z zero-mean and
    // unit-variance per dimension (std over the 40 images: unbiased, so sqrt(40/39)).
    ok(bin().args(["analyse", "all", r, "--checkpoint", "init", "--train-bn"]).args(small).output().unwrap());
    let f = run.join("analysis/init-train-bn/dimension.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
    let m = &v["z_moments"]["train_bn"];
    assert!(m["dim_mean_abs"].as_f64().unwrap() < 1e-4, "{m}");
    assert!((m["dim_std_mean"].as_f64().unwrap() - (40.0f64 / 39.0).sqrt()).abs() < 1e-3, "{m}");
    assert_eq!(v["checkpoint"]["weights"], "init");
    ok(bin().args(["analyse", "all", r]).args(small).output().unwrap());
    // The same run stands in for both methods: the command's plumbing is under test here,
    // the rules are in tests/hypotheses.rs.
    let out = tmp.path().join("hyp");
    let text = ok(bin()
        .args(["hypotheses", "--run", &format!("simsiam={r}"), "--run", &format!("simclr={r}"), "--out"])
        .arg(&out)
        .output()
        .unwrap());
    assert!(text.contains("report.md"), "{text}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| C1 |") && md.contains("| C6 |") && md.contains("B1 (C1)"), "{md}");
    assert!(out.join("plots/b1-cos-h-hstar.png").is_file(), "B1 over the analysed epochs is plotted");
    for (args, want) in [
        (vec!["analyse", "all", r, "--checkpoint", "step-7"], "--checkpoint"),
        (vec!["analyse", "shards", r, "--k", "1"], "--k: expected at least 2"),
        (vec!["analyse", "shards", r, "--n", "9"], "--n: expected at least 10 images, got 9"),
        (
            vec!["analyse", "instances", r, "--n", "40", "--sizes", "1,10"],
            "--sizes: expected instance counts of at least 2",
        ),
        (
            vec!["analyse", "instances", r, "--n", "40", "--sizes", "100"],
            "--sizes: every count ([100]) is above the 40",
        ),
        (vec!["hypotheses", "--run", "simsiam", "--out", "x"], "METHOD=RUN_DIR"),
        (vec!["hypotheses", "--run", &format!("Sim Siam={r}"), "--out", "x"], "lowercase letters"),
        (
            vec!["hypotheses", "--run", "simsiam=/nonexistent", "--run", &format!("simclr={r}"), "--out", "x"],
            "not a run folder",
        ),
    ] {
        let o = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want) && !err.contains("panicked"), "{args:?}: {err}");
    }
    let o = bin().args(["hypotheses", "--run", &format!("simsiam={r}"), "--out", "x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("simclr=RUN_DIR"));

    // eval (alias `evaluate`), embed and export take any kept checkpoint; the latest by default.
    let first = kept[0].file_name().unwrap().to_str().unwrap().to_string();
    let knn = ok(bin().args(["evaluate", "knn", r, "--k", "20", "--checkpoint", &first]).output().unwrap());
    assert!(knn.contains(&format!("\"checkpoint\":\"{first}\"")), "{knn}");
    let export = |ckpt: &str| {
        // Into a folder that does not exist yet: it is made.
        let f = tmp.path().join("exported").join(format!("{ckpt}.safetensors"));
        ok(bin().args(["export", r, "--checkpoint", ckpt, "--out"]).arg(&f).output().unwrap());
        std::fs::read(f).unwrap()
    };
    let (early, latest) = (export(&first), export("latest"));
    assert_ne!(early, latest, "the first epoch's weights are not the last's");
    assert_eq!(latest, export(kept[2].file_name().unwrap().to_str().unwrap()), "latest = the newest kept");
    let embed = |ckpt: &str| {
        let dir = tmp.path().join(format!("emb-{ckpt}"));
        ok(bin()
            .args(["embed", r, "--data", test.to_str().unwrap(), "--checkpoint", ckpt, "--out"])
            .arg(&dir)
            .output()
            .unwrap());
        std::fs::read(dir.join("backbone.npy")).unwrap()
    };
    assert_ne!(embed(&first), embed("latest"));
    let err = user_error(bin().args(["eval", "knn", r, "--checkpoint", "step-7"]).output().unwrap());
    assert!(err.contains("--checkpoint") && err.contains(&first), "names the kept checkpoints: {err}");
}

/// An override that one arm cannot take stops the experiment before any arm trains.
#[test]
fn an_experiment_checks_every_arm_before_training() {
    let (tmp, train, test) = data();
    let out_dir = tmp.path().join("exp");
    let out = bin()
        .args(["experiment", "batch-size", "--epochs", "2", "--data"])
        .arg(&train)
        .arg("--test-data")
        .arg(&test)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The last arm (batch 1024) has a 3-epoch warm-up; the four before it would have trained.
    assert!(err.contains("arm b1024") && err.contains("optim.warmup_epochs"), "{err}");
    assert!(!out_dir.join("b64").exists(), "no arm trained: {err}");
}

/// The binary finds the libtorch it was built against by itself (its run path), so it runs
/// without `scripts/env.sh`'s LD_LIBRARY_PATH.
#[test]
fn the_binary_runs_without_ld_library_path() {
    let out = bin().env_remove("LD_LIBRARY_PATH").args(["presets", "tiny"]).output().unwrap();
    let text = ok(out);
    assert!(text.contains("[model]"), "{text}");
    // The list names the presets and the methods that go over them.
    let list = ok(bin().arg("presets").output().unwrap());
    for name in ["cifar10", "tiny", "methods (--method", "simclr", "moco", "byol", "swav"] {
        assert!(list.contains(name), "{name}: {list}");
    }
    // `--explain`: the same preset with each field's meaning above it, readable as a config.
    let explained = ok(bin().args(["presets", "tiny", "--explain"]).output().unwrap());
    assert!(explained.contains("# Width of the projector's hidden layers.\nproj_hidden = "), "{explained}");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("explained.toml");
    std::fs::write(&file, &explained).unwrap();
    let again = ok(bin()
        .args(["train", "--preset", "tiny", "--print-config", "--explain", "--config"])
        .arg(&file)
        .output()
        .unwrap());
    assert!(again.contains("# Channels of the first stage") && again.contains("width = 8"), "{again}");
    // Without a preset there is nothing to explain: clap's usage error (exit 2), not a panic.
    let out = bin().args(["presets", "--explain"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("<NAME>") && !err.contains("panicked"), "{err}");
}

/// `train --print-config`: the resolved config (with the lr it implies), loadable as a config,
/// and nothing trained.
#[test]
fn print_config_shows_the_resolved_config_and_trains_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    let text = ok(bin()
        .args(["train", "--preset", "cifar10", "--batch-size", "1024", "--set", "optim.base_lr=0.05", "--print-config"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    assert!(text.starts_with("# lr = optim.base_lr x optim.batch_size / 256 = 0.05 x 1024 / 256 = 0.2\n"), "{text}");
    let file = tmp.path().join("printed.toml");
    std::fs::write(&file, &text).unwrap();
    let cfg = simsiam::config::Config::load(&file).unwrap();
    assert_eq!((cfg.optim.batch_size, cfg.optim.base_lr, cfg.run.out_dir), (1024, 0.05, out.clone()));
    assert!(!out.exists(), "nothing trained");
}

/// `simsiam completions SHELL`: a completion script that knows the subcommands and their flags.
#[test]
fn completion_scripts_know_the_subcommands_and_flags() {
    let bash = ok(bin().args(["completions", "bash"]).output().unwrap());
    for want in ["_simsiam()", "-F _simsiam", "experiment", "--resume", "--until-epoch", "--checkpoint"] {
        assert!(bash.contains(want), "{want:?} in the bash script");
    }
    let zsh = ok(bin().args(["completions", "zsh"]).output().unwrap());
    assert!(zsh.starts_with("#compdef simsiam"), "{}", &zsh[..80]);
    let o = bin().args(["completions", "tcsh"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(2) && err.contains("possible values") && err.contains("bash"), "{err}");
}

/// `simsiam status ROOT`: every run folder below ROOT with its state (training by which
/// process, finished, stopped with the command to go on), and the same as JSON lines.
#[test]
fn status_says_which_runs_train_finished_or_stopped() {
    let (tmp, train, test) = data();
    let root = tmp.path().join("runs");
    ok(bin().args(one_epoch_args(&train, &test, &root.join("done"))).output().unwrap());
    let mut stopped = train_args(&train, &test, &root.join("paused"));
    stopped.extend(["--until-epoch".into(), "1".into()]);
    ok(bin().args(&stopped).output().unwrap());
    // As training writes it when an epoch's means read as collapsed.
    let mut m = std::fs::OpenOptions::new().append(true).open(root.join("paused/metrics.jsonl")).unwrap();
    writeln!(m, r#"{{"event":"collapse","epoch":0,"step":19,"loss":-0.99,"collapse_std_scaled":0.02}}"#).unwrap();
    let mut long = train_args(&train, &test, &root.join("live"));
    long[6] = "50".into();
    let child = bin().args(&long).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    while std::fs::read_to_string(root.join("live/metrics.jsonl")).map_or(0, |s| s.lines().count()) < 2 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let table = ok(bin().args(["status", root.to_str().unwrap()]).output().unwrap());
    let row = |name: &str| table.lines().find(|l| l.contains(&format!("/{name} "))).unwrap_or_default().to_string();
    assert!(row("done").contains("finished") && row("done").contains("1/1"), "{table}");
    assert!(row("live").contains(&format!("training (pid {pid})")), "{table}");
    assert!(row("paused").contains("stopped") && row("paused").contains("1/3"), "{table}");
    assert!(row("paused").contains("collapsed in epoch 1") && !row("done").contains("collapsed in"), "{table}");
    ok(bin().arg("report").arg(root.join("paused")).output().unwrap());
    let html = read(&root.join("paused/report.html"));
    assert!(html.contains("collapse in epoch 1</b>: mean loss -0.9900"), "the report says it too");
    assert!(table.contains(&format!("to go on: simsiam train --resume {}", root.join("paused").display())), "{table}");
    let json = ok(bin().args(["status", "--json", root.to_str().unwrap()]).output().unwrap());
    let states: Vec<String> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["finished", "training", "stopped"], "sorted by path: done, live, paused");
    let (code, _) = common::signal_after(child, &root.join("live"), 0, libc::SIGKILL);
    assert_eq!(code, None);
    // Killed, it holds no lock: stopped if it reached a checkpoint, else not started.
    let after = ok(bin().args(["status", root.to_str().unwrap()]).output().unwrap());
    assert!(!after.contains("training"), "{after}");
}

/// A latest checkpoint that cannot be read (a disk fault): the error says so, and names the
/// earlier checkpoint the run keeps and how to resume from it; following that works.
#[test]
fn an_unreadable_checkpoint_points_to_the_earlier_one() {
    let (tmp, train, test) = data();
    let run = tmp.path().join("run");
    let mut args = train_args(&train, &test, &run);
    args.extend(["--until-epoch", "2", "--set", "run.checkpoint_every=1"].map(String::from));
    ok(bin().args(&args).output().unwrap());
    let latest = read(&run.join("checkpoints/latest")).trim().to_string();
    std::fs::write(run.join("checkpoints").join(&latest).join("model.safetensors"), b"not weights").unwrap();
    let err = user_error(bin().args(["train", "--resume", run.to_str().unwrap()]).output().unwrap());
    let earlier = simsiam::checkpoint::all(&run).unwrap()[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_ne!(earlier, latest);
    assert!(
        err.contains(&latest)
            && err.contains(&format!("an earlier checkpoint is kept: to resume from it, `echo {earlier} >")),
        "{err}"
    );
    std::fs::write(run.join("checkpoints/latest"), &earlier).unwrap();
    let text = ok(bin().args(["train", "--resume", run.to_str().unwrap()]).output().unwrap());
    assert!(text.contains("(epoch 1, step 20)") && text.contains("trained 3 epochs"), "{text}");
}

/// An arm whose loss overflows is a result, not the end of the experiment: it is recorded as
/// Diverged (its summary written, so a rerun skips it), and the other arms train and report.
#[test]
fn a_diverging_arm_is_recorded_and_the_experiment_goes_on() {
    let (tmp, train, test) = data();
    let file = tmp.path().join("overflow.toml");
    std::fs::write(
        &file,
        "name = \"overflow\"\nclaim = \"An lr of 1e38 overflows the weights; a sane one trains.\"\n\
         source = \"this test\"\npaper = \"-\"\n\n[[arm]]\nname = \"huge-lr\"\nset = [\"optim.base_lr=1e38\"]\n\
         expect = \"healthy\"\n\n[[arm]]\nname = \"sane\"\nexpect = \"not_collapsed\"\n",
    )
    .unwrap();
    let out = tmp.path().join("exp");
    let args = experiment_file_args(&file, &out, &train, &test);
    let text = ok(bin().args(&args).output().unwrap());
    assert!(text.contains("[overflow] 1/2 huge-lr: diverged (loss") && text.contains("the other arms go on"), "{text}");
    assert!(text.contains("[overflow] 2/2 sane: training") && text.contains("the claim did not hold"), "{text}");
    let summary: serde_json::Value = serde_json::from_str(&read(&out.join("huge-lr/summary.json"))).unwrap();
    assert_eq!(summary["verdict"], "diverged");
    assert!(summary["steps"].as_u64().unwrap() >= 1, "the steps before the overflow: {summary}");
    let md = read(&out.join("report.md"));
    assert!(md.contains("| huge-lr | Healthy | Diverged | **no** |"), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| sane | NotCollapsed | ") && l.contains(" | yes |")), "{md}");
    let again = ok(bin().args(&args).output().unwrap());
    assert_eq!(again.matches("finished earlier, skipped").count(), 2, "{again}");
}
