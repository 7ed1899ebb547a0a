//! Config resolution: presets hold the paper's recipe; overrides; clear errors.
use simsiam::config::{Arch, Config};

#[test]
fn cifar10_preset_is_the_paper_recipe() {
    let c = Config::resolve("cifar10", None, &[]).unwrap();
    assert_eq!(c.model.arch, Arch::Resnet18);
    assert!(c.model.cifar_stem && c.model.zero_init_residual);
    assert_eq!((c.model.proj_layers, c.model.dim, c.model.pred_hidden), (2, 2048, 512));
    assert_eq!((c.optim.batch_size, c.optim.base_lr, c.optim.weight_decay, c.optim.momentum), (512, 0.03, 5e-4, 0.9));
    assert_eq!(c.run.epochs, 800);
    assert!((c.optim.init_lr() - 0.06).abs() < 1e-12);
    assert!(c.optim.fix_pred_lr && c.objective.stop_grad);
    assert_eq!(c.augment.effective_blur_p(32), 0.0);
    let i = Config::resolve("imagenet", None, &[]).unwrap();
    assert_eq!(
        (i.model.arch, i.model.proj_layers, i.optim.base_lr, i.optim.weight_decay),
        (Arch::Resnet50, 3, 0.05, 1e-4)
    );
    assert_eq!(i.augment.effective_blur_p(224), 0.5);
    // Resize(256) + CenterCrop(224) for evaluation, 224-px training views.
    assert_eq!((i.data.image_size, i.augment.view_side(i.data.image_size)), (256, 224));
    assert_eq!(c.augment.view_side(c.data.image_size), 32);
}

#[test]
fn every_field_can_be_overridden() {
    let c = Config::resolve(
        "tiny",
        None,
        &[
            "optim.base_lr=0.5".into(),
            "model.arch=resnet34".into(),
            "augment.crop_scale=[0.5, 1.0]".into(),
            "run.out_dir=somewhere/else".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.optim.base_lr, 0.5);
    assert_eq!(c.model.arch, Arch::Resnet34);
    assert_eq!(c.augment.crop_scale, [0.5, 1.0]);
    assert_eq!(c.run.out_dir.to_str(), Some("somewhere/else"));
}

#[test]
fn an_empty_path_unsets_a_config_files_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("my.toml");
    std::fs::write(&f, "[data]\ntest = \"held-out.tar\"\ncache_dir = \"cache\"\n").unwrap();
    let c = Config::resolve("tiny", Some(&f), &[]).unwrap();
    assert!(c.data.test.as_ref().is_some_and(|p| p.is_absolute() && p.ends_with("held-out.tar")));
    // TOML has no null: `--set data.test=""` (or `data.test=` as a shell leaves it) is none.
    let c = Config::resolve("tiny", Some(&f), &["data.test=\"\"".into(), "data.cache_dir=".into()]).unwrap();
    assert_eq!((c.data.test, c.data.cache_dir), (None, None));
}

#[test]
fn saved_config_round_trips() {
    let c = Config::resolve("tiny", None, &["run.seed=42".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    std::fs::write(&p, c.to_toml()).unwrap();
    assert_eq!(Config::load(&p).unwrap(), c);
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let e = Config::resolve("tiny", None, &["optim.learning_rate=0.1".into()]).unwrap_err().to_string();
    assert!(e.contains("learning_rate") && e.contains("optim"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("my.toml");
    std::fs::write(&f, "[run]\nepochz = 3\n").unwrap();
    let e = Config::resolve("tiny", Some(&f), &[]).unwrap_err().to_string();
    assert!(e.contains("epochz") && e.contains("run"), "{e}");
    assert!(e.contains(&format!("{}: field `run.epochz`", f.display())), "the file is named: {e}");
    // An unknown section set by a flag is blamed on the flag, not on the preset.
    let e = Config::resolve("tiny", None, &["optimizer.lr=0.1".into()]).unwrap_err().to_string();
    assert!(e.contains("--set optimizer.lr=0.1: field `optimizer`"), "{e}");
    let e = Config::resolve("tiny", None, &["optim.sched.kind=1".into()]).unwrap_err().to_string();
    assert!(e.contains("--set optim.sched.kind=1: field `optim.sched`"), "{e}");
    let e = Config::resolve("cifar11", None, &[]).unwrap_err().to_string();
    assert!(e.contains("cifar11") && e.contains("cifar10"), "{e}");
}

/// A mistyped value is blamed on what set it last: the flag, else the file, not the preset.
#[test]
fn a_bad_value_names_the_flag_or_file_that_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("my.toml");
    std::fs::write(&f, "[optim]\nbase_lr = \"fast\"\n[augment]\ncrop_scale = [0.2, \"x\"]\n").unwrap();
    let e = Config::resolve("tiny", Some(&f), &[]).unwrap_err().to_string();
    assert!(e.contains(&format!("{}: field `", f.display())), "{e}");
    let sets = ["optim.base_lr=0.1".to_string(), "augment.crop_scale=[0.2, 1.0]".into(), "run.seed=x".into()];
    let e = Config::resolve("tiny", Some(&f), &sets).unwrap_err().to_string();
    assert!(e.contains("--set run.seed=x: field `run.seed`"), "{e}");
    // One line, the field named once (toml's own message adds "in `run.seed`" below it).
    assert_eq!(e.trim_end().lines().count(), 1, "{e:?}");
    let e = Config::resolve("tiny", Some(&f), &sets[..1]).unwrap_err().to_string();
    assert!(e.contains(&format!("{}: field `augment.crop_scale", f.display())), "the file's field: {e}");
}

#[test]
fn out_of_range_and_mistyped_values_are_errors_naming_the_field() {
    for (set, field) in [
        ("augment.flip_p=1.5", "augment.flip_p"),
        ("augment.crop_scale=[0.9, 0.2]", "augment.crop_scale"),
        ("optim.batch_size=1", "optim.batch_size"),
        ("optim.base_lr=-1", "optim.base_lr"),
        ("monitor.knn_t=0", "monitor.knn_t"),
        ("run.epochs=0", "run.epochs"),
        ("augment.view_size=48", "augment.view_size"),
        ("augment.view_size=4", "augment.view_size"),
        ("objective.predictor_loss=-1", "predictor_loss"),
        ("objective.infonce=nan", "infonce"),
        ("run.device=\"gpu\"", "run.device"),
        ("run.device=\"cuda:x\"", "run.device"),
    ] {
        let e = Config::resolve("tiny", None, &[set.into()]).unwrap_err().to_string();
        assert!(e.contains(field), "{set}: {e}");
    }
    // The predictor's own loss needs a predictor with parameters.
    let sets = ["objective.predictor_loss=1.0".into(), "model.predictor=\"identity\"".into()];
    let e = Config::resolve("tiny", None, &sets).unwrap_err().to_string();
    assert!(e.contains("objective.predictor_loss") && e.contains("identity"), "{e}");
    let sets = ["objective.predictor_loss=1.0".into(), "model.pred_trainable=false".into()];
    let e = Config::resolve("tiny", None, &sets).unwrap_err().to_string();
    assert!(e.contains("objective.predictor_loss") && e.contains("pred_trainable"), "{e}");
    // Every loss weighted 0 leaves nothing to train.
    let e = Config::resolve("tiny", None, &["objective.main_weight=0".into()]).unwrap_err().to_string();
    assert!(e.contains("objective.main_weight") && e.contains("at least one positive weight"), "{e}");
    let e = Config::resolve("tiny", None, &["optim.batch_size=many".into()]).unwrap_err().to_string();
    assert!(e.contains("optim.batch_size"), "{e}");
    let e = Config::resolve("tiny", None, &["model.arch=vgg".into()]).unwrap_err().to_string();
    assert!(e.contains("model.arch") && e.contains("resnet18"), "{e}");
    // A device this machine lacks is still a well-formed config (checked where it would run).
    for ok in ["cpu", "auto", "cuda", "cuda:3"] {
        Config::resolve("tiny", None, &[format!("run.device=\"{ok}\"")]).unwrap();
    }
}

#[test]
fn every_shipped_experiment_parses_and_every_arm_resolves() {
    use simsiam::experiment::{Experiment, SHIPPED};
    let out = std::path::Path::new("/tmp/unused");
    for (name, text) in SHIPPED {
        let e = Experiment::parse(text, name).unwrap();
        assert_eq!(&e.name, name);
        for arm in &e.arms {
            let c = e.arm_config(arm, out, &[]).unwrap_or_else(|err| panic!("{name}/{}: {err}", arm.name));
            assert_eq!(c.run.out_dir, out.join(&arm.name));
        }
        // Orderings name existing arms.
        for o in &e.order {
            for side in o.split(">=").flat_map(|s| s.split('>')) {
                assert!(e.arms.iter().any(|a| a.name == side.trim()), "{name}: order {o:?}");
            }
        }
    }
}

/// An arm's `method` is the `--method` overlay under its overrides; an unknown one is an error
/// naming the experiment, the arm and the methods there are.
#[test]
fn an_arms_method_is_its_overlay() {
    use simsiam::config::PredictorKind;
    use simsiam::experiment::Experiment;
    let out = std::path::Path::new("/tmp/unused");
    let e = Experiment::find("method-comparison").unwrap();
    let arm = |n: &str| e.arms.iter().find(|a| a.name == n).unwrap();
    let moco = e.arm_config(arm("moco"), out, &["objective.infonce_queue=512".into()]).unwrap();
    assert!(moco.model.ema_target && moco.objective.infonce == 1.0 && moco.objective.infonce_queue == 512);
    assert_eq!(moco.model.predictor, PredictorKind::Identity);
    let simsiam = e.arm_config(arm("simsiam"), out, &[]).unwrap();
    assert!(!simsiam.model.ema_target && simsiam.objective.infonce == 0.0 && simsiam.objective.swav.weight == 0.0);
    assert_eq!(e.arm_config(arm("swav"), out, &[]).unwrap().objective.swav.weight, 1.0);
    // `--arm-set`: one arm's override, after the command line's own.
    let mut e2 = e.clone();
    e2.set_arms(&["moco:objective.infonce_queue=512".into()]).unwrap();
    let arm2 = |n: &str| e2.arms.iter().find(|a| a.name == n).unwrap();
    let global = ["objective.infonce_queue=64".to_string()];
    assert_eq!(e2.arm_config(arm2("moco"), out, &global).unwrap().objective.infonce_queue, 512);
    assert_eq!(
        e2.arm_config(arm2("simclr"), out, &[]).unwrap().objective.infonce_queue,
        0,
        "SimCLR keeps its negatives"
    );
    for (spec, want) in [("mocco:optim.base_lr=1", "no arm \"mocco\""), ("moco", "ARM:section.field=value")] {
        let err = e2.clone().set_arms(&[spec.to_string()]).unwrap_err().to_string();
        assert!(err.contains("--arm-set") && err.contains(want), "{err}");
    }
    let text = "name = \"x\"\nclaim = \"c\"\nsource = \"s\"\npaper = \"p\"\n[[arm]]\nname = \"a\"\nmethod = \"dino\"\nexpect = \"any\"\n";
    let e = Experiment::parse(text, "x").unwrap();
    let err = e.arm_config(&e.arms[0], out, &[]).unwrap_err().to_string();
    assert!(err.contains("arm a") && err.contains("dino") && err.contains("moco"), "{err}");
}

/// An experiment's `[linear]` recipe: fields left out keep `eval linear`'s defaults; a bad value
/// or an unknown field is an error naming it.
#[test]
fn an_experiments_linear_probe_recipe_is_checked() {
    use simsiam::experiment::Experiment;
    let base = "name = \"x\"\nclaim = \"c\"\nsource = \"s\"\npaper = \"p\"\n";
    let arm = "[[arm]]\nname = \"a\"\nexpect = \"healthy\"\n";
    let e = Experiment::parse(&format!("{base}[linear]\nepochs = 10\naugment = false\n{arm}"), "x").unwrap();
    let pc = e.linear.unwrap();
    assert_eq!((pc.epochs, pc.augment, pc.batch_size, pc.lr), (10, false, 256, 30.0));
    assert!(Experiment::parse(&format!("{base}{arm}"), "x").unwrap().linear.is_none());
    let err = Experiment::parse(&format!("{base}[linear]\nepochs = 0\n{arm}"), "x").unwrap_err().to_string();
    assert!(err.contains("[linear]") && err.contains("epochs"), "{err}");
    let err = Experiment::parse(&format!("{base}[linear]\nepoch = 3\n{arm}"), "x").unwrap_err().to_string();
    assert!(err.contains("epoch"), "{err}");
}

/// `simsiam presets NAME --explain`: every section and every field of the config says what it
/// is (a field added without a doc comment fails here), and the commented TOML reads back as
/// the same config.
#[test]
fn every_config_field_is_explained() {
    use simsiam::config::field_doc;
    let cfg = Config::resolve("cifar10", None, &[]).unwrap();
    let plain: toml::Table = cfg.to_toml().parse().unwrap();
    let mut missing = Vec::new();
    let mut check = |table: &str, field: &str| {
        if field_doc(table, field).is_none() {
            missing.push(if table.is_empty() { field.to_string() } else { format!("{table}.{field}") });
        }
    };
    for (section, fields) in &plain {
        check("", section);
        for (field, value) in fields.as_table().unwrap() {
            check(section, field);
            // A sub-table (`[objective.swav]`): its own fields.
            for sub in value.as_table().into_iter().flat_map(|t| t.keys()) {
                check(&format!("{section}.{field}"), sub);
            }
        }
    }
    assert!(missing.is_empty(), "config fields without a doc comment: {missing:?}");
    let explained = cfg.to_toml_explained();
    assert!(explained.contains("# The network's forward pass: `auto`, `fp32`, `bf16` or `fp16`"), "{explained}");
    let back: Config = toml::from_str(&explained).unwrap();
    assert_eq!(back, cfg);
}
