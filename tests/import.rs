//! `model.init_from` on the checkpoints the PyTorch tools write, against PyTorch's own outputs.
//! The fixtures (`tests/fixtures/pytorch/`, written by `scripts/reference/pytorch_checkpoints.py`
//! with torch 2.11 / torchvision 0.26) are SimSiam networks at width 4 with every weight and BN
//! statistic random, saved as facebookresearch/simsiam, solo-learn (Lightning), lightly's
//! examples and torchvision save them; `expected.safetensors` holds an input and the eval-mode
//! y, z and p PyTorch computes from each.
mod common;
use simsiam::config::Config;
use simsiam::import::{init_from, read_tensors};
use simsiam::train::Network;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn::ModuleT, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch").join(name)
}

fn expected() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture("expected.safetensors")).unwrap().into_iter().collect()
}

/// The fixtures' shapes: ResNet-18 at width 4 (32 features), d = 32, predictor hidden 8.
fn cfg(extra: &[&str]) -> Config {
    let mut sets: Vec<String> = ["model.width=4", "model.dim=32", "model.pred_hidden=8", "model.proj_hidden=24"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    sets.push("run.device=\"cpu\"".into());
    Config::resolve("tiny", None, &sets).unwrap()
}

/// Eval-mode y, z and p of the input.
fn outputs(net: &Network, x: &Tensor) -> (Tensor, Tensor, Tensor) {
    tch::no_grad(|| {
        let (y, z) = net.model.features_and_projection(x, false);
        let p = net.model.predictor.forward_t(&z, false);
        (y, z, p)
    })
}

/// The largest difference relative to the largest value of `b` (values are O(1-10)).
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1.0)
}

/// Loads `file` into a model built with `sets` and compares y (and z, p when `heads`) with
/// PyTorch's; returns what the import reported.
fn check(file: &str, name: &str, sets: &[&str], heads: bool) -> simsiam::import::Imported {
    let c = cfg(sets);
    tch::manual_seed(0);
    let mut net = Network::new(&c, Device::Cpu);
    let imported = init_from(&mut net.vs, &fixture(file), &c.model).unwrap();
    let e = expected();
    let (y, z, p) = outputs(&net, &e["x"]);
    // float32 through 20 layers summed in another order: a few ulps, relative.
    let d = max_diff(&y, &e[&format!("{name}.y")]);
    assert!(d < 1e-5, "{file}: y differs from PyTorch's by {d}");
    if heads {
        let dz = max_diff(&z, &e[&format!("{name}.z")]);
        let dp = max_diff(&p, &e[&format!("{name}.p")]);
        assert!(dz < 1e-5 && dp < 1e-5, "{file}: z differs by {dz}, p by {dp}");
        eprintln!("{file}: relative difference to PyTorch: y {d:.1e}, z {dz:.1e}, p {dp:.1e}");
    } else {
        eprintln!("{file}: relative difference to PyTorch: y {d:.1e}");
    }
    imported
}

#[test]
fn official_simsiam_checkpoint_gives_pytorchs_features() {
    // main_simsiam.py's checkpoint: DataParallel's `module.`, the projector as `encoder.fc`
    // (3 layers, its output Linear's frozen bias folded into the BN after it), the optimizer's
    // state beside; the 7x7 stem with max-pool.
    let got = check(
        "official.pth.tar",
        "official",
        &["model.cifar_stem=false", "model.proj_layers=3", "model.proj_hidden=32"],
        true,
    );
    assert_eq!(got.backbone, "state_dict.module.encoder.");
    assert_eq!(got.projector.as_deref(), Some("state_dict.module.encoder.fc."));
    assert_eq!(got.predictor.as_deref(), Some("state_dict.module.predictor."));
    // 20 convs + 20 BNs x 4 in the backbone; projector 3 Linear + 2 BN x 4 + 1 BN x 2;
    // predictor 2 Linear weights + 1 bias + 1 BN x 4.
    assert_eq!(got.tensors, 100 + (3 + 8 + 2) + (3 + 4));
}

#[test]
fn solo_learn_lightning_checkpoint_gives_pytorchs_features() {
    let got = check("solo.ckpt", "solo", &[], true);
    assert_eq!(got.backbone, "state_dict.backbone.");
    assert_eq!(got.projector.as_deref(), Some("state_dict.projector."));
    assert_eq!(got.predictor.as_deref(), Some("state_dict.predictor."));
}

#[test]
fn lightly_state_dict_of_sequential_children_gives_pytorchs_features() {
    let got = check("lightly.pt", "lightly", &["model.proj_layers=3"], true);
    assert_eq!(got.backbone, "backbone.");
    assert_eq!(got.projector.as_deref(), Some("projection_head.layers."));
    assert_eq!(got.predictor.as_deref(), Some("prediction_head.layers."));
}

#[test]
fn lightly_resnet_generator_gives_pytorchs_features_without_the_stem_relu() {
    // lightly's CIFAR ResNet as its benchmarks build it: `shortcut` blocks, stages from index 2.
    let got = check("lightly_resnet.pt", "lightly_resnet", &["model.stem_relu=false"], true);
    assert_eq!(got.backbone, "backbone.");
    assert!(got.notes.is_empty(), "{:?}", got.notes);
    // With this model's stem ReLU the weights load, and the difference is said.
    let c = cfg(&[]);
    let mut net = Network::new(&c, Device::Cpu);
    let got = init_from(&mut net.vs, &fixture("lightly_resnet.pt"), &c.model).unwrap();
    assert!(
        got.notes.iter().any(|n| n.contains("no ReLU after the stem") && n.contains("model.stem_relu = false")),
        "{:?}",
        got.notes
    );
}

#[test]
fn torchvision_state_dict_sets_the_backbone_and_leaves_the_heads() {
    let got = check("torchvision.pth", "torchvision", &[], false);
    assert_eq!(got.backbone, "");
    assert_eq!((got.projector, got.predictor), (None, None));
    assert_eq!(got.tensors, 100);
    assert!(got.notes.iter().any(|n| n.contains("projector starts at random")), "{:?}", got.notes);
}

#[test]
fn the_torch_save_reader_flattens_the_object_tree() {
    let t: HashMap<String, Tensor> = read_tensors(&fixture("official.pth.tar")).unwrap().into_iter().collect();
    // `state_dict` and the optimizer's state (keyed by parameter number); ints and strings
    // (`epoch`, `arch`) are not tensors.
    assert!(t.contains_key("state_dict.module.encoder.layer4.1.bn2.running_var"));
    assert!(t.contains_key("optimizer.state.0.momentum_buffer"));
    assert!(!t.keys().any(|k| k.starts_with("epoch") || k.starts_with("arch")));
    assert_eq!(t["state_dict.module.encoder.conv1.weight"].size(), [4, 3, 7, 7]);
}

#[test]
fn the_torch_save_reader_rebuilds_views_and_dtypes() {
    // {"base": t, "row": t[1], "col": t[:, 2], "again": t, "kinds": [bf16, int64, (f16, bool)]}
    // with t = arange(12).view(3, 4): one storage, read at its offsets and strides.
    let t: HashMap<String, Tensor> = read_tensors(&fixture("views.pt")).unwrap().into_iter().collect();
    let base = Tensor::arange(12, (tch::Kind::Float, Device::Cpu)).view([3, 4]);
    assert!(t["base"].equal(&base) && t["again"].equal(&base));
    assert!(t["row"].equal(&Tensor::from_slice(&[4f32, 5., 6., 7.])));
    assert!(t["col"].equal(&Tensor::from_slice(&[2f32, 6., 10.])));
    assert_eq!(t["kinds.0"].kind(), tch::Kind::BFloat16);
    assert!(t["kinds.0"].to_kind(tch::Kind::Float).equal(&Tensor::from_slice(&[1.5f32, -2.25])));
    assert!(t["kinds.1"].equal(&Tensor::from_slice(&[7i64, -3])));
    assert_eq!(t["kinds.2.0"].kind(), tch::Kind::Half);
    assert!(t["kinds.2.1"].equal(&Tensor::from_slice(&[true, false])));
    // A list that holds itself: its tensor once, the cycle not followed.
    assert!(t["cycle.0"].equal(&Tensor::from_slice(&[0f32, 1., 2., 3.])));
    // A Parameter is its data.
    assert!(t["param"].equal(&Tensor::from_slice(&[1f32, 2.])));
    assert_eq!(t.len(), 10, "{:?}", t.keys().collect::<Vec<_>>());
}

/// Damaged files are errors that name the file, never panics: `data.pkl` cut short anywhere,
/// bytes of it overwritten, a storage record cut short.
#[test]
fn damaged_torch_save_files_are_errors_not_panics() {
    use std::io::{Read, Write};
    let mut zip = zip::ZipArchive::new(std::fs::File::open(fixture("solo.ckpt")).unwrap()).unwrap();
    let entries: Vec<(String, Vec<u8>)> = (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().to_string(), b)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.ckpt");
    let write = |edit: &dyn Fn(&str, &[u8]) -> Vec<u8>| {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (n, b) in &entries {
            w.start_file(n.as_str(), stored).unwrap();
            w.write_all(&edit(n, b)).unwrap();
        }
        w.finish().unwrap();
    };
    // Unchanged, the copy reads.
    write(&|_, b| b.to_vec());
    assert!(read_tensors(&path).is_ok());
    let pkl_len = entries.iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1.len();
    for cut in (0..pkl_len).step_by(pkl_len / 50) {
        write(&|n, b| if n.ends_with("data.pkl") { b[..cut].to_vec() } else { b.to_vec() });
        let e = read_tensors(&path).unwrap_err().to_string();
        assert!(e.contains("damaged.ckpt") && e.contains("torch.save"), "cut at {cut}: {e}");
    }
    // Overwritten bytes: read or refused, but no panic.
    for (i, at) in (0..pkl_len).step_by(pkl_len / 100).enumerate() {
        write(&|n, b| {
            let mut b = b.to_vec();
            if n.ends_with("data.pkl") {
                b[at] = [0x00, 0xff, b'(', b'Q', b'R', b'u', 0x8a][i % 7];
            }
            b
        });
        let _ = read_tensors(&path);
    }
    // A storage record cut short.
    write(&|n, b| if n.ends_with("/data/0") { b[..b.len() / 2].to_vec() } else { b.to_vec() });
    let e = read_tensors(&path).unwrap_err().to_string();
    assert!(e.contains("data/0") && e.contains("bytes"), "{e}");
}

#[test]
fn mismatches_are_refused_with_the_entry_and_nothing_is_loaded() {
    let err = |file: &str, sets: &[&str]| {
        let c = cfg(sets);
        let mut net = Network::new(&c, Device::Cpu);
        let before: Vec<(String, Tensor)> = net.vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let e = init_from(&mut net.vs, &fixture(file), &c.model).unwrap_err().to_string();
        let after = net.vs.variables();
        assert!(before.iter().all(|(n, t)| after[n].equal(t)), "{file}: a refused file changed the model");
        e
    };
    // The stem: 7x7 in the file, 3x3 here.
    let e = err("official.pth.tar", &["model.proj_layers=3", "model.proj_hidden=32"]);
    assert!(
        e.contains("official.pth.tar") && e.contains("7x7 stem") && e.contains("`model.cifar_stem = false`"),
        "{e}"
    );
    // A 2-layer projector against the file's 3 layers: both described.
    let e = err("official.pth.tar", &["model.cifar_stem=false"]);
    assert!(e.contains("the projector at `state_dict.module.encoder.fc.`") && e.contains("init_heads"), "{e}");
    // ... which `model.init_heads = false` lets through, with the backbone alone.
    let c = cfg(&["model.cifar_stem=false", "model.init_heads=false"]);
    let mut net = Network::new(&c, Device::Cpu);
    let got = init_from(&mut net.vs, &fixture("official.pth.tar"), &c.model).unwrap();
    assert_eq!((got.tensors, got.projector), (100, None));
    // A deeper model: ResNet-34's third block of layer1 is not in a ResNet-18 file.
    let e = err("solo.ckpt", &["model.arch=\"resnet34\""]);
    assert!(e.contains("missing entry `state_dict.backbone.layer1.2.") && e.contains("model.arch"), "{e}");
    // A wider model.
    let e = err("solo.ckpt", &["model.width=8"]);
    assert!(e.contains("4 channels in its stem, this model 8") && e.contains("`model.width = 4`"), "{e}");
    // A prefix the file does not have.
    let e = err("solo.ckpt", &["model.init_prefix=\"module.encoder_q.\""]);
    assert!(e.contains("model.init_prefix") && e.contains("`state_dict.backbone.`"), "{e}");
    // Not a checkpoint at all.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("weights.pth");
    std::fs::write(&junk, b"not weights").unwrap();
    let c = cfg(&[]);
    let mut net = Network::new(&c, Device::Cpu);
    let e = init_from(&mut net.vs, &junk, &c.model).unwrap_err().to_string();
    assert!(e.contains("weights.pth") && e.contains("torch.save"), "{e}");
    // Python's legacy pickle format.
    std::fs::write(&junk, [0x80u8, 2, 0x8a, 0x0a, 0x6c]).unwrap();
    let e = init_from(&mut net.vs, &junk, &c.model).unwrap_err().to_string();
    assert!(e.contains("legacy") && e.contains("map_location"), "{e}");
}

#[test]
fn two_backbones_need_a_prefix() {
    // A MoCo-like file: the same network twice, as `encoder_q` and `encoder_k`.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("moco.safetensors");
    let t = read_tensors(&fixture("torchvision.pth")).unwrap();
    let mut both: Vec<(String, Tensor)> = Vec::new();
    for (n, v) in &t {
        both.push((format!("encoder_q.{n}"), v.shallow_clone()));
        both.push((format!("encoder_k.{n}"), v * 2.0));
    }
    let refs: Vec<(&str, &Tensor)> = both.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, &f).unwrap();
    let c = cfg(&[]);
    let mut net = Network::new(&c, Device::Cpu);
    let e = init_from(&mut net.vs, &f, &c.model).unwrap_err().to_string();
    assert!(e.contains("`encoder_k.`, `encoder_q.`") && e.contains("model.init_prefix"), "{e}");
    let c = cfg(&["model.init_prefix=\"encoder_q.\""]);
    let got = init_from(&mut net.vs, &f, &c.model).unwrap();
    assert_eq!(got.backbone, "encoder_q.");
    let (y, _, _) = outputs(&net, &expected()["x"]);
    assert!(max_diff(&y, &expected()["torchvision.y"]) < 1e-5);
}

#[test]
fn byols_target_starts_from_the_imported_weights() {
    // The EMA target is made as a copy of the online network; after an import it must be a
    // copy of the imported weights, not of the random ones before.
    let c = cfg(&["model.ema_target=true"]);
    let mut net = Network::new(&c, Device::Cpu);
    net.init_from(&fixture("solo.ckpt"), &c.model).unwrap();
    let ema = net.ema.as_ref().unwrap();
    let theirs = ema.vs.variables();
    for (n, t) in net.vs.variables() {
        if let Some(e) = theirs.get(&n) {
            assert!(e.equal(&t), "{n}: the target differs from the imported weights");
        }
    }
}

/// The binary: a run folder of weights trained in PyTorch (`--until-epoch 0`), which `export`,
/// `eval` and `--resume` then use like any run's.
#[test]
fn cli_starts_a_run_from_a_pytorch_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test, run) = (tmp.path().join("train.bin"), tmp.path().join("test.bin"), tmp.path().join("run"));
    common::write_cifar(&train, simsiam::data::CifarKind::Cifar10, 256, 10);
    common::write_cifar(&test, simsiam::data::CifarKind::Cifar10, 64, 10);
    let simsiam = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_simsiam"))
            .env("OMP_NUM_THREADS", "1")
            .args(args)
            .output()
            .unwrap()
    };
    let start = |file: &Path| {
        let mut a: Vec<String> =
            ["train", "--preset", "tiny", "--device", "cpu", "--epochs", "2", "--batch-size", "32"]
                .map(String::from)
                .to_vec();
        a.extend(["--data", train.to_str().unwrap(), "--test-data", test.to_str().unwrap()].map(String::from));
        a.extend(["--out", run.to_str().unwrap(), "--until-epoch", "0"].map(String::from));
        // `--init-from FILE` = `--set model.init_from='"FILE"'`.
        a.extend(["--init-from".to_string(), file.display().to_string()]);
        for s in ["model.width=4", "model.dim=32", "model.proj_hidden=24", "model.pred_hidden=8", "monitor.knn_k=5"] {
            a.extend(["--set".to_string(), s.to_string()]);
        }
        simsiam(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };

    // Not a network: refused, naming the file, and no run is made.
    let o = start(&fixture("views.pt"));
    assert!(
        !o.status.success() && text(&o).contains("views.pt") && text(&o).contains("no ResNet backbone"),
        "{}",
        text(&o)
    );

    let o = start(&fixture("solo.ckpt"));
    assert!(o.status.success(), "{}", text(&o));
    let log = text(&o);
    assert!(
        log.contains("the backbone from `state_dict.backbone.`") && log.contains("kNN top-1 at initialisation"),
        "{log}"
    );

    // The run's weights are the file's: the exported backbone equals its tensors.
    let bb = tmp.path().join("backbone.safetensors");
    let o = simsiam(&["export", run.to_str().unwrap(), "--out", bb.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let file: HashMap<String, Tensor> = read_tensors(&fixture("solo.ckpt")).unwrap().into_iter().collect();
    let exported = Tensor::read_safetensors(&bb).unwrap();
    let mut compared = 0;
    for (name, t) in &exported {
        if let Some(f) = file.get(&format!("state_dict.backbone.{name}")) {
            assert!(t.equal(f), "{name} differs from the file's");
            compared += 1;
        }
    }
    assert_eq!(compared, 120, "every exported tensor, the BN counters included");

    let o = simsiam(&["eval", "knn", run.to_str().unwrap(), "--k", "5"]);
    assert!(o.status.success() && text(&o).contains("knn_top1"), "{}", text(&o));
    // Training goes on from the imported weights.
    let o = simsiam(&["train", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(run.join("summary.json").exists());
}

/// Heads without BN (MoCo v2's projector: Linear, ReLU, Linear, with biases) load into a
/// projector without BN; an affine BN goes into one without affine only as the identity.
#[test]
fn heads_without_bn_and_affine_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("moco.safetensors");
    let backbone = read_tensors(&fixture("torchvision.pth")).unwrap();
    let write = |extra: Vec<(String, Tensor)>| {
        let all: Vec<(String, Tensor)> =
            backbone.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).chain(extra).collect();
        let refs: Vec<(&str, &Tensor)> = all.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, &f).unwrap();
    };
    let r = |shape: &[i64]| Tensor::randn(shape, (tch::Kind::Float, Device::Cpu));
    let (w0, b0, w2, b2) = (r(&[24, 32]), r(&[24]), r(&[32, 24]), r(&[32]));
    write(vec![
        ("projector.0.weight".into(), w0.copy()),
        ("projector.0.bias".into(), b0.copy()),
        ("projector.2.weight".into(), w2.copy()),
        ("projector.2.bias".into(), b2.copy()),
    ]);
    let c = cfg(&["model.proj_hidden_bn=false", "model.proj_output_bn=false"]);
    let mut net = Network::new(&c, Device::Cpu);
    let got = init_from(&mut net.vs, &f, &c.model).unwrap();
    assert_eq!(got.projector.as_deref(), Some("projector."));
    let v = net.vs.variables();
    for (name, want) in
        [("0.linear.weight", &w0), ("0.linear.bias", &b0), ("1.linear.weight", &w2), ("1.linear.bias", &b2)]
    {
        assert!(v[&format!("projector.{name}")].equal(want), "projector.{name}");
    }
    // The same file into the default projector (BN after each Linear): both described.
    let c = cfg(&[]);
    let mut net = Network::new(&c, Device::Cpu);
    let e = init_from(&mut net.vs, &f, &c.model).unwrap_err().to_string();
    assert!(e.contains("[Linear 32->24, Linear 24->32]") && e.contains("BN (no affine)"), "{e}");

    // An output BN with affine weights where this model's has none: refused unless identity.
    let bn = |gamma: f64| {
        vec![
            ("projector.0.weight".to_string(), w0.copy()),
            ("projector.1.weight".into(), Tensor::ones([24], (tch::Kind::Float, Device::Cpu))),
            ("projector.1.bias".into(), Tensor::zeros([24], (tch::Kind::Float, Device::Cpu))),
            ("projector.1.running_mean".into(), r(&[24])),
            ("projector.1.running_var".into(), r(&[24]).abs() + 0.5),
            ("projector.3.weight".into(), w2.copy()),
            ("projector.4.weight".into(), Tensor::full([32], gamma, (tch::Kind::Float, Device::Cpu))),
            ("projector.4.bias".into(), Tensor::zeros([32], (tch::Kind::Float, Device::Cpu))),
            ("projector.4.running_mean".into(), r(&[32])),
            ("projector.4.running_var".into(), r(&[32]).abs() + 0.5),
        ]
    };
    write(bn(1.0));
    assert!(init_from(&mut net.vs, &f, &c.model).is_ok());
    write(bn(2.0));
    let e = init_from(&mut net.vs, &f, &c.model).unwrap_err().to_string();
    assert!(e.contains("the projector at `projector.`"), "{e}");
}

/// lightly's `ResNet` used as it is (not as a Sequential): torchvision's names but `shortcut`
/// for the projection shortcut and `linear` for the classifier. The same weights as
/// `lightly_resnet.pt`'s Sequential give the same network.
#[test]
fn lightly_resnet_module_names_map_to_the_same_network() {
    let seq = read_tensors(&fixture("lightly_resnet.pt")).unwrap();
    let rename = |n: &str| -> Option<String> {
        let rest = n.strip_prefix("backbone.")?;
        let (top, tail) = rest.split_once('.')?;
        let top = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"][top.parse::<usize>().ok()?];
        Some(format!("{top}.{tail}"))
    };
    let named: Vec<(String, Tensor)> =
        seq.iter().filter_map(|(n, t)| rename(n).map(|m| (m, t.shallow_clone()))).collect();
    assert!(named.iter().any(|(n, _)| n == "layer2.0.shortcut.0.weight"), "lightly's blocks say `shortcut`");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("lightly_module.safetensors");
    let mut with_fc = named;
    with_fc.push(("linear.weight".into(), Tensor::zeros([10, 32], (tch::Kind::Float, Device::Cpu))));
    let refs: Vec<(&str, &Tensor)> = with_fc.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, &f).unwrap();

    let c = cfg(&[]);
    let x = &expected()["x"];
    let mut a = Network::new(&c, Device::Cpu);
    init_from(&mut a.vs, &fixture("lightly_resnet.pt"), &c.model).unwrap();
    let mut b = Network::new(&c, Device::Cpu);
    let got = init_from(&mut b.vs, &f, &c.model).unwrap();
    assert_eq!((got.backbone.as_str(), got.tensors), ("", 100));
    assert!(outputs(&a, x).0.equal(&outputs(&b, x).0));
}
