//! Starting from weights trained elsewhere (`model.init_from`). The file is read whatever wrote
//! it: safetensors (`simsiam export`, or any tool's torchvision-layout backbone), or Python's
//! `torch.save` as the PyTorch tools write it: facebookresearch/simsiam's `checkpoint_*.pth.tar`,
//! a Lightning `.ckpt` (solo-learn), a `state_dict()` of lightly's examples, torchvision's own
//! weights. Its backbone and heads are then found by their names, not by a fixed prefix:
//!
//! - **the backbone**: torchvision's ResNet names (`conv1.weight`, `layer1.0.conv1.weight`, ...)
//!   under some prefix (`state_dict.module.encoder.`, `state_dict.backbone.`, none), or an
//!   `nn.Sequential` of the ResNet's children as lightly's examples build it (`0.weight`,
//!   `4.0.conv1.weight`, ...). Several (MoCo's `encoder_q`/`encoder_k`, BYOL's online and
//!   target) are an error unless `model.init_prefix` picks one.
//! - **the heads**, when the file has them and `model.init_heads` is on: an `nn.Sequential` of
//!   Linear and BatchNorm1d layers, the projector at `<backbone>fc.` (the official code's
//!   `encoder.fc`), `projector.` (solo-learn), `projector.layers.` or `projection_head.layers.`
//!   (lightly's heads), the predictor at `predictor.`, `predictor.layers.` or
//!   `prediction_head.layers.`, beside the backbone. They are
//!   matched layer by layer with this model's heads; the official code's frozen output bias
//!   before a BN is folded into that BN's running mean (the same function in train and eval
//!   mode).
//!
//! Nothing is loaded unless everything matches: every tensor is checked first, by name and
//! shape, and the errors name the file, the entry and what this model needed.
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{BACKBONE, PREDICTOR, PROJECTOR};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn::VarStore, Tensor};

/// Every tensor in a weights file by its dotted name: safetensors, or what Python's
/// `torch.save` writes (the zip format of PyTorch >= 1.6), its object tree flattened
/// (`state_dict.module.encoder.conv1.weight`; list items and int keys by number). Tensors
/// saved on a GPU load on the CPU.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    use std::io::Read;
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    match &head[..n] {
        [b'P', b'K', 3, 4, ..] => torch_save(path),
        // safetensors: an 8-byte header length, then the JSON header.
        [_, _, _, _, _, _, _, _, b'{'] => Tensor::read_safetensors(path)
            .map_err(|e| Error::data(path, format!("not a readable safetensors file: {e}"))),
        [0x80, ..] => Err(Error::data(
            path,
            "a pickle in torch.save's legacy format (PyTorch < 1.6, or _use_new_zipfile_serialization=False), \
             which only Python reads; save it again in the current format: python -c \"import torch; \
             torch.save(torch.load('OLD', map_location='cpu', weights_only=False), 'NEW.pth')\"",
        )),
        _ => Err(Error::data(path, "expected a safetensors file or a PyTorch checkpoint written by torch.save")),
    }
}

fn torch_save(path: &Path) -> Result<Vec<(String, Tensor)>> {
    crate::torch_save::read(path).map_err(|e| Error::data(path, format!("cannot read this torch.save file: {e}")))
}

/// How a file names the backbone's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// torchvision's ResNet: `conv1`, `bn1`, `layer1`..`layer4` (also lightly's `ResNet`, whose
    /// blocks name their projection shortcut `shortcut`, torchvision's `downsample`).
    Torchvision,
    /// An `nn.Sequential` of the ResNet's children: 0 = conv1, 1 = bn1, then the four stages
    /// from this index on: 4 for torchvision's (`relu`, `maxpool` between), 2 for lightly's
    /// `ResNetGenerator` (no module between: its forward's ReLU after the stem is lost), 3 when
    /// a ReLU was put back.
    Children { first_stage: usize },
}

/// A backbone in the file: its prefix and layout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    prefix: String,
    layout: Layout,
}

impl Found {
    /// torchvision's name of a file entry under the prefix, if it belongs to the backbone
    /// (`None`: not a backbone entry, e.g. `fc.*`, a head or a BN's step counter).
    fn torchvision_name(&self, rest: &str) -> Option<String> {
        if rest.ends_with(".num_batches_tracked") {
            return None;
        }
        let (top, tail) = rest.split_once('.')?;
        let top = match self.layout {
            Layout::Torchvision => {
                ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"].into_iter().find(|t| *t == top)?
            }
            Layout::Children { first_stage } => match top.parse::<usize>().ok()? {
                0 => "conv1",
                1 => "bn1",
                i if (first_stage..first_stage + 4).contains(&i) => {
                    ["layer1", "layer2", "layer3", "layer4"][i - first_stage]
                }
                _ => return None,
            },
        };
        Some(format!("{top}.{}", tail.replace("shortcut.", "downsample.")))
    }

    /// Whether the backbone, as its layout implies, applies a ReLU after the stem's BN; `None`
    /// when the layout does not say (a module's forward does it, or not).
    fn stem_relu(&self) -> Option<bool> {
        match self.layout {
            Layout::Torchvision => None,
            Layout::Children { first_stage } => Some(first_stage > 2),
        }
    }

    /// Where the heads sit beside this backbone: its prefix without the last component
    /// (`state_dict.module.encoder.` -> `state_dict.module.`).
    fn parent(&self) -> &str {
        let p = self.prefix.trim_end_matches('.');
        match p.rfind('.') {
            Some(i) => &self.prefix[..=i],
            None => "",
        }
    }
}

/// The backbones a file holds: torchvision's names (`conv1.weight` beside
/// `layer1.0.conv1.weight`), or a Sequential's (`0.weight`, `1.running_mean` and four
/// consecutive stages `k.0.conv1.weight`) under one prefix.
fn backbones(names: &HashMap<String, Tensor>) -> Vec<Found> {
    let at_boundary = |p: &str| p.is_empty() || p.ends_with('.');
    let mut found = Vec::new();
    let mut stages: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for k in names.keys() {
        if let Some(p) = k.strip_suffix("layer1.0.conv1.weight").filter(|p| at_boundary(p)) {
            if names.contains_key(&format!("{p}conv1.weight")) {
                found.push(Found { prefix: p.to_string(), layout: Layout::Torchvision });
            }
        }
        // `{p}{i}.0.conv1.weight`: stage i of a Sequential at p.
        if let Some(head) = k.strip_suffix(".0.conv1.weight") {
            let (p, i) = match head.rfind('.') {
                Some(j) => (&head[..=j], &head[j + 1..]),
                None => ("", head),
            };
            if let Ok(i) = i.parse::<usize>() {
                stages.entry(p).or_default().push(i);
            }
        }
    }
    for (p, mut idx) in stages {
        idx.sort();
        let stem = names.get(&format!("{p}0.weight")).is_some_and(|w| w.dim() == 4)
            && names.contains_key(&format!("{p}1.running_mean"));
        if stem && idx.len() == 4 && idx[3] == idx[0] + 3 && idx[0] >= 2 {
            found.push(Found { prefix: p.to_string(), layout: Layout::Children { first_stage: idx[0] } });
        }
    }
    found.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    found
}

/// One layer of a head as a file stores it.
enum Layer<'a> {
    Linear { weight: &'a Tensor, bias: Option<&'a Tensor> },
    Norm { weight: Option<&'a Tensor>, bias: Option<&'a Tensor>, mean: &'a Tensor, var: &'a Tensor },
}

impl Layer<'_> {
    fn describe(&self) -> String {
        match self {
            Layer::Linear { weight, bias } => describe_linear(weight, bias.is_some()),
            Layer::Norm { weight, .. } => describe_bn(weight.is_some()),
        }
    }
}

/// A Linear layer as the mismatch errors show it, the file's or this model's: `Linear 32->24`.
fn describe_linear(weight: &Tensor, bias: bool) -> String {
    let s = weight.size();
    format!("Linear {}->{}{}", s[1], s[0], if bias { "" } else { " (no bias)" })
}

fn describe_bn(affine: bool) -> String {
    format!("BN{}", if affine { "" } else { " (no affine)" })
}

/// The `nn.Sequential` of Linear and BatchNorm1d layers at `prefix` (`{i}.weight`, ...), in
/// index order; `None` if nothing under `prefix` reads as one.
fn sequential<'a>(file: &'a HashMap<String, Tensor>, prefix: &str) -> Option<Vec<Layer<'a>>> {
    let mut groups: BTreeMap<usize, HashMap<&str, &'a Tensor>> = BTreeMap::new();
    for (k, t) in file {
        let Some(rest) = k.strip_prefix(prefix) else { continue };
        let (i, param) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        if param.contains('.') {
            return None;
        }
        groups.entry(i).or_default().insert(param, t);
    }
    if groups.is_empty() {
        return None;
    }
    groups
        .into_values()
        .map(|g| match (g.get("running_mean"), g.get("running_var"), g.get("weight")) {
            (Some(mean), Some(var), weight) => {
                Some(Layer::Norm { weight: weight.copied(), bias: g.get("bias").copied(), mean, var })
            }
            (None, None, Some(w)) if w.dim() == 2 => Some(Layer::Linear { weight: w, bias: g.get("bias").copied() }),
            _ => None,
        })
        .collect()
}

/// This model's head at `head` (`projector`, `predictor`): per block, its Linear's weight and
/// bias and its BN's variables (if any), by our names.
struct OurBlock {
    linear: String,
    bias: bool,
    norm: Option<(String, bool)>,
}

fn our_head(vars: &HashMap<String, Tensor>, head: &str) -> Vec<OurBlock> {
    (0..)
        .map_while(|i| {
            let linear = format!("{head}.{i}.linear");
            vars.contains_key(&format!("{linear}.weight")).then(|| {
                let bn = format!("{head}.{i}.bn");
                let norm = vars
                    .contains_key(&format!("{bn}.running_mean"))
                    .then(|| (bn.clone(), vars.contains_key(&format!("{bn}.weight"))));
                OurBlock { bias: vars.contains_key(&format!("{linear}.bias")), linear, norm }
            })
        })
        .collect()
}

fn describe_ours(vars: &HashMap<String, Tensor>, blocks: &[OurBlock]) -> String {
    let mut s = Vec::new();
    for b in blocks {
        s.push(describe_linear(&vars[&format!("{}.weight", b.linear)], b.bias));
        if let Some((_, affine)) = &b.norm {
            s.push(describe_bn(*affine));
        }
    }
    s.join(", ")
}

/// Values to copy into this model's variables, checked before any is copied.
#[derive(Default)]
struct Plan {
    copies: Vec<(String, Tensor)>,
}

impl Plan {
    fn set(
        &mut self,
        ours: &HashMap<String, Tensor>,
        name: String,
        value: Tensor,
        at: &str,
        path: &Path,
    ) -> Result<()> {
        let var = &ours[&name];
        if var.size() != value.size() {
            return Err(Error::data(
                path,
                format!("entry `{at}` has shape {:?}, this model needs {:?}", value.size(), var.size()),
            ));
        }
        self.copies.push((name, value));
        Ok(())
    }
}

/// Matches the file's head at `prefix` with this model's head `head`, layer by layer.
fn plan_head(
    plan: &mut Plan,
    ours: &HashMap<String, Tensor>,
    head: &str,
    file_layers: &[Layer],
    prefix: &str,
    path: &Path,
) -> Result<()> {
    let blocks = our_head(ours, head);
    let mismatch = || {
        let theirs: Vec<String> = file_layers.iter().map(Layer::describe).collect();
        Error::data(
            path,
            format!(
                "the {head} at `{prefix}` is [{}], this model's is [{}] (`model.proj_*`/`model.pred_*` and \
                 `model.dim` set it; `model.init_heads = false` takes the backbone alone)",
                theirs.join(", "),
                describe_ours(ours, &blocks)
            ),
        )
    };
    let mut layers = file_layers.iter().enumerate();
    for b in &blocks {
        let Some((i, Layer::Linear { weight, bias })) = layers.next() else { return Err(mismatch()) };
        let at = |p: &str| format!("{prefix}{i}.{p}");
        let w = &ours[&format!("{}.weight", b.linear)];
        if w.size() != weight.size() {
            return Err(mismatch());
        }
        plan.set(ours, format!("{}.weight", b.linear), weight.shallow_clone(), &at("weight"), path)?;
        // A bias this model's Linear lacks is folded into the BN that follows it.
        let mut folded: Option<&Tensor> = None;
        match (bias, b.bias) {
            (Some(t), true) => plan.set(ours, format!("{}.bias", b.linear), t.shallow_clone(), &at("bias"), path)?,
            (None, true) => {
                let zero = ours[&format!("{}.bias", b.linear)].zeros_like();
                plan.set(ours, format!("{}.bias", b.linear), zero, &at("bias"), path)?
            }
            (Some(t), false) if b.norm.is_some() => folded = Some(t),
            (Some(_), false) => {
                return Err(Error::data(
                    path,
                    format!("entry `{}` is a bias this model's {head} has no place for", at("bias")),
                ))
            }
            (None, false) => {}
        }
        match (&b.norm, layers.clone().next()) {
            (Some((bn, affine)), Some((j, Layer::Norm { weight, bias, mean, var }))) => {
                layers.next();
                let at = |p: &str| format!("{prefix}{j}.{p}");
                // BN(x + b) in eval mode = (x - (mean - b)) / sqrt(var + eps); in train mode b cancels.
                let mean = match folded {
                    Some(b) if b.size() == mean.size() => *mean - b,
                    Some(_) => return Err(mismatch()),
                    None => mean.shallow_clone(),
                };
                plan.set(ours, format!("{bn}.running_mean"), mean, &at("running_mean"), path)?;
                plan.set(ours, format!("{bn}.running_var"), var.shallow_clone(), &at("running_var"), path)?;
                match (affine, weight, bias) {
                    (true, Some(w), Some(bb)) => {
                        plan.set(ours, format!("{bn}.weight"), w.shallow_clone(), &at("weight"), path)?;
                        plan.set(ours, format!("{bn}.bias"), bb.shallow_clone(), &at("bias"), path)?;
                    }
                    (true, None, None) => {
                        plan.set(ours, format!("{bn}.weight"), var.full_like(1.0), &at("weight"), path)?;
                        plan.set(ours, format!("{bn}.bias"), var.full_like(0.0), &at("bias"), path)?;
                    }
                    (false, None, None) => {}
                    // An affine BN in the file where this model's has none: only the identity maps.
                    (false, Some(w), Some(bb)) if is_const(w, 1.0) && is_const(bb, 0.0) => {}
                    _ => return Err(mismatch()),
                }
            }
            (None, Some((_, Layer::Linear { .. })) | None) => {}
            _ => return Err(mismatch()),
        }
    }
    if layers.next().is_some() {
        return Err(mismatch());
    }
    Ok(())
}

fn is_const(t: &Tensor, v: f64) -> bool {
    t.numel() == 0 || (t - v).abs().max().double_value(&[]) == 0.0
}

/// The two mismatches most files that do not fit have, said in the fields that set them: the
/// stem's kernel (`model.cifar_stem`) and its channels (`model.width`).
fn stem_matches(
    file: &HashMap<String, Tensor>,
    found: &Found,
    ours: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let key = match found.layout {
        Layout::Torchvision => format!("{}conv1.weight", found.prefix),
        Layout::Children { .. } => format!("{}0.weight", found.prefix),
    };
    let (Some(theirs), Some(mine)) = (file.get(&key), ours.get(&format!("{BACKBONE}.conv1.weight"))) else {
        return Ok(());
    };
    let (t, m) = (theirs.size(), mine.size());
    if t.len() == 4 && t[2] != m[2] {
        return Err(Error::data(
            path,
            format!(
                "`{key}` is a {k}x{k} stem, this model's is {}x{} (`model.cifar_stem = {}` for the file's)",
                m[2],
                m[3],
                t[2] == 3,
                k = t[2]
            ),
        ));
    }
    if t[0] != m[0] {
        return Err(Error::data(
            path,
            format!("`{key}`: the file's backbone has {} channels in its stem, this model {} (`model.width = {}` for the file's)", t[0], m[0], t[0]),
        ));
    }
    Ok(())
}

/// What [`init_from`] loaded, for the run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The backbone's prefix in the file (`""`: at the top).
    pub backbone: String,
    /// This model's variables set from the file.
    pub tensors: usize,
    /// The heads taken from the file, with their prefixes.
    pub projector: Option<String>,
    pub predictor: Option<String>,
    /// What did not carry over as it was: heads the file has and this model does not use (or
    /// the reverse), a stem ReLU the file's layout implies and this model lacks (or the reverse).
    pub notes: Vec<String>,
}

impl std::fmt::Display for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tensors: the backbone from `{}`", self.tensors, self.backbone)?;
        if let Some(p) = &self.projector {
            write!(f, ", the projector from `{p}`")?;
        }
        if let Some(p) = &self.predictor {
            write!(f, ", the predictor from `{p}`")?;
        }
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// Sets this model's backbone (and heads, see the module doc) from the weights file `path`.
pub fn init_from(vs: &mut VarStore, path: &Path, cfg: &ModelConfig) -> Result<Imported> {
    let file: HashMap<String, Tensor> = read_tensors(path)?.into_iter().collect();
    let ours = vs.variables();
    let found = the_backbone(&file, cfg, path)?;
    stem_matches(&file, &found, &ours, path)?;
    let mut plan = Plan::default();
    plan_backbone(&mut plan, &file, &found, &ours, path)?;
    let mut imported =
        Imported { backbone: found.prefix.clone(), tensors: 0, projector: None, predictor: None, notes: Vec::new() };
    if let Some(relu) = found.stem_relu().filter(|r| *r != cfg.stem_relu) {
        imported.notes.push(format!(
            "the file's backbone, an nn.Sequential of the ResNet's children, has {} ReLU after the stem's BN \
             and this model {}: set model.stem_relu = {relu} to compute what it computed",
            if relu { "a" } else { "no" },
            if cfg.stem_relu { "has one" } else { "has none" }
        ));
    }
    if cfg.init_heads {
        plan_heads(&mut plan, &mut imported, &file, &found, &ours, path)?;
    }
    // Everything matched: now copy.
    imported.tensors = plan.copies.len();
    tch::no_grad(|| {
        for (name, value) in plan.copies {
            let mut var = ours[&name].shallow_clone();
            var.copy_(&value.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(imported)
}

/// The one backbone of the file (or the one at `model.init_prefix`).
fn the_backbone(file: &HashMap<String, Tensor>, cfg: &ModelConfig, path: &Path) -> Result<Found> {
    let mut all = backbones(file);
    if let Some(p) = &cfg.init_prefix {
        all.retain(|f| &f.prefix == p);
        if all.is_empty() {
            let found: Vec<String> = backbones(file).into_iter().map(|f| format!("`{}`", f.prefix)).collect();
            return Err(Error::data(
                path,
                format!("model.init_prefix: no backbone at `{p}`; the file has one at: {}", list_or_none(&found)),
            ));
        }
    }
    match all.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            let mut names: Vec<&String> = file.keys().collect();
            names.sort();
            let first: Vec<String> = names.iter().take(6).map(|n| format!("`{n}`")).collect();
            Err(Error::data(
                path,
                format!(
                    "no ResNet backbone found: expected torchvision's names (`conv1.weight` and \
                     `layer1.0.conv1.weight` under one prefix) or an nn.Sequential of its children \
                     (`0.weight`, `4.0.conv1.weight`); the file has {} tensors, the first: {}",
                    file.len(),
                    list_or_none(&first)
                ),
            ))
        }
        many => {
            let found: Vec<String> = many.iter().map(|f| format!("`{}`", f.prefix)).collect();
            Err(Error::data(
                path,
                format!("several backbones, at {}; choose one with model.init_prefix", found.join(", ")),
            ))
        }
    }
}

/// Every entry of the file's backbone has a place in this one, and every variable of this
/// backbone is in the file, with its shape.
fn plan_backbone(
    plan: &mut Plan,
    file: &HashMap<String, Tensor>,
    found: &Found,
    ours: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let mut theirs: HashMap<String, &String> = HashMap::new();
    let mut keys: Vec<&String> = file.keys().collect();
    keys.sort();
    for k in keys {
        let Some(name) = k.strip_prefix(&found.prefix).and_then(|rest| found.torchvision_name(rest)) else { continue };
        if !ours.contains_key(&format!("{BACKBONE}.{name}")) {
            return Err(Error::data(
                path,
                format!("entry `{k}` has no counterpart in this {BACKBONE} (a different architecture? `model.arch`)"),
            ));
        }
        theirs.insert(name, k);
    }
    let mut mine: Vec<&String> = ours.keys().filter(|n| n.starts_with(&format!("{BACKBONE}."))).collect();
    mine.sort();
    for name in mine {
        let tv = &name[BACKBONE.len() + 1..];
        let Some(k) = theirs.get(tv) else {
            return Err(Error::data(
                path,
                format!(
                    "missing entry `{}{tv}`, this {BACKBONE}'s `{tv}` (a different architecture? `model.arch`)",
                    found.prefix
                ),
            ));
        };
        plan.set(ours, name.clone(), file[*k].shallow_clone(), k, path)?;
    }
    Ok(())
}

/// The projector and predictor, where the tools put them beside the backbone: the official
/// code's `encoder.fc`, solo-learn's `projector.`/`predictor.`, lightly's `*_head.layers.`.
fn plan_heads(
    plan: &mut Plan,
    imported: &mut Imported,
    file: &HashMap<String, Tensor>,
    found: &Found,
    ours: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let parent = found.parent();
    let beside = |heads: [&str; 3]| heads.map(|h| format!("{parent}{h}")).to_vec();
    // The official code's projector replaces the ResNet's `fc`.
    let mut projector = vec![format!("{}fc.", found.prefix)];
    projector.extend(beside(["projector.", "projector.layers.", "projection_head.layers."]));
    let predictor = beside(["predictor.", "predictor.layers.", "prediction_head.layers."]);
    for (head, candidates) in [(PROJECTOR, projector), (PREDICTOR, predictor)] {
        let in_file = candidates.iter().find_map(|p| sequential(file, p).map(|l| (p.clone(), l)));
        let in_model = !our_head(ours, head).is_empty();
        match (in_file, in_model) {
            (Some((prefix, layers)), true) => {
                plan_head(plan, ours, head, &layers, &prefix, path)?;
                *(if head == PROJECTOR { &mut imported.projector } else { &mut imported.predictor }) = Some(prefix);
            }
            (Some((prefix, _)), false) => imported
                .notes
                .push(format!("the file's {head} (`{prefix}`) is not used: this model has none of that form")),
            (None, true) => imported.notes.push(format!("the {head} starts at random: the file has none")),
            (None, false) => {}
        }
    }
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
