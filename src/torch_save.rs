//! PyTorch's own file format, read and written without Python: what `torch.save` writes (the
//! zip format of PyTorch >= 1.6), a zip archive `<name>/data.pkl` (a pickle of the saved object)
//! with each tensor storage in `<name>/data/<key>`.
//!
//! **Reading** ([`read()`]). libtorch has a reader, `torch::pickle_load`, but its unpickler turns
//! every `collections.OrderedDict` into `None` and fails on the items that follow
//! (pytorch/pytorch #100741, open since 2023): it cannot read a `model.state_dict()`, which is
//! what nearly every checkpoint holds, nor a class it does not know (Lightning's
//! hyper-parameters). So this is a small pickle machine of its own, for the opcodes of protocols
//! 2-5: containers are built as Python builds them (shared through the memo), any class is kept
//! as an opaque object with its arguments and state, and the two callables that matter are
//! understood: `torch._utils._rebuild_tensor_v2` (a view of a storage: offset, size, stride) and
//! `torch._utils._rebuild_parameter`. Nothing in the file is executed.
//!
//! **Writing** ([`write()`]). A dict of ints, strings and tensors, pickled as `torch.save` does
//! (protocol 2, one storage per tensor, records aligned to 64 bytes), using only what
//! `torch.load`'s default `weights_only=True` accepts.
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// A pickled value. Lists, dicts and objects are shared (`Rc`) so that one filled after it was
/// memoised is seen filled wherever the memo hands it out, as in Python.
#[derive(Clone, Debug)]
enum Value {
    None,
    /// A bool, float or bytes: nothing a tensor is rebuilt from.
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A class or function named by GLOBAL / STACK_GLOBAL: (module, name).
    Global(Rc<(String, String)>),
    /// Any other class called with arguments (the arguments dropped), or a set.
    Object(Rc<RefCell<Object>>),
    /// A storage named by a persistent id: its record key and element type.
    Storage(Rc<(String, Kind)>),
    /// A view of a storage, as `_rebuild_tensor_v2` describes it.
    Tensor(Rc<View>),
}

/// An instance of a class this reader does not interpret, with the state BUILD gave it.
#[derive(Debug, Default)]
struct Object {
    state: Option<Value>,
}

#[derive(Debug)]
struct View {
    storage: Rc<(String, Kind)>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// What went wrong, for the caller to put beside the file's name.
pub type Error = String;

/// The storage classes `torch.save` names (`torch.FloatStorage`, ...) and their element types,
/// for reading and writing alike.
const STORAGES: [(&str, Kind); 10] = [
    ("FloatStorage", Kind::Float),
    ("DoubleStorage", Kind::Double),
    ("HalfStorage", Kind::Half),
    ("BFloat16Storage", Kind::BFloat16),
    ("LongStorage", Kind::Int64),
    ("IntStorage", Kind::Int),
    ("ShortStorage", Kind::Int16),
    ("CharStorage", Kind::Int8),
    ("ByteStorage", Kind::Uint8),
    ("BoolStorage", Kind::Bool),
];

fn storage_kind(name: &str) -> Result<Kind, Error> {
    match name {
        "UntypedStorage" => Ok(Kind::Uint8),
        _ => STORAGES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, k)| k)
            .ok_or_else(|| format!("tensors stored as torch.{name}, which this reader does not know")),
    }
}

fn storage_name(kind: Kind) -> Result<&'static str, Error> {
    STORAGES
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|&(n, _)| n)
        .ok_or_else(|| format!("tensors of {kind:?} are not written"))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("the pickle ends early")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn line(&mut self) -> Result<String, Error> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("the pickle ends early")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<Value, Error> {
        Ok(Value::Str(String::from_utf8_lossy(self.take(n)?).into_owned()))
    }

    fn pop(&mut self) -> Result<Value, Error> {
        self.stack.pop().ok_or_else(|| "the pickle pops an empty stack".into())
    }

    fn top(&mut self) -> Result<&mut Value, Error> {
        self.stack.last_mut().ok_or_else(|| "the pickle reads an empty stack".into())
    }

    /// The values pushed since the last MARK, removed from the stack.
    fn since_mark(&mut self) -> Result<Vec<Value>, Error> {
        let m = self.marks.pop().ok_or("the pickle has no MARK to close")?;
        if m > self.stack.len() {
            return Err("the pickle's MARK is past the stack".into());
        }
        Ok(self.stack.split_off(m))
    }

    /// The length before a string or bytes opcode's payload: 1, 4 or 8 bytes, little-endian.
    fn length(&mut self, op: u8) -> Result<usize, Error> {
        Ok(match op {
            b'U' | 0x8c | b'C' => self.u8()? as usize,
            b'X' | b'T' | b'B' => u32::from_le_bytes(self.fixed()?) as usize,
            _ => usize::try_from(u64::from_le_bytes(self.fixed()?)).map_err(|_| "a length past this machine's")?,
        })
    }

    /// The memo slot a PUT or GET names: a byte (BINPUT, BINGET), four (LONG_*), a text line
    /// (protocol 0's PUT, GET), or the next free slot (MEMOIZE).
    fn memo_key(&mut self, op: u8) -> Result<u32, Error> {
        Ok(match op {
            b'q' | b'h' => self.u8()? as u32,
            b'r' | b'j' => u32::from_le_bytes(self.fixed()?),
            0x94 => self.memo.len() as u32,
            _ => self.line()?.parse().map_err(|_| "a PUT or GET without a number")?,
        })
    }

    fn memoise(&mut self, key: u32) -> Result<(), Error> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn recall(&mut self, key: u32) -> Result<(), Error> {
        let v = self.memo.get(&key).cloned().ok_or_else(|| format!("the pickle recalls memo {key}, never stored"))?;
        self.stack.push(v);
        Ok(())
    }

    fn set_items(target: &Value, items: Vec<Value>) -> Result<(), Error> {
        let Value::Dict(d) = target else { return Err("SETITEMS on something not a dict".into()) };
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append(target: &Value, items: Vec<Value>) -> Result<(), Error> {
        match target {
            Value::List(l) => l.borrow_mut().extend(items),
            // `list` subclasses and sets: their items do not hold tensors we need.
            Value::Object(_) => {}
            _ => return Err("APPENDS on something not a list".into()),
        }
        Ok(())
    }

    /// `callable(*args)`: the few callables torch.save uses, and an opaque object otherwise.
    fn call(callable: Value, args: Value) -> Result<Value, Error> {
        let Value::Global(g) = &callable else { return Err("REDUCE on something not a class or function".into()) };
        let args: Vec<Value> = match &args {
            Value::Tuple(t) => t.as_ref().clone(),
            _ => Vec::new(),
        };
        let (module, name) = (g.0.as_str(), g.1.as_str());
        Ok(match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let [Value::Storage(storage), Value::Int(offset), size, stride, ..] = args.as_slice() else {
                    return Err(format!("{module}.{name} with arguments this reader does not know"));
                };
                let ints = |v: &Value| -> Result<Vec<i64>, Error> {
                    match v {
                        Value::Tuple(t) => t
                            .iter()
                            .map(|x| match x {
                                Value::Int(i) => Ok(*i),
                                _ => Err("a tensor's size or stride is not a tuple of ints".to_string()),
                            })
                            .collect(),
                        _ => Err("a tensor's size or stride is not a tuple".into()),
                    }
                };
                Value::Tensor(Rc::new(View {
                    storage: storage.clone(),
                    offset: *offset,
                    size: ints(size)?,
                    stride: ints(stride)?,
                }))
            }
            // A Parameter is its data.
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                args.into_iter().next().ok_or("_rebuild_parameter without its data")?
            }
            // A Tensor subclass or a tensor with Python attributes: `func(*args)`.
            ("torch._tensor", "_rebuild_from_type_v2") => match args.as_slice() {
                [func, _, inner, ..] => Machine::call(func.clone(), inner.clone())?,
                _ => return Err("_rebuild_from_type_v2 with arguments this reader does not know".into()),
            },
            // Filled by the SETITEMS that follow; the state BUILD gives (`_metadata`) is dropped.
            ("collections", "OrderedDict") | ("builtins", "dict") => Value::Dict(Rc::default()),
            ("builtins", "list") => Value::List(Rc::default()),
            _ => Value::Object(Rc::default()),
        })
    }

    /// Runs the pickle to its STOP; `storage(key, kind, numel)` loads each storage it names.
    fn run(&mut self, storage: &mut impl FnMut(&str, Kind, usize) -> Result<(), Error>) -> Result<Value, Error> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.since_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Scalar), // NEWTRUE, NEWFALSE
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.fixed()?);
                    self.stack.push(Value::Int(v as i64))
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.fixed()?);
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("an integer wider than 64 bits".into());
                    }
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= (*byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    self.take(8)?; // BINFLOAT
                    self.stack.push(Value::Scalar)
                }
                b'I' => {
                    // INT (protocol 0), also True/False as I01/I00.
                    let l = self.line()?;
                    self.stack.push(match l.as_str() {
                        "01" | "00" => Value::Scalar,
                        s => Value::Int(s.parse().map_err(|_| format!("bad INT {s:?}"))?),
                    })
                }
                // Text (BINUNICODE, SHORT_/BINUNICODE8, protocol 2's BINSTRING and SHORT_BINSTRING).
                b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                    let n = self.length(op)?;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                // Bytes (SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8): nothing a tensor needs.
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = self.length(op)?;
                    self.take(n)?;
                    self.stack.push(Value::Scalar)
                }
                b')' => self.stack.push(Value::Tuple(Rc::default())),
                b't' => {
                    let items = self.since_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("the pickle makes a tuple of a short stack".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                b']' => self.stack.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.since_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))))
                }
                b'a' => {
                    let v = self.pop()?;
                    Machine::append(self.top()?, vec![v])?
                }
                b'e' => {
                    let items = self.since_mark()?;
                    Machine::append(self.top()?, items)?
                }
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.since_mark()?;
                    let d = Value::Dict(Rc::default());
                    Machine::set_items(&d, items)?;
                    self.stack.push(d)
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    Machine::set_items(self.top()?, vec![k, v])?
                }
                b'u' => {
                    let items = self.since_mark()?;
                    Machine::set_items(self.top()?, items)?
                }
                // Sets: kept as opaque objects (they hold no tensors in a checkpoint).
                0x8f => self.stack.push(Value::Object(Rc::default())),
                0x90 => {
                    self.since_mark()?;
                }
                0x91 => {
                    self.since_mark()?;
                    self.stack.push(Value::Object(Rc::default()))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(Rc::new((module, name))))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL without two strings".into());
                    };
                    self.stack.push(Value::Global(Rc::new((module, name))))
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.stack.push(Machine::call(callable, args)?)
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(Machine::call(cls, args)?)
                }
                0x92 => {
                    // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(Machine::call(cls, args)?)
                }
                b'b' => {
                    let state = self.pop()?;
                    if let Value::Object(o) = self.top()? {
                        o.borrow_mut().state = Some(state);
                    }
                    // On a dict (an OrderedDict's `_metadata`) or a tensor (its Python
                    // attributes) the state is dropped.
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let Value::Tuple(t) = &pid else { return Err("a persistent id that is not a tuple".into()) };
                    let [Value::Str(tag), Value::Global(ty), Value::Str(key), _, Value::Int(numel), ..] = t.as_slice()
                    else {
                        return Err("a persistent id this reader does not know".into());
                    };
                    if tag != "storage" {
                        return Err(format!("a persistent id of kind {tag:?}"));
                    }
                    let kind = storage_kind(&ty.1)?;
                    let numel = usize::try_from(*numel).map_err(|_| format!("storage {key} of {numel} elements"))?;
                    storage(key, kind, numel)?;
                    self.stack.push(Value::Storage(Rc::new((key.clone(), kind))))
                }
                b'q' | b'r' | b'p' | 0x94 => {
                    let k = self.memo_key(op)?;
                    self.memoise(k)?
                }
                b'h' | b'j' | b'g' => {
                    let k = self.memo_key(op)?;
                    self.recall(k)?
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {}, which this reader does not know",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

/// How deep [`walk`] goes: checkpoints nest a few levels (`state_dict`, `optimizer.state.3`);
/// a pickle nested deeper than this is refused rather than followed.
const MAX_DEPTH: usize = 64;

/// Calls `emit` for each tensor in the object tree, named by its dotted path: dict keys (strings
/// and ints), list and tuple positions, and an object's state (`argparse.Namespace`'s fields).
/// `path` holds the containers above `v`: one met again is a cycle (an object that refers to
/// itself), which holds nothing not already walked.
fn walk(v: &Value, name: &str, path: &mut Vec<usize>, emit: &mut impl FnMut(String, &View)) -> Result<(), Error> {
    if path.len() > MAX_DEPTH {
        return Err(format!("`{name}` is nested more than {MAX_DEPTH} levels deep"));
    }
    let address = match v {
        Value::Dict(d) => Rc::as_ptr(d) as *const () as usize,
        Value::List(l) => Rc::as_ptr(l) as *const () as usize,
        Value::Tuple(t) => Rc::as_ptr(t) as *const () as usize,
        Value::Object(o) => Rc::as_ptr(o) as *const () as usize,
        _ => 0,
    };
    if address != 0 && path.contains(&address) {
        return Ok(());
    }
    path.push(address);
    let out = walk_children(v, name, path, emit);
    path.pop();
    out
}

fn walk_children(
    v: &Value,
    name: &str,
    path: &mut Vec<usize>,
    emit: &mut impl FnMut(String, &View),
) -> Result<(), Error> {
    let join = |k: &str| if name.is_empty() { k.to_string() } else { format!("{name}.{k}") };
    match v {
        Value::Tensor(t) => emit(name.to_string(), t),
        Value::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                match k {
                    Value::Str(s) => walk(v, &join(s), path, emit)?,
                    Value::Int(i) => walk(v, &join(&i.to_string()), path, emit)?,
                    _ => {}
                }
            }
        }
        Value::List(l) => {
            for (i, v) in l.borrow().iter().enumerate() {
                walk(v, &join(&i.to_string()), path, emit)?
            }
        }
        Value::Tuple(t) => {
            for (i, v) in t.iter().enumerate() {
                walk(v, &join(&i.to_string()), path, emit)?
            }
        }
        Value::Object(o) => {
            if let Some(state) = &o.borrow().state {
                walk(state, name, path, emit)?
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every tensor in the `torch.save` file at `path`, on the CPU, by dotted name.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>, Error> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| format!("not a readable zip archive: {e}"))?;
    // The records sit under one folder, whatever its name (`archive/` since PyTorch 2.x).
    let pkl = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min_by_key(|n| n.len())
        .ok_or("a zip archive without data.pkl: not a torch.save file")?;
    let root = pkl.strip_suffix("data.pkl").expect("suffix").to_string();
    let mut bytes = Vec::new();
    zip.by_name(&pkl).map_err(|e| e.to_string())?.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if let Ok(mut f) = zip.by_name(&format!("{root}byteorder")) {
        let mut order = String::new();
        let _ = f.read_to_string(&mut order);
        if order.trim() == "big" {
            return Err("saved on a big-endian machine, which this reader does not read".into());
        }
    }

    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut load = |key: &str, kind: Kind, numel: usize| -> Result<(), Error> {
        if storages.contains_key(key) {
            return Ok(());
        }
        let name = format!("{root}data/{key}");
        let mut raw = Vec::new();
        zip.by_name(&name)
            .map_err(|e| format!("{name}: {e}"))?
            .read_to_end(&mut raw)
            .map_err(|e| format!("{name}: {e}"))?;
        let elem = kind.elt_size_in_bytes();
        if raw.len() % elem != 0 || (raw.len() / elem) < numel {
            return Err(format!(
                "{name}: {} bytes, not the {numel} elements of {elem} bytes its tensor says",
                raw.len()
            ));
        }
        let t =
            Tensor::f_from_data_size(&raw, &[(raw.len() / elem) as i64], kind).map_err(|e| format!("{name}: {e}"))?;
        storages.insert(key.to_string(), t);
        Ok(())
    };
    let mut machine = Machine { data: &bytes, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    let root_value = machine.run(&mut load)?;

    let mut out = Vec::new();
    let mut failure = None;
    walk(&root_value, "", &mut Vec::new(), &mut |name, view| {
        if failure.is_none() {
            match materialise(&storages, view) {
                Ok(t) => out.push((name, t)),
                Err(e) => failure = Some(format!("tensor `{name}`: {e}")),
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The tensor a view describes, copied out of its storage, after checking that every element
/// it reads lies in the storage.
fn materialise(storages: &HashMap<String, Tensor>, view: &View) -> Result<Tensor, Error> {
    let storage = storages.get(&view.storage.0).ok_or("its storage was never loaded")?;
    let len = storage.size()[0] as i128;
    if view.size.len() != view.stride.len() || view.offset < 0 || view.size.iter().chain(&view.stride).any(|&v| v < 0) {
        return Err(format!(
            "a view this reader does not take (size {:?}, stride {:?}, offset {})",
            view.size, view.stride, view.offset
        ));
    }
    let empty = view.size.contains(&0);
    // The largest element the view reads (i128: no overflow for any i64 inputs of this rank).
    let last = view.offset as i128
        + view.size.iter().zip(&view.stride).map(|(&n, &s)| (n as i128 - 1).max(0) * s as i128).sum::<i128>();
    if !empty && last >= len {
        return Err(format!("it reaches element {last} of a storage of {len}"));
    }
    storage
        .f_as_strided(&view.size, &view.stride, view.offset)
        .and_then(|t| t.f_contiguous())
        .map_err(|e| e.to_string())
}

/// A value to write: what checkpoints hold around their tensors.
pub enum Saved {
    Int(i64),
    Str(String),
    Tensor(Tensor),
    /// A dict with string keys, in this order.
    Dict(Vec<(String, Saved)>),
}

/// The pickle of a [`Saved`], with each tensor's bytes set aside as a storage record.
struct Pickler {
    out: Vec<u8>,
    storages: Vec<Vec<u8>>,
}

impl Pickler {
    fn str(&mut self, s: &str) {
        self.out.push(b'X'); // BINUNICODE
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        match u8::try_from(v) {
            Ok(b) => self.out.extend([b'K', b]), // BININT1
            Err(_) => match i32::try_from(v) {
                Ok(i) => {
                    self.out.push(b'J'); // BININT
                    self.out.extend(i.to_le_bytes());
                }
                Err(_) => {
                    self.out.extend([0x8a, 8]); // LONG1, 8 bytes
                    self.out.extend(v.to_le_bytes());
                }
            },
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend(format!("{module}\n{name}\n").as_bytes());
    }

    fn ints(&mut self, v: &[i64]) {
        if v.is_empty() {
            self.out.push(b')');
            return;
        }
        self.out.push(b'(');
        for &x in v {
            self.int(x);
        }
        self.out.push(b't');
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, the
    /// storage a persistent id `('storage', torch.XStorage, key, 'cpu', numel)`.
    fn tensor(&mut self, t: &Tensor) -> Result<(), Error> {
        let t = t.f_to_device(tch::Device::Cpu).and_then(|t| t.f_contiguous()).map_err(|e| e.to_string())?;
        let kind = t.kind();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel).map_err(|e| e.to_string())?;
        let key = self.storages.len().to_string();
        self.storages.push(bytes);
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'(');
        self.out.push(b'(');
        self.str("storage");
        self.global("torch", storage_name(kind)?);
        self.str(&key);
        self.str("cpu");
        self.int(numel as i64);
        self.out.push(b't');
        self.out.push(b'Q'); // BINPERSID
        self.int(0);
        self.ints(&t.size());
        self.ints(&t.stride());
        self.out.push(0x89); // False: requires_grad
        self.global("collections", "OrderedDict");
        self.out.extend([b')', b'R']);
        self.out.extend([b't', b'R']);
        Ok(())
    }

    fn value(&mut self, v: &Saved) -> Result<(), Error> {
        match v {
            Saved::Int(i) => self.int(*i),
            Saved::Str(s) => self.str(s),
            Saved::Tensor(t) => self.tensor(t)?,
            Saved::Dict(items) => {
                self.out.push(b'}');
                if !items.is_empty() {
                    self.out.push(b'(');
                    for (k, v) in items {
                        self.str(k);
                        self.value(v)?;
                    }
                    self.out.push(b'u'); // SETITEMS
                }
            }
        }
        Ok(())
    }
}

/// Writes `value` as `torch.save(value, path)` would: `torch.load(path)` reads it back, with
/// the default `weights_only=True`.
pub fn write(path: &Path, value: &Saved) -> Result<(), Error> {
    let mut p = Pickler { out: vec![0x80, 2], storages: Vec::new() };
    p.value(value)?;
    p.out.push(b'.');
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
    let mut record = |name: &str, bytes: &[u8]| -> Result<(), Error> {
        // 64-byte aligned, as PyTorch aligns its records (for memory-mapped loading).
        zip.start_file_aligned(format!("archive/{name}"), stored, 64).map_err(|e| e.to_string())?;
        zip.write_all(bytes).map_err(|e| e.to_string())
    };
    record("data.pkl", &p.out)?;
    record("byteorder", b"little")?;
    for (key, bytes) in p.storages.iter().enumerate() {
        record(&format!("data/{key}"), bytes)?;
    }
    record("version", b"3\n")?;
    zip.finish().and_then(|mut w| w.flush().map_err(Into::into)).map_err(|e| e.to_string())?;
    Ok(())
}
